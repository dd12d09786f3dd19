"""`llava-dpa bench`: prefill, decode and training-step throughput of DPA against its controlled baseline,
measured side by side in one run, with the ratios (paper Table 5: DPA-Qwen3-4B runs at 0.94x).

Two ways to build the pair:
- `--dpa CKPT --baseline CKPT`: two checkpoints of this project, run through the LLaVA model code itself
  (the tower, the perceiver, anyres and all), on a synthetic image and prompt;
- `--preset qwen3-4b` (or another target preset): random weights at the published sizes (analysis.cost
  presets), the components wired as the two models wire them: Qwen2.5-VL ViT -> projector -> target for the
  baseline; ViT -> projector -> Qwen3-0.6B blocks (a short prompt prefix + the visual tokens; the visual
  positions' last hidden states) -> projector -> target for DPA. No checkpoint is needed.
Throughputs: prefill = samples/s for one image + `--text-tokens` text tokens; decode = generated tokens/s
after that prefill (KV cache); train = samples/s of forward + backward with every weight trainable (stage 2),
without the optimizer step (identical for both apart from the parameter count). The two models alternate
within every repeat so that clock and thermal drift hit both alike.
"""
from __future__ import annotations

import json
import statistics
import time

import torch
from tqdm import tqdm

from llava_dpa.towers.qwen2_5_vl import merged_tokens

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


class PresetPipeline:
    """Random-weight components at a preset's sizes, wired as DPA or as its baseline."""

    def __init__(self, target: str, dpa: bool, device: str, dtype: torch.dtype, image_size: int,
                 text_tokens: int, perceiver_lm: str = "qwen3-0.6b", vit: str = "qwen2.5-vl-vit",
                 prefix_tokens: int = 8, seed: int = 0):
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
        from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

        from llava_dpa.analysis.cost import PRESETS

        torch.manual_seed(seed)
        self.name, self.device = ("DPA" if dpa else "baseline"), device

        def lm_config(preset):
            kw = dict(PRESETS[preset])
            return AutoConfig.for_model(kw.pop("model_type"), **kw)

        vit_kw = dict(PRESETS[vit])
        vit_kw.pop("model_type")
        with torch.device(device):
            self.vit = Qwen2_5_VisionTransformerPretrainedModel._from_config(Qwen2_5_VLVisionConfig(**vit_kw)).to(dtype)
            self.target = AutoModelForCausalLM.from_config(lm_config(target), dtype=dtype)
            d_vit, d_t = vit_kw["out_hidden_size"], self.target.config.hidden_size
            if dpa:
                self.perceiver = AutoModel.from_config(lm_config(perceiver_lm), dtype=dtype)
                d_p = self.perceiver.config.hidden_size
                self.projectors = torch.nn.ModuleList([_mlp(d_vit, d_p), _mlp(d_p, d_t)]).to(dtype)
            else:
                self.perceiver = None
                self.projectors = torch.nn.ModuleList([_mlp(d_vit, d_t)]).to(dtype)
        cfg = self.vit.config
        side = image_size // cfg.patch_size
        channels = 3 * cfg.temporal_patch_size * cfg.patch_size ** 2
        generator = torch.Generator().manual_seed(seed)
        self.pixels = torch.randn(side * side, channels, generator=generator).to(device, dtype)
        self.grid = torch.tensor([[1, side, side]], device=device)
        vocab = self.target.config.vocab_size
        self.text = torch.randint(vocab, (1, text_tokens), generator=generator).to(device)
        self.prefix = torch.randint(1000, (1, prefix_tokens), generator=generator).to(device)
        self.modules = [m for m in (self.vit, self.perceiver, self.projectors, self.target) if m is not None]

    def _embeds(self):
        feats = merged_tokens(self.vit(self.pixels, grid_thw=self.grid))[None]
        feats = self.projectors[0](feats)
        if self.perceiver is not None:
            prefix = self.perceiver.get_input_embeddings()(self.prefix)
            hidden = self.perceiver(inputs_embeds=torch.cat([prefix, feats], 1)).last_hidden_state
            feats = self.projectors[1](hidden[:, prefix.shape[1]:])
        return torch.cat([feats, self.target.get_input_embeddings()(self.text)], 1)

    def prefill(self):
        return self.target(inputs_embeds=self._embeds(), use_cache=True, logits_to_keep=1)

    def decode(self, steps: int) -> None:
        out = self.prefill()
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for _ in range(steps):
            out = self.target(input_ids=token, past_key_values=cache, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)

    def train_step(self) -> None:
        embeds = self._embeds()
        labels = torch.full(embeds.shape[:2], -100, device=self.device, dtype=torch.long)
        labels[:, -self.text.shape[1]:] = self.text
        self.target(inputs_embeds=embeds, labels=labels, use_cache=False).loss.backward()
        for module in self.modules:
            module.zero_grad(set_to_none=True)

    def parameters(self) -> int:
        return sum(p.numel() for m in self.modules for p in m.parameters())


def _mlp(d_in, d_out):
    return torch.nn.Sequential(torch.nn.Linear(d_in, d_out), torch.nn.GELU(), torch.nn.Linear(d_out, d_out))


