"""`llava-dpa export-hf`: every checkpoint kind of the tiny zoo as a transformers model, loaded with
AutoModelForImageTextToText / AutoProcessor (trust_remote_code) in a process where llava and llava_dpa cannot be
imported (tests/export_hf_probe.py), against the LLaVA path's own logits and greedy tokens; the export of one
transformers line loaded by the other; refusals; the CLI."""
from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, built_once
from PIL import Image
from test_official_pipeline import BASELINE as OFFICIAL_BASELINE
from test_official_pipeline import official  # noqa: F401  (the official pipeline's trained pair, a fixture)

from llava_dpa.export import hf as export

PROBE = REPO / "tests" / "export_hf_probe.py"
TOLERANCE = 1e-5
ON_4 = __import__("transformers").__version__.startswith("4.")
#: the other transformers line's interpreter: LLAVA_DPA_OTHER_PYTHON (as `make test-line` sets it), else its venv here
OTHER_PYTHON = Path(os.environ.get("LLAVA_DPA_OTHER_PYTHON") or
                    REPO / (".venv-tf5" if ON_4 else ".venv") / "bin" / "python")

#: the LLaVA path's prompts for export_hf_probe.cases(): what LLaVA's CLI sends (<image>\n before the question)
PROMPTS = {"single": [("<image>\nWhat color is the shape?", None)],
           "multi_image": [("Look: <image>\nand then <image>\nWhich one is larger?", None)],
           "multi_turn": [("<image>\nWhat color is the shape?", "red"), ("And its shape?", None)]}
IMAGES = {"single": ["a"], "multi_image": ["a", "b"], "multi_turn": ["a"]}


@pytest.fixture(scope="module")
def images(zoo, tmp_path_factory):
    """Two images of different sizes (native resolution gives them different token counts)."""
    folder = tmp_path_factory.mktemp("export_images")
    a, b = folder / "a.png", folder / "b.png"
    shutil.copyfile(Path(zoo["images"]) / "img_000.png", a)
    Image.open(Path(zoo["images"]) / "img_001.png").convert("RGB").resize((48, 24)).save(b)
    return str(a), str(b)


def llava_reference(checkpoint, base, images, new_tokens=6) -> dict:
    """The LLaVA path: the project's loader, LLaVA's conversation template, tokenizer_image_token, process_images,
    the model's forward and generate."""
    from llava.conversation import conv_templates
    from llava.mm_utils import process_images, tokenizer_image_token

    from llava_dpa.loading import load_pretrained_model

    tokenizer, model, processor, _ = load_pretrained_model(str(checkpoint), base, None, device="cpu",
                                                           dtype=torch.float32)
    files = dict(zip("ab", images))
    out = {}
    for name, turns in PROMPTS.items():
        conv = conv_templates[model.config.conv_version].copy()
        for question, answer in turns:
            conv.append_message(conv.roles[0], question)
            conv.append_message(conv.roles[1], answer)
        prompt = conv.get_prompt()
        ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")[None]
        pictures = [Image.open(files[k]).convert("RGB") for k in IMAGES[name]]
        pixels = process_images(pictures, processor, model.config)
        sizes = [p.size for p in pictures]
        with torch.no_grad():
            logits = model(input_ids=ids, images=pixels, image_sizes=sizes).logits[0].float()
            tokens = model.generate(ids, images=pixels, image_sizes=sizes, max_new_tokens=new_tokens, do_sample=False,
                                    use_cache=True)[0].tolist()
        out[name] = {"prompt": prompt, "ids": ids[0], "logits": logits, "tokens": tokens}
    return out


def probe(folder, images, tmp_path, python=sys.executable) -> dict:
    """The export loaded by transformers alone (llava and llava_dpa refused) in a fresh process."""
    out = tmp_path / f"probe-{Path(python).parent.parent.name}.pt"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(python), str(PROBE), str(folder), str(out), *images], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-6000:]
    return torch.load(out, weights_only=True)


