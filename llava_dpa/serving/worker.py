"""The body of LLaVA's model worker (`llava.serve.model_worker`, patches/14-serve-worker.patch delegates here).

What LLaVA's own worker got wrong, and what this does instead:
- multimodal was `'llava' in model_name`: a DPA or baseline folder without "llava" in its name had its images
  dropped and every request failed with IndexError. Here it is read from the model (its config's vision tower).
- every failure reached the client as "NETWORK ERROR DUE TO HIGH TRAFFIC". Here a bad request gets a message
  that names the problem and the fix (error_code 2); an unexpected failure names its exception (error_code 1).
- images went in as float16 (a CPU model cannot run them), the prompt length was checked against
  `num_patches` per image (wrong for anyres tiles and whole-image towers), and an exception in the generation
  thread left the client waiting for the streamer's timeout. Here the expanded length is measured by the model's
  own splice, images go in at the tower's dtype, a failed generation is reported, and a client that goes away
  stops its generation.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import traceback

import torch

from llava_dpa.data.tokenization import IMAGE_TOKEN_INDEX
from llava_dpa.llava_integration.inference import conv_mode_for, to_model
from llava_dpa.serving.requests import (
    DEFAULT_MAX_IMAGE_PIXELS,
    IMAGE_TOKEN,
    RequestError,
    check_image_count,
    decode_images,
    number,
    require,
)

logger = logging.getLogger("llava_dpa.serving")

#: error codes in the worker's JSON chunks: 0 ok, 1 the worker failed, 2 the request was refused (see message)
OK, WORKER_ERROR, BAD_REQUEST = 0, 1, 2


def is_multimodal(model) -> bool:
    """A model is multimodal when its config names a vision tower (whatever its folder is called)."""
    return bool(getattr(model.config, "mm_vision_tower", None))


def conv_template(model) -> str:
    """The conversation template the checkpoint speaks, from its config (llava.serve.cli chooses the same)."""

    return conv_mode_for(model, None)


def max_length(worker) -> int:
    """Tokens the model reads at most: its context (tokenizer_model_max_length) within its position embeddings."""
    limits = [getattr(worker, "context_len", None), getattr(worker.model.config, "max_position_embeddings", None)]
    limits = [int(x) for x in limits if x]
    return min(limits) if limits else 2048


def status_extras(worker, max_image_pixels: int) -> dict:
    """Added to the worker's /worker_get_status answer: the web UI reads the template from here."""
    return {"conv_template": conv_template(worker.model), "multimodal": worker.is_multimodal,
            "max_length": max_length(worker), "max_image_pixels": max_image_pixels}


def pixel_limit(value=None) -> int:
    """The worker's --max-image-pixels: None gives the default; anything else must be a positive whole number."""
    if value is None:
        return DEFAULT_MAX_IMAGE_PIXELS
    return positive_int(value)


def positive_int(text) -> int:
    """argparse type (and check) of --max-image-pixels: a whole number above 0."""
    import argparse

    try:
        value = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if isinstance(text, bool) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0 (pixels per request)")
    return value


def add_arguments(parser) -> None:
    parser.add_argument("--max-image-pixels", type=positive_int, default=DEFAULT_MAX_IMAGE_PIXELS,
                        help="refuse a request whose images have more pixels than this in all, from their headers, "
                             f"before decoding them (default {DEFAULT_MAX_IMAGE_PIXELS} = 6000x6000)")


def log_serving(worker) -> None:
    logger.info("serving %s: multimodal=%s template=%s max_length=%s max_image_pixels=%s", worker.model_name,
                worker.is_multimodal, conv_template(worker.model), max_length(worker), worker.max_image_pixels)


async def read_params(request):
    """The request's JSON body, or the RequestError that names why it is not JSON (prepare raises it, so the
    client gets a code-2 chunk instead of a bare 500)."""
    body = await request.body()
    try:
        return json.loads(body)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        return RequestError(f"the request body is not valid JSON ({exc}): send a JSON object with 'prompt', "
                            f"'stop' and optional 'images'")


def chunk(text: str, error_code: int = OK) -> bytes:
    return json.dumps({"text": text, "error_code": error_code}).encode() + b"\0"


class _Cancelled:
    """A stopping criterion set when the client is gone (the stream's generator is closed)."""

    def __init__(self):
        self.event = threading.Event()

    def __call__(self, input_ids, scores, **kwargs):
        return self.event.is_set()


