"""Building and running `llava-dpa serve`: a checkpoint's splice, an engine, the FastAPI app under uvicorn."""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch
import uvicorn

from llava_dpa.loading import load_pretrained_model, resolve_device
from llava_dpa.serving.engines import HFEngine, VLLMEngine
from llava_dpa.serving.openai_api import DEFAULT_MAX_REQUEST_BYTES, ChatService, create_app
from llava_dpa.serving.requests import DEFAULT_MAX_IMAGE_PIXELS
from llava_dpa.serving.splice import DEFAULT_CACHE_IMAGES, Splice, drop_target_layers
from llava_dpa.text_path import export_language_model

logger = logging.getLogger("llava_dpa.serving")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def build_service(checkpoint, *, engine: str = "hf", model_base=None, model_name: str | None = None,
                  device: str = "cpu", dtype: str | None = None, conv_template: str | None = None,
                  max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, cache_images: int = DEFAULT_CACHE_IMAGES,
                  max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, target: str | None = None,
                  max_model_len: int | None = None, gpu_memory_utilization: float = 0.8) -> ChatService:
    """Load `checkpoint` and put it behind the endpoint. engine "hf": transformers generate in this process;
    "vllm": the stock target on vLLM (`target`, an exported folder, or exported now to a temporary one) and the
    splice here, without the target's layers."""
    device = resolve_device(device)
    torch_dtype = DTYPES[dtype] if dtype else (torch.float32 if device == "cpu" else torch.bfloat16)
    tokenizer, model, processor, context_len = load_pretrained_model(str(checkpoint), model_base, None,
                                                                     device=device, dtype=torch_dtype)
    splice = Splice(model, tokenizer, processor, template=conv_template, cache_images=cache_images)
    if engine == "hf":
        runner = HFEngine(model, tokenizer)
    elif engine == "vllm":
        if target is None:
            target = str(Path(tempfile.mkdtemp(prefix="llava-dpa-target-")) / "target")
            logger.info("exporting the stock target of %s to %s", checkpoint, target)
            export_language_model(str(checkpoint), target, model_base)
        runner = VLLMEngine.start(target, dtype=str(torch_dtype).replace("torch.", ""),
                                  max_model_len=max_model_len or context_len,
                                  gpu_memory_utilization=gpu_memory_utilization)
        drop_target_layers(model)  # vLLM runs them; this process keeps the embedding table, tower and projector
    else:
        raise ValueError(f"unknown engine {engine!r}: choose hf or vllm")
    name = model_name or Path(str(checkpoint).rstrip(os.sep)).name
    service = ChatService(splice, runner, name, context_len=max_model_len or context_len,
                          max_image_pixels=max_image_pixels, max_request_bytes=max_request_bytes)
    logger.info("serving %s (%s engine): template %s, multimodal %s, context %d tokens", name, runner.name,
                splice.template, splice.multimodal, service.max_length)
    return service


def run(service: ChatService, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    try:
        uvicorn.run(create_app(service), host=host, port=port, log_level=log_level)
    finally:
        shutdown = getattr(service.engine, "shutdown", None)
        if shutdown is not None:
            shutdown()
