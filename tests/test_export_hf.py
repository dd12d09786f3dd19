"""`llava-dpa export-hf`: every checkpoint kind the project trains as a transformers model, loaded with
AutoModelForImageTextToText / AutoProcessor (trust_remote_code) in a process where llava and llava_dpa cannot be
imported (tests/export_hf_probe.py), against the LLaVA path's own logits and greedy tokens; the batched, padded
processor path against each row alone; the labels path against transformers' own causal-LM loss; the export of
one transformers line loaded by the other; every refusal; the CLI.

Kinds: the session's CLIP baseline, DPA (LLaVA-format perceiver with the Qwen2.5-VL ViT; LoRA; instruction
context with --dpa_select_layer), the imported official release (Qwen-VL-native perceiver) and the official
baseline (Qwen2.5-VL at native resolution), and, built here by one training step each without stage 1 (a seeded
projector): SigLIP with a LLaMA target (llama_3) and a large-MLP projector, SigLIP2, Qwen2.5-VL at fixed tiles,
and DPA whose LLaVA-format perceiver has a SigLIP ViT read at its second-to-last layer (LLaMA target)."""
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
from conftest import PY, REPO, assert_same_greedy, built_once, in_process, train_cmd
from PIL import Image
from test_official_pipeline import BASELINE as OFFICIAL_BASELINE
from test_official_pipeline import official  # noqa: F401  (the official pipeline's trained pair, a fixture)

from llava_dpa.export import hf as export

PROBE = REPO / "tests" / "export_hf_probe.py"
TOLERANCE = 1e-5
#: a padded batch computes each row with other shapes (and masked attention) than the row alone: float noise only
BATCH_TOLERANCE = 1e-4
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
    the model's forward and generate. Also its model and tokenizer (under "judge"), which judge where two greedy
    answers part (`same_greedy`)."""
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
        out[name] = {"prompt": prompt, "ids": ids[0], "logits": logits, "tokens": tokens, "pixels": pixels,
                     "sizes": sizes}
    out["judge"] = (model, tokenizer)
    return out


def same_greedy(reference: dict, name: str, a: list[int], b: list[int]) -> None:
    """Two greedy continuations (token ids) of case `name`, computed on different numeric paths, are equal or part
    at a near-tie of the LLaVA path's logits (conftest.assert_same_greedy; its model equals the export's to 1e-5)."""
    model, tokenizer = reference["judge"]
    case = reference[name]
    a, b = (tokenizer.decode(ids, skip_special_tokens=False) for ids in (a, b))
    assert_same_greedy(model, tokenizer, case["ids"], a, b, images=case["pixels"], image_sizes=case["sizes"])


def probe(folder, images, tmp_path, python=sys.executable) -> dict:
    """The export loaded by transformers alone (llava and llava_dpa refused) in a fresh process."""
    out = tmp_path / f"probe-{Path(python).parent.parent.name}.pt"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(python), str(PROBE), str(folder), str(out), *images], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-6000:]
    return torch.load(out, weights_only=True)


def _instruction_context_copy(dpa_stage2: Path, out: Path) -> Path:
    """The DPA checkpoint read with the perceiver's instruction context on and its features from the perceiver
    LM's second-to-last layer (--dpa_select_layer -2): same weights, its config says so, as the LLaVA path then
    runs it."""
    return _config_copy(dpa_stage2, out, perceiver_instruction_context=True, dpa_select_layer=-2)


def _config_copy(checkpoint: Path, out: Path, **changes) -> Path:
    """`checkpoint` with its files linked and its config.json changed by `changes` (a key set to None is removed)."""
    out.mkdir(parents=True)
    for f in checkpoint.iterdir():
        if f.name != "config.json":
            (out / f.name).symlink_to(f, target_is_directory=f.is_dir())
    config = json.loads((checkpoint / "config.json").read_text())
    config.update(changes)
    (out / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return out


def _siglip2_vit(out: Path) -> None:
    """A tiny SigLIP2 (NaFlex) ViT folder read at a fixed 32-pixel tile (the zoo has none): 16 patches of 8."""
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    with torch.random.fork_rng():
        torch.manual_seed(0)
        config = Siglip2VisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                     patch_size=8, num_patches=16)
        Siglip2VisionModel(config).save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps({"tile_size": 32}))


def _siglip_perceiver(zoo, out: Path) -> None:
    """A LLaVA-format perceiver on the zoo's SigLIP ViT (its second-to-last layer) and second Qwen3 LM."""
    in_process([PY, "-m", "llava_dpa.cli", "make-perceiver", "--vision", zoo["siglip"], "--language-model",
                zoo["qwen3_lm_b"], "--select-layer", "-2", "--output", str(out), "--seed", "0"])