def prepare(worker, params: dict, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
    """Validate a request and build the generation's inputs; raises RequestError naming the problem and fix."""
    if isinstance(params, RequestError):  # read_params: the body was not JSON
        raise params
    from llava.mm_utils import KeywordsStoppingCriteria, process_images, tokenizer_image_token


    model, tokenizer = worker.model, worker.tokenizer
    template = conv_template(model)
    prompt = require(params, "prompt", f"send the conversation rendered with this model's template ({template!r}; "
                                       f"GET /worker_get_status names it)")
    if not isinstance(prompt, str):
        raise RequestError(f"'prompt' must be a string, got {type(prompt).__name__}")
    stop = require(params, "stop", f"send the template's stop string (for {template!r}: "
                                   f"{stop_string(template)!r})")
    if not isinstance(stop, str) or not stop:
        raise RequestError(f"'stop' must be a non-empty string: send {stop_string(template)!r}")
    images = params.get("images") or []
    if not isinstance(images, list):
        raise RequestError(f"'images' must be a list of base64 strings, got {type(images).__name__}")
    temperature = number(params, "temperature", 1.0, float, 0.0, 100.0)
    top_p = number(params, "top_p", 1.0, float, 0.0, 1.0)
    max_new_tokens = min(number(params, "max_new_tokens", 256, int, 1, None), 1024)

    check_image_count(prompt, images, worker.is_multimodal)
    image_args = {}
    text = prompt
    if images:
        pil = decode_images(images, max_image_pixels)
        pixels = to_model(process_images(pil, worker.image_processor, model.config), model)
        image_args = {"images": pixels, "image_sizes": [im.size for im in pil]}
        if getattr(model.config, "mm_use_im_start_end", False):
            from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN

            text = prompt.replace(IMAGE_TOKEN, DEFAULT_IM_START_TOKEN + IMAGE_TOKEN + DEFAULT_IM_END_TOKEN)
    input_ids = tokenizer_image_token(text, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
    input_ids = input_ids.to(model.device)

    limit = max_length(worker)
    if input_ids.shape[1] >= limit:
        expanded = input_ids.shape[1]
    elif image_args:
        # the model's own splice measures the expanded length (anyres tiles, whole images, newline tokens);
        # the tower's features are memoised, so generate does not encode the images again
        with torch.inference_mode():
            embeds = model.prepare_inputs_labels_for_multimodal(input_ids, None, None, None, None, **image_args)[4]
        expanded = embeds.shape[1]
    else:
        expanded = input_ids.shape[1]
    room = limit - expanded
    if room < 1:
        raise RequestError(f"the prompt is {'at least ' if expanded >= limit else ''}{expanded} tokens with its "
                           f"images expanded, and this model reads at most {limit}: start a new conversation or "
                           f"send a shorter prompt (fewer turns, fewer or smaller images)")
    generation = dict(inputs=input_ids, max_new_tokens=min(max_new_tokens, room), use_cache=True,
                      do_sample=temperature > 0.001, **image_args)
    if generation["do_sample"]:
        generation.update(temperature=temperature, top_p=top_p)
    stopping = KeywordsStoppingCriteria([stop], tokenizer, input_ids)
    return prompt, stop, generation, stopping


def stop_string(template: str) -> str:
    from llava.conversation import SeparatorStyle, conv_templates

    conv = conv_templates.get(template)
    if conv is None:
        return "</s>"
    return conv.sep if conv.sep_style in (SeparatorStyle.SINGLE, SeparatorStyle.MPT) else conv.sep2


def generate_stream(worker, params: dict, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
    """LLaVA's streaming contract: chunks of {"text": prompt + answer so far, "error_code": 0}, NUL-separated."""
    from transformers import StoppingCriteriaList, TextIteratorStreamer

    prompt, stop, generation, stopping = prepare(worker, params, max_image_pixels)
    streamer = TextIteratorStreamer(worker.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=1.0)
    cancelled = _Cancelled()
    failure = []

    def run():
        try:
            with torch.inference_mode():
                worker.model.generate(streamer=streamer, stopping_criteria=StoppingCriteriaList([stopping, cancelled]),
                                      **generation)
        except BaseException as exc:  # reported to the client below instead of a silent hang
            failure.append(exc)
            logger.error("generation failed:\n%s", traceback.format_exc())
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    text = prompt
    try:
        while True:
            try:
                piece = next(streamer)
            except StopIteration:
                break
            except queue.Empty:
                if thread.is_alive():
                    continue
                break
            text += piece
            if text.endswith(stop):
                text = text[:-len(stop)]
            yield chunk(text)
        thread.join()
        if failure:
            raise failure[0]
    finally:
        cancelled.event.set()  # the client went away (or we are done): stop generating


def guarded(stream, params: dict):
    """`generate_stream_gate`: a refused request gets its own message; any other failure names its exception.
    Either way the worker goes on serving."""
    try:
        yield from stream(params)
    except RequestError as exc:
        logger.warning("refused a request: %s", exc)
        yield chunk(f"Request refused: {exc}", BAD_REQUEST)
    except Exception as exc:
        logger.error("request failed:\n%s", traceback.format_exc())
        yield chunk(f"The worker failed on this request ({type(exc).__name__}: {exc}); it goes on serving. "
                    f"The worker's log has the traceback.", WORKER_ERROR)
