"""The analysis drivers on tiny checkpoints: MIR per layer (and during training), CKA maps, weight updates
against the base LLM, cost/FLOPs and the throughput bench."""
import csv
import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import llava_dpa  # noqa: F401
from conftest import train_cmd
from llava_dpa.analysis.frechet import NotEnoughTokens, layer_fd
from llava_dpa.analysis.probes import layer_states, open_view, read_probes
from llava_dpa.cli import main

TEXTS = ["a red square on a blue background", "the quick brown fox jumps over the lazy dog",
         "what color is the shape in the picture", "three small circles and one large triangle"]


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    path = tmp_path_factory.mktemp("texts") / "texts.txt"
    path.write_text("\n".join(TEXTS) + "\n")
    return str(path)


def test_probes_from_folder_and_llava_file(zoo, texts, tmp_path):
    from_folder = read_probes(zoo["images"], texts)
    from_file = read_probes(zoo["stage2_data"], texts, zoo["images"])
    assert len(from_folder) == 24 and from_folder[5].text == TEXTS[1] and from_folder[0].image.endswith("img_000.png")
    assert {p.image for p in from_file} <= {p.image for p in from_folder}
    assert read_probes(zoo["images"], texts, limit=5, seed=3) == read_probes(zoo["images"], texts, limit=5, seed=3)
    assert read_probes(zoo["images"], texts, limit=5, seed=3) != read_probes(zoo["images"], texts, limit=5, seed=4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        read_probes(str(tmp_path / "empty"), texts)
    with pytest.raises(FileNotFoundError, match="pass --image-folder"):
        read_probes(zoo["stage2_data"], texts, str(tmp_path))


@pytest.fixture(scope="module")
def dpa_view(dpa_stage2):
    return open_view(str(dpa_stage2))


def test_streamed_mir_equals_the_in_memory_distance(dpa_view, zoo, texts):
    """Two streamed passes (norms, then moments) give the same FD as pooling every state in memory."""
    from llava_dpa.analysis.mir_probe import mir_per_layer

    probes = read_probes(zoo["images"], texts, limit=12, seed=0)
    result = mir_per_layer(dpa_view, probes)
    pooled = None
    for probe in probes:
        states, visual, text = layer_states(dpa_view, probe)
        assert visual.sum() > 0 and text.sum() > 0 and not (visual & text).any()
        if pooled is None:
            pooled = [([], []) for _ in states]
        for k, h in enumerate(states):
            pooled[k][0].append(h[visual])
            pooled[k][1].append(h[text])
    expected = [layer_fd(torch.cat(v), torch.cat(t)) for v, t in pooled]
    assert result["median_exact"] and len(result["fd"]) == dpa_view.model.config.num_hidden_layers
    assert result["fd"] == pytest.approx(expected, rel=1e-9)
    assert result == mir_per_layer(dpa_view, probes)  # deterministic
    with pytest.raises(NotEnoughTokens, match="at least 65 are needed"):
        mir_per_layer(dpa_view, probes[:1])


def test_no_visual_tokens_is_named(dpa_view, zoo, monkeypatch):
    import llava.constants

    from llava_dpa.analysis.probes import NoVisualTokens

    probe = read_probes(zoo["images"], None)[0]
    monkeypatch.setattr(llava.constants, "DEFAULT_IMAGE_TOKEN", "")  # a prompt without its <image>
    with pytest.raises(NoVisualTokens, match="placed no visual tokens"):
        layer_states(dpa_view, probe)


def test_analyze_mir_overlays_target_baseline_and_perceiver(dpa_stage2, baseline_stage2, zoo, texts, tmp_path):
    out = tmp_path / "mir"
    assert main(["analyze", "mir", str(dpa_stage2), str(baseline_stage2), str(dpa_stage2), "--component", "target",
                 "--component", "target", "--component", "perceiver", "--images", zoo["images"], "--texts", texts,
                 "--num-probes", "16", "--output", str(out)]) == 0
    rows = list(csv.DictReader((out / "mir.csv").open()))
    models = [r["model"] for r in rows]
    names = [dpa_stage2.name, baseline_stage2.name, f"{dpa_stage2.name}:perceiver"]
    assert sorted(set(models)) == sorted(names) and models.count(names[0]) == 2
    results = json.loads((out / "mir.json").read_text())
    assert all(r["mir"] == pytest.approx(math.log10(sum(r["fd"]))) for r in results)
    assert (out / "mir.png").read_bytes()[:4] == b"\x89PNG"
    # a baseline has no perceiver
    assert main(["analyze", "mir", str(baseline_stage2), "--component", "perceiver", "--images", zoo["images"],
                 "--output", str(tmp_path / "x")]) == 2


def test_cka_maps(dpa_stage2, zoo, texts, tmp_path):
    out = tmp_path / "cka"
    assert main(["analyze", "cka", str(dpa_stage2), "--images", zoo["images"], "--texts", texts, "--num-probes", "8",
                 "--output", str(out)]) == 0
    data = json.loads((out / "similarity.json").read_text())[dpa_stage2.name]
    for modality in ("visual", "text"):
        m = torch.tensor(data["maps"][modality])
        assert torch.allclose(m, m.T) and torch.allclose(m.diagonal(), torch.ones(len(m)))
        assert data["metric"][modality] in ("linear CKA", "debiased linear CKA")
    assert (out / "similarity.png").read_bytes()[:4] == b"\x89PNG"
    assert torch.load(out / f"{dpa_stage2.name}_visual.pt", weights_only=True).shape == (2, 2)


def _copy_llm(src, dst, edit=None, dtype=None):
    shutil.copytree(src, dst)
    weights = load_file(str(dst / "model.safetensors"))
    if edit:
        edit(weights)
    if dtype:
        weights = {k: v.to(dtype) for k, v in weights.items()}
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_update_density_and_intrusion_sanity(zoo, tmp_path, monkeypatch):
    from llava_dpa.analysis.update_report import WeightReader, compare

    base = WeightReader(zoo["qwen3_lm"])
    names = base.names()
    total = sum(base.get(n).numel() for n in names)
    assert "lm_head.weight" not in names  # tied: counted once
    same = WeightReader(str(_copy_llm(zoo["qwen3_lm"], tmp_path / "same")))
    r, = compare(base, [same], [1e-5], [0.5], 10)
    assert r["density"]["1e-05"]["total"] == 0 and r["intrusion"]["0.5"]["total"] == 0 and r["parameters"] == total

    target = "model.layers.0.mlp.down_proj.weight"

    def perturb(w):
        flat = w[target].view(-1)
        flat[: flat.numel() // 4] += 1e-3  # exactly a quarter of one matrix moves by more than tau
        u = torch.zeros(w["model.layers.1.self_attn.q_proj.weight"].shape[0])
        u[0] = 1.0
        v = torch.zeros(w["model.layers.1.self_attn.q_proj.weight"].shape[1])
        v[1] = 1.0
        w["model.layers.1.self_attn.q_proj.weight"] += 100.0 * torch.outer(u, v)  # rank 1, above the top-10

    tuned = WeightReader(str(_copy_llm(zoo["qwen3_lm"], tmp_path / "tuned", perturb)))
    svd_calls = []
    real_svd = torch.linalg.svd
    monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: svd_calls.append(1) or real_svd(*a, **k))
    r, again = compare(base, [tuned, tuned], [1e-5, 1e-2], [0.5], 10)
    assert len(svd_calls) == 14 + 2 * 14 and again["density"] == r["density"]  # each base SVD once
    changed = base.get(target).numel() // 4
    assert r["density"]["1e-05"]["down_proj"] == pytest.approx(changed / (base.get(target).numel() * 2), rel=1e-6)
    assert r["density"]["1e-05"]["total"] == pytest.approx((changed + 1) / total, rel=1e-9)  # + the rank-1 entry
    assert r["density"]["0.01"]["down_proj"] == 0
    assert r["intrusion"]["0.5"]["total"] == 1 and r["intrusion"]["0.5"]["q_proj"] == 1

    bf16 = WeightReader(str(_copy_llm(zoo["qwen3_lm"], tmp_path / "bf16", dtype=torch.bfloat16)))
    with pytest.raises(TypeError, match="dtypes differ"):
        compare(base, [bf16], [1e-5], [0.5], 10)


def test_updates_of_vlm_and_lora_checkpoints_against_the_base(zoo, baseline_stage2, tmp_path):
    """VLM names map onto the base LLM's (projector and tower left out); a LoRA checkpoint is merged first."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path / "updates"
    assert main(["analyze", "updates", "--base", zoo["qwen3_lm"], "--tuned", str(baseline_stage2),
                 "--tau", "1e-5,1e-3", "--epsilon", "0.5,0.9", "--output", str(out)]) == 0
    result = json.loads((out / "updates.json").read_text())[0]
    from llava_dpa.analysis.update_report import WeightReader

    base = WeightReader(zoo["qwen3_lm"])
    assert result["parameters"] == sum(base.get(n).numel() for n in base.names())
    assert set(result["density"]) == {"1e-05", "0.001"} and set(result["intrusion"]) == {"0.5", "0.9"}
    assert 0 < result["density"]["1e-05"]["total"] <= 1

    lora = tmp_path / "lora"
    llm = AutoModelForCausalLM.from_pretrained(zoo["qwen3_lm"])
    peft_model = get_peft_model(llm, LoraConfig(r=1, lora_alpha=1, target_modules=["q_proj"], layers_to_transform=[0]))
    layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        layer.lora_A["default"].weight.zero_()[0, 0] = 1.0
        layer.lora_B["default"].weight.zero_()[0, 0] = 100.0
    peft_model.save_pretrained(lora)
    shutil.copy(baseline_stage2 / "config.json", lora / "config.json")
    state = load_file(str(baseline_stage2 / "model.safetensors"))
    torch.save({k: v for k, v in state.items() if "mm_projector" in k}, lora / "non_lora_trainables.bin")
    for f in baseline_stage2.glob("*"):
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, lora)
    assert main(["analyze", "updates", "--base", zoo["qwen3_lm"], "--tuned", str(lora), "--output", str(out)]) == 0
    merged = json.loads((out / "updates.json").read_text())[0]
    assert merged["density"]["1e-05"]["total"] == pytest.approx(1 / result["parameters"])  # one entry moved
    assert merged["density"]["1e-05"]["q_proj"] > 0 and merged["intrusion"]["0.5"] == {"q_proj": 1, "k_proj": 0,
        "v_proj": 0, "o_proj": 0, "gate_proj": 0, "up_proj": 0, "down_proj": 0, "total": 1}


def test_cost_flops_and_sizes():
    from llava_dpa.analysis.cost import PRESETS, count
    from llava_dpa.analysis.flops import lm_forward, training_flops

    # linear FLOPs = 2 x (non-embedding, non-norm weights) x tokens, against the meta-device count
    c = PRESETS["qwen3-0.6b"]
    weights = count("qwen3-0.6b") - c["vocab_size"] * c["hidden_size"]
    norms = c["num_hidden_layers"] * (2 * c["hidden_size"] + 2 * c["head_dim"]) + c["hidden_size"]
    attention = 4 * c["num_hidden_layers"] * 100 ** 2 * c["num_attention_heads"] * c["head_dim"]
    assert lm_forward("qwen3-0.6b", 100, head=False) - attention == 2 * (weights - norms) * 100
    f = training_flops("qwen3-4b", text_tokens=512)
    assert f["tokens"]["visual"] == 256
    assert f["dpa"]["stage2"]["target"] == 3 * f["dpa"]["forward"]["target"] == f["baseline"]["stage2"]["target"]
    extra = sum(f["dpa"]["forward"][k] for k in ("perceiver_projector", "perceiver_lm", "alignment_projector"))
    assert f["dpa"]["forward"]["total"] - f["baseline"]["forward"]["total"] == pytest.approx(
        extra - f["baseline"]["forward"]["baseline_projector"])
    assert 1.0 < f["ratio_dpa_over_baseline"]["stage2"] < 1.1


def test_bench_checkpoints(dpa_stage2, baseline_stage2, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--dpa", str(dpa_stage2), "--baseline", str(baseline_stage2), "--device", "cpu",
                 "--dtype", "float32", "--repeats", "1", "--warmup", "0", "--decode-steps", "2",
                 "--text-tokens", "8", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    seconds = report["seconds"]
    assert report["cost_ratio_dpa_over_baseline"]["prefill"]["measured"] == pytest.approx(
        seconds["DPA"]["prefill"]["seconds"] / seconds["baseline"]["prefill"]["seconds"])
    assert report["parameters"]["DPA"] > report["parameters"]["baseline"]
    # stage 2 trains the towers in both modes (the perceiver but its LM head; the ViT); stage 1 the projector only
    for name in ("DPA", "baseline"):
        assert report["trainable"][name]["stage2"] > 5 * report["trainable"][name]["stage1"]
    assert seconds["DPA"]["prefill"]["components"]["perceiver_lm"] > 0 == seconds["baseline"]["prefill"]["components"]["perceiver_lm"]
    assert "train_stage1" in capsys.readouterr().out


@pytest.mark.parametrize("perceiver", ["llava", "qwen-vl"])
def test_bench_preset_runs_this_projects_classes_at_a_scale(tmp_path, capsys, perceiver):
    out = tmp_path / "bench.json"
    assert main(["bench", "--preset", "qwen3-4b", "--scale", "0.02", "--device", "cpu", "--dtype", "float32",
                 "--image-size", "56", "--repeats", "1", "--warmup", "0", "--decode-steps", "2", "--text-tokens", "8",
                 "--perceiver", perceiver, "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["perceiver"] == perceiver
    prefill = report["seconds"]["DPA"]["prefill"]["components"]
    assert prefill["perceiver_lm"] > 0 and (prefill["perceiver_projector"] > 0) is (perceiver == "llava")
    printed = capsys.readouterr().out
    assert "built from this project's classes at scale 0.02" in printed
    rows = report["cost_ratio_dpa_over_baseline"]
    assert set(rows) == {"prefill", "decode", "train_stage2", "train_stage1"}
    for row in rows.values():  # the analytic ratio of the same configuration, and the quotient
        assert row["analytic"] > 0 and row["measured_over_analytic"] == pytest.approx(row["measured"] / row["analytic"])
    assert rows["train_stage2"]["analytic"] > 1 and rows["decode"]["analytic"] == 1.0
    parts = report["seconds"]["DPA"]["train_stage2"]["components"]
    assert set(parts) == {"vit", "perceiver_projector", "perceiver_lm", "projector", "target", "rest"}


def test_mir_callback_records_during_training(zoo, perceiver, dpa_stage1, texts, tmp_path):
    from llava_dpa.training.train import train

    out = tmp_path / "run"
    train(argv=train_cmd(zoo, out, stage=2, tower=str(perceiver), extra=[
        "--pretrain_mm_mlp_adapter", str(dpa_stage1 / "mm_projector.bin"), "--max_steps", "2",
        "--save_strategy", "steps", "--save_steps", "1", "--mir_probe_images", zoo["images"],
        "--mir_probe_texts", texts, "--mir_probe_count", "12"])[3:])
    rows = list(csv.DictReader((out / "mir_history.csv").open()))
    assert [r["step"] for r in rows] == ["1", "2"]
    assert all(float(r["mir"]) == pytest.approx(math.log10(float(r["fd_layer_1"]) + float(r["fd_layer_2"])),
                                                 abs=1e-5) for r in rows)
