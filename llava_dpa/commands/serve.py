"""`llava-dpa serve CHECKPOINT`: an OpenAI-compatible chat endpoint (docs/serving.md); the work is
`llava_dpa.serving`'s. `python -m llava_dpa.commands.serve CHECKPOINT ...` is the same command."""
from __future__ import annotations

import argparse
import logging

from llava_dpa.loading import TORCH_DTYPES
from llava_dpa.serving.requests import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_REQUEST_BYTES
from llava_dpa.serving.splice import DEFAULT_CACHE_IMAGES
from llava_dpa.serving.worker import positive_int


def _serve(args) -> int:
    # Lazy: the server needs the serve extra (fastapi, uvicorn, openai); `llava-dpa --help` and the other
    # commands must start without it (cli.main names the extra when it is missing).
    from llava_dpa.serving.server import build_service, run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = build_service(args.checkpoint, engine=args.engine, model_base=args.model_base,
                            model_name=args.served_model_name, device=args.device, dtype=args.dtype,
                            conv_template=args.conv_template, max_image_pixels=args.max_image_pixels,
                            cache_images=args.image_cache, max_request_bytes=args.max_request_bytes,
                            target=args.target, max_model_len=args.max_model_len,
                            gpu_memory_utilization=args.gpu_memory_utilization)
    run(service, host=args.host, port=args.port)
    return 0


def register(sub) -> None:
    p = sub.add_parser("serve", help="an OpenAI-compatible chat endpoint (/v1/chat/completions) for a DPA or "
                                     "baseline checkpoint, on transformers (hf) or vLLM")
    p.add_argument("checkpoint", help="the checkpoint folder (full; LoRA or projector-only with --model-base)")
    p.add_argument("--engine", choices=("hf", "vllm"), default="hf",
                   help="hf: transformers generate in this process (CPU or GPU); vllm: the stock target on vLLM "
                        ">= 0.11 with prompt embeddings, the perceiver and aligner in this process (GPU)")
    p.add_argument("--model-base", default=None, help="the base LLM of a LoRA or projector-only checkpoint")
    p.add_argument("--served-model-name", default=None, help="the model name clients send (default: the "
                                                             "checkpoint folder's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; the endpoint has "
                                                       "no authentication)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="cuda", help="where the splice (and the hf engine) run (default cuda, "
                                                    "falling back to cpu)")
    p.add_argument("--dtype", choices=sorted(TORCH_DTYPES), default=None,
                   help="default: float32 on cpu, bfloat16 on gpu")
    p.add_argument("--conv-template", default=None, help="override the template the checkpoint's config names")
    p.add_argument("--max-image-pixels", type=positive_int, default=DEFAULT_MAX_IMAGE_PIXELS,
                   help="refuse a request whose images have more pixels than this in all, read from their headers "
                        f"before decoding (default {DEFAULT_MAX_IMAGE_PIXELS} = 6000x6000)")
    p.add_argument("--max-request-bytes", type=positive_int, default=DEFAULT_MAX_REQUEST_BYTES)
    p.add_argument("--image-cache", type=int, default=DEFAULT_CACHE_IMAGES,
                   help="images whose visual tokens are kept, keyed by content and the text the perceiver reads "
                        f"with them (default {DEFAULT_CACHE_IMAGES}; 0: encode every time)")
    p.add_argument("--target", default=None, help="vllm: the checkpoint's stock target folder (llava-dpa "
                                                  "export-llm / export-hf); default: exported to a temporary folder")
    p.add_argument("--max-model-len", type=positive_int, default=None,
                   help="context length (default: the smaller of the checkpoint's context and its target's "
                        "max_position_embeddings; a larger value is refused)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.8,
                   help="vllm: share of GPU memory for vLLM; the rest holds the perceiver, aligner and embedding "
                        "table of this process (default 0.8)")
    p.set_defaults(func=_serve)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="llava-dpa")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", *(argv or [])] if argv is not None else None)
    return args.func(args)


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
