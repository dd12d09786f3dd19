"""A small client of LLaVA's model worker: a streamed request, a conversation rendered with the worker's own
template, and a load run (`python -m llava_dpa.serving.client --worker URL --image IMG ...`) that reports
requests/s and latency percentiles (docs/performance.md)."""
from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import requests


def encode_image(path) -> str:
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode()


def status(worker: str, timeout: float = 10) -> dict:
    return requests.post(worker + "/worker_get_status", timeout=timeout).json()


def stream(worker: str, payload: dict, timeout: float = 120) -> dict:
    """One streamed request: {"text": last text, "error_code", "chunks": n, "texts": each chunk's text,
    "seconds": wall time}."""
    start = time.perf_counter()
    last, texts = {"text": "", "error_code": -1}, []
    with requests.post(worker + "/worker_generate_stream", json=payload, stream=True, timeout=timeout) as response:
        for piece in response.iter_lines(decode_unicode=False, delimiter=b"\0"):
            if piece:
                last = json.loads(piece.decode())
                texts.append(last["text"])
            if time.perf_counter() - start > timeout:
                raise TimeoutError(f"request still streaming after {timeout} s")
    return {**last, "chunks": len(texts), "texts": texts, "seconds": time.perf_counter() - start}


def prompt_for(template: str, turns: list[tuple[str, str | None]]) -> tuple[str, str]:
    """(prompt, stop) of a conversation in `template`: turns of (user text, assistant answer or None)."""
    from llava.conversation import SeparatorStyle, conv_templates

    conv = conv_templates[template].copy()
    for question, answer in turns:
        conv.append_message(conv.roles[0], question)
        conv.append_message(conv.roles[1], answer)
    stop = conv.sep if conv.sep_style in (SeparatorStyle.SINGLE, SeparatorStyle.MPT) else conv.sep2
    return conv.get_prompt(), stop


def answer_of(result: dict, prompt: str) -> str:
    return result["text"][len(prompt):].strip()


def load_run(worker: str, payloads: list[dict], concurrency: int, timeout: float = 120) -> dict:
    """Send every payload, `concurrency` at a time; answers in payload order, requests/s, p50/p95 latency."""
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(lambda p: stream(worker, p, timeout), payloads))
    wall = time.perf_counter() - start
    latencies = sorted(r["seconds"] for r in results)
    return {"results": results, "wall_s": wall, "requests_per_s": len(payloads) / wall,
            "p50_s": statistics.median(latencies),
            "p95_s": latencies[min(len(latencies) - 1, int(round(0.95 * (len(latencies) - 1))))]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", required=True, help="the worker's address, e.g. http://127.0.0.1:21002")
    parser.add_argument("--image", action="append", required=True, help="an image file (repeat for several)")
    parser.add_argument("--question", default="What color is the shape?")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    args = parser.parse_args(argv)
    template = status(args.worker)["conv_template"]
    prompt, stop = prompt_for(template, [("<image>\n" + args.question, None)])
    images = [encode_image(p) for p in args.image]
    payloads = [{"prompt": prompt, "stop": stop, "images": [images[i % len(images)]], "temperature": 0,
                 "max_new_tokens": args.max_new_tokens} for i in range(args.requests)]
    for r in range(args.rounds):
        run = load_run(args.worker, payloads, args.concurrency)
        errors = sum(1 for x in run["results"] if x["error_code"] != 0)
        print(json.dumps({"round": r, "requests": args.requests, "concurrency": args.concurrency, "errors": errors,
                          "requests_per_s": round(run["requests_per_s"], 2), "p50_s": round(run["p50_s"], 3),
                          "p95_s": round(run["p95_s"], 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
