"""import-official against the official modeling code: the imported model's logits equal the logits the release's
own ForwardVisualTokensArchForCausalLM computed (tests/fixtures/official_dpa, made by make_fixture.py on
transformers 4.57.6 from the release at commit 1faf467) for a batch of two samples, the first with two images of
different sizes; fp32, max |diff| <= 1e-4. Both layouts the release writes are read."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import OFFICIAL_FIXTURE as FIXTURE
from conftest import official_import_args, official_merged_source


def split_source(merged: Path, tmp: Path) -> Path:
    """The layout seperate_model_mlp_func.py writes: perceiver/ (llava_baseline, model.vlm.*, lm_head), thinker/ (a
    stock Qwen3ForCausalLM) and linear_align_dim.pth."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    state = torch.load(merged / "pytorch_model.bin", weights_only=True)
    config = json.loads((merged / "config.json").read_text())
    root = tmp / "split"
    (root / "perceiver").mkdir(parents=True)
    perceiver = {k[len("model.perceiver."):]: v for k, v in state.items() if k.startswith("model.perceiver.")}
    torch.save(perceiver, root / "perceiver" / "pytorch_model.bin")
    (root / "perceiver" / "config.json").write_text(json.dumps(config["perceiver_config"]))
    thinker = Qwen3ForCausalLM(Qwen3Config.from_pretrained(FIXTURE / "configs" / "thinker"))
    thinker.load_state_dict({k[len("model.thinker."):]: v for k, v in state.items() if k.startswith("model.thinker.")})
    thinker.save_pretrained(root / "thinker")
    torch.save({k[len("model.linear_align_dim."):]: v for k, v in state.items()
                if k.startswith("model.linear_align_dim.")}, root / "linear_align_dim.pth")
    return root


def do_import(src: Path, out: Path, **extra) -> Path:
    from llava_dpa.official.importer import import_official

    return import_official(str(src), str(out), **official_import_args(**extra))


def logits_match(checkpoint: Path):
    from PIL import Image
    from safetensors.torch import load_file

    from llava_dpa.loading import load_pretrained_model

    tokenizer, model, processor, _ = load_pretrained_model(str(checkpoint), None, None, device="cpu", dtype=torch.float32)
    model.eval()
    inputs = json.loads((FIXTURE / "inputs.json").read_text())
    expected = load_file(str(FIXTURE / "expected.safetensors"))
    rows = expected["vocabulary_rows"]
    ids = [s["target_input_ids"] for s in inputs["samples"]]
    batch = torch.full((len(ids), max(map(len, ids))), tokenizer.pad_token_id)
    mask = torch.zeros_like(batch, dtype=torch.bool)
    for i, r in enumerate(ids):
        batch[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), True
    images = [processor.preprocess(Image.open(FIXTURE / "images" / f).convert("RGB"))["pixel_values"][0]
              for s in inputs["samples"] for f in s["images"]]
    assert len({im.shape for im in images}) == 3  # three image sizes, two in one sample
    with torch.no_grad():
        out = model(input_ids=batch, attention_mask=mask, images=images, image_sizes=[im.shape[1:] for im in images])
    for i, official_ids in enumerate(inputs["thinker_input_ids"]):
        want = expected[f"logits_{i}"]
        assert want.shape[0] == len(official_ids)  # N + 2 slots per image on both sides
        got = out.logits[i, :len(official_ids)]
        assert (got[:, rows] - want).abs().max().item() <= 1e-4
        others = got.clone()
        others[:, rows] = 0
        assert others.abs().max().item() == 0.0  # the zero vocabulary rows of the fixture
    return model


def test_target_ids_are_what_this_project_builds():
    from llava.conversation import conv_templates

    from llava_dpa.data.preprocess import preprocess
    from llava_dpa.data.tokenization import load_tokenizer

    tokenizer = load_tokenizer(FIXTURE / "tokenizer")
    for sample in json.loads((FIXTURE / "inputs.json").read_text())["samples"]:
        convo = [{"from": "human", "value": sample["question"]}, {"from": "gpt", "value": "A red square."}]
        ids = preprocess([convo], tokenizer, conv_templates["qwen_3"], has_image=True)["input_ids"][0].tolist()
        assert ids == sample["target_input_ids"]


