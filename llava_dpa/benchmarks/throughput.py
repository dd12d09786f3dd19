"""`llava-dpa bench`: DPA against its controlled baseline, measured side by side in one run, on the code that
trains and serves them, next to the analytic ratio of the same configuration (paper Table 5: inference
throughput 0.94x, training cost 1.14x at 4B).

Two ways to get the pair:
- `--preset qwen3-4b [--scale F]`: random weights at the published sizes, or every width, head count and depth
  shrunk by F (head widths and vocabulary kept), built from this project's own classes exactly as training
  builds them (`benchmarks/models.py`: the LLaVA target classes, the Qwen2.5-VL tower, `PerceiverTower`);
  with `--perceiver qwen-vl`, the official release's Qwen-VL-native perceiver (`QwenVLPerceiverTower`) on whole
  images at native resolution, against the Qwen2.5-VL ViT tower at native resolution;
- `--dpa CKPT --baseline CKPT`: two checkpoints of this project.
Both run through the LLaVA model code (llava_arch, the towers, the perceiver) on one synthetic square image of
the tower's tile size and `--text-tokens` text tokens.

Operations, each as DPA time / baseline time (the cost ratio; a throughput ratio is its inverse):
- prefill: one forward over image + prompt, with the KV cache;
- decode: `--decode-steps` cached steps after that prefill (each feeds the last greedy token with the KV
  cache), timed by themselves: the prefill runs before the clock starts, each step is timed alone and the two
  models' steps alternate one by one, so the per-token time is the median step (a preempted step does not move
  it), not a difference of two totals;
- train (stage 2): forward + backward with what stage 2 trains (everything but the perceiver's LM head);
- train (stage 1): forward + backward with only the alignment projector trainable (frozen towers run under
  no_grad). No optimizer step (it is the same for both apart from the parameter count).
The analytic column is `analysis/flops.py` for the same configuration (forward for prefill, the stage's
training FLOPs for training, 1.0 for decode: each decoded token costs the same target forward). A
per-component breakdown (ViT, perceiver projector, perceiver LM, projector, target, and the rest: Python,
splicing, the loss) shows where any gap between measured and analytic goes. The two models alternate within
every repeat so that clock and thermal drift hit both alike.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections import defaultdict

import torch
from tqdm import tqdm

from llava_dpa.analysis.flops import training_flops
from llava_dpa.benchmarks.models import build_pair, describe
from llava_dpa.data.tower_features import TowerFeatures
from llava_dpa.llava_integration.inference import conv_mode_for, to_model
from llava_dpa.loading import load_pretrained_model
from llava_dpa.perceiver.qwen_vl_tower import QwenVLPerceiverTower
from llava_dpa.perceiver.tower import PerceiverTower
from llava_dpa.towers.base import clear_feature_memos
from llava_dpa.towers.qwen2_5_vl import Qwen2_5_VLTower
from llava_dpa.training.parts import Part, part_of

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
OPS = ("prefill", "decode", "train_stage2", "train_stage1")
COMPONENTS = ("vit", "perceiver_projector", "perceiver_lm", "projector", "target")


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


class ComponentClock:
    """Forward time per component, by module hooks (the components are disjoint modules)."""

    def __init__(self, modules: dict, device):
        self.device, self.seconds, self.started, self.handles, self.on = device, defaultdict(float), {}, [], False
        for name, group in modules.items():
            for module in group:
                self.handles.append(module.register_forward_pre_hook(self._start(id(module))))
                self.handles.append(module.register_forward_hook(self._stop(name, id(module))))

    def _start(self, key):
        def hook(*_):
            if self.on:
                _sync(self.device)
                self.started[key] = time.perf_counter()
        return hook

    def _stop(self, name, key):
        def hook(*_):
            if self.on:
                _sync(self.device)
                self.seconds[name] += time.perf_counter() - self.started.pop(key)
        return hook

    def measure(self, fn) -> tuple[float, dict]:
        self.seconds.clear()
        self.on = True
        _sync(self.device)
        start = time.perf_counter()
        try:
            fn()
        finally:
            _sync(self.device)
            self.on = False
        total = time.perf_counter() - start
        parts = {name: self.seconds.get(name, 0.0) for name in COMPONENTS}
        parts["rest"] = total - sum(parts.values())
        return total, parts


def synthetic_prompt(tokenizer, model, processor, text_tokens: int, seed: int = 0, image_side: int = 448,
                     images: int = 1):
    """A chat prompt of one image and `text_tokens` random text tokens, `images` rows of it that differ only in
    their random image: (input_ids [images, L] on the CPU, the processed images, their sizes). A tiling tower's
    image is one tile; a whole-image tower's is image_side square."""
    from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
    from llava.conversation import conv_templates
    from llava.mm_utils import process_images, tokenizer_image_token
    from PIL import Image


    tower = model.get_vision_tower()
    generator = torch.Generator().manual_seed(seed)
    size = image_side if getattr(tower, "per_image_features", False) else tower.image_size
    pictures = [Image.fromarray((torch.rand(size, size, 3, generator=generator) * 255).to(torch.uint8).numpy())]
    ids = torch.randint(100, 600, (text_tokens,), generator=generator)
    for _ in range(images - 1):
        pictures.append(Image.fromarray((torch.rand(size, size, 3, generator=generator) * 255).to(torch.uint8).numpy()))
    filler = tokenizer.decode(ids, skip_special_tokens=True)
    conv = conv_templates[conv_mode_for(model, None)].copy()
    conv.append_message(conv.roles[0], f"{DEFAULT_IMAGE_TOKEN}\n{filler}")
    conv.append_message(conv.roles[1], None)
    row = tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
    return row[None].repeat(images, 1), process_images(pictures, processor, model.config), [p.size for p in pictures]


