"""The end of a distributed run's process group.

This module imports nothing from the project, so tests/test_multiprocess.py can load it alone into short-lived
gloo jobs without the seconds that importing llava takes.
"""
import torch.distributed as dist


def end_process_group() -> None:
    """Every rank waits for the others' final writes, then destroys the process group while the interpreter is
    still whole.

    Left to interpreter exit, gloo's worker threads can still hold tensors whose release needs the GIL, and a rank
    aborts (SIGABRT, "terminate called without an active exception") after a run that saved everything. On torch
    2.13 that happened to 9 of 30 two-rank jobs; with this call it happened to none
    (tests/test_multiprocess.py::test_gloo_ranks_exit_cleanly_after_end_process_group).
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
