#!/usr/bin/env python3
"""A training reference recorded from the authors' own stack (issue #28): the DPA release's stage 1 and stage 2
through its copy of ms-swift, on a tiny model and data set, step by step.

The release (github THUMAI-Lab/Deep-Pre-Alignment, commit 1faf467) trains through its own ms-swift
(`ms-swift/`: ms-swift 3.10.0.dev0 without its `requirements/` folder). Nothing of it is copied into this project:
pass a work tree of the release on the command line.

    python3 scripts/reference/official_swift_reference.py setup  --release /work/release [--venv /work/swift-venv]
    python3 scripts/reference/official_swift_reference.py record --release /work/release [--venv ...] [--output DIR]
        [--qwen3-chat-template /path/to/Qwen3/chat_template.jinja]

`setup` makes a virtualenv of its own (outside the repository): torch 2.13.0 (CPU), `ms-swift==3.10.*` from PyPI
for the dependencies under the release's own pins (`sft_msswift.txt`, less torch, CUDA, flash-attn and DeepSpeed),
transformers 4.57.1, msgspec; then it removes PyPI's `swift` package, so that the release's `ms-swift/`, first on
PYTHONPATH, is the one imported (the record checks `swift.__file__`).

`record` (run under the shared lock on a shared machine: `flock /tmp/llava-dpa-pytest.lock ...`), in the venv:
- a tiny tokenizer with Qwen's ids for every token the release hard-codes (151643-151668 and "\\n\\n" = 271, which
  its template's think-block mask searches for), byte-level BPE with Qwen2's pre-tokenizer, and the Qwen3 chat
  template of this project's zoo (`llava_dpa/zoo/tokenizers.py`), checked against the real template when given;
- the tiny official DPA model, built by the release's own `ForwardVisualTokensArchForCausalLM(config)` under a
  seed (its `post_init` draws every weight), with the vocabulary rows of tokens the tokenizer cannot produce set to
  zero (the embedding tables are 151,680 rows because of the hard-coded ids);
- a data set in the release's format (LLaVA json: `image`, `conversations` with from/value): captions for stage 1,
  and for stage 2 multi-turn samples, a sample with two images of different sizes and a text-only sample;
- the release's stage 1 (PT_DPA_4node.sh) and stage 2 (SFT_DPA_4node.sh) through `swift.llm.sft_main`, each in a
  process of its own, with the scripts' settings scaled to the tiny model (see STAGES): fp32 on CPU, one thread,
  no dropout (the configs have none), no shuffling, and every optimizer step made of the whole data set (micro
  batches of one sample, gradient accumulation over all of them), so that a run elsewhere sees the same samples
  in every step whatever its sampler's order;
- per step, recorded by a callback put on ms-swift's own plugin list (`swift.plugin.extra_callbacks`) and a
  forward hook, both registered from this script: the logged loss and gradient norm, the learning rate and weight
  decay of every optimizer group with the part each parameter belongs to, the gradient norm per part (target,
  aligner, perceiver LM, ViT and merger) as the optimizer applies it (after clipping), and every micro batch's
  encoded sample (target ids, labels, perceiver ids, image grids), loss and label count;
- the parameters after the last step.

What it writes (`--output`, by default tests/fixtures/official_swift/; a few MB; running `record` again writes the
same bytes):
- manifest.json: the versions, the release commit, the sha256 of every release file the runs read, the settings;
- tokenizer/, configs/{vit,perceiver_lm,thinker}/, images/, data/{stage1,stage2}.json;
- initial/: the release's merged layout (config.json, model.safetensors.gz: gzip without a time stamp);
- stage1.json, stage2.json: the per-step records; stage{1,2}_final.safetensors: the parameters the stage trains,
  after its last step (for a table of the vocabulary's size: the rows of the tokens the tokenizer produces, and
  the mean of the other rows with their largest distance to it).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_OUTPUT = REPO / "tests" / "fixtures" / "official_swift"
DEFAULT_VENV = Path("/work/swift-venv")
RELEASE_COMMIT = "1faf467"
#: PyPI's torch 2.13.0 (a CUDA 13 build, run on the CPU): the release needs torchvision (qwen_vl_utils imports it,
#: transformers' Qwen2.5-VL processor builds a video processor with it), and PyPI's torchvision wheels load only
#: beside PyPI's torch, not beside the CPU-only wheel
TORCH = ("torch==2.13.0", "torchvision==0.28.0")
TRANSFORMERS = "transformers==4.57.1"
MS_SWIFT = "ms-swift==3.10.*"
#: the release's pins that a CPU run cannot or need not take (sft_msswift.txt is a CUDA 12.8 environment)
UNPINNED = ("torch==", "torchvision==", "triton==", "nvidia-", "flash_attn==", "deepspeed==")
SEED = 1234

# ---- the tiny model -----------------------------------------------------------------------------------------
VOCAB = 151_680
#: Qwen's ids of the tokens the release's code names by id (FVT 35-41, TPL's think-block mask, get_rope_index)
SPECIALS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
            "<|vision_end|>": 151653, "<|vision_pad|>": 151654, "<|image_pad|>": 151655, "<|video_pad|>": 151656,
            "<think>": 151667, "</think>": 151668}
#: added tokens that Qwen3's tokenizer does not mark special (its tokenizer_config.json)
NOT_SPECIAL = ("<think>", "</think>")
#: byte-level pieces at Qwen's ids: "\n" and "\n\n" (the release masks [151667, 271, 151668, 271])
PIECES = {"Ċ": 198, "ĊĊ": 271}
#: Qwen2's pre-tokenizer (transformers' tokenization_qwen2.PRETOKENIZE_REGEX): "\n\n" stays one piece
QWEN2_PRETOKENIZE_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                           r"\s*[\r\n]+|\s+(?!\S)|\s+")
VIT = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4, "in_channels": 3, "patch_size": 14,
       "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56, "fullatt_block_indexes": [1],
       "out_hidden_size": 48}   # 48 != the perceiver LM's 32: the release rebuilds the merger MLP (LB 559-570)
PERCEIVER_LM = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "head_dim": 8, "rope_theta": 1_000_000.0, "tie_word_embeddings": True,
                "max_position_embeddings": 4096}
THINKER = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "head_dim": 12, "rope_theta": 1_000_000.0, "tie_word_embeddings": True,
           "max_position_embeddings": 4096, "eos_token_id": 151645}
#: the Hub names the release's configs default to (ForwardVisualTokensArchConfig, LLaVABaselineConfig); the runs
#: start in a folder holding folders of these names, which ms-swift and transformers take as local paths
HUB = {"vit": "Qwen/Qwen2.5-VL-3B-Instruct", "perceiver_lm": "Qwen/Qwen3-0.6B", "thinker": "Qwen/Qwen3-4B"}
MIN_PIXELS, MAX_PIXELS = 3136, 262_144   # Qwen2-VL's min_pixels; PT/SFT scripts line 14 (MAX_PIXELS)

# ---- the data ---------------------------------------------------------------------------------------------------
IMAGES = {"wide.png": (56, 112), "tall.png": (84, 56), "small.png": (56, 56), "big.png": (112, 84)}  # (h, w)
STAGE1_DATA = [   # LLaVA-Pretrain's form: the image, then a caption instruction, one turn. LLaVA-Pretrain also puts
    # the image after the instruction; stage 2's data has that case (s3), so that stage 1 stays a run in which every
    # difference found is one of the machinery, not of where LLaVA's preprocessing puts an image
    {"id": "c0", "image": "wide.png", "conversations": [
        {"from": "human", "value": "<image>\nRender a clear and concise summary of the photo."},
        {"from": "gpt", "value": "a red square beside a blue circle"}]},
    {"id": "c1", "image": "tall.png", "conversations": [
        {"from": "human", "value": "<image>\nGive a brief description of the image."},
        {"from": "gpt", "value": "a green triangle"}]},
    {"id": "c2", "image": "small.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is in the photo?"},
        {"from": "gpt", "value": "yes, a yellow shape on a grey colour"}]},
    {"id": "c3", "image": "big.png", "conversations": [
        {"from": "human", "value": "<image>\nDescribe the image concisely."},
        {"from": "gpt", "value": "two blue circles"}]},
]
STAGE2_DATA = [   # MAmmoTH-VL's form, plus the cases the release's code branches on; `image` is a list in every row
    # that has one (pyarrow, under ms-swift's json loader, refuses a column mixing strings and lists)
    {"id": "s0", "image": ["wide.png"], "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is the square?"},
        {"from": "gpt", "value": "The square is red."},
        {"from": "human", "value": "And the circle?"},
        {"from": "gpt", "value": "It is blue."}]},
    {"id": "s1", "image": ["tall.png", "small.png"], "conversations": [
        {"from": "human", "value": "<image>\n<image>\nDescribe the two images."},
        {"from": "gpt", "value": "A green triangle, then a yellow shape."}]},
    {"id": "s2", "conversations": [
        {"from": "human", "value": "What is two plus two?"},
        {"from": "gpt", "value": "Four."}]},
    {"id": "s3", "image": ["big.png"], "conversations": [
        {"from": "human", "value": "How many circles are there?\n<image>"},
        {"from": "gpt", "value": "Two."},
        {"from": "human", "value": "What colour are they?"},
        {"from": "gpt", "value": "Both are blue."},
        {"from": "human", "value": "Thank you."},
        {"from": "gpt", "value": "You are welcome."}]},
]
CORPUS_EXTRA = ["user assistant system", "Thank you. You are welcome.", "yes no colour shape image photo"]

# ---- the runs: the release's scripts, scaled -------------------------------------------------------------------
#: flags shared by both stages; the scripts' values where the tiny run keeps them
COMMON = {
    "--template": "duplex_forward_visual_tokens_arch",   # PT line 37 (SFT: the model's registered template)
    "--train_type": "full", "--weight_decay": "0.01", "--adam_beta2": "0.98",
    "--average_tokens_across_devices": "true", "--save_safetensors": "false", "--streaming": "false",
    # scaled: fp32 on CPU, one sample per micro batch, no shuffling, no evaluation split, no workers
    "--torch_dtype": "float32", "--per_device_train_batch_size": "1", "--dataset_shuffle": "false",
    "--train_dataloader_shuffle": "false", "--split_dataset_ratio": "0", "--dataloader_num_workers": "0",
    "--dataset_num_proc": "1", "--load_from_cache_file": "false", "--logging_steps": "1", "--report_to": "none",
    "--save_strategy": "no", "--eval_strategy": "no", "--seed": "42", "--attn_impl": "sdpa",
}
STAGES = {
    1: {"script": "ms-swift/scripts/PT_DPA_4node.sh", "data": "stage1.json",
        "env": {"KEEP_FIRST_TURN_ONLY": "true", "TRIME_PERCEIVER_AFTER_IMAGE": "true"},
        "flags": {"--learning_rate": "1e-3", "--max_length": "2048", "--freeze_llm": "true", "--freeze_vit": "true",
                  "--freeze_aligner": "false", "--lr_scheduler_type": "warmup_stable_decay",
                  # scaled from 2,180 steps: warmup 440 -> 2, decay 1,170 -> 3
                  "--max_steps": "6", "--warmup_steps": "2", "--lr_scheduler_kwargs": '{"num_decay_steps": 3}',
                  "--gradient_accumulation_steps": str(len(STAGE1_DATA)), "--num_train_epochs": "2",
                  # stage 2 starts from stage 1's last checkpoint, as SFT_DPA_4node.sh's MODEL_PATH
                  "--save_strategy": "steps", "--save_steps": "6", "--save_only_model": "true"}},
    2: {"script": "ms-swift/scripts/SFT_DPA_4node.sh", "data": "stage2.json",
        "env": {"KEEP_FIRST_TURN_ONLY": "false", "TRIME_PERCEIVER_AFTER_IMAGE": "false"},
        "flags": {"--learning_rate": "1e-5", "--vit_lr": "2e-6", "--aligner_lr": "1e-5", "--max_length": "8192",
                  "--freeze_llm": "false", "--freeze_vit": "false", "--freeze_aligner": "false",
                  # scaled from 8,000 steps with warmup 500; the script names no scheduler: ms-swift's cosine
                  "--max_steps": "5", "--warmup_steps": "2", "--num_train_epochs": "20",
                  "--gradient_accumulation_steps": str(len(STAGE2_DATA))}},
}
#: the release's parts (register_DPA.py's model arch), by parameter-name prefix; first match wins
PARTS = (("model.linear_align_dim.", "aligner"), ("model.perceiver.model.vlm.visual.", "vit_and_merger"),
         ("model.perceiver.model.vlm.language_model.", "perceiver_lm"), ("model.perceiver.lm_head.", "perceiver_lm_head"),
         ("model.thinker.", "target"), ("lm_head.", "target"))


def part_of(name: str) -> str:
    for prefix, part in PARTS:
        if name.startswith(prefix):
            return part
    raise ValueError(f"parameter {name} belongs to no part of the release's model")


# =================================================================================================================
# driver (any python 3): the virtualenv and the runs
# =================================================================================================================
def release_root(path: str) -> Path:
    root = Path(path).resolve()
    needed = ["ms-swift/swift/llm/train/sft.py", "ms-swift/register_DPA.py", "sft_msswift.txt",
              "ms-swift/modelings/modeling_forward_visual_tokens_llava_arch.py"]
    missing = [n for n in needed if not (root / n).is_file()]
    if missing:
        sys.exit(f"{root} is not a work tree of THUMAI-Lab/Deep-Pre-Alignment (missing {missing}): pass a clone of "
                 f"github THUMAI-Lab/Deep-Pre-Alignment at commit {RELEASE_COMMIT}")
    return root


def setup(args) -> None:
    release, venv = release_root(args.release), Path(args.venv).resolve()
    if REPO in venv.parents or venv == REPO:
        sys.exit(f"--venv {venv} is inside the repository; put it elsewhere (e.g. {DEFAULT_VENV})")
    pins = [line.strip() for line in (release / "sft_msswift.txt").read_text().splitlines()
            if "==" in line and not line.strip().startswith(UNPINNED)]
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    constraints = venv / "release-constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-c", str(constraints)]
    # PyPI only: a local wheel folder (pip's find-links) may offer torch 2.13.0+cpu, which pip would prefer
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL")}
    env["PIP_CONFIG_FILE"] = os.devnull
    subprocess.run(pip + [*TORCH, MS_SWIFT, TRANSFORMERS, "msgspec", "qwen-vl-utils"], check=True, env=env)
    # PyPI's swift would shadow nothing (the release's ms-swift/ comes first on PYTHONPATH) but could be imported
    # by mistake when it is not; only the dependencies are wanted
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "uninstall", "-y", "ms-swift"], check=True)
    freeze = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze"], check=True, capture_output=True,
                            text=True).stdout
    (venv / "official-swift-reference.txt").write_text(freeze)
    print(f"virtualenv ready: {venv}")


def run_env(release: Path, work: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_", "TRANSFORMERS_", "MODELSCOPE"))}
    env.update(PYTHONPATH=str(release / "ms-swift"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", HF_HOME=str(work / "hf-home"), MODELSCOPE_CACHE=str(work / "ms-cache"),
               HF_MODULES_CACHE=str(work / "hf-modules"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               CUDA_VISIBLE_DEVICES="", TOKENIZERS_PARALLELISM="false", PYTHONHASHSEED="0",
               MAX_PIXELS=str(MAX_PIXELS), ROOT_IMAGE_DIR=str(work / "data" / "images"), WANDB_DISABLED="true")
    return env


def record(args) -> None:
    release, venv = release_root(args.release), Path(args.venv).resolve()
    python = venv / "bin" / "python"
    if not python.exists():
        sys.exit(f"no virtualenv at {venv}: run `{Path(__file__).name} setup --release {release} --venv {venv}`")
    output = Path(args.output).resolve()
    work = Path(args.work).resolve() if args.work else output.parent / (output.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = run_env(release, work)
    me = [str(python), str(Path(__file__).resolve())]
    common = ["--release", str(release), "--work", str(work)]
    template = ["--qwen3-chat-template", args.qwen3_chat_template] if args.qwen3_chat_template else []
    commit = args.release_commit
    if (release / ".git").exists():
        head = subprocess.run(["git", "-C", str(release), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        if not head.startswith(commit):
            sys.exit(f"{release} is at {head}, not {commit}: check out {commit} or pass --release-commit {head}")
    for step in (["_build", *template], ["_stage", "1"], ["_stage", "2"],
                 ["_collect", "--output", str(output), "--release-commit", commit]):
        log = work / f"{step[0][1:]}{''.join(step[1:2]) if step[0] == '_stage' else ''}.log"
        print(f"==> {step[0][1:]} {' '.join(step[1:2])} (log: {log})", flush=True)
        with open(log, "w") as f:
            done = subprocess.run(me + step[:1] + common + step[1:], env=env, cwd=work, stdout=f,
                                  stderr=subprocess.STDOUT, check=False)
        if done.returncode:
            sys.exit(f"{step[0][1:]} failed ({done.returncode}); the end of {log}:\n" +
                     "\n".join(log.read_text().splitlines()[-40:]))
    if not args.keep_work:
        shutil.rmtree(work)
    print(f"wrote {output}")


# =================================================================================================================
# inside the virtualenv
# =================================================================================================================
def _torch_setup():
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    return torch


def zoo_chat_template() -> str:
    """QWEN3_CHAT_TEMPLATE of llava_dpa/zoo/tokenizers.py, read from its file (importing llava_dpa would need
    this project's environment)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("zoo_tokenizers", REPO / "llava_dpa" / "zoo" / "tokenizers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.QWEN3_CHAT_TEMPLATE


def conversations_as_messages(conversations) -> list[dict]:
    return [{"role": "user" if turn["from"] == "human" else "assistant", "content": turn["value"]}
            for turn in conversations]


def build_tokenizer(out_dirs: list[Path], real_template: str | None):
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import Qwen2TokenizerFast

    texts = [turn["value"].replace("<image>", "") for sample in STAGE1_DATA + STAGE2_DATA
             for turn in sample["conversations"]]
    corpus = [t + "\n\n" + t for t in texts] * 3 + CORPUS_EXTRA * 3
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    by_id = {i: t for t, i in vocab.items()}
    for piece, wanted in PIECES.items():   # swap ids so the piece sits at Qwen's id (merges name pieces, not ids)
        if piece not in vocab:
            raise SystemExit(f"the tiny BPE learnt no {piece!r}; the corpus must hold it")
        other = by_id[wanted]
        vocab[other], vocab[piece] = vocab[piece], wanted
        by_id = {i: t for t, i in vocab.items()}
    vocab.update(SPECIALS)   # an added token keeps its id only if the model's vocabulary has it
    spec["added_tokens"] = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": t not in NOT_SPECIAL} for t, i in SPECIALS.items()]
    tok = Tokenizer.from_str(json.dumps(spec))
    template = zoo_chat_template()
    fast = Qwen2TokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
                              bos_token=None, model_max_length=32768, clean_up_tokenization_spaces=False,
                              chat_template=template, errors="replace", split_special_tokens=False)
    assert all(fast.convert_tokens_to_ids(t) == i for t, i in SPECIALS.items())
    assert fast("</think>\n\n", add_special_tokens=False).input_ids == [151668, 271]
    if real_template:   # the zoo's template renders what Qwen3's own does, the empty think block included
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        zoo, real = env.from_string(template), env.from_string(Path(real_template).read_text())
        for sample in STAGE1_DATA + STAGE2_DATA:
            messages = conversations_as_messages(sample["conversations"])
            for cut in range(1, len(messages) + 1):
                for gen in (False, True):
                    a = zoo.render(messages=messages[:cut], add_generation_prompt=gen)
                    b = real.render(messages=messages[:cut], add_generation_prompt=gen)
                    if a != b:
                        raise SystemExit(f"the zoo's Qwen3 chat template differs from {real_template}:\n{a!r}\n{b!r}")
        print(f"chat template: equal to {real_template} on every prefix of every sample")
    for out in out_dirs:
        fast.save_pretrained(out)
    return fast


