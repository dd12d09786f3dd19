"""Checkpoints cross the transformers lines: what this line trains loads and chats under the other line
(4.57 <-> 5.x), with the same logits, template ids, labels, saved layout and greedy chat. `make test` runs the
suite on both lines and points LLAVA_DPA_OTHER_PYTHON at the other line's interpreter, so both directions are
run. Each line's interpreter probes all four checkpoints in one process (tests/cross_line_probe.py); the other line's
also re-runs this line's chat teacher-forced, so every turn is compared on one history even where the lines' own
greedy chats part at a near-tie."""
import functools
import os

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


@functools.cache
def other_version() -> str:
    return run([OTHER, "-c", "import transformers; print(transformers.__version__)"], timeout=120).stdout.strip()


@pytest.fixture(scope="module")
def probed(zoo, baseline_stage2, dpa_stage2, dpa_adapters, tmp_path_factory):
    """kind -> (this line's probe, the other line's probe): one probe process per interpreter; the other line's
    also re-runs this line's chat teacher-forced (`forced`)."""
    folder = tmp_path_factory.mktemp("cross_line")
    specs = [f"baseline={baseline_stage2}", f"dpa={dpa_stage2}",
             f"lora={dpa_adapters[16][0]},{zoo['qwen3_lm']}", f"qlora={dpa_adapters[4][0]},{zoo['qwen3_lm']}"]
    image = f"{zoo['images']}/img_000.png"
    run([PY, PROBE, folder / "here.pt", image, *specs], timeout=900)
    run([OTHER, PROBE, folder / "there.pt", image, "--follow", folder / "here.pt", *specs], timeout=900)
    here, there = (torch.load(folder / name, weights_only=True) for name in ("here.pt", "there.pt"))
    return {kind: (here[kind], there[kind]) for kind in KINDS}


def assert_same_step(la, lb, token, chosen, where):
    """One decoding step: the two lines' logits agree within LOGIT_TOLERANCE, and the other line's greedy choice
    (`chosen`) is this line's `token`, or at a near-tie (this line's top two logits within NEAR_TIE) the other of
    those two."""
    assert (la - lb).abs().max().item() <= LOGIT_TOLERANCE, where
    top = la.topk(2)
    if (top.values[0] - top.values[1]).item() > NEAR_TIE:
        assert chosen == token, where
    else:
        assert chosen in top.indices.tolist(), where


def assert_same_greedy_chat(here, there, forced):
    """Every step of every turn of this line's chat, on the other line fed the same history (`forced`: its logits
    on this line's prompts and tokens); and the other line's own greedy chat, turn by turn, step by step, equal
    to this one until the two part at a near-tie (after that its history differs, and `forced` carries on)."""
    assert len(here) == len(there) == len(forced) == 2
    parted = None
    for turn, (a, b, f) in enumerate(zip(here, there, forced)):
        assert f.shape[0] == len(a["tokens"]), turn
        for step, token in enumerate(a["tokens"]):
            assert_same_step(a["logits"][step], f[step], token, f[step].argmax().item(), ("forced", turn, step))
        if parted is not None:
            continue
        assert torch.equal(a["prompt_ids"], b["prompt_ids"]), turn
        for step, (ta, tb) in enumerate(zip(a["tokens"], b["tokens"])):
            assert_same_step(a["logits"][step], b["logits"][step], ta, tb, ("own", turn, step))
            if ta != tb:   # a near-tie (assert_same_step let it pass): the two histories differ from here on
                parted = turn, step
                break
        else:
            assert a["tokens"] == b["tokens"], turn


@pytest.mark.parametrize("kind", KINDS)
def test_a_checkpoint_of_this_line_loads_and_chats_on_the_other(kind, probed):
    assert other_version().split(".")[0] != transformers.__version__.split(".")[0], "the other python is this line"
    here, there = probed[kind]
    assert torch.equal(here["prompt_ids"], there["prompt_ids"])
    assert torch.equal(here["train_ids"], there["train_ids"]) and torch.equal(here["train_labels"], there["train_labels"])
    assert here["layout"] == there["layout"] and len(here["layout"]) > 10
    assert here["logits"].shape == there["logits"].shape
    assert (here["logits"] - there["logits"]).abs().max().item() <= LOGIT_TOLERANCE
    assert_same_greedy_chat(here["chat"], there["chat"], there["forced"])