class Pipeline:
    """A checkpoint of this project on a synthetic image and prompt, through the LLaVA model code."""

    def __init__(self, name: str, path: str, device: str, dtype: torch.dtype, text_tokens: int, model_base=None,
                 seed: int = 0, cached_features: bool = False, image_side: int = 448):
        """cached_features: the tower reads its own features, computed once here, as `--feature_cache` training
        reads them (data/feature_cache.py), so that a step runs only the projector and the target.
        image_side: the synthetic image's side for a tower that reads whole images (a tiling tower's is its tile)."""

        self.name, self.path, self.device = name, path, device
        self.tokenizer, self.model, processor, _ = load_pretrained_model(path, model_base, None, device=device,
                                                                         dtype=dtype)
        self.model.eval()
        self.tower = self.model.get_vision_tower()
        self.input_ids, processed, self.sizes = synthetic_prompt(self.tokenizer, self.model, processor, text_tokens,
                                                                 seed, image_side)
        self.input_ids = self.input_ids.to(device)
        self.images = to_model(processed, self.model)
        if cached_features:  # the tower's output, as a feature cache hands it over
            with torch.no_grad():
                self.images = TowerFeatures.of(self.tower(self.images))
        self.clock = ComponentClock(self.components(), device)

    def components(self) -> dict:
        inner, tower = self.model.get_model(), self.tower
        groups = {"projector": [inner.mm_projector], "target": [inner, self.model.lm_head]}
        if isinstance(tower, PerceiverTower):  # the LLaVA-format perceiver
            perceiver = tower.perceiver.get_model()
            groups.update(vit=[tower.vit], perceiver_projector=[perceiver.mm_projector], perceiver_lm=[perceiver])
        elif isinstance(tower, QwenVLPerceiverTower):  # the Qwen-VL perceiver: its merger is its projector, inside the ViT
            groups.update(vit=[tower.perceiver.visual], perceiver_lm=[tower.perceiver.language_model])
        else:
            groups.update(vit=[tower.encoder])
        return groups

    def text_tokens(self) -> int:
        return int((self.input_ids >= 0).sum())

    # ---- the operations ------------------------------------------------------------------------------
    def prefill(self):
        clear_feature_memos(self.model)  # every prefill encodes its image, as a new request's does
        return self.model(input_ids=self.input_ids, images=self.images, image_sizes=self.sizes, use_cache=True)

    def decode_state(self):
        """The prefill a decode starts from (untimed): its KV cache and greedy next token."""
        out = self.prefill()
        return out.past_key_values, out.logits[:, -1:].argmax(-1)

    def decode_step(self, state):
        """One cached step: the last token in, the cache grown by one, the next greedy token out."""
        past, token = state
        out = self.model(input_ids=token, past_key_values=past, use_cache=True)
        return out.past_key_values, out.logits[:, -1:].argmax(-1)

    def decode_steps(self, steps: int) -> list:
        """(seconds, components) of every cached step after an untimed prefill."""
        return decode_interleaved([self], steps)[self.name]

    def train_step(self, stage: int) -> None:
        for name, param in self.model.named_parameters():
            part = part_of(name)
            param.requires_grad_(part is Part.PROJECTOR if stage == 1 else part is not Part.PERCEIVER_LM_HEAD)
        labels = self.input_ids.clone()
        labels[labels < 0] = -100
        self.model.train()
        try:
            with torch.enable_grad():
                out = self.model(input_ids=self.input_ids, labels=labels, images=self.images, image_sizes=self.sizes)
                out.loss.backward()
        finally:
            self.model.zero_grad(set_to_none=True)
            self.model.eval()
            self.model.requires_grad_(False)

    def trainable(self, stage: int) -> int:
        return sum(p.numel() for n, p in self.model.named_parameters()
                   if (part_of(n) is Part.PROJECTOR if stage == 1 else part_of(n) is not Part.PERCEIVER_LM_HEAD))

    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def decode_interleaved(pipelines: list, steps: int) -> dict:
    """Every pipeline's prefill (untimed), then their cached steps in turn, each timed alone: {name: [(seconds,
    components)] * steps}. Step by step, the models meet the same load of a shared machine."""
    states = {p.name: p.decode_state() for p in pipelines}
    timed = {p.name: [] for p in pipelines}
    for _ in range(steps):
        for p in pipelines:
            box = {}
            total, parts = p.clock.measure(lambda: box.setdefault("state", p.decode_step(states[p.name])))
            states[p.name] = box["state"]
            timed[p.name].append((total, parts))
    return timed


