"""`llava-dpa import-official SRC --output DIR`: an official DPA checkpoint (DPA-4B, DPA-4B-init) as a
self-contained LLaVA-format DPA checkpoint, plus the parts to continue training from it.

Layouts read (docs/official_dpa.md):
- merged: config `forward_visual_tokens_llava_arch`, keys model.perceiver.model.vlm.{visual,language_model}.*,
  model.perceiver.lm_head.*, model.thinker.*, model.linear_align_dim.{0,2}.*;
- split (Multimodal_eval/seperate_model_mlp_func.py): perceiver/ (config `llava_baseline`, keys model.vlm.*,
  lm_head), thinker/ (a stock Qwen3ForCausalLM) and linear_align_dim.pth.
Weights are read with safetensors or `torch.load(weights_only=True)`; nothing from the source is executed.

The official config names its parts by path (vit_path, llm_path, thinker_name_or_path) and does not hold their
architectures. They are taken from folders the user names (--vit-config, --perceiver-lm-config,
--target-config), else from those recorded paths when they exist here, else (the two language models only)
inferred from weight shapes; the importer prints which. The perceiver LM's rotary frequencies come from the
checkpoint's `perceiver_config` (a Qwen2Config: rope_theta defaults to 10000 there), as the official model
builds them (modeling_llava_baseline.py 552-553); mrope_section comes from the ViT's Qwen2.5-VL config.

Output (written to DIR.partial, renamed to DIR when complete):
- DIR/: the LLaVA-format DPA checkpoint (llava.serve.cli, llava.eval.*, the lmms-eval model, stage-2 training);
- DIR/perceiver/: the Qwen-VL perceiver (`--vision_tower dpa:DIR/perceiver`);
- DIR/thinker/: the target LLM alone (`--model_name_or_path`);
- DIR/mm_projector.bin: the aligner as a LLaVA projector (`--pretrain_mm_mlp_adapter`).
The perceiver's LM head is not kept: the features never read it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from llava_dpa.data.native_resolution import OFFICIAL_PIXEL_LIMITS
from llava_dpa.data.tokenization import load_tokenizer
from llava_dpa.llava_integration.assemble import assemble
from llava_dpa.perceiver.qwen_vl import SPEC_TYPE, QwenVLPerceiver

MERGED_TYPE = "forward_visual_tokens_llava_arch"
SPLIT_PERCEIVER_TYPE = "llava_baseline"
#: the official training's image limits (PT/SFT scripts line 14; Qwen2-VL's min_pixels)
QWEN2_CONFIG_DEFAULTS = {"rope_theta": 10000.0, "hidden_size": 4096, "num_attention_heads": 32}


class OfficialImportError(ValueError):
    pass


# ---- reading the source -------------------------------------------------------------------------------------
def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def load_weights(folder: Path) -> dict:
    """Every weight file of a folder: safetensors, or .bin with weights_only=True (the official scripts save .bin)."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise OfficialImportError(f"{folder}: no *.safetensors or *.bin weight files")
    state = {}
    for f in files:
        state.update(load_file(str(f)) if f.suffix == ".safetensors" else torch.load(f, map_location="cpu", weights_only=True))
    return state