def _instruction_context_copy(dpa_stage2: Path, out: Path) -> Path:
    """The DPA checkpoint read with the perceiver's instruction context on (same weights; its config says so), as
    the LLaVA path then runs it."""
    out.mkdir(parents=True)
    for f in dpa_stage2.iterdir():
        if f.is_file() and f.name != "config.json":
            (out / f.name).symlink_to(f)
    config = json.loads((dpa_stage2 / "config.json").read_text())
    config["perceiver_instruction_context"] = True
    (out / "config.json").write_text(json.dumps(config))
    return out


CASES = ["baseline", "dpa", "dpa_lora", "dpa_instruction_context", "official_import", "official_baseline"]


@pytest.fixture(scope="module")
def checkpoints(request, zoo, tmp_path_factory):
    """kind -> (checkpoint, model_base), each built on first use from the session's fixtures."""
    def get(kind):
        if kind == "baseline":
            return request.getfixturevalue("baseline_stage2"), None
        if kind == "dpa":
            return request.getfixturevalue("dpa_stage2"), None
        if kind == "dpa_lora":
            return request.getfixturevalue("dpa_adapters")[16][0], zoo["qwen3_lm"]
        if kind == "dpa_instruction_context":
            dpa = request.getfixturevalue("dpa_stage2")
            return built_once(tmp_path_factory, "export_dpa_ic", lambda out: (out.rmdir(), _instruction_context_copy(
                dpa, out))), None
        if kind == "official_import":
            from test_serving import official_checkpoint

            return built_once(tmp_path_factory, "export_official_import",
                              lambda out: official_checkpoint(out / "ckpt")) / "ckpt", None
        if kind == "official_baseline":
            return request.getfixturevalue("official")[0] / OFFICIAL_BASELINE, None
        raise KeyError(kind)
    return get


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory):
    made = {}

    def get(kind):
        if kind not in made:
            checkpoint, base = checkpoints(kind)
            made[kind] = export.export_hf(checkpoint, tmp_path_factory.mktemp("hf") / kind, model_base=base,
                                          log=lambda *_: None)
        return made[kind]
    return get


@pytest.mark.xdist_group("dpa_adapters")
@pytest.mark.parametrize("kind", CASES)
def test_export_equals_llava_path(kind, checkpoints, exported, images, tmp_path):
    checkpoint, base = checkpoints(kind)
    folder = exported(kind)
    got = probe(folder, images, tmp_path)
    assert got["class"] == "LlavaDpaForConditionalGeneration"
    want = llava_reference(checkpoint, base, images)
    config = json.loads((folder / "config.json").read_text())
    for name, expected in want.items():
        result = got[name]
        # the chat template renders the LLaVA template's text; the ids are LLaVA's with each image's placeholders
        assert result["text"] == expected["prompt"], name
        ids = result["input_ids"].tolist()
        collapsed = [t for i, t in enumerate(ids) if t != config["image_token_id"] or
                     (i == 0 or ids[i - 1] != config["image_token_id"])]
        assert [(-200 if t == config["image_token_id"] else t) for t in collapsed] == expected["ids"].tolist(), name
        assert result["logits"].shape == expected["logits"].shape, name
        diff = (result["logits"] - expected["logits"]).abs().max().item()
        print(f"{kind} {name}: max |logit diff| {diff:.2e}")
        assert diff <= TOLERANCE, (kind, name, diff)
        # greedy generate with the KV cache: the LLaVA path's tokens, and the export's own uncached greedy tokens
        assert result["cached"] == expected["tokens"], (kind, name)
        assert result["uncached"][:len(result["cached"])] == result["cached"], (kind, name)


@pytest.mark.parametrize("kind", ["baseline", "dpa_instruction_context", "official_import"])
def test_export_loads_on_the_other_line(kind, exported, images, tmp_path):
    if not OTHER_PYTHON.is_file():
        pytest.skip(f"the other transformers line's venv ({OTHER_PYTHON}) is not set up")
    folder = exported(kind)
    here, there = probe(folder, images, tmp_path), probe(folder, images, tmp_path, python=str(OTHER_PYTHON))
    assert here["version"] != there["version"]
    for name in PROMPTS:
        assert torch.equal(here[name]["input_ids"], there[name]["input_ids"]), name
        diff = (here[name]["logits"] - there[name]["logits"]).abs().max().item()
        print(f"{kind} {name}: saved on {here['version']}, loaded on {there['version']}: max |logit diff| {diff:.2e}")
        assert diff <= TOLERANCE, (kind, name, diff)
        assert here[name]["cached"] == there[name]["cached"], name


