"""Distributed runs: the end of the process group, and the process counts of a DeepSpeed run without CUDA.

This module imports nothing from the project, so tests/test_multiprocess.py can load it alone into short-lived
gloo jobs without the seconds that importing llava takes.
"""
import os

import torch
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


def count_cpu_deepspeed_processes(args) -> None:
    """A DeepSpeed run on a machine without CUDA: accelerate finds no device backend, records a single
    process although DeepSpeed's process group has several, and transformers then fills DeepSpeed's
    train_batch_size for one process ("train_batch_size is not equal to micro_batch_per_gpu *
    gradient_acc_step * world_size"). Take the counts from the process group DeepSpeed created."""
    state = args.distributed_state
    if (not args.deepspeed or torch.cuda.is_available() or state is None or not dist.is_available()
            or not dist.is_initialized() or state.num_processes == dist.get_world_size()):
        return
    state.num_processes = dist.get_world_size()   # PartialState shares its state: Accelerator reads these
    state.process_index = dist.get_rank()
    state.local_process_index = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    args.local_rank = state.local_process_index