def measure(pipelines: list, repeats: int = 5, warmup: int = 1, decode_steps: int = 32, only=OPS) -> dict:
    """Median seconds per operation and per component, for every pipeline; operations interleave."""
    ops = {"prefill": lambda p: p.prefill(), "train_stage2": lambda p: p.train_step(2),
           "train_stage1": lambda p: p.train_step(1)}
    ops = {op: fn for op, fn in ops.items() if op in only}
    samples = {p.name: {op: [] for op in ops} for p in pipelines}
    steps = {p.name: [] for p in pipelines}  # decode: every timed cached step, (seconds, components)
    for op in [op for op in OPS if op in only]:
        for i in tqdm(range(warmup + repeats), desc=f"bench {op}"):
            if op == "decode":  # the models' steps alternate one by one
                with torch.no_grad():
                    timed = decode_interleaved(pipelines, decode_steps)
                if i >= warmup:
                    for p in pipelines:
                        steps[p.name].extend(timed[p.name])
                continue
            for p in pipelines:
                with torch.set_grad_enabled(op.startswith("train")):
                    total, parts = p.clock.measure(lambda: ops[op](p))
                if i >= warmup:
                    samples[p.name][op].append((total, parts))
    result = {}
    for name, per_op in samples.items():
        result[name] = {op: _median(runs) for op, runs in per_op.items()}
        if "decode" in only:  # the cached steps alone: per token is the median step, its components alike
            decode = _median(steps[name])
            per_repeat = [sum(t for t, _ in steps[name][r * decode_steps:(r + 1) * decode_steps]) / decode_steps
                          for r in range(repeats)]
            result[name]["decode"] = dict(decode, seconds_per_token=decode["seconds"], steps=decode_steps,
                                          mean_per_token_by_repeat=per_repeat,
                                          step_seconds=[round(t, 6) for t, _ in steps[name]])
    return result


