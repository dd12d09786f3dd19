"""Checkpoints cross the transformers lines: what this line trains loads and chats under the other line
(4.57 <-> 5.x), with the same logits, template ids, labels, saved layout and greedy chat. `make test` runs the
suite on both lines and points LLAVA_DPA_OTHER_PYTHON at the other line's interpreter, so both directions are
run. Each line's interpreter probes all four checkpoints in one process (tests/cross_line_probe.py)."""
import os
import subprocess

import pytest
import torch
import transformers

from conftest import NEAR_TIE, PY, REPO, run

OTHER = os.environ.get("LLAVA_DPA_OTHER_PYTHON")
pytestmark = [pytest.mark.skipif(not OTHER, reason="LLAVA_DPA_OTHER_PYTHON names the other transformers line's "
                                                   "python (make test sets it)"),
              pytest.mark.xdist_group("dpa_adapters")]
PROBE = str(REPO / "tests" / "cross_line_probe.py")
KINDS = ("baseline", "dpa", "lora", "qlora")
#: fp32 logits of one checkpoint on the two lines (other kernels and module code, the same weights)
LOGIT_TOLERANCE = 1e-4


def other_version() -> str:
    out = subprocess.run([OTHER, "-c", "import transformers; print(transformers.__version__)"], capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


@pytest.fixture(scope="module")
def probed(zoo, baseline_stage2, dpa_stage2, dpa_adapters, tmp_path_factory):
    """kind -> (this line's probe, the other line's probe): one probe process per interpreter."""
    folder = tmp_path_factory.mktemp("cross_line")
    specs = [f"baseline={baseline_stage2}", f"dpa={dpa_stage2}",
             f"lora={dpa_adapters[16][0]},{zoo['qwen3_lm']}", f"qlora={dpa_adapters[4][0]},{zoo['qwen3_lm']}"]
    image = f"{zoo['images']}/img_000.png"
    results = []
    for python, name in ((PY, "here.pt"), (OTHER, "there.pt")):
        run([python, PROBE, folder / name, image, *specs], timeout=900)
        results.append(torch.load(folder / name, weights_only=True))
    return {kind: (results[0][kind], results[1][kind]) for kind in KINDS}


def assert_same_greedy_chat(here, there):
    """Turn by turn, step by step: the logits agree within LOGIT_TOLERANCE, and the tokens are equal wherever the
    top two logits are clearly apart; after the two lines part at a near-tie nothing is comparable."""
    for turn, (a, b) in enumerate(zip(here, there)):
        assert torch.equal(a["prompt_ids"], b["prompt_ids"]), turn
        for step, (ta, tb) in enumerate(zip(a["tokens"], b["tokens"])):
            la, lb = a["logits"][step], b["logits"][step]
            assert (la - lb).abs().max().item() <= LOGIT_TOLERANCE, (turn, step)
            top = la.topk(2).values
            if (top[0] - top[1]).item() > NEAR_TIE:
                assert ta == tb, (turn, step)
            elif ta != tb:
                return
        assert a["tokens"] == b["tokens"], turn
    assert len(here) == len(there) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_a_checkpoint_of_this_line_loads_and_chats_on_the_other(kind, probed):
    assert other_version().split(".")[0] != transformers.__version__.split(".")[0], "the other python is this line"
    here, there = probed[kind]
    assert torch.equal(here["prompt_ids"], there["prompt_ids"])
    assert torch.equal(here["train_ids"], there["train_ids"]) and torch.equal(here["train_labels"], there["train_labels"])
    assert here["layout"] == there["layout"] and len(here["layout"]) > 10
    assert here["logits"].shape == there["logits"].shape
    assert (here["logits"] - there["logits"]).abs().max().item() <= LOGIT_TOLERANCE
    assert_same_greedy_chat(here["chat"], there["chat"])
