"""LLaVA's training entry point with test hooks (tests/test_resume.py, tests/test_multiprocess.py).

- With PROBE_DIR set, at the start of training every rank gathers the tower's (or the perceiver's)
  parameters, ZeRO-3 partitioned or not, and compares them with the tower folder's weights; it writes
  $PROBE_DIR/rank<R>.json (how many compared, the largest difference, whether they were partitioned).
- With KILL_AT_STEP=N every process exits at the end of step N without cleaning up (a killed job).
- With KILL_IN_SAVE_AT=N it exits inside the RNG-state write of checkpoint N's save.
Run with python, deepspeed or torchrun like `llava.train.train_mem`.
"""
import json
import os

import llava_dpa.training.trainer as T
from transformers import TrainerCallback


class Probe(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not os.environ.get("PROBE_DIR"):
            return
        import torch.distributed as dist
        from safetensors.torch import load_file

        from llava_dpa.towers import weights as W

        tower = model.get_model().get_vision_tower()
        source = load_file(os.path.join(tower.source_path, "model.safetensors"))
        if not tower.is_perceiver:  # the folder's keys as the tower's loader maps them onto its encoder
            source = W.select_submodule_state(source, tower.encoder, tower.checkpoint_prefixes, tower.source_path)
        compared, largest, partitioned = 0, 0.0, False
        for key, param in tower.encoder.named_parameters():
            if key not in source:
                continue
            if hasattr(param, "ds_id"):
                import deepspeed

                partitioned = True
                with deepspeed.zero.GatheredParameters([param]):
                    value = param.data.detach().clone()
            else:
                value = param.detach().clone()
            largest = max(largest, (value.float() - source[key].float()).abs().max().item())
            compared += 1
        rank = dist.get_rank() if dist.is_initialized() else 0
        folder = os.environ["PROBE_DIR"]
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
            json.dump({"rank": rank, "world": dist.get_world_size() if dist.is_initialized() else 1,
                       "compared": compared, "max_abs_diff": largest, "partitioned": partitioned}, f)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == int(os.environ.get("KILL_AT_STEP", -1)):
            os._exit(137)


_init = T.DPATrainer.__init__


def _with_probe(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.add_callback(Probe())


T.DPATrainer.__init__ = _with_probe

_save_rng = T.DPATrainer._save_rng_state


def _dying_save(self, output_dir):
    if self.state.global_step == int(os.environ.get("KILL_IN_SAVE_AT", -1)):
        os._exit(137)
    return _save_rng(self, output_dir)


T.DPATrainer._save_rng_state = _dying_save

if __name__ == "__main__":
    import torch.distributed as dist
    from llava.train.train import train

    train()
    assert not dist.is_initialized(), "train() returned with its process group alive (end_process_group)"