#: loads an export as a user does; any question transformers asks on the terminal (its "Do you wish to run the
#: custom code?" prompt, which it swallows when unanswered) fails the load
NO_PROMPT = """
import builtins, sys
asked = []
def ask(prompt=""):
    asked.append(prompt)
    raise EOFError
builtins.input = ask
from transformers import AutoModelForImageTextToText, AutoProcessor
AutoModelForImageTextToText.from_pretrained(sys.argv[1], trust_remote_code=True)
AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
sys.exit(f"asked on the terminal: {asked}" if asked else 0)
"""


@pytest.mark.parametrize("line", ["this", "other"])
def test_loading_asks_nothing_with_trust_remote_code(line, exported, tmp_path):
    python = sys.executable if line == "this" else OTHER_PYTHON
    if line == "other" and not OTHER_PYTHON.is_file():
        pytest.skip(f"the other transformers line's venv ({OTHER_PYTHON}) is not set up")
    folder = exported("dpa_instruction_context")  # a perceiver tokenizer too
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(python), "-c", NO_PROMPT, str(folder)], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, done.stderr[-4000:]


def test_export_folder_is_safetensors_with_a_card(exported):
    folder = exported("baseline")
    names = {p.name for p in folder.iterdir()}
    assert "model.safetensors" in names and not any(n.endswith((".bin", ".pt", ".pth", ".pkl")) for n in names)
    assert set(export.REMOTE_FILES) <= names and "processor_config.json" in names
    card = (folder / "README.md").read_text()
    assert "trust_remote_code" in card and "AutoModelForImageTextToText" in card and "baseline" in card
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"].startswith("modeling_llava_dpa.")
    assert not list(folder.parent.glob(f".{folder.name}.partial-*"))


@pytest.mark.fast
def test_remote_code_imports_only_torch_and_transformers():
    allowed = {"torch", "transformers", "__future__"} | set(sys.stdlib_module_names)
    for name in export.REMOTE_FILES:
        tree = ast.parse((export.REMOTE_DIR / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed, f"{name} imports {roots - allowed}"


@pytest.mark.fast
def test_refusals_name_the_problem_and_the_fix(tmp_path):
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    with pytest.raises(export.ExportError, match="export-llm"):
        export.export_hf(lm, tmp_path / "out1")
    with pytest.raises(export.ExportError, match="no config.json"):
        export.export_hf(tmp_path / "nothing", tmp_path / "out2")
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "config.json").write_text(json.dumps({"model_type": "llava_qwen3", "mm_vision_tower": "x"}))
    (lora / "adapter_config.json").write_text("{}")
    with pytest.raises(export.ExportError, match="--model-base"):
        export.export_hf(lora, tmp_path / "out3")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "llava_qwen3", "mm_vision_tower": "x"}))
    with pytest.raises(export.ExportError, match="no weights"):
        export.export_hf(empty, tmp_path / "out4")
    anyres = tmp_path / "anyres"
    anyres.mkdir()
    (anyres / "config.json").write_text(json.dumps({"model_type": "llava_qwen3", "mm_vision_tower": "x",
                                                    "image_aspect_ratio": "anyres"}))
    (anyres / "model.safetensors").write_bytes(b"")
    with pytest.raises(export.ExportError, match="anyres"):
        export.export_hf(anyres, tmp_path / "out5")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(export.ExportError, match="not empty"):
        export.export_hf(lm, taken)
    assert (taken / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out4").exists()


def test_failed_export_leaves_nothing(baseline_stage2, tmp_path, monkeypatch):
    def broken(folder, *args, **kwargs):
        (folder / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "write", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export.export_hf(baseline_stage2, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_cli_registers_export_hf(baseline_stage2, tmp_path):
    from llava_dpa.commands import export_hf as command

    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export-hf", str(baseline_stage2), str(tmp_path / "out"), "--dtype", "bfloat16"])
    args.func(args)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config.get("torch_dtype", config.get("dtype")) == "bfloat16" and config["model_type"] == "llava_dpa"
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "model.safetensors"), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118  (a safetensors handle)