def read_source(src: Path) -> dict:
    """The parts of an official checkpoint: perceiver / thinker / aligner state dicts and the configs it holds."""
    config_path = src / "config.json"
    if config_path.is_file() and _json(config_path).get("model_type") == MERGED_TYPE:
        config = _json(config_path)
        state = load_weights(src)
        parts = {"perceiver": {}, "thinker": {}, "aligner": {}}
        for key, value in state.items():
            for prefix, part in (("model.perceiver.model.vlm.", "perceiver"), ("model.thinker.", "thinker"),
                                 ("model.linear_align_dim.", "aligner")):
                if key.startswith(prefix):
                    parts[part][key[len(prefix):]] = value
        missing = [p for p, s in parts.items() if not s]
        if missing:
            raise OfficialImportError(f"{src}: config says {MERGED_TYPE} but the weights lack the {missing} keys "
                                      f"(model.perceiver.model.vlm.*, model.thinker.*, model.linear_align_dim.*)")
        return {"layout": "merged", "perceiver_config": config.get("perceiver_config") or {}, "config": config,
                "thinker_config": None, **parts}
    perceiver, thinker, aligner = src / "perceiver", src / "thinker", src / "linear_align_dim.pth"
    if (perceiver / "config.json").is_file():
        missing = [str(p.name) for p in (thinker / "config.json", aligner) if not p.exists()]
        pconfig = _json(perceiver / "config.json")
        if pconfig.get("model_type") != SPLIT_PERCEIVER_TYPE:
            missing.append(f"perceiver/config.json with model_type {SPLIT_PERCEIVER_TYPE}")
        if missing:
            raise OfficialImportError(f"{src} looks like the official split layout but lacks {missing}")
        pstate = {k[len("model.vlm."):]: v for k, v in load_weights(perceiver).items() if k.startswith("model.vlm.")}
        if not pstate:
            raise OfficialImportError(f"{perceiver}: no model.vlm.* weights")
        return {"layout": "split", "perceiver_config": pconfig, "config": {}, "thinker_config": _json(thinker / "config.json"),
                "perceiver": pstate, "thinker": load_weights(thinker),
                "aligner": torch.load(aligner, map_location="cpu", weights_only=True)}
    found = config_path.is_file() and _json(config_path).get("model_type")
    raise OfficialImportError(
        f"{src} is not an official DPA checkpoint: expected config.json with model_type {MERGED_TYPE!r} (the merged "
        f"layout) or perceiver/, thinker/ and linear_align_dim.pth (the split layout of seperate_model_mlp_func.py); "
        f"found {'model_type ' + repr(found) if found else 'neither'}")


# ---- architectures ----------------------------------------------------------------------------------------------
def _folder_config(flag_value, recorded, what: str, flag: str, report: list) -> dict | None:
    for source, label in ((flag_value, flag), (recorded, "the path recorded in the checkpoint")):
        if source and (Path(source) / "config.json").is_file():
            report.append(f"{what}: {Path(source) / 'config.json'} ({label})")
            return _json(Path(source) / "config.json")
    return None


def infer_qwen3_config(state: dict, prefix: str, what: str, report: list) -> dict:
    """A Qwen3 config from weight shapes. Not inferable, and set to Qwen3's values: rms_norm_eps 1e-6,
    rope_theta 1e6, max_position_embeddings 40960."""
    embed = state[f"{prefix}embed_tokens.weight"]
    layers = 1 + max(int(k[len(prefix) + 7:].split(".")[0]) for k in state if k.startswith(prefix + "layers."))
    head_dim = state[f"{prefix}layers.0.self_attn.q_norm.weight"].shape[0]
    config = {"model_type": "qwen3", "vocab_size": embed.shape[0], "hidden_size": embed.shape[1],
              "num_hidden_layers": layers, "head_dim": head_dim,
              "num_attention_heads": state[f"{prefix}layers.0.self_attn.q_proj.weight"].shape[0] // head_dim,
              "num_key_value_heads": state[f"{prefix}layers.0.self_attn.k_proj.weight"].shape[0] // head_dim,
              "intermediate_size": state[f"{prefix}layers.0.mlp.gate_proj.weight"].shape[0],
              "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0, "max_position_embeddings": 40960,
              "tie_word_embeddings": "lm_head.weight" not in state}
    report.append(f"{what}: inferred from weight shapes ({layers} layers, width {embed.shape[1]}; rms_norm_eps, "
                  f"rope_theta and max_position_embeddings set to Qwen3's values)")
    return config


def _mrope_section(vit_config: dict) -> list[int]:
    text = vit_config.get("text_config") or vit_config
    for rope in (text.get("rope_scaling"), text.get("rope_parameters"), vit_config.get("rope_scaling")):
        if isinstance(rope, dict) and rope.get("mrope_section"):
            return list(rope["mrope_section"])
    raise OfficialImportError("the ViT's Qwen2.5-VL config has no rope_scaling.mrope_section; pass the full "
                              "Qwen2.5-VL config.json (e.g. Qwen2.5-VL-3B-Instruct's) with --vit-config")


