"""Serving throughput: `llava-dpa serve --engine hf` beside LLaVA's model worker, DPA beside the baseline.

    python -m llava_dpa.serving.bench --dpa DPA_CKPT --baseline BASELINE_CKPT --images DIR \\
        [--requests 16] [--rounds 3] [--max-tokens 32] [--device cpu] [--concurrency 1] [--output result.json]
        [--engine vllm --no-worker --dtype bfloat16 --device cuda]     # the GPU run: DPA beside the baseline

For each checkpoint it starts both servers (`python -m llava_dpa.commands.serve`, and `python -m
llava.serve.model_worker` under LLaVA's controller), on 127.0.0.1, and sends each the same requests one at a time, streamed,
greedy: one image of DIR per request (distinct images, so neither server's image cache helps) with the same
question. A round sends every (checkpoint, server) its requests, in an order that alternates from round to round;
tokens are the answer's tokens under the checkpoint's tokenizer, counted the same way for both servers.

It prints tokens/s per (checkpoint, server) as the median over rounds with the rounds' range, and the paired
ratios (same round): serve / worker per checkpoint and DPA / baseline per server. A ratio whose rounds fall on
both sides of 1 is printed as within noise, not as a result.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from llava.conversation import conv_templates

from llava_dpa.loading import load_tokenizer
from llava_dpa.serving.splice import conversation_prompt
from llava_dpa.serving.worker import stop_string
from llava_dpa.templates import infer_conv_mode

SERVERS = ("serve", "worker")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Process:
    def __init__(self, args: list, log: Path, ready_url: str, method: str = "get"):
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([str(a) for a in args], stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{args[2]} exited with {self.proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if getattr(requests, method)(ready_url, timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{args[2]} not ready after 300 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)


def start_controller(folder: Path):
    """LLaVA's controller: a worker without one blocks in its heart-beat retries after each request."""
    port = _free_port()
    process = _Process([sys.executable, "-m", "llava.serve.controller", "--host", "127.0.0.1", "--port", port],
                       folder / "controller.log", f"http://127.0.0.1:{port}/list_models", method="post")
    return process, f"http://127.0.0.1:{port}"


def start_servers(checkpoint: str, device: str, folder: Path, controller: str | None, serve_args=()) -> dict:
    serve_port, worker_port = _free_port(), _free_port()
    name = Path(checkpoint).name
    serve = _Process([sys.executable, "-m", "llava_dpa.commands.serve", checkpoint, "--device", device,
                      "--port", serve_port, "--served-model-name", name, *serve_args], folder / f"{name}-serve.log",
                     f"http://127.0.0.1:{serve_port}/health")
    if controller is None:
        return {"serve": (serve, f"http://127.0.0.1:{serve_port}", name)}
    worker = _Process([sys.executable, "-m", "llava.serve.model_worker", "--host", "127.0.0.1", "--port", worker_port,
                       "--worker-address", f"http://127.0.0.1:{worker_port}", "--controller-address",
                       controller, "--model-path", checkpoint, "--device", device,
                       "--limit-model-concurrency", "1"], folder / f"{name}-worker.log",
                      f"http://127.0.0.1:{worker_port}/worker_get_status", method="post")
    return {"serve": (serve, f"http://127.0.0.1:{serve_port}", name),
            "worker": (worker, f"http://127.0.0.1:{worker_port}", name)}


def ask_serve(url: str, model: str, image_b64: str, question: str, max_tokens: int) -> str:
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + image_b64}},
                {"type": "text", "text": question}]}]}
    text = ""
    with requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[len("data: "):])
                if "error" in chunk:
                    raise RuntimeError(chunk["error"]["message"])
                if chunk["choices"]:
                    text += chunk["choices"][0]["delta"].get("content") or ""
    return text


def ask_worker(url: str, prompt: str, stop: str, image_b64: str, max_tokens: int) -> str:
    params = {"prompt": prompt, "images": [image_b64], "stop": stop, "temperature": 0, "max_new_tokens": max_tokens}
    last = None
    with requests.post(url + "/worker_generate_stream", json=params, stream=True, timeout=600) as r:
        for chunk in r.iter_lines(delimiter=b"\0"):
            if chunk:
                last = json.loads(chunk.decode())
    if last is None or last["error_code"] != 0:
        raise RuntimeError(f"the worker failed: {last}")
    return last["text"][len(prompt):]


