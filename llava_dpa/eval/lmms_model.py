"""The lmms-eval model `llava_dpa`: any checkpoint of this project, DPA or baseline, or a plain LLM.

    lmms-eval --model llava_dpa --model_args pretrained=<checkpoint>[,model_base=<llm>][,conv_template=qwen_3]
              [,dtype=bfloat16][,max_new_tokens=1024][,system_prompt=You are a helpful assistant.]
              --tasks mmstar,ai2d --device cuda:0 --batch_size 8
              [--gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,presence_penalty=1.5]

`system_prompt` sets the system turn of the target's prompt (default: the template's own, which for qwen_3
is none). lmms-eval splits model_args at commas and keeps the rest of the value as written (spaces and
periods too); a prompt with a comma goes in quotes, system_prompt="Be brief, be right.", which the model
strips. Quote the whole --model_args for the shell. An empty value (system_prompt=) clears the template's
system text (llava's ChatML templates cannot go without one). The perceiver's own prompt is not this: a
checkpoint records it when it is built.

Generation settings (a task's own, which `--gen_kwargs` overrides key by key): max_new_tokens, temperature,
do_sample (sampling needs both do_sample and temperature > 0), top_p, top_k (0: off, else the checkpoint's
generation_config applies), num_beams, and presence_penalty (vLLM's, see PresencePenalty).

It registers through the `lmms_eval.models` entry point (llava_dpa.eval.lmms_plugin). Why not lmms-eval's
own `llava` model: it formats prompts with vicuna_v1 unless told otherwise, casts images to float16 (which a
CPU run cannot use), and returns the mean token loss as the log-likelihood (a length-normalised, positive
number). Here the template comes from the checkpoint's config, images go in at the tower's dtype, and the
log-likelihood is the sum of the continuation's token log-probabilities.

- `pretrained` may be a plain language model (no `mm_vision_tower` in its config): that is the original-LLM
  mode for text tasks, the reference point of the forgetting numbers. A task that gives it an image fails.
- Instruction-context checkpoints need nothing special: the model's multimodal input preparation hands the
  question to the perceiver, whatever calls it.
- Batches hold either only text or only image requests: LLaVA's input preparation consumes one image per
  sample, so it cannot mix the two.
"""
from __future__ import annotations

import os
import warnings

import torch
from lmms_eval.api.model import lmms
from tqdm import tqdm

from llava_dpa.data.tokenization import IGNORE_INDEX
from llava_dpa.llava_integration.inference import to_model
from llava_dpa.loading import load_pretrained_model, resolve_device
from llava_dpa.templates import CHAT_TEMPLATE_VERSIONS, resolve_conv_mode

_GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "presence_penalty", "num_beams", "do_sample")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class PresencePenalty:
    """A logits processor with vLLM's (and OpenAI's) presence penalty, which HF generate lacks: `penalty` is
    subtracted from the logit of every token that already occurs in the reply (the generated tokens, not the
    prompt), once however often it occurs; applied before temperature, top-k and top-p, as vLLM does."""

    def __init__(self, penalty: float):
        self.penalty = float(penalty)
        self.start = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.start is None:  # the first call sees the prompt (or nothing, when generating from embeddings)
            self.start = input_ids.shape[1]
        generated = input_ids[:, self.start:]
        if generated.numel() == 0:
            return scores
        seen = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        seen.scatter_(1, generated.to(scores.device), True)
        return scores - self.penalty * seen.to(scores.dtype)


def _as_bool(value) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in {"1", "true", "yes", "on"}


def _as_lmms_response(pair: tuple[float, bool]):
    """lmms-eval 0.7.3 passes every response through unwrap_generation_output, which turns a
    (log-likelihood, is-greedy) tuple into its string, and multiple_choice scoring then fails. Wrapped in
    a GenerationResult the pair comes through intact; versions that keep tuples get the tuple."""
    from lmms_eval.api import instance

    unwrap = getattr(instance, "unwrap_generation_output", None)
    if unwrap is None or unwrap(pair)[0] == pair:
        return pair
    return instance.GenerationResult(text=pair, token_counts=None)