def write_configs(work: Path) -> dict:
    from transformers import Qwen2_5_VLConfig, Qwen2VLImageProcessor, Qwen3Config

    folders = {key: work / hub for key, hub in HUB.items()}
    Qwen2_5_VLConfig(vision_config=VIT, text_config={
        "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rope_scaling": {"type": "mrope", "mrope_section": [1, 2, 1]}},
        image_token_id=151655, vision_start_token_id=151652, vision_end_token_id=151653,
        video_token_id=151656).save_pretrained(folders["vit"])
    Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=12_845_056).save_pretrained(folders["vit"])
    # the processor class the release's modelings/preprocessor_config.json names
    pre = json.loads((folders["vit"] / "preprocessor_config.json").read_text())
    pre["processor_class"] = "Qwen2_5_VLProcessor"
    (folders["vit"] / "preprocessor_config.json").write_text(json.dumps(pre, indent=2, sort_keys=True) + "\n")
    Qwen3Config(vocab_size=VOCAB, **PERCEIVER_LM).save_pretrained(folders["perceiver_lm"])
    Qwen3Config(vocab_size=VOCAB, **THINKER).save_pretrained(folders["thinker"])
    return folders


def write_images(folder: Path) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    for name, (h, w) in IMAGES.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name, optimize=False)