def measure(args) -> dict:
    images = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if len(images) < args.requests:
        raise SystemExit(f"{args.images} has {len(images)} images; --requests {args.requests} needs as many")
    encoded = [base64.b64encode(p.read_bytes()).decode() for p in images[:args.requests]]
    checkpoints = {"baseline": args.baseline, "DPA": args.dpa}
    folder = Path(tempfile.mkdtemp(prefix="llava-dpa-serve-bench-"))
    running, prompts = {}, {}
    servers = SERVERS if args.worker else ("serve",)
    controller, controller_url = start_controller(folder) if args.worker else (None, None)
    try:
        for kind, checkpoint in checkpoints.items():
            tokenizer = load_tokenizer(checkpoint)
            config = json.loads((Path(checkpoint) / "config.json").read_text())
            template = infer_conv_mode(argparse.Namespace(**config), conv_templates.keys())
            prompt = conversation_prompt(template, [{"role": "user", "content": [
                {"type": "image", "image": None}, {"type": "text", "text": args.question}]}])[0]
            prompts[kind] = (tokenizer, prompt, stop_string(template))
            running[kind] = start_servers(checkpoint, args.device, folder, controller_url,
                                          ["--engine", args.engine, *(["--dtype", args.dtype] if args.dtype else [])])
        runs = {(k, s): [] for k in checkpoints for s in servers}
        answers = {}
        order = [(k, s) for k in checkpoints for s in servers]
        for round_ in range(args.rounds + 1):  # round 0 warms every server up and is not counted
            for kind, server in (order if round_ % 2 else order[::-1]):
                _, url, name = running[kind][server]
                tokenizer, prompt, stop = prompts[kind]
                tokens, start = 0, time.perf_counter()

                def one(item, server=server, url=url, name=name, prompt=prompt, stop=stop):
                    index, image = item
                    if server == "serve":
                        return index, ask_serve(url, name, image, args.question, args.max_tokens)
                    return index, ask_worker(url, prompt, stop, image, args.max_tokens)

                with ThreadPoolExecutor(args.concurrency) as pool:
                    for index, text in pool.map(one, enumerate(encoded)):
                        tokens += len(tokenizer(text, add_special_tokens=False).input_ids)
                        answers.setdefault((kind, index), {})[server] = text.strip()
                seconds = time.perf_counter() - start
                if round_:
                    runs[(kind, server)].append({"tokens": tokens, "seconds": seconds})
        differing = [k for k, v in answers.items() if len(set(v.values())) > 1]
    finally:
        for servers in running.values():
            for process, _, _ in servers.values():
                process.stop()
        if controller is not None:
            controller.stop()
    return {"runs": {f"{k}/{s}": v for (k, s), v in runs.items()}, "requests": args.requests,
            "engine": args.engine, "concurrency": args.concurrency,
            "max_tokens": args.max_tokens, "question": args.question, "device": args.device,
            "answers_differing_between_servers": [f"{k}#{i}" for k, i in differing],
            "torch_threads": os.environ.get("OMP_NUM_THREADS", "default")}


def report(result: dict) -> str:
    runs = {tuple(k.split("/")): v for k, v in result["runs"].items()}
    rate = {k: [r["tokens"] / r["seconds"] for r in v] for k, v in runs.items()}
    lines = [f"{result['requests']} requests per round, {result.get('concurrency', 1)} at a time, streamed, greedy, max_tokens "
             f"{result['max_tokens']}; {len(next(iter(rate.values())))} rounds; device {result['device']}", "",
             "| checkpoint | server | tokens/s (median) | rounds' range | tokens per reply |", "|---|---|---|---|---|"]
    for (kind, server), values in rate.items():
        per_reply = statistics.mean(r["tokens"] for r in runs[(kind, server)]) / result["requests"]
        lines.append(f"| {kind} | {server} | {statistics.median(values):.1f} | {min(values):.1f}-{max(values):.1f} | "
                     f"{per_reply:.1f} |")
    lines += ["", "| ratio (paired by round) | median | rounds' range | reading |", "|---|---|---|---|"]

    def ratio(label, a, b):
        values = [x / y for x, y in zip(rate[a], rate[b])]
        low, high = min(values), max(values)
        reading = ("one round: its spread is unknown" if len(values) < 2 else
                   "within noise (rounds on both sides of 1)" if low < 1 < high else "a result")
        lines.append(f"| {label} | {statistics.median(values):.3f} | {low:.3f}-{high:.3f} | {reading} |")

    servers = sorted({server for _, server in rate}, key=SERVERS.index)
    if "worker" in servers:
        for kind in ("baseline", "DPA"):
            ratio(f"{kind}: serve / worker", (kind, "serve"), (kind, "worker"))
    for server in servers:
        ratio(f"{server}: DPA / baseline", ("DPA", server), ("baseline", server))
    if result["answers_differing_between_servers"]:
        lines.append(f"\nanswers that differ between the two servers: {result['answers_differing_between_servers']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m llava_dpa.serving.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--dpa", required=True)
    p.add_argument("--baseline", required=True)
    p.add_argument("--images", required=True, help="a folder of images, one per request")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--question", default="What colour is the shape?")
    p.add_argument("--device", default="cpu")
    p.add_argument("--engine", choices=("hf", "vllm"), default="hf", help="serve's engine (vllm: a GPU)")
    p.add_argument("--dtype", default=None, help="serve's --dtype")
    p.add_argument("--concurrency", type=int, default=1, help="requests in flight at once")
    p.add_argument("--no-worker", dest="worker", action="store_false",
                   help="serve only (no LLaVA model worker): DPA beside the baseline")
    p.add_argument("--output", default=None, help="write the raw runs as JSON")
    args = p.parse_args(argv)
    result = measure(args)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1))
    print(report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
