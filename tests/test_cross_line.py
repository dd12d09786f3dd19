"""Checkpoints cross the transformers lines: what this line trains loads and chats under the other line
(4.57 <-> 5.x), with the same logits, template ids, labels and saved layout. `make test` runs the suite on
both lines and points LLAVA_DPA_OTHER_PYTHON at the other line's interpreter, so both directions are run."""
import os
import subprocess

import pytest
import torch
import transformers

from conftest import PY, REPO, run, train_cmd

OTHER = os.environ.get("LLAVA_DPA_OTHER_PYTHON")
pytestmark = pytest.mark.skipif(not OTHER, reason="LLAVA_DPA_OTHER_PYTHON names the other transformers line's "
                                                  "python (make test sets it)")
PROBE = str(REPO / "tests" / "cross_line_probe.py")


def other_version() -> str:
    out = subprocess.run([OTHER, "-c", "import transformers; print(transformers.__version__)"], capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


@pytest.fixture(scope="module")
def adapters(zoo, perceiver, dpa_stage1, tmp_path_factory):
    """A DPA LoRA and a DPA QLoRA checkpoint trained on this line."""
    made = {}
    for kind, flags in (("lora", []), ("qlora", ["--bits", "4"])):
        out = tmp_path_factory.mktemp(kind)
        run(train_cmd(zoo, out, stage=2, tower=str(perceiver), extra=[
            "--pretrain_mm_mlp_adapter", str(dpa_stage1 / "mm_projector.bin"), "--max_steps", "2",
            "--lora_enable", "True", "--lora_r", "8", "--lora_alpha", "16", *flags]))
        made[kind] = out
    return made


def probe(python, checkpoint, out, image, base=None):
    run([python, PROBE, str(checkpoint), str(out), image] + (["--model-base", base] if base else []))
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("kind", ["baseline", "dpa", "lora", "qlora"])
def test_a_checkpoint_of_this_line_loads_and_chats_on_the_other(kind, zoo, baseline_stage2, dpa_stage2, adapters,
                                                                 tmp_path):
    assert other_version().split(".")[0] != transformers.__version__.split(".")[0], "the other python is this line"
    checkpoint = {"baseline": baseline_stage2, "dpa": dpa_stage2}.get(kind) or adapters[kind]
    base = zoo["qwen3_lm"] if kind in ("lora", "qlora") else None
    image = f"{zoo['images']}/img_000.png"
    here = probe(PY, checkpoint, tmp_path / "here.pt", image, base)
    there = probe(OTHER, checkpoint, tmp_path / "there.pt", image, base)
    assert torch.equal(here["prompt_ids"], there["prompt_ids"])
    assert torch.equal(here["train_ids"], there["train_ids"]) and torch.equal(here["train_labels"], there["train_labels"])
    assert here["layout"] == there["layout"] and len(here["layout"]) > 10
    assert here["logits"].shape == there["logits"].shape
    assert (here["logits"] - there["logits"]).abs().max().item() <= 1e-4
    from test_entry_points import chat

    extra = ["--model-base", base] if base else []
    questions = ["What color is the shape?", "What shape is it?"]
    _, mine = chat(checkpoint, image, questions, extra)
    _, theirs = chat(checkpoint, image, questions, extra, python=OTHER)
    assert len(theirs) == 2 and [t["outputs"] for t in theirs] == [t["outputs"] for t in mine]