#: kind -> (its tower, given the zoo and a builder of shared folders; target LM; extra flags) of the checkpoints
#: built here: one stage-2 step each, without stage 1 (the projector seeded from --seed). Cheap, and every part
#: the run trains leaves the zoo's weights.
ONE_STEP = {
    "siglip_llama_large_mlp": (lambda zoo, shared: zoo["siglip"], "llama_lm",
                               ["--mm_projector_type", "large_mlp", "--mm_projector_width", "96",
                                "--mm_projector_depth", "3"]),
    "siglip2": (lambda zoo, shared: str(shared("export_siglip2_vit", _siglip2_vit)), "qwen3_lm", []),
    "qwen_vit_tiles": (lambda zoo, shared: zoo["qwen2_5_vl_vit"], "qwen3_lm", []),
    "dpa_siglip_llama": (lambda zoo, shared: str(shared("export_perceiver_siglip",
                                                         lambda out: _siglip_perceiver(zoo, out))),
                         "llama_lm", ["--dpa_select_layer", "-2"]),
}
CASES = ["baseline", "dpa", pytest.param("dpa_lora", marks=pytest.mark.xdist_group("dpa_adapters")),
         "dpa_instruction_context", "official_import", "official_baseline", *ONE_STEP]


@pytest.fixture(scope="module")
def checkpoints(request, zoo, tmp_path_factory):
    """kind -> (checkpoint, model_base), each built on first use from the session's fixtures or, for ONE_STEP's
    kinds, once per session (shared by the xdist workers)."""
    def shared(name, build):
        return built_once(tmp_path_factory, name, build)

    def get(kind):
        if kind == "baseline":
            return request.getfixturevalue("baseline_stage2"), None
        if kind == "dpa":
            return request.getfixturevalue("dpa_stage2"), None
        if kind == "dpa_lora":
            return request.getfixturevalue("dpa_adapters")[16][0], zoo["qwen3_lm"]
        if kind == "dpa_instruction_context":
            dpa = request.getfixturevalue("dpa_stage2")
            return shared("export_dpa_ic", lambda out: (out.rmdir(), _instruction_context_copy(dpa, out))), None
        if kind == "official_import":
            return request.getfixturevalue("official_import"), None  # the session's import (read-only)
        if kind == "official_baseline":
            return request.getfixturevalue("official")[0] / OFFICIAL_BASELINE, None
        if kind in ONE_STEP:
            tower, lm, extra = ONE_STEP[kind]
            tower = tower(zoo, shared)
            return shared(f"export_{kind}", lambda out: in_process(train_cmd(
                zoo, out, stage=2, lm=lm, tower=tower, extra=["--max_steps", "1", *extra]))), None
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


@pytest.fixture(scope="module")
def probed(exported, images, tmp_path_factory):
    """(kind, interpreter) -> what the export computes there (export_hf_probe.py), once per worker."""
    made = {}

    def get(kind, python=sys.executable):
        if (kind, str(python)) not in made:
            made[kind, str(python)] = probe(exported(kind), images, tmp_path_factory.mktemp("probe"), python=python)
        return made[kind, str(python)]
    return get