def used_rows(tokenizer) -> list[int]:
    return sorted(set(tokenizer.get_vocab().values()))


def build(args) -> None:
    """The tokenizer, the architecture folders, the images and data, and the initial model (official code)."""
    torch = _torch_setup()
    work = Path(args.work)
    sys.path.insert(0, str(Path(args.release) / "ms-swift"))
    for hub in HUB.values():
        (work / hub).mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer([work / HUB["vit"], work / HUB["thinker"], work / "tokenizer"], args.qwen3_chat_template)
    write_configs(work)
    write_images(work / "data" / "images")
    for stage in STAGES.values():
        data = STAGE1_DATA if stage["data"] == "stage1.json" else STAGE2_DATA
        (work / "data" / stage["data"]).write_text(json.dumps(data, indent=1) + "\n")

    from modelings import modeling_forward_visual_tokens_llava_arch as fvt
    from modelings.modeling_llava_baseline import LLaVABaselineConfig

    # Under the perceiver_config's defaults (a Qwen2Config: rope_theta 10,000) as the release's DPA-4B-init config
    # has it; hidden_size/heads give the M-RoPE its head_dim (LB 552-553).
    perceiver_config = LLaVABaselineConfig(vit_path=HUB["vit"], llm_path=HUB["perceiver_lm"],
                                           hidden_size=PERCEIVER_LM["hidden_size"],
                                           num_attention_heads=PERCEIVER_LM["num_attention_heads"], vocab_size=VOCAB)
    config = fvt.ForwardVisualTokensArchConfig(perceiver_config=perceiver_config.to_dict(),
                                               thinker_name_or_path=HUB["thinker"], t_tokenizer_name_or_path=HUB["thinker"],
                                               p_tokenizer_name_or_path=HUB["vit"], vocab_size=VOCAB,
                                               hidden_size=THINKER["hidden_size"])
    config.architectures = ["ForwardVisualTokensArchForCausalLM"]
    torch.manual_seed(SEED)
    model = fvt.ForwardVisualTokensArchForCausalLM(config)
    keep = torch.zeros(VOCAB, dtype=torch.bool)
    keep[used_rows(tokenizer)] = True
    with torch.no_grad():
        for table in {id(t): t for t in (model.model.perceiver.get_input_embeddings().weight,
                                          model.model.perceiver.lm_head.weight,
                                          model.model.thinker.get_input_embeddings().weight,
                                          model.model.thinker.lm_head.weight)}.values():
            table[~keep] = 0.0
    model.save_pretrained(work / "dpa-init", safe_serialization=False)   # as the release saves (--save_safetensors false)
    # the folder ms-swift loads: the processor and the tokenizer beside the weights, as the release's checkpoints
    for f in (work / HUB["vit"]).iterdir():
        if f.name != "config.json":
            shutil.copy(f, work / "dpa-init" / f.name)
    print("built the tiny official model:", sum(p.numel() for p in model.parameters()), "parameters")


