"""The engines behind `llava-dpa serve`: they run the stock target on the splice's input embeddings.

A DPA target is a stock language model (Qwen3, LLaMA: 1-D positions); everything DPA adds (the perceiver, the
aligner, the splice) runs before it, in the serving process (`splice.py`). So an engine needs no new model
class: it takes a prompt as embeddings and streams text.

- `HFEngine`: transformers' `generate(inputs_embeds=...)` on the checkpoint's target as its stock class
  (`splice.stock_target`, the LLaVA model's own weight tensors), streamed with `TextIteratorStreamer`; one
  generation at a time per model (a lock), so concurrent requests are safe. It runs on CPU: CI tests the
  endpoint, the request handling and the splice end to end with it.
- `VLLMEngine`: vLLM's V1 `AsyncLLM` (vLLM >= 0.11) started on the exported stock target with
  `enable_prompt_embeds=True`; each request is `{"prompt_embeds": tensor}` with a `SamplingParams`. vLLM is
  imported only when this engine starts (it has no CPU wheel); the engine object is passed in, so everything up
  to the engine call is tested with a stand-in.

Both yield `Delta`s: new text, and at the end the finish reason and the number of generated tokens.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import threading
import traceback

import torch
from transformers import LogitsProcessorList, StoppingCriteriaList, TextIteratorStreamer

from llava_dpa.serving.splice import stock_target

logger = logging.getLogger("llava_dpa.serving")


@dataclasses.dataclass
class Sampling:
    """A request's generation settings, in OpenAI's terms (temperature 0 is greedy)."""
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    stop: list[str] = dataclasses.field(default_factory=list)
    stop_token_ids: list[int] = dataclasses.field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclasses.dataclass
class Delta:
    text: str
    finish_reason: str | None = None   # "stop" or "length" on the last delta
    completion_tokens: int = 0          # generated tokens so far


class Penalties:
    """OpenAI's presence and frequency penalties as a logits processor: a token's logit is lowered by
    `presence` once it has been generated and by `frequency` per time it has (the reply only, not the prompt)."""

    def __init__(self, presence: float, frequency: float):
        self.presence, self.frequency = float(presence), float(frequency)
        self.start = None

    def __call__(self, input_ids, scores):
        if self.start is None:  # generating from embeddings: input_ids hold only generated tokens
            self.start = input_ids.shape[1]
        generated = input_ids[:, self.start:]
        if generated.numel() == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.presence * (counts > 0).to(scores.dtype) - self.frequency * counts


class _Stop:
    """Stops generation when set (a stop string was seen, or the client went away)."""

    def __init__(self):
        self.event = threading.Event()

    def __call__(self, input_ids, scores, **kwargs):
        return self.event.is_set()


class _Streamer(TextIteratorStreamer):
    """TextIteratorStreamer handing each piece to an asyncio queue (the server's event loop) and counting the
    generated tokens."""

    def __init__(self, tokenizer, loop, queue):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.loop, self.out, self.tokens = loop, queue, 0

    def put(self, value):
        if not self.next_tokens_are_prompt:
            self.tokens += int(value.numel())
        super().put(value)

    def on_finalized_text(self, text: str, stream_end: bool = False):
        if text:
            self.loop.call_soon_threadsafe(self.out.put_nowait, ("text", text))


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """(text before the first stop string, whether one was found)."""
    cuts = [text.find(s) for s in stops if s and s in text]
    return (text[:min(cuts)], True) if cuts else (text, False)


class HFEngine:
    """transformers' generate on the stock target, fed the splice's embeddings."""
    name = "hf"

    def __init__(self, model, tokenizer):
        self.target = stock_target(model)
        self.tokenizer = tokenizer
        self.lock = threading.Lock()  # one generation at a time on this model
        eos = self.target.generation_config.eos_token_id
        self.eos = set([eos] if isinstance(eos, int) else (eos or []))
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(self.eos), 0)

    def generate_kwargs(self, embeds: torch.Tensor, sampling: Sampling) -> dict:
        eos = sorted(self.eos | set(sampling.stop_token_ids))
        kwargs = dict(inputs_embeds=embeds[None].to(self.target.device, self.target.dtype),
                      attention_mask=torch.ones(1, embeds.shape[0], dtype=torch.long, device=self.target.device),
                      max_new_tokens=sampling.max_tokens, eos_token_id=eos, pad_token_id=self.pad, use_cache=True,
                      do_sample=not sampling.greedy)
        if not sampling.greedy:  # greedy: do_sample=False, whatever sampling defaults the generation_config holds
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or 0)
        if sampling.presence_penalty or sampling.frequency_penalty:
            kwargs["logits_processor"] = LogitsProcessorList([Penalties(sampling.presence_penalty,
                                                                        sampling.frequency_penalty)])
        return kwargs

    async def generate(self, embeds: torch.Tensor, sampling: Sampling, request_id: str):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        streamer = _Streamer(self.tokenizer, loop, queue)
        stop = _Stop()
        kwargs = self.generate_kwargs(embeds, sampling)
        result = {}

        def run():
            try:
                with self.lock, torch.inference_mode():
                    if stop.event.is_set():  # the client left while waiting its turn
                        result["tokens"] = torch.zeros(0, dtype=torch.long)
                        return
                    if sampling.seed is not None and not sampling.greedy:
                        torch.manual_seed(sampling.seed)  # the global generator, under the lock
                    out = self.target.generate(streamer=streamer, stopping_criteria=StoppingCriteriaList([stop]),
                                               **kwargs)
                    result["tokens"] = out[0].cpu()
            except BaseException as exc:  # reported to the client instead of a hang
                logger.error("generation %s failed:\n%s", request_id, traceback.format_exc())
                result["error"] = exc
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))

        thread = threading.Thread(target=run, name=f"generate-{request_id}", daemon=True)
        thread.start()
        held = max((len(s) for s in sampling.stop), default=1) - 1  # text that may still become a stop string
        text, sent, stopped = "", 0, False
        try:
            while True:
                kind, piece = await queue.get()
                if kind == "end":
                    break
                if stopped:
                    continue
                text += piece
                text, stopped = cut_at_stop(text, sampling.stop)
                if stopped:
                    stop.event.set()
                ready = len(text) if stopped else max(sent, len(text) - held)
                if ready > sent:
                    yield Delta(text[sent:ready], completion_tokens=streamer.tokens)
                    sent = ready
            if "error" in result:
                raise result["error"]
            tokens = result.get("tokens", torch.zeros(0, dtype=torch.long))
            if len(text) > sent:
                yield Delta(text[sent:], completion_tokens=streamer.tokens)
            hit_eos = tokens.numel() > 0 and int(tokens[-1]) in set(kwargs["eos_token_id"])
            finish = "stop" if stopped or hit_eos or tokens.numel() < sampling.max_tokens else "length"
            yield Delta("", finish, int(tokens.numel()))
        finally:
            stop.event.set()  # the client went away, or we are done: stop generating


#: the vLLM the `vllm` extra installs (setup.py); 0.11.0 works too, without prefix caching (see `check_vllm_version`)
VLLM_VERSION = "0.11.1"


def check_vllm_version(version: str) -> None:
    """Refuse a vLLM without the V1 engine's prompt embeddings; warn where prefix caching is off."""
    from packaging.version import Version

    if Version(version) < Version("0.11.0"):
        raise RuntimeError(f"vLLM {version} is installed; --engine vllm needs vLLM >= 0.11 (V1's AsyncLLM with "
                           f"enable_prompt_embeds): pip install -e '.[vllm]' (vLLM {VLLM_VERSION})")
    if Version(version) < Version("0.11.1"):
        # vllm/engine/arg_utils.py (0.11.0), EngineArgs._set_default_args: enable_prompt_embeds sets
        # enable_prefix_caching to False, whatever was asked; 0.11.1 caches prompt-embeds prefixes (vLLM PR #27219)
        logger.warning("vLLM %s turns prefix caching off whenever prompt embeddings are enabled: every request "
                       "prefills its whole prompt; vLLM %s keeps prefix caching (pip install -e '.[vllm]')",
                       version, VLLM_VERSION)


class VLLMEngine:
    """vLLM's V1 AsyncLLM on the stock target, fed `{"prompt_embeds": tensor}`.

    `engine` is an AsyncLLM (or a stand-in with the same `generate(prompt, sampling_params, request_id)` async
    generator); `sampling_params` is vLLM's SamplingParams class and `delta` its RequestOutputKind.DELTA.
    `remove_on_shutdown`: a folder this engine owns (the target exported for it), removed by `shutdown`."""
    name = "vllm"

    def __init__(self, engine, sampling_params, delta, *, remove_on_shutdown: str | None = None):
        self.engine, self.sampling_params_class, self.delta = engine, sampling_params, delta
        self.remove_on_shutdown = remove_on_shutdown

    @staticmethod
    def engine_arguments(target_dir: str, *, dtype: str = "auto", max_model_len: int | None = None,
                         gpu_memory_utilization: float = 0.8, **engine_args) -> dict:
        """vLLM's AsyncEngineArgs for the stock target folder: its weights and tokenizer, prompt embeddings on."""
        return dict(model=str(target_dir), tokenizer=str(target_dir), enable_prompt_embeds=True, dtype=dtype,
                    max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization, **engine_args)

    @classmethod
    def start(cls, target_dir: str, *, remove_on_shutdown: str | None = None, **arguments) -> "VLLMEngine":
        """Start AsyncLLM on `target_dir` (`engine_arguments` names the settings). The caller has freed the GPU of
        everything but what it keeps (vLLM's worker refuses to start when free memory is below total x
        gpu_memory_utilization)."""
        # vLLM is imported here, not at module level: an optional dependency with no CPU wheel, needed only by
        # --engine vllm
        import vllm
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.sampling_params import RequestOutputKind, SamplingParams
        from vllm.v1.engine.async_llm import AsyncLLM

        check_vllm_version(vllm.__version__)
        args = AsyncEngineArgs(**cls.engine_arguments(target_dir, **arguments))
        return cls(AsyncLLM.from_engine_args(args), SamplingParams, RequestOutputKind.DELTA,
                   remove_on_shutdown=remove_on_shutdown)

    def sampling_params(self, sampling: Sampling):
        """vLLM's SamplingParams for a request: temperature 0 is vLLM's greedy; only new text comes back (DELTA).
        It stops on exactly the ids the hf engine stops on (`sampling.stop_token_ids`: the template's end of turn
        and the checkpoint's generation-config eos ids), and on stop strings: `ignore_eos` switches off vLLM's own
        addition of the tokenizer's eos, which transformers' generate does not stop on, so the two engines stop
        alike (vLLM still stops on every id in stop_token_ids: v1/core/sched/utils.py, check_stop)."""
        kwargs = dict(n=1, max_tokens=sampling.max_tokens, temperature=float(sampling.temperature),
                      top_p=1.0 if sampling.greedy else float(sampling.top_p), seed=sampling.seed,
                      stop=list(sampling.stop) or None, stop_token_ids=list(sampling.stop_token_ids),
                      ignore_eos=True, presence_penalty=float(sampling.presence_penalty),
                      frequency_penalty=float(sampling.frequency_penalty), skip_special_tokens=True,
                      output_kind=self.delta)
        if sampling.top_k and not sampling.greedy:
            kwargs["top_k"] = int(sampling.top_k)
        return self.sampling_params_class(**kwargs)

    @staticmethod
    def prompt(embeds: torch.Tensor) -> dict:
        """vLLM's EmbedsPrompt: [tokens, hidden] on the CPU (the engine core may run in another process)."""
        return {"prompt_embeds": embeds.detach().to("cpu").contiguous()}

    async def generate(self, embeds: torch.Tensor, sampling: Sampling, request_id: str):
        tokens = 0
        stream = self.engine.generate(self.prompt(embeds), self.sampling_params(sampling), request_id)
        try:
            async for output in stream:
                completion = output.outputs[0]
                tokens += len(completion.token_ids)
                finish = completion.finish_reason if output.finished else None
                if finish is not None and finish not in ("stop", "length"):
                    finish = "stop"  # vLLM's "abort" and others: the reply ended
                yield Delta(completion.text, finish, tokens)
        finally:
            await stream.aclose()  # AsyncLLM aborts an unfinished request when its generator is closed

    def shutdown(self) -> None:
        try:
            shutdown = getattr(self.engine, "shutdown", None)
            if shutdown is not None:
                shutdown()
        finally:
            if self.remove_on_shutdown is not None:
                shutil.rmtree(self.remove_on_shutdown, ignore_errors=True)