@pytest.fixture(scope="module")
def references(checkpoints, images):
    """kind -> the LLaVA path's results (llava_reference), once per worker."""
    made = {}

    def get(kind):
        if kind not in made:
            made[kind] = llava_reference(*checkpoints(kind), images)
        return made[kind]
    return get


@pytest.mark.parametrize("kind", CASES)
def test_export_equals_llava_path(kind, exported, probed, references):
    """One image, two images of different sizes in one turn, a second turn: the chat template's text and ids, the
    logits and the greedy tokens (cached and uncached) are the LLaVA path's; then the batch and the loss."""
    folder = exported(kind)
    got, want = probed(kind), references(kind)
    assert got["class"] == "LlavaDpaForConditionalGeneration"
    config = json.loads((folder / "config.json").read_text())
    # the probe first asked for the target's hidden states: the embeddings and one per layer
    assert got["hidden_states"] == config["text_config"]["num_hidden_layers"] + 1, kind
    for name in PROMPTS:
        result, expected = got[name], want[name]
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
        same_greedy(want, name, result["cached"], expected["tokens"])
        same_greedy(want, name, result["uncached"][:len(result["cached"])], result["cached"])
    check_batch(kind, got)
    check_loss(kind, got)


def check_batch(kind: str, got: dict) -> None:
    """The probe's batch (its "single" and "multi_image" conversations: different lengths, one and two images),
    padded on either side: each row's ids and logits at its real tokens are those the row gives alone."""
    for side, batch in got["batch"].items():
        # the shorter row is padded, on the side asked for
        assert batch["mask"][0, 0 if side == "left" else -1] == 0 and bool(batch["mask"][1].all()), (kind, side)
        for row, name in enumerate(("single", "multi_image")):
            alone = got[name]
            assert torch.equal(batch["input_ids"][row], alone["input_ids"]), (kind, side, name)
            diff = (batch["logits"][row] - alone["logits"]).abs().max().item()
            print(f"{kind} batch padded on the {side}, {name}: max |logit diff| {diff:.2e}")
            assert diff <= BATCH_TOLERANCE, (kind, side, name, diff)