def test_merged_layout_equals_the_official_model(official_import):
    """The session's import (conftest.official_import) of the merged layout."""
    out = official_import
    model = logits_match(out)
    tower = model.get_vision_tower()
    assert type(tower).__name__ == "QwenVLPerceiverTower" and model.config.mm_projector_type == "dpa_aligner"
    assert tower.spec["rotary"]["theta"] == 10000.0  # the checkpoint's perceiver_config, not the LM's 1e6
    for part in ("perceiver/config.json", "perceiver/model.safetensors", "thinker/config.json", "mm_projector.bin"):
        assert (out / part).is_file()
    assert not out.with_name("dpa.partial").exists()


def test_split_layout_equals_the_official_model(tmp_path):
    out = do_import(split_source(official_merged_source(tmp_path), tmp_path), tmp_path / "dpa", target_config=None)
    logits_match(out)


def test_other_layouts_are_refused_and_nothing_is_written(tmp_path):
    from llava_dpa.official.importer import OfficialImportError

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    with pytest.raises(OfficialImportError, match="not an official DPA checkpoint.*forward_visual_tokens_llava_arch"):
        do_import(bad, tmp_path / "out")
    src = official_merged_source(tmp_path)
    with pytest.raises(OfficialImportError, match="--vit-config"):
        do_import(src, tmp_path / "out", vit_config=None)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_imported_checkpoint_chats_answers_and_continues_training(official_import, tmp_path):
    """DPA-4B-init's route: the imported checkpoint chats and answers a question file through LLaVA's own entry
    points, and stage 1 then stage 2 continue from its perceiver, its target and its aligner."""
    from conftest import (
        PY,
        answer_questions,
        entry_point,
        in_process,
        in_process_logged,
    )

    out = official_import
    images = FIXTURE / "images"
    printed = entry_point("llava.serve.cli", "--model-path", out, "--image-file", images / "wide.png", "--device",
                          "cpu", "--max-new-tokens", "3", stdin="Describe the image.\n\n")
    assert printed.count("assistant:") == 1
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join(json.dumps({"question_id": i, "image": f, "text": "What is shown?"})
                                   for i, f in enumerate(("wide.png", "tall.png"))))
    rows = answer_questions(out, questions, images, tmp_path / "a.jsonl", "--max_new_tokens", "3")
    assert [row["question_id"] for row in rows] == [0, 1]
    from PIL import Image

    from llava_dpa.eval.lmms_model import LlavaDPA

    lmms = LlavaDPA(pretrained=str(out), device="cpu", dtype="float32")   # the lmms-eval model
    picture = Image.open(images / "tall.png").convert("RGB")

    class Request:
        args = ("What is shown?", {"max_new_tokens": 2, "do_sample": False}, lambda doc: [picture], 0, "t", "test")

    lmms.task_dict = {"t": {"test": [{}]}}
    assert len(lmms.generate_until([Request()])) == 1

    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"id": str(i), "image": f, "conversations": [
        {"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": "A red square."}]}
        for i, f in enumerate(("wide.png", "tall.png", "small.png", "wide.png"))]))
    common = ["--vision_tower", f"dpa:{out}/perceiver", "--version", "qwen_3", "--data_path", data, "--image_folder",
              images, "--mm_projector_type", "dpa_aligner", "--mm_vision_select_layer", "-1", "--max_steps", "2",
              "--per_device_train_batch_size", "2", "--save_strategy", "no", "--report_to", "none",
              "--dataloader_num_workers", "0", "--learning_rate", "1e-4", "--model_max_length", "512",
              "--mm_use_im_patch_token", "False", "--mm_use_im_start_end", "False"]
    in_process([PY, "-m", "llava.train.train_mem", "--model_name_or_path", out / "thinker", "--stage", "1",
                "--pretrain_mm_mlp_adapter", out / "mm_projector.bin", "--output_dir", tmp_path / "s1", *common])
    second = in_process_logged([PY, "-m", "llava.train.train_mem", "--model_name_or_path", out / "thinker", "--stage",
                                "2", "--pretrain_mm_mlp_adapter", tmp_path / "s1" / "mm_projector.bin", "--output_dir",
                                tmp_path / "s2", "--mm_vision_tower_lr", "2e-6", *common])
    assert "DPA perceiver, Qwen-VL native" in second and (tmp_path / "s2" / "model.safetensors").is_file()