class CheckpointPipeline:
    """A checkpoint of this project on a synthetic image and prompt, through the LLaVA model code."""

    def __init__(self, path: str, device: str, dtype: torch.dtype, text_tokens: int, model_base=None, seed: int = 0):
        from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
        from llava.conversation import conv_templates
        from llava.mm_utils import process_images, tokenizer_image_token
        from PIL import Image

        from llava_dpa.llava_integration.inference import conv_mode_for, to_model
        from llava_dpa.loading import load_pretrained_model

        self.name, self.device = path, device
        self.tokenizer, self.model, processor, _ = load_pretrained_model(path, model_base, None, device=device,
                                                                         dtype=dtype)
        tower = self.model.get_vision_tower()
        generator = torch.Generator().manual_seed(seed)
        size = tower.image_size
        array = (torch.rand(size, size, 3, generator=generator) * 255).to(torch.uint8).numpy()
        image = Image.fromarray(array)
        ids = torch.randint(100, 1000, (text_tokens,), generator=generator)
        filler = self.tokenizer.decode(ids, skip_special_tokens=True)
        conv = conv_templates[conv_mode_for(self.model, None)].copy()
        conv.append_message(conv.roles[0], f"{DEFAULT_IMAGE_TOKEN}\n{filler}")
        conv.append_message(conv.roles[1], None)
        self.input_ids = tokenizer_image_token(conv.get_prompt(), self.tokenizer, IMAGE_TOKEN_INDEX,
                                               return_tensors="pt")[None].to(device)
        self.images = to_model(process_images([image], processor, self.model.config), self.model)
        self.sizes = [image.size]

    def prefill(self):
        return self.model(input_ids=self.input_ids, images=self.images, image_sizes=self.sizes, use_cache=True)

    def decode(self, steps: int) -> None:
        self.model.generate(self.input_ids, images=self.images, image_sizes=self.sizes, do_sample=False,
                            max_new_tokens=steps, min_new_tokens=steps, pad_token_id=self.tokenizer.pad_token_id
                            or self.tokenizer.eos_token_id)

    def train_step(self) -> None:
        labels = self.input_ids.clone()
        labels[labels < 0] = -100
        self.model.train()
        with torch.enable_grad():
            self.model(input_ids=self.input_ids, labels=labels, images=self.images, image_sizes=self.sizes).loss.backward()
        self.model.zero_grad(set_to_none=True)
        self.model.eval()

    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def _timed(fn, device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def measure(pipelines: list, device: str, repeats: int = 5, warmup: int = 1, decode_steps: int = 32) -> dict:
    """Median seconds per operation for every pipeline; operations interleave across pipelines."""
    ops = {"prefill": lambda p: p.prefill(), "decode": lambda p: p.decode(decode_steps),
           "train": lambda p: p.train_step()}
    times = {p.name: {op: [] for op in ops} for p in pipelines}
    for op, fn in ops.items():
        no_grad = op != "train"
        for i in tqdm(range(warmup + repeats), desc=f"bench {op}"):
            for p in pipelines:
                with torch.set_grad_enabled(not no_grad):
                    seconds = _timed(lambda: fn(p), device)
                if i >= warmup:
                    times[p.name][op].append(seconds)
    result = {}
    for name, per_op in times.items():
        prefill = statistics.median(per_op["prefill"])
        decode_total = statistics.median(per_op["decode"])
        result[name] = {
            "prefill_samples_per_s": 1.0 / prefill,
            # the decode run includes its own prefill; the rest is decode_steps tokens
            "decode_tokens_per_s": decode_steps / max(decode_total - prefill, 1e-9),
            "train_samples_per_s": 1.0 / statistics.median(per_op["train"]),
        }
    return result


def run(args) -> int:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = _DTYPES[args.dtype]
    torch.manual_seed(args.seed)
    if args.preset:
        if args.dpa or args.baseline:
            raise ValueError("give either --preset or --dpa/--baseline checkpoints, not both")
        pipelines = [PresetPipeline(args.preset, dpa, device, dtype, args.image_size, args.text_tokens,
                                    seed=args.seed) for dpa in (True, False)]
    elif args.dpa and args.baseline:
        pipelines = [CheckpointPipeline(path, device, dtype, args.text_tokens, args.model_base, args.seed)
                     for path in (args.dpa, args.baseline)]
        pipelines[0].name, pipelines[1].name = "DPA", "baseline"
    else:
        raise ValueError("give --preset TARGET (random weights at published sizes) or both --dpa and --baseline")
    for p in pipelines:
        for module in getattr(p, "modules", [getattr(p, "model", None)]):
            module.eval()
    results = measure(pipelines, device, args.repeats, args.warmup, args.decode_steps)
    params = {p.name: p.parameters() for p in pipelines}
    ratios = {k: results["DPA"][k] / results["baseline"][k] for k in results["DPA"]}
    report = {"device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
              "dtype": args.dtype, "torch": torch.__version__, "preset": args.preset,
              "text_tokens": args.text_tokens, "image_size": args.image_size, "decode_steps": args.decode_steps,
              "repeats": args.repeats, "parameters": params, "throughput": results,
              "ratio_dpa_over_baseline": ratios}
    print(f"{'':28s}{'DPA':>14s}{'baseline':>14s}{'ratio':>8s}")
    print(f"{'parameters':28s}{params['DPA'] / 1e9:13.3f}B{params['baseline'] / 1e9:13.3f}B"
          f"{params['DPA'] / params['baseline']:8.3f}")
    for key in results["DPA"]:
        print(f"{key:28s}{results['DPA'][key]:14.3f}{results['baseline'][key]:14.3f}{ratios[key]:8.3f}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.output}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench", help="prefill / decode / train-step throughput of DPA vs its baseline, with ratios")
    p.add_argument("--preset", default=None, help="target preset for random-weight models (e.g. qwen3-4b)")
    p.add_argument("--dpa", default=None, help="a DPA checkpoint")
    p.add_argument("--baseline", default=None, help="its controlled baseline checkpoint")
    p.add_argument("--model-base", default=None)
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="bfloat16")
    p.add_argument("--image-size", type=int, default=448, help="preset mode: the square image side")
    p.add_argument("--text-tokens", type=int, default=256)
    p.add_argument("--decode-steps", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="also write the results as JSON here")
    p.set_defaults(func=run)