def _system_text(value) -> str | None:
    """A `system_prompt` model_arg as text. lmms-eval's parser keeps quotes that protect commas and turns
    true/false and numbers into Python values; one pair of matching outer quotes is removed here."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1]
    return text


def with_system(conv, system: str | None):
    """`conv` (a copy of a llava conversation template) with `system` as its system turn; None keeps the
    template's own. The qwen_3 / llama_3 templates render the text in the model's chat format
    (llava_dpa/templates.py); llava's plain-text styles take it as it is, its ChatML ones (`chatml_direct`,
    `mpt`) after their `<|im_start|>system` header."""
    from llava.conversation import SeparatorStyle


    if system is None:
        return conv
    chatml_header = "<|im_start|>system\n"
    if conv.version in CHAT_TEMPLATE_VERSIONS or conv.sep_style in (SeparatorStyle.SINGLE, SeparatorStyle.TWO,
                                                                    SeparatorStyle.LLAMA_2):
        conv.system = system
    elif conv.sep_style == SeparatorStyle.MPT and conv.system.startswith(chatml_header) and system:
        conv.system = chatml_header + system
    else:
        raise ValueError(f"system_prompt={system!r} does not fit the conversation template {conv.version!r} "
                         f"({conv.sep_style.name}); use a chat template such as qwen_3 or llama_3")
    return conv


class LlavaDPA(lmms):
    is_simple = True
    system_prompt: str | None = None  # the template's own system turn

    def __init__(self, pretrained: str, model_base: str | None = None, conv_template: str | None = None,
                 device: str | None = None, dtype: str | None = None, batch_size=1, max_new_tokens=1024,
                 attn_implementation: str | None = None, use_cache=True, system_prompt: str | None = None,
                 **kwargs) -> None:
        super().__init__()
        from llava.conversation import conv_templates


        ignored = {k: v for k, v in kwargs.items() if v is not None and k not in ("max_batch_size",)}
        if ignored:
            warnings.warn(f"llava_dpa ignores model_args {sorted(ignored)}")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if int(os.environ.get("WORLD_SIZE", 1)) > 1 and device == "cuda":
            # under `accelerate launch` each process takes its own GPU; lmms-eval shards the requests by rank
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        device = resolve_device(device)
        if dtype is None or dtype == "auto":
            torch_dtype = torch.float32 if device == "cpu" else torch.bfloat16
        elif dtype in _DTYPES:
            torch_dtype = _DTYPES[dtype]
        else:
            raise ValueError(f"dtype={dtype!r}: choose one of {sorted(_DTYPES)} or auto")
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        self._tokenizer, self._model, self._processor, self._max_length = load_pretrained_model(
            pretrained, model_base, None, device=device, dtype=torch_dtype, **extra)
        self.conv_mode = resolve_conv_mode(self._model.config, conv_template, conv_templates.keys())
        self.system_prompt = _system_text(system_prompt)
        with_system(conv_templates[self.conv_mode].copy(), self.system_prompt)  # a template that cannot: fail now
        self.batch_size_per_gpu = int(batch_size or 1)
        self.max_new_tokens = int(max_new_tokens)
        self.use_cache = _as_bool(use_cache)
        self.pad_token_id = (self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None
                             else self._tokenizer.eos_token_id)

    @property
    def model(self):
        return self._model

    @property
    def device(self):
        return self._model.device

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def is_multimodal(self) -> bool:
        return self._processor is not None

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    # -- prompts and inputs -------------------------------------------------------------------------------

    def prompt(self, context: str, n_images: int) -> str:
        """The system turn (`system_prompt`, else the template's), then the user turn (image placeholders first,
        as LLaVA trains) in the checkpoint's template, up to the assistant's reply."""
        from llava.constants import DEFAULT_IMAGE_TOKEN
        from llava.conversation import conv_templates

        if n_images and not self.is_multimodal:
            raise ValueError(f"the task gives {n_images} image(s) but the model is a text-only LLM; "
                             "the original-LLM mode evaluates text tasks only")
        if n_images and DEFAULT_IMAGE_TOKEN not in context:
            context = "\n".join([DEFAULT_IMAGE_TOKEN] * n_images) + "\n" + context
        conv = with_system(conv_templates[self.conv_mode].copy(), self.system_prompt)
        conv.append_message(conv.roles[0], context)
        conv.append_message(conv.roles[1], None)
        return conv.get_prompt()

    def _visuals(self, doc_to_visual, doc_id, task, split) -> list:
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        return [v for v in (visuals or []) if v is not None]

    def _encode(self, text: str) -> torch.Tensor:
        from llava.constants import IMAGE_TOKEN_INDEX
        from llava.mm_utils import tokenizer_image_token

        return tokenizer_image_token(text, self._tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")

    def _images(self, visuals: list):
        if not visuals:
            return None, None
        from llava.mm_utils import process_images


        rgb = [v.convert("RGB") for v in visuals]
        return to_model(process_images(rgb, self._processor, self._model.config), self._model), [v.size for v in rgb]

    # -- lmms-eval API -------------------------------------------------------------------------------------

    @torch.inference_mode()
    def generate_until(self, requests) -> list[str]:
        prepared = []
        for index, request in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            visuals = self._visuals(doc_to_visual, doc_id, task, split)
            prepared.append((index, self.prompt(context, len(visuals)), visuals, dict(gen_kwargs or {})))
        # Same-kind batches (text / images) with the same generation settings, longest first.
        prepared.sort(key=lambda p: (bool(p[2]), repr(sorted(p[3].items())), -len(p[1])))
        results: list[str | None] = [None] * len(prepared)
        batches = []
        for item in prepared:
            last = batches[-1] if batches else None
            if (last and len(last) < self.batch_size and bool(last[0][2]) == bool(item[2])
                    and last[0][3] == item[3]):
                last.append(item)
            else:
                batches.append([item])
        for batch in tqdm(batches, desc="llava_dpa generate", disable=self.rank != 0):
            texts = self._generate([p[1] for p in batch], [p[2] for p in batch], batch[0][3])
            for (index, *_), text in zip(batch, texts):
                results[index] = text
        return results

    def _generate(self, prompts: list[str], visuals: list[list], gen_kwargs: dict) -> list[str]:
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        gen_kwargs.pop("image_aspect_ratio", None)
        settings = {k: gen_kwargs[k] for k in _GENERATION_KEYS if gen_kwargs.get(k) is not None}
        settings.setdefault("max_new_tokens", self.max_new_tokens)
        temperature = float(settings.pop("temperature", 0) or 0)
        do_sample = _as_bool(settings.pop("do_sample", temperature > 0)) and temperature > 0
        if do_sample:
            settings["temperature"] = temperature  # top_k=0 turns off the checkpoint's generation_config top_k
        else:
            settings.pop("top_p", None)
            settings.pop("top_k", None)
        presence_penalty = float(settings.pop("presence_penalty", 0) or 0)
        if presence_penalty:  # like vLLM, also under greedy decoding
            from transformers import LogitsProcessorList

            settings["logits_processor"] = LogitsProcessorList([PresencePenalty(presence_penalty)])

        ids = [self._encode(p) for p in prompts]
        width = max(len(x) for x in ids)
        # Left padding, so every row's reply starts at the same position.
        input_ids = torch.full((len(ids), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, x in enumerate(ids):
            input_ids[row, width - len(x):] = x
            attention_mask[row, width - len(x):] = 1
        images, sizes = self._images([v for vs in visuals for v in vs])
        device = self._model.device
        config = self._model.config
        previous_side = getattr(config, "tokenizer_padding_side", "right")
        config.tokenizer_padding_side = "left"
        try:
            output = self._model.generate(input_ids.to(device), attention_mask=attention_mask.to(device),
                                          images=images, image_sizes=sizes, pad_token_id=self.pad_token_id,
                                          do_sample=do_sample, use_cache=self.use_cache, **settings)
        finally:
            config.tokenizer_padding_side = previous_side
        texts = []
        for row in output:
            if row.shape[0] >= width and torch.equal(row[:width].cpu(), input_ids[0]):
                row = row[width:]
            text = self._tokenizer.decode(row, skip_special_tokens=True)
            for stop in until:
                if stop:
                    text = text.split(stop)[0]
            texts.append(text.strip())
        return texts

    @torch.inference_mode()
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        results = []
        for request in tqdm(requests, desc="llava_dpa loglikelihood", disable=self.rank != 0):
            context, target, doc_to_visual, doc_id, task, split = request.args
            continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
            visuals = self._visuals(doc_to_visual, doc_id, task, split)
            logprob, greedy = self.continuation_logprob(context, continuation, visuals)
            # lmms-eval 0.7.3 scores `multiple_choice` with argmin over this value (its own models return a
            # loss), so it gets the negative log-likelihood: the likeliest choice is the smallest.
            results.append(_as_lmms_response((-logprob, greedy)))
        return results

    def continuation_logprob(self, context: str, continuation: str, visuals: list) -> tuple[float, bool]:
        """(sum of log p(continuation tokens | prompt), whether greedy decoding would produce them)."""

        prompt_ids = self._encode(self.prompt(context, len(visuals)))
        cont_ids = torch.tensor(self._tokenizer(continuation, add_special_tokens=False).input_ids, dtype=torch.long)
        if cont_ids.numel() == 0:
            raise ValueError(f"the continuation {continuation!r} encodes to no tokens")
        input_ids = torch.cat([prompt_ids, cont_ids])[None].to(self._model.device)
        labels = input_ids.clone()
        labels[0, :len(prompt_ids)] = IGNORE_INDEX
        images, sizes = self._images(visuals)
        embeds = None
        if images is not None:
            (_, position_ids, attention_mask, _, embeds,
             labels) = self._model.prepare_inputs_labels_for_multimodal(input_ids, None, None, None, labels, images,
                                                                         sizes)
        if embeds is None:
            logits = self._model(input_ids=input_ids, use_cache=False).logits
        else:
            logits = self._model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                                 use_cache=False).logits
        logits, targets = logits[0, :-1].float(), labels[0, 1:]
        scored = targets != IGNORE_INDEX
        logprobs = torch.log_softmax(logits[scored], dim=-1)
        chosen = targets[scored]
        total = logprobs.gather(-1, chosen[:, None]).sum().item()
        greedy = bool((logits[scored].argmax(-1) == chosen).all())
        return total, greedy

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("llava_dpa does not implement multi-round generation; use single-turn tasks")