def perceiver_spec(source: dict, vit_config: dict, lm_config: dict, tokens: dict) -> dict:
    pconfig = {**QWEN2_CONFIG_DEFAULTS, **source["perceiver_config"]}
    rope_scaling = pconfig.get("rope_scaling") or {}
    if rope_scaling.get("rope_type", rope_scaling.get("type", "default")) not in ("default", "mrope") or \
            pconfig.get("partial_rotary_factor", 1.0) != 1.0:
        raise OfficialImportError(f"the checkpoint's perceiver_config asks for rotary scaling {rope_scaling} / "
                                  f"partial_rotary_factor {pconfig.get('partial_rotary_factor')}, which this importer "
                                  f"does not reproduce")
    head_dim = pconfig.get("head_dim") or pconfig["hidden_size"] // pconfig["num_attention_heads"]
    vision = dict(vit_config.get("vision_config") or vit_config)
    vision.pop("model_type", None)
    vision["out_hidden_size"] = int(source["perceiver"]["visual.merger.mlp.2.weight"].shape[0])  # rebuilt (LB 559-570)
    text = {k: v for k, v in lm_config.items() if k not in ("architectures", "auto_map", "transformers_version")}
    text["vocab_size"] = int(source["perceiver"]["language_model.embed_tokens.weight"].shape[0])
    return {"model_type": SPEC_TYPE, "source_format": f"official DPA ({source['layout']} layout)",
            "text_model": "qwen3_mrope", "vision_config": vision, "text_config": text,
            "mrope_section": _mrope_section(vit_config),
            "rotary": {"head_dim": int(head_dim), "theta": float(pconfig["rope_theta"])}, **tokens}


def _tokenizer_dir(candidates, what: str, flag: str) -> Path:
    for c in candidates:
        if c and (Path(c) / "tokenizer_config.json").is_file():
            return Path(c)
    raise OfficialImportError(f"no {what} tokenizer found in {[str(c) for c in candidates if c]}; pass {flag} DIR")