# ---- a stage through ms-swift --------------------------------------------------------------------------------
def stage_argv(work: Path, stage: int, model_dir: Path, release: Path) -> list[str]:
    flags = {**COMMON, **STAGES[stage]["flags"], "--model": str(model_dir),
             "--custom_register_path": str(release / "ms-swift" / "register_DPA.py"),
             "--dataset": str(work / "data" / STAGES[stage]["data"]), "--output_dir": str(work / f"stage{stage}")}
    argv = []
    for key, value in flags.items():
        argv += [key, value]
    return argv


def make_recorder(record: dict, final_path: Path, rows: list[int]):
    """The callback (on ms-swift's plugin list) and the forward hook that write `record`, and the parameters after
    the last step to `final_path`."""
    from transformers import TrainerCallback

    names: dict[int, str] = {}

    def on_forward(module, args, kwargs, output):
        if not module.training:
            return
        labels = kwargs.get("labels")
        # what the model receives once ms-swift's own pre-forward hook (template.pre_forward_hook) has run
        record.setdefault("forward_keys", sorted(kwargs))
        sample = {"loss": float(output.loss.detach()), "label_tokens": int((labels[:, 1:] != -100).sum())}
        for key in ("input_ids", "labels", "input_ids_of_perceiver", "image_grid_thw", "position_ids"):
            value = kwargs.get(key)
            if value is not None:
                sample[key] = value.tolist()
        record.setdefault("micro_batches", []).append(sample)

    class Recorder(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            names.update({id(p): n for n, p in model.named_parameters()})
            model.register_forward_hook(on_forward, with_kwargs=True)
            record["trainable"] = {n: list(p.shape) for n, p in model.named_parameters() if p.requires_grad}

        def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
            # after clipping, before the update: what the optimizer applies
            groups, squares = [], {}
            for group in optimizer.param_groups:
                parts: dict[str, int] = {}
                for p in group["params"]:
                    part = part_of(names[id(p)])
                    parts[part] = parts.get(part, 0) + 1
                    if p.grad is not None:
                        squares[part] = squares.get(part, 0.0) + float(p.grad.detach().double().pow(2).sum())
                groups.append({"lr": group["lr"], "weight_decay": group["weight_decay"], "parts": parts,
                               "names": sorted(names[id(p)] for p in group["params"])})
            record.setdefault("optimizer_steps", []).append({
                "step": state.global_step + 1, "groups": groups,
                "grad_norm_per_part": {k: squares[k] ** 0.5 for k in sorted(squares)},
                "micro_batches": len(record.get("micro_batches", []))})

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                record.setdefault("logs", []).append({"step": state.global_step, "loss": logs["loss"],
                                                      "grad_norm": logs.get("grad_norm"),
                                                      "learning_rate": logs.get("learning_rate")})

        def on_train_end(self, args, state, control, model=None, **kwargs):
            save_compact({n: p.detach() for n, p in model.named_parameters() if p.requires_grad}, rows, final_path)

    return Recorder()


def save_compact(state: dict, rows: list[int], path: Path) -> None:
    """safetensors of `state`; a table of the vocabulary's size keeps the rows `rows` (`NAME`), and the mean of the
    other rows (`NAME::other_rows_mean`) with their largest |distance| to it (`NAME::other_rows_max_deviation`)."""
    import torch
    from safetensors.torch import save_file

    index = torch.tensor(rows)
    others = torch.ones(VOCAB, dtype=torch.bool)
    others[index] = False
    out = {}
    for name, value in state.items():
        value = value.float().contiguous()
        if value.shape[0] == VOCAB:
            mean = value[others].mean(0)
            out[name] = value[index].clone()
            out[name + "::other_rows_mean"] = mean.clone()
            out[name + "::other_rows_max_deviation"] = (value[others] - mean).abs().max().reshape(1)
        else:
            out[name] = value.clone()
    save_file(out, str(path), metadata={"rows": json.dumps(rows)})


def release_files_used(release: Path) -> list[str]:
    """The release's files this process imported, relative to the release root."""
    root = release.resolve()
    used = set()
    for module in list(sys.modules.values()):
        f = getattr(module, "__file__", None)
        if f and Path(f).resolve().is_relative_to(root):
            used.add(str(Path(f).resolve().relative_to(root)))
    return sorted(used)


def run_stage(args) -> None:
    torch = _torch_setup()
    work, release, stage = Path(args.work), Path(args.release), int(args.stage)
    os.environ.update(STAGES[stage]["env"])
    sys.path.insert(0, str(release / "ms-swift"))
    import swift
    from swift.plugin import extra_callbacks

    if Path(swift.__file__).resolve().parents[1] != (release / "ms-swift").resolve():
        raise SystemExit(f"imported swift from {swift.__file__}, not the release's ms-swift/")
    from modelings import modeling_forward_visual_tokens_llava_arch as fvt
    from modelings.modeling_llava_baseline import LLaVABaselineConfig
    from transformers import AutoConfig, AutoModelForCausalLM

    # The release's checkpoints are loaded by model_type; its classes are registered here rather than copied
    # into the model folder as remote code.
    AutoConfig.register(fvt.ForwardVisualTokensArchConfig.model_type, fvt.ForwardVisualTokensArchConfig)
    AutoConfig.register(LLaVABaselineConfig.model_type, LLaVABaselineConfig)
    AutoModelForCausalLM.register(fvt.ForwardVisualTokensArchConfig, fvt.ForwardVisualTokensArchForCausalLM)
    record: dict = {"stage": stage, "script": STAGES[stage]["script"], "env": STAGES[stage]["env"]}
    rows = sorted(set(json.loads((work / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"].values()))
    extra_callbacks.append(make_recorder(record, work / f"stage{stage}-final.safetensors", rows))
    model_dir = work / "dpa-init" if stage == 1 else next((work / "stage1").glob("*/checkpoint-*"))
    argv = stage_argv(work, stage, model_dir, release)
    # paths as placeholders, and ms-swift's dated run folder (add_version) without its date
    record["argv"] = [re.sub(r"/v(\d+)-\d{8}-\d{6}/", r"/v\1-DATE/", a.replace(str(work), "WORK").replace(str(release), "RELEASE"))
                      for a in argv]
    from swift.llm import sft_main

    torch.manual_seed(SEED)
    result = sft_main(argv)
    record["files"] = release_files_used(release) + [STAGES[stage]["script"], "ms-swift/register_DPA.py"]
    (work / f"stage{stage}-record.json").write_text(json.dumps(record))
    print(f"stage {stage}: {result['global_step']} steps")


# ---- the fixture -------------------------------------------------------------------------------------------------
VERSIONED = ("torch", "torchvision", "transformers", "accelerate", "peft", "trl", "datasets", "tokenizers",
             "safetensors", "numpy", "pillow", "qwen-vl-utils", "modelscope", "msgspec")


def gzip_bytes(data: bytes) -> bytes:
    """gzip without a time stamp or a file name, so the same data gives the same bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as f:
        f.write(data)
    return buffer.getvalue()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tidy_record(raw: dict, stage: int) -> dict:
    """The per-step record: the logged loss and gradient norm (before clipping), every group's learning rate, the
    gradient norm per part after clipping; the groups' members once; the encoded samples of the first step."""
    steps = raw["optimizer_steps"]
    per_step = len(STAGE1_DATA if stage == 1 else STAGE2_DATA)
    logs = {entry["step"]: entry for entry in raw["logs"]}
    micro = raw["micro_batches"]
    data = STAGE1_DATA if stage == 1 else STAGE2_DATA
    return {
        "stage": stage, "script": raw["script"], "env": raw["env"], "argv": raw["argv"],
        "forward_keys": raw["forward_keys"], "trainable": raw["trainable"],
        "groups": [{k: g[k] for k in ("weight_decay", "parts", "names")} for g in steps[0]["groups"]],
        "steps": [{"step": s["step"], "loss": logs[s["step"]]["loss"], "grad_norm": logs[s["step"]]["grad_norm"],
                   "lr": [g["lr"] for g in s["groups"]], "grad_norm_per_part": s["grad_norm_per_part"],
                   "micro_batch_losses": [m["loss"] for m in micro[(s["step"] - 1) * per_step:s["step"] * per_step]]}
                  for s in steps],
        # the samples in the order every step takes them (no shuffling: the data file's order)
        "samples": [{"id": sample["id"], **{k: v for k, v in m.items() if k != "loss"}}
                    for sample, m in zip(data, micro[:per_step])],
    }


def collect(args) -> None:
    """The fixture, from the work folder of _build and the two _stage runs."""
    import importlib.metadata as md

    import swift
    import torch
    from safetensors.torch import save

    work, release, out = Path(args.work), Path(args.release).resolve(), Path(args.output)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shutil.copytree(work / "tokenizer", out / "tokenizer")
    for key, hub in HUB.items():
        (out / "configs" / key).mkdir(parents=True)
        for name in ("config.json", "preprocessor_config.json"):
            if (work / hub / name).is_file():
                shutil.copy(work / hub / name, out / "configs" / key / name)
    shutil.copytree(work / "data" / "images", out / "images")
    (out / "data").mkdir()
    for stage in STAGES.values():
        shutil.copy(work / "data" / stage["data"], out / "data" / stage["data"])
    # the initial model in the release's merged layout (its keys, its config); tied tables stored once each name
    (out / "initial").mkdir()
    shutil.copy(work / "dpa-init" / "config.json", out / "initial" / "config.json")
    state = torch.load(work / "dpa-init" / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raw = save({k: v.clone().contiguous() for k, v in state.items()}, metadata={"format": "pt"})
    (out / "initial" / "model.safetensors.gz").write_bytes(gzip_bytes(raw))
    files = set()
    for stage in STAGES:
        raw_record = json.loads((work / f"stage{stage}-record.json").read_text())
        files.update(raw_record["files"])
        (out / f"stage{stage}.json").write_text(json.dumps(tidy_record(raw_record, stage), indent=1) + "\n")
        shutil.copy(work / f"stage{stage}-final.safetensors", out / f"stage{stage}_final.safetensors")
    files.update(["sft_msswift.txt"] + [f"ms-swift/modelings/{n}" for n in (
        "modeling_forward_visual_tokens_llava_arch.py", "modeling_llava_baseline.py")])
    versions = {name: md.version(name) for name in VERSIONED}
    manifest = {
        "what": "the DPA release's stage 1 and stage 2 through its own ms-swift, on a tiny model: made by "
                "scripts/reference/official_swift_reference.py (see its docstring)",
        "release": {"repository": "github.com/THUMAI-Lab/Deep-Pre-Alignment", "commit": args.release_commit,
                    "swift_version": swift.__version__},
        "python": sys.version.split()[0], "versions": versions, "seed": SEED,
        "model": {"vocab": VOCAB, "vit": VIT, "perceiver_lm": PERCEIVER_LM, "thinker": THINKER, "hub_names": HUB},
        "pixels": {"min": MIN_PIXELS, "max": MAX_PIXELS},
        "runs": {str(k): {"script": v["script"], "env": v["env"], "flags": {**COMMON, **v["flags"]}}
                 for k, v in STAGES.items()},
        "release_files_sha256": {f: sha256(release / f) for f in sorted(files)},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"fixture: {out} ({size / 2**20:.2f} MiB, {len(files)} release files hashed)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("setup", "record"):
        p = sub.add_parser(name)
        p.add_argument("--release", required=True, help="a work tree of THUMAI-Lab/Deep-Pre-Alignment (commit 1faf467)")
        p.add_argument("--venv", default=str(DEFAULT_VENV), help=f"the virtualenv (default {DEFAULT_VENV})")
    rec = sub.choices["record"]
    rec.add_argument("--output", default=str(DEFAULT_OUTPUT))
    rec.add_argument("--work", help="scratch folder (default: beside --output, removed at the end)")
    rec.add_argument("--keep-work", action="store_true")
    rec.add_argument("--qwen3-chat-template", help="Qwen3's chat_template.jinja: the zoo's template must render the same")
    rec.add_argument("--release-commit", default=RELEASE_COMMIT,
                     help=f"the release's commit, recorded in the manifest (default {RELEASE_COMMIT}); checked "
                          f"against `git rev-parse HEAD` when --release is a clone")
    for name in ("_build", "_stage", "_collect"):
        p = sub.add_parser(name)
        p.add_argument("--release", required=True)
        p.add_argument("--work", required=True)
    sub.choices["_build"].add_argument("--qwen3-chat-template")
    sub.choices["_stage"].add_argument("stage")
    sub.choices["_collect"].add_argument("--output", required=True)
    sub.choices["_collect"].add_argument("--release-commit", required=True)
    args = ap.parse_args()
    {"setup": setup, "record": record, "_build": build, "_stage": run_stage, "_collect": collect}[args.command](args)


if __name__ == "__main__":
    main()
