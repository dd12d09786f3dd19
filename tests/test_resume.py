"""A killed run resumes from its last complete checkpoint when the same command runs again; the
resumed loss curve continues the interrupted one; a kill during a save never leaves a checkpoint-N
that the resume would trust."""
import pytest

from conftest import PY, REPO, in_process, in_process_logged, losses, run, train_cmd
from llava_dpa.training.errors import RunConfigError

# llava's real entry point with a hook that kills the process (no cleanup) at a step, or inside the
# RNG-state write of a given checkpoint save.
KILLER = str(REPO / "tests" / "hooked_train.py")


def command(zoo, out, baseline_stage1):
    return train_cmd(zoo, out, stage=2, extra=[
        "--pretrain_mm_mlp_adapter", str(baseline_stage1 / "mm_projector.bin"), "--max_steps", "8",
        "--save_strategy", "steps", "--save_steps", "2", "--learning_rate", "1e-3"])


def test_killed_run_resumes_and_continues_the_loss_curve(zoo, baseline_stage1, tmp_path):
    reference = tmp_path / "reference"
    in_process(command(zoo, reference, baseline_stage1))

    out = tmp_path / "killed"
    cmd = command(zoo, out, baseline_stage1)
    killed = run([PY, KILLER] + cmd[3:], env={"KILL_AT_STEP": "5"}, check=False)
    assert killed.returncode == 137
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not (out / "model.safetensors").exists()

    # a setting that changes the model is refused by name; the batch size may change
    changed = [a if a != "1e-3" else "2e-3" for a in cmd]
    with pytest.raises(RunConfigError, match="--learning_rate: 0.001 -> 0.002"):
        in_process(changed)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    resumed = in_process_logged(cmd)  # the very same command
    assert "resuming from" in resumed and "checkpoint-4" in resumed
    ref, got = losses(reference), losses(out)
    assert sorted(got) == list(range(1, 9))
    for step in range(1, 9):
        assert abs(ref[step] - got[step]) < 1e-4, (step, ref[step], got[step])


def test_kill_during_a_save_leaves_no_half_written_checkpoint(zoo, baseline_stage1, tmp_path):
    out = tmp_path / "killed_in_save"
    cmd = command(zoo, out, baseline_stage1)
    killed = run([PY, KILLER] + cmd[3:], env={"KILL_IN_SAVE_AT": "4"}, check=False)
    assert killed.returncode == 137
    assert (out / "tmp-checkpoint-4").is_dir() and not (out / "checkpoint-4").exists()
    resumed = in_process_logged(cmd)
    assert "checkpoint-2" in resumed.split("resuming from", 1)[1].splitlines()[0]
    assert not list(out.glob("tmp-checkpoint-*"))
    assert (out / "model.safetensors").is_file() and (out / "checkpoint-8").is_dir()