# ---- writing ----------------------------------------------------------------------------------------------------
def import_official(src: str, output: str, *, vit_config: str | None = None, perceiver_lm_config: str | None = None,
                    target_config: str | None = None, target_tokenizer: str | None = None,
                    perceiver_tokenizer: str | None = None, perceiver_system_prompt: str | None = None,
                    log=print) -> Path:
    from safetensors.torch import save_file
    from transformers import Qwen3Config, Qwen3ForCausalLM


    src_path, out = Path(src), Path(output)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new --output")
    source = read_source(src_path)
    report = [f"source: {src_path} ({source['layout']} layout)"]
    pconfig = source["perceiver_config"]

    vit = _folder_config(vit_config, pconfig.get("vit_path"), "ViT (Qwen2.5-VL config)", "--vit-config", report)
    if vit is None:
        raise OfficialImportError("the ViT's architecture is not in the checkpoint: pass --vit-config DIR, a folder with "
                                  "the Qwen2.5-VL config.json the perceiver was built from (its vit_path: "
                                  f"{pconfig.get('vit_path')!r})")
    lm = _folder_config(perceiver_lm_config, pconfig.get("llm_path"), "perceiver LM", "--perceiver-lm-config", report) \
        or infer_qwen3_config(source["perceiver"], "language_model.", "perceiver LM", report)
    target = source["thinker_config"] and dict(source["thinker_config"])
    if target:
        report.append("target LLM: thinker/config.json (split layout)")
    else:
        target = _folder_config(target_config, source["config"].get("thinker_name_or_path"), "target LLM",
                                "--target-config", report) or infer_qwen3_config(source["thinker"], "model.", "target LLM", report)
    p_tok_dir = _tokenizer_dir([perceiver_tokenizer, src_path / "perceiver", src_path], "perceiver", "--perceiver-tokenizer")
    t_tok_dir = _tokenizer_dir([target_tokenizer, src_path / "thinker", src_path], "target", "--target-tokenizer")
    report.append(f"tokenizers: perceiver {p_tok_dir}, target {t_tok_dir}")
    p_tok, t_tok = load_tokenizer(p_tok_dir), load_tokenizer(t_tok_dir)
    tokens = {"image_token_id": p_tok.convert_tokens_to_ids("<|image_pad|>"),
              "vision_start_token_id": p_tok.convert_tokens_to_ids("<|vision_start|>"),
              "vision_end_token_id": p_tok.convert_tokens_to_ids("<|vision_end|>")}
    spec = perceiver_spec(source, vit, lm, tokens)
    report.append(f"perceiver rotary: theta {spec['rotary']['theta']:g}, head_dim {spec['rotary']['head_dim']} (from the "
                  f"checkpoint's perceiver_config), mrope_section {spec['mrope_section']} (from the ViT config)")

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        # the perceiver, in this project's Qwen-VL perceiver format
        pdir = partial / "perceiver"
        pdir.mkdir()
        pstate = source["perceiver"]  # visual.*, language_model.* (and, unused, nothing else)
        (pdir / "config.json").write_text(json.dumps(spec, indent=1))
        (pdir / "preprocessor_config.json").write_text(json.dumps(OFFICIAL_PIXEL_LIMITS))
        p_tok.save_pretrained(pdir)

        check = QwenVLPerceiver(spec)
        wanted = set(check.state_dict())
        missing = sorted(wanted - set(pstate))
        if missing:
            raise OfficialImportError(f"the perceiver weights lack {missing[:4]} for the architecture read above")
        save_file({k: pstate[k].contiguous() for k in wanted}, str(pdir / "model.safetensors"))
        # the target alone (a stock Qwen3)
        tdir = partial / "thinker"
        tconfig = Qwen3Config(**{k: v for k, v in target.items() if k not in ("model_type", "architectures",
                                                                               "transformers_version")})
        thinker = Qwen3ForCausalLM(tconfig)
        tstate = dict(source["thinker"])
        if tconfig.tie_word_embeddings:
            tstate.pop("lm_head.weight", None)
        result = thinker.load_state_dict(tstate, strict=False)
        bad = [k for k in result.missing_keys if not (tconfig.tie_word_embeddings and k == "lm_head.weight")]
        if bad or result.unexpected_keys:
            raise OfficialImportError(f"the target's weights do not fit its config: missing {bad[:4]}, unexpected "
                                      f"{result.unexpected_keys[:4]}")
        thinker.tie_weights()
        thinker.save_pretrained(tdir)
        t_tok.save_pretrained(tdir)
        # the aligner as LLaVA's stage-1 projector file
        aligner = {f"model.mm_projector.{k}": v.float().contiguous() for k, v in source["aligner"].items()}
        torch.save(aligner, partial / "mm_projector.bin")
        _write_llava_checkpoint(partial, pdir, tdir, t_tok, perceiver_system_prompt, report)
        (partial / "official_import.json").write_text(json.dumps({"source": str(src_path), "report": report}, indent=1))
        # the recorded tower path names the final folder
        cfg = _json(partial / "config.json")
        cfg["mm_vision_tower"] = "dpa:" + str(out.resolve() / "perceiver")
        (partial / "config.json").write_text(json.dumps(cfg, indent=2))
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    for line in report:
        log(line)
    return out


def _write_llava_checkpoint(folder: Path, perceiver_dir: Path, thinker_dir: Path, tokenizer, system_prompt, report):
    model = assemble(thinker_dir, "dpa:" + str(perceiver_dir), folder, tokenizer, projector="dpa_aligner",
                     conv_version="qwen_3", image_aspect_ratio="native",
                     pretrain_mm_mlp_adapter=str(folder / "mm_projector.bin"), perceiver_system_prompt=system_prompt)
    report.append(f"LLaVA-format DPA checkpoint: target {type(model).__name__}, projector dpa_aligner "
                  f"({model.config.mm_hidden_size} -> {model.config.hidden_size}), features N + 2 per image")
