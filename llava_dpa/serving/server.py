"""Building and running `llava-dpa serve`: a checkpoint's splice, an engine, the FastAPI app under uvicorn."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
import uvicorn

from llava_dpa.loading import load_pretrained_model, resolve_device
from llava_dpa.serving.engines import HFEngine, VLLMEngine
from llava_dpa.serving.openai_api import DEFAULT_MAX_REQUEST_BYTES, ChatService, create_app
from llava_dpa.serving.requests import DEFAULT_MAX_IMAGE_PIXELS
from llava_dpa.serving.splice import DEFAULT_CACHE_IMAGES, Splice, drop_target_layers
from llava_dpa.text_path import write_language_model

logger = logging.getLogger("llava_dpa.serving")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: the prefix of the folder a target is exported to when `serve --engine vllm` has no --target
TARGET_PREFIX = "llava-dpa-target-"


def position_limit(folder, what: str) -> int | None:
    """The `max_position_embeddings` of a model folder's config.json (a LLaVA checkpoint's is its target's)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{what} {folder} has no config.json: pass a model folder")
    return json.loads(path.read_text()).get("max_position_embeddings")


def check_max_model_len(max_model_len: int | None, limit: int | None, what: str) -> None:
    """A context longer than the target's positions would run it on positions it never saw: refused by name."""
    if max_model_len is not None and limit is not None and max_model_len > limit:
        raise ValueError(f"--max-model-len {max_model_len} is over the max_position_embeddings of {what} ({limit}): "
                         f"the target has no positions past {limit}; pass --max-model-len {limit} or less")


def build_service(checkpoint, *, engine: str = "hf", model_base=None, model_name: str | None = None,
                  device: str = "cpu", dtype: str | None = None, conv_template: str | None = None,
                  max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, cache_images: int = DEFAULT_CACHE_IMAGES,
                  max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, target: str | None = None,
                  max_model_len: int | None = None, gpu_memory_utilization: float = 0.8) -> ChatService:
    """Load `checkpoint` and put it behind the endpoint. engine "hf": transformers generate in this process;
    "vllm": the stock target on vLLM (`target`, an exported folder, or exported now to a temporary folder that
    the engine removes at shutdown) and the splice here, without the target's layers."""
    if engine not in ("hf", "vllm"):
        raise ValueError(f"unknown engine {engine!r}: choose hf or vllm")
    # checked before anything loads: a refused length costs nothing
    check_max_model_len(max_model_len, position_limit(checkpoint, "the checkpoint"), f"the checkpoint {checkpoint}")
    if target is not None:
        check_max_model_len(max_model_len, position_limit(target, "the target"), f"the target {target}")
    device = resolve_device(device)
    torch_dtype = DTYPES[dtype] if dtype else (torch.float32 if device == "cpu" else torch.bfloat16)
    if engine == "hf":
        tokenizer, model, processor, context_len = load_pretrained_model(str(checkpoint), model_base, None,
                                                                         device=device, dtype=torch_dtype)
        runner = HFEngine(model, tokenizer)
    else:
        tokenizer, model, processor, context_len, runner = _start_vllm(
            checkpoint, model_base, device, torch_dtype, target, max_model_len, gpu_memory_utilization)
    splice = Splice(model, tokenizer, processor, template=conv_template, cache_images=cache_images)
    name = model_name or Path(str(checkpoint).rstrip(os.sep)).name
    service = ChatService(splice, runner, name, context_len=max_model_len or context_len,
                          max_image_pixels=max_image_pixels, max_request_bytes=max_request_bytes)
    logger.info("serving %s (%s engine): template %s, multimodal %s, context %d tokens", name, runner.name,
                splice.template, splice.multimodal, service.max_length)
    return service


def _start_vllm(checkpoint, model_base, device: str, torch_dtype, target, max_model_len, gpu_memory_utilization):
    """The model is loaded on the CPU, in the serving dtype: the stock target is exported from it (when no
    `target` is given), its decoder layers and LM head are dropped, and only what the splice uses (embedding table,
    tower, projector) moves to `device`. vLLM's worker refuses to start when the GPU's free memory is below total x
    gpu_memory_utilization, so the serving process must not hold the target there when vLLM starts."""
    tokenizer, model, processor, context_len = load_pretrained_model(str(checkpoint), model_base, None,
                                                                     device="cpu", dtype=torch_dtype)
    limit = getattr(model.config, "max_position_embeddings", None)
    length = max_model_len or min(x for x in (context_len, limit) if x)
    temporary = None
    try:
        if target is None:
            temporary = tempfile.mkdtemp(prefix=TARGET_PREFIX)
            target = str(Path(temporary) / "target")
            logger.info("exporting the stock target of %s to %s (%s)", checkpoint, target, torch_dtype)
            write_language_model(model, tokenizer, target, source=str(checkpoint), model_base=model_base)
        drop_target_layers(model)  # vLLM runs them; this process keeps the embedding table, tower and projector
        model.to(device)
        if str(device).startswith("cuda"):
            torch.cuda.empty_cache()
        runner = VLLMEngine.start(target, dtype=str(torch_dtype).replace("torch.", ""), max_model_len=length,
                                  gpu_memory_utilization=gpu_memory_utilization, remove_on_shutdown=temporary)
    except BaseException:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
        raise
    return tokenizer, model, processor, context_len, runner


def run(service: ChatService, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    try:
        uvicorn.run(create_app(service), host=host, port=port, log_level=log_level)
    finally:
        shutdown = getattr(service.engine, "shutdown", None)
        if shutdown is not None:
            shutdown()