def _median(runs: list) -> dict:
    """Median seconds and median seconds per component over (seconds, components) runs."""
    return {"seconds": statistics.median(t for t, _ in runs),
            "components": {c: statistics.median(r[c] for _, r in runs) for c in (*COMPONENTS, "rest")}}


def analytic(pipelines: dict, configs: dict | None) -> dict | None:
    """FLOP ratios DPA / baseline for the pair's configuration, when its towers are Qwen2.5-VL ones."""


    dpa, base = pipelines["DPA"], pipelines["baseline"]
    tower = dpa.tower
    if configs is None:  # checkpoints: the analytic model covers a Qwen2.5-VL ViT under a LLaVA-format perceiver
        if not (isinstance(tower, PerceiverTower) and isinstance(tower.vit, Qwen2_5_VLTower)
                and isinstance(base.tower, Qwen2_5_VLTower)):
            return None
        vit = dict(tower.vit.vision_tower.config.to_dict(), model_type="qwen2_5_vl")
        configs = {"vit": vit, "perceiver_lm": tower.perceiver.config.to_dict(), "target": dpa.model.config.to_dict()}
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "vocab_size")

    def lm(c):
        c = dict(c)
        c.setdefault("head_dim", c["hidden_size"] // c["num_attention_heads"])
        return {k: c[k] for k in keys}

    native = tower.is_perceiver and tower.per_image_features
    side = dpa.images[0].shape[-1] if native else tower.image_size  # whole images: the processed image's side
    f = training_flops(lm(configs["target"]), lm(configs["perceiver_lm"]), configs["vit"],
                       image_size=side, tiles=1, text_tokens=base.text_tokens(),
                       prefix_tokens=len(getattr(tower, "prefix_ids", []) or []), native=native,
                       delimiters=0 if getattr(tower, "visual_positions_only", False) else 2)
    ratio = f["ratio_dpa_over_baseline"]
    return {"prefill": ratio["forward"], "decode": 1.0, "train_stage2": ratio["stage2"], "train_stage1": ratio["stage1"],
            "flops": {k: v for k, v in f.items() if k in ("dpa", "baseline", "tokens")}}


def run(args) -> int:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = _DTYPES[args.dtype]
    torch.manual_seed(args.seed)
    configs, workdir = None, None
    if args.preset:
        if args.dpa or args.baseline:
            raise ValueError("give either --preset or --dpa/--baseline checkpoints, not both")

        workdir = tempfile.TemporaryDirectory(prefix="llava-dpa-bench-")
        built = build_pair(args.preset, args.scale, workdir.name, args.image_size, dtype, args.seed, args.perceiver)
        configs = built["configs"]
        paths = {"DPA": built["DPA"], "baseline": built["baseline"]}
        print(f"built from this project's classes at scale {args.scale}: {describe(configs)}")
    elif args.dpa and args.baseline:
        if args.scale != 1 or args.perceiver != "llava":
            raise ValueError("--scale and --perceiver apply to --preset; checkpoints run as they are")
        paths = {"DPA": args.dpa, "baseline": args.baseline}
    else:
        raise ValueError("give --preset TARGET (random weights, this project's classes) or both --dpa and --baseline")
    try:
        report = bench_pair(paths, configs, args, device)
    finally:
        if workdir is not None:
            workdir.cleanup()
    print_report(report)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.output}")
    return 0