def check_loss(kind: str, got: dict) -> None:
    """model(labels=...).loss is transformers' own causal-LM loss on the model's logits (its shift, -100 ignored);
    with the Trainer's `num_items_in_batch` it is the summed loss over that count."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    for side, batch in got["batch"].items():
        logits, labels = batch["all_logits"], batch["labels"]
        vocab = logits.shape[-1]
        want = ForCausalLMLoss(logits, labels, vocab).item()
        assert batch["loss"].item() == pytest.approx(want, rel=1e-5, abs=1e-6), (kind, side)
        counted = ForCausalLMLoss(logits, labels, vocab, num_items_in_batch=torch.tensor(7)).item()
        assert batch["loss_of_7_items"].item() == pytest.approx(counted, rel=1e-5), (kind, side)
        labelled = int((labels[:, 1:] != -100).sum())
        assert batch["loss_of_7_items"].item() * 7 / labelled == pytest.approx(want, rel=1e-5), (kind, side)


#: one export per kind loaded on the other line: the SigLIP ViT (the vision_model level both lines name alike), the
#: LLaVA-format perceiver on it, and the Qwen-VL-native perceiver with its own tokenizer
CROSS_LINE = ["siglip_llama_large_mlp", "dpa_siglip_llama", "official_import"]


@pytest.mark.parametrize("kind", CROSS_LINE)
def test_export_loads_on_the_other_line(kind, probed, references):
    if not OTHER_PYTHON.is_file():
        pytest.skip(f"the other transformers line's venv ({OTHER_PYTHON}) is not set up")
    here, there = probed(kind), probed(kind, python=OTHER_PYTHON)
    assert here["version"] != there["version"]
    for name in PROMPTS:
        assert torch.equal(here[name]["input_ids"], there[name]["input_ids"]), name
        diff = (here[name]["logits"] - there[name]["logits"]).abs().max().item()
        print(f"{kind} {name}: saved on {here['version']}, loaded on {there['version']}: max |logit diff| {diff:.2e}")
        assert diff <= TOLERANCE, (kind, name, diff)
        if here[name]["cached"] != there[name]["cached"]:  # the LLaVA path judges only where they part
            same_greedy(references(kind), name, here[name]["cached"], there[name]["cached"])
    for side in ("left", "right"):
        for row in range(2):
            diff = (here["batch"][side]["logits"][row] - there["batch"][side]["logits"][row]).abs().max().item()
            assert diff <= BATCH_TOLERANCE, (kind, side, row, diff)


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


def _config_only(root: Path, name: str, weights=("model.safetensors",), **config) -> Path:
    """A checkpoint folder with a config.json (a LLaVA-Qwen3 DPA/baseline config changed by `config`; a key set
    to None is dropped) and empty weight files: what the export refuses from the config, before loading."""
    folder = root / name
    folder.mkdir()
    values = {"model_type": "llava_qwen3", "mm_vision_tower": "x", "conv_version": "qwen_3", **config}
    (folder / "config.json").write_text(json.dumps({k: v for k, v in values.items() if v is not None}))
    for weight in weights:
        (folder / weight).write_bytes(b"")
    return folder


#: (folder name, what _config_only is given, the words the refusal must hold)
CONFIG_REFUSALS = [
    ("lm", {"model_type": "qwen3", "mm_vision_tower": None}, "a language model, not a LLaVA checkpoint.*export-llm"),
    ("lora", {"weights": ("adapter_config.json",)}, "is a LoRA checkpoint: pass --model-base"),
    ("stage1", {"weights": ("mm_projector.bin",)}, r"is a projector-only \(stage-1\) checkpoint: pass --model-base"),
    ("empty", {"weights": ()}, r"no weights \(model.safetensors or pytorch_model.bin\)"),
    ("anyres", {"image_aspect_ratio": "anyres"}, "image_aspect_ratio 'anyres' is not exported"),
    ("anyres_max", {"image_aspect_ratio": "anyres_max_9"}, "image_aspect_ratio 'anyres_max_9' is not exported"),
    ("pad", {"image_aspect_ratio": "pad"}, "image_aspect_ratio 'pad' is not exported"),
    ("start_end", {"mm_use_im_start_end": True}, r"image start/end tokens \(mm_use_im_start_end\) are not exported"),
    ("vicuna", {"conv_version": "vicuna_v1"}, "conversation template 'vicuna_v1' has no chat template.*--version"),
    ("no_template", {"conv_version": None}, "conversation template None has no chat template"),
    ("stock_qwen_vl", {"mm_vision_tower_config": {"model_type": "llava_dpa_qwen_vl_perceiver",
                                                  "text_model": "qwen2_5_vl_text"}},
     "the Qwen-VL perceiver's LM 'qwen2_5_vl_text' is not exported"),
]


@pytest.mark.fast
@pytest.mark.parametrize(("name", "config", "message"), CONFIG_REFUSALS, ids=[r[0] for r in CONFIG_REFUSALS])
def test_checkpoints_the_export_cannot_run_are_refused_from_their_config(name, config, message, tmp_path):
    """Refused before the model loads, each naming the problem and the fix; nothing is left behind."""
    folder = _config_only(tmp_path, name, **config)
    with pytest.raises(export.ExportError, match=message):
        export.export_hf(folder, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


@pytest.mark.fast
def test_refusals_of_the_output_the_folder_and_the_dtype(tmp_path):
    with pytest.raises(export.ExportError, match="no config.json; pass a llava-dpa checkpoint folder"):
        export.export_hf(tmp_path / "nothing", tmp_path / "out")
    good = _config_only(tmp_path, "good")
    with pytest.raises(export.ExportError, match=r"--dtype 'int8': choose one of \['bfloat16', 'float16', 'float32'\]"):
        export.export_hf(good, tmp_path / "out", dtype="int8")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(export.ExportError, match="already exists and is not empty; choose a new output folder"):
        export.export_hf(good, taken)
    assert (taken / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good", "taken"]


@pytest.mark.fast
def test_parts_the_remote_code_cannot_build_are_refused():
    """The projector as the remote code's layer list (exact GELU, ReLU, Linear, identity), the ViT classes it builds,
    every weight placed: anything else is named."""
    from torch import nn

    assert export.projector_layers(nn.Sequential(nn.Linear(2, 3), nn.GELU(), nn.Linear(3, 4, bias=False)), "p") == (
        [{"type": "linear", "in": 2, "out": 3, "bias": True}, {"type": "gelu"},
         {"type": "linear", "in": 3, "out": 4, "bias": False}], False)
    with pytest.raises(export.ExportError, match="ckpt: projector Conv1d cannot be exported"):
        export.projector_layers(nn.Conv1d(2, 2, 1), "ckpt")
    with pytest.raises(export.ExportError, match=r"ckpt: projector layer GELU\(approximate='tanh'\) cannot be exported"):
        export.projector_layers(nn.Sequential(nn.Linear(2, 2), nn.GELU(approximate="tanh")), "ckpt")

    class OtherTower(nn.Module):
        pass

    with pytest.raises(export.ExportError, match="vision tower OtherTower cannot be exported"):
        export.vit_spec(OtherTower())
    with pytest.raises(export.ExportError, match="weight bias has no place in the exported model"):
        export.renamed_state(nn.Linear(2, 2), [("weight", "weight")])


def test_inconsistent_exports_are_refused_before_anything_is_written(baseline_stage2, tmp_path):
    """The exporter's own check of what it writes against the model the remote code builds (a dropped weight, a
    projector whose recorded shape is not its weights')."""
    import copy

    from llava_dpa.loading import load_pretrained_model

    tokenizer, model, _, _ = load_pretrained_model(str(baseline_stage2), None, None, device="cpu",
                                                   dtype=torch.float32)
    parts = export.describe(model, tokenizer, "ckpt")
    dropped = dict(parts, renames=[("model.mm_projector.0.", None), *parts["renames"]])
    with pytest.raises(export.ExportError, match=r"ckpt: the exported weights do not match the exported model "
                                                 r"\(missing \['mm_projector.0.bias', 'mm_projector.0.weight'\]"):
        export.write(tmp_path, model, tokenizer, dropped, torch.float32, source="ckpt")
    wider = copy.deepcopy(parts)
    wider["projector"][0]["out"] += 1
    wider["projector"][2]["in"] += 1
    with pytest.raises(export.ExportError, match=r"ckpt: mm_projector.0.weight has shape \(\d+, \d+\), the exported "
                                                 r"model expects"):
        export.write(tmp_path, model, tokenizer, wider, torch.float32, source="ckpt")
    assert list(tmp_path.iterdir()) == []


def test_a_qwen_vl_perceiver_without_its_tokenizer_is_refused(checkpoints, tmp_path):
    """The Qwen-VL perceiver re-encodes the text before each image with its own tokenizer: an imported release
    whose checkpoint lost it (and whose perceiver folder is gone) cannot be exported."""
    imported, _ = checkpoints("official_import")
    config = json.loads((imported / "config.json").read_text())
    bare = tmp_path / "bare"
    _config_copy(imported, bare, mm_vision_tower=f"dpa:{tmp_path / 'gone'}")
    for name in ("perceiver_tokenizer", "perceiver"):
        (bare / name).unlink()
    assert config["mm_vision_tower"].startswith("dpa:")
    with pytest.raises(export.ExportError, match=r"the Qwen-VL perceiver's tokenizer was not found \(perceiver_tokenizer/"):
        export.export_hf(bare, tmp_path / "out", log=lambda *_: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare"]


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