def bench_pair(paths: dict, configs: dict | None, args, device: str) -> dict:
    """The report of a built pair ({"DPA": checkpoint, "baseline": checkpoint}); configs: the components'
    configs when built from a preset (for the analytic ratios), else None. args: bench's arguments (dtype,
    text_tokens, model_base, seed, image_size, repeats, warmup, decode_steps, preset, perceiver, scale)."""
    pipelines = {name: Pipeline(name, path, device, _DTYPES[args.dtype], args.text_tokens, args.model_base, args.seed,
                                image_side=args.image_size) for name, path in paths.items()}
    ops = tuple(getattr(args, "ops", None) or OPS)
    results = measure(list(pipelines.values()), args.repeats, args.warmup, args.decode_steps, only=ops)
    return summarise(args, device, pipelines, results, analytic(pipelines, configs), ops)


def summarise(args, device, pipelines, results, theory, ops=OPS) -> dict:
    key = {"prefill": "seconds", "decode": "seconds_per_token", "train_stage2": "seconds", "train_stage1": "seconds"}
    measured = {op: results["DPA"][op][key[op]] / results["baseline"][op][key[op]] for op in ops}
    rows = {}
    for op in ops:
        expected = theory[op] if theory else None
        rows[op] = {"measured": measured[op], "analytic": expected,
                    "measured_over_analytic": measured[op] / expected if expected else None}
    if "decode" in ops:  # the steps ran in turn: the median of each pair's ratio, a second estimate
        pairs = zip(results["DPA"]["decode"]["step_seconds"], results["baseline"]["decode"]["step_seconds"])
        rows["decode"]["paired_step_ratio_median"] = statistics.median(a / b for a, b in pairs)
    return {"device": torch.cuda.get_device_name() if str(device).startswith("cuda") else "cpu",
            "dtype": args.dtype, "torch": torch.__version__, "preset": args.preset, "perceiver": args.perceiver, "scale": args.scale,
            "text_tokens": pipelines["baseline"].text_tokens(), "image_size": pipelines["baseline"].images[0].shape[-1],
            "decode_steps": args.decode_steps, "repeats": args.repeats,
            "parameters": {n: p.parameters() for n, p in pipelines.items()},
            "trainable": {n: {"stage2": p.trainable(2), "stage1": p.trainable(1)} for n, p in pipelines.items()},
            "seconds": results, "cost_ratio_dpa_over_baseline": rows,
            "analytic_flops": theory["flops"] if theory else None}


def print_report(report: dict) -> None:
    params = report["parameters"]
    print(f"parameters: DPA {params['DPA'] / 1e6:.1f}M, baseline {params['baseline'] / 1e6:.1f}M "
          f"({params['DPA'] / params['baseline']:.3f}x)")
    print(f"{'time, DPA / baseline':24s}{'measured':>10s}{'analytic':>10s}{'quotient':>10s}")
    for op, row in report["cost_ratio_dpa_over_baseline"].items():
        a = f"{row['analytic']:.3f}" if row["analytic"] else "n/a"
        q = f"{row['measured_over_analytic']:.3f}" if row["measured_over_analytic"] else "n/a"
        print(f"{op:24s}{row['measured']:10.3f}{a:>10s}{q:>10s}")
    print("throughput, DPA / baseline: inverse of the time ratio (paper Table 5: inference 0.94, training cost 1.14)")
    print("seconds per component (forward; a training step's backward is in rest; decode: the median cached step)")
    print(f"{'':24s}" + "".join(f"{c[:10]:>11s}" for c in (*COMPONENTS, "rest", "total")))
    for op in [op for op in OPS if op in report["seconds"]["DPA"]]:
        for name in ("DPA", "baseline"):
            r = report["seconds"][name][op]
            print(f"{op + ' ' + name:24s}" + "".join(f"{r['components'][c]:11.4f}" for c in (*COMPONENTS, "rest"))
                  + f"{r['seconds']:11.4f}")
