"""LLaVA's serving stack, unmodified entry points (controller, model worker, gradio web server), for every
checkpoint kind whatever its folder's name: streaming multi-turn chats equal the CLI's answers, the web UI in
headless Chromium, bad requests named, 32 concurrent requests, the tower's memo under threads.

One controller and one worker per checkpoint for the whole module; every server binds 127.0.0.1 on a free port
and is stopped with its process group (tests/serving_stack.py)."""
from __future__ import annotations

import base64
import io
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import requests
import torch
from conftest import REPO
from serving_stack import listening_addresses, start_controller, start_web, start_worker, wait_for_models, wait_for_web

from llava_dpa.serving.client import answer_of, encode_image, load_run, prompt_for, status, stream

# one xdist worker holds the module's servers (--dist loadgroup); the group of the dpa_adapters fixture, whose QLoRA
# checkpoint the 4-bit worker serves: the fixture is trained once per worker, so its users share one
pytestmark = pytest.mark.xdist_group("dpa_adapters")

QUESTIONS = ("What color is the shape?", "What shape is it?")
MAX_PIXELS = 128 * 128  # the workers' --max-image-pixels here (the zoo's images are smaller)
ARTIFACTS = Path(os.environ.get("LLAVA_DPA_ARTIFACTS", REPO / "outputs" / "test-artifacts"))


def tiles_copy(checkpoint: Path, out: Path) -> Path:
    """The baseline as LLaVA-NeXT serves it: anyres tiles (the same weights; config says anyres)."""
    from conftest import TINY_PINPOINTS

    from llava_dpa.data.anyres import parse_pinpoints

    out.mkdir(parents=True)
    for f in checkpoint.iterdir():
        if f.is_file() and f.name != "config.json":
            (out / f.name).symlink_to(f)
    config = json.loads((checkpoint / "config.json").read_text())
    config.update(image_aspect_ratio="anyres", mm_patch_merge_type="spatial",
                  image_grid_pinpoints=[list(p) for p in parse_pinpoints(TINY_PINPOINTS)])
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def stack(zoo, baseline_stage2, dpa_stage2, dpa_adapters, official_import, tmp_path_factory):
    """The controller and one worker per checkpoint kind; names carry no "llava" (nor, for the 4-bit worker,
    anything that says so). Yields {kind: (server, model_name, model_path, model_base, load_4bit)}."""
    root = tmp_path_factory.mktemp("serving")
    servers = []
    try:
        controller = start_controller(root)
        servers.append(controller)
        kinds = {
            "baseline_tiles": (tiles_copy(baseline_stage2, root / "baseline_qwen3_tiles"), None, False),
            "dpa": (dpa_stage2, None, False),
        }
        workers = {}
        for kind, (path, base, q4) in kinds.items():
            workers[kind] = start_worker(kind, controller, path, root, ["--max-image-pixels", MAX_PIXELS])
        # the session's official import (read-only), linked under a name of its own
        official = root / "official_dpa4b"
        official.symlink_to(official_import, target_is_directory=True)
        kinds["official"] = (official, None, False)
        # the session's QLoRA checkpoint with --model-base, loaded in 4 bits (bitsandbytes on CPU): both loader paths
        # in one worker; linked under a name without "llava" or "4bit"
        lora = root / "dpa_lora_r8"
        lora.symlink_to(dpa_adapters[4][0], target_is_directory=True)
        kinds["lora_int4"] = (lora, Path(zoo["qwen3_lm"]), True)
        for kind in ("official", "lora_int4"):
            path, base, q4 = kinds[kind]
            extra = ["--max-image-pixels", MAX_PIXELS] + (["--model-base", base] if base else []) + \
                (["--load-4bit"] if q4 else [])
            workers[kind] = start_worker(kind, controller, path, root, extra)
        servers += workers.values()
        names = {kind: Path(path).name for kind, (path, _, _) in kinds.items()}
        wait_for_models(controller, list(workers.values()), list(names.values()))
        yield {"controller": controller, "root": root, "kinds": {
            kind: (workers[kind], names[kind], *kinds[kind]) for kind in kinds}}
    finally:
        for server in reversed(servers):
            server.stop()


def image_b64(zoo, name="img_001.png") -> str:
    return encode_image(f"{zoo['images']}/{name}")


def reference_chat(path, base, load_4bit, image_file, questions, max_new_tokens=8):
    """What llava.serve.cli answers (its own code path: config template, one image tensor, greedy)."""
    from llava.conversation import conv_templates
    from llava.mm_utils import KeywordsStoppingCriteria, process_images, tokenizer_image_token
    from PIL import Image

    from llava_dpa.data.tokenization import IMAGE_TOKEN_INDEX
    from llava_dpa.llava_integration.inference import conv_mode_for, decode_reply, to_model
    from llava_dpa.loading import load_pretrained_model

    tokenizer, model, processor, _ = load_pretrained_model(str(path), str(base) if base else None, None,
                                                           load_4bit=load_4bit, device="cpu")
    image = Image.open(image_file).convert("RGB")
    pixels = to_model(process_images([image], processor, model.config), model)
    conv = conv_templates[conv_mode_for(model, None)].copy()
    answers = []
    for turn, question in enumerate(questions):
        conv.append_message(conv.roles[0], ("<image>\n" if turn == 0 else "") + question)
        conv.append_message(conv.roles[1], None)
        ids = tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]
        stop = KeywordsStoppingCriteria([conv.sep], tokenizer, ids)
        with torch.inference_mode():
            out = model.generate(ids, images=pixels, image_sizes=[image.size], do_sample=False,
                                 max_new_tokens=max_new_tokens, use_cache=True, stopping_criteria=[stop])
        answers.append(decode_reply(tokenizer, out, ids))
        conv.messages[-1][-1] = answers[-1]
    return answers


def served_chat(worker_url, image, questions, max_new_tokens=8):
    """A two-turn conversation through the worker's streaming API, as the web UI sends it. Returns the answers and,
    per turn, the answer as each streamed chunk had it."""
    template = status(worker_url)["conv_template"]
    turns, answers, chunks = [], [], []
    for turn, question in enumerate(questions):
        turns.append((("<image>\n" if turn == 0 else "") + question, None))
        prompt, stop = prompt_for(template, turns)
        result = stream(worker_url, {"prompt": prompt, "stop": stop, "images": [image], "temperature": 0,
                                     "max_new_tokens": max_new_tokens}, timeout=60)
        assert result["error_code"] == 0, result
        assert all(t.startswith(prompt) for t in result["texts"]), result["texts"]
        answers.append(answer_of(result, prompt))
        chunks.append([t[len(prompt):] for t in result["texts"]])
        turns[-1] = (turns[-1][0], answers[-1])
    return answers, chunks


# ---- every checkpoint kind, whatever its name ------------------------------------------------------------------

def test_multimodal_and_template_come_from_the_config(stack):
    for kind, (worker, name, *_rest) in stack["kinds"].items():
        assert "llava" not in name.lower()
        got = status(worker.url)
        assert got["multimodal"] is True and got["conv_template"] == "qwen_3", (kind, got)
        assert got["model_names"] == [name] and got["max_image_pixels"] == MAX_PIXELS


@pytest.mark.parametrize("kind", ["baseline_tiles", "dpa", "official", "lora_int4"])
def test_each_kind_streams_a_two_turn_image_chat_equal_to_the_cli(stack, zoo, kind):
    worker, _, path, base, load_4bit = stack["kinds"][kind]
    answers, chunks = served_chat(worker.url, image_b64(zoo), QUESTIONS)
    # equal to the CLI's, whatever the tiny CPU training taught (an empty answer included)
    assert answers == reference_chat(path, base, load_4bit, f"{zoo['images']}/img_001.png", QUESTIONS)
    for answer, texts in zip(answers, chunks):
        # streamed: each chunk carries the answer so far (LLaVA's contract), in order, the last one all of it; a
        # chunk per word at least (TextIteratorStreamer sends text at each space), not one chunk at the end
        assert texts and texts[-1].strip() == answer, (texts, answer)
        assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:])), texts
        assert len(texts) >= len(answer.split()), (texts, answer)


def test_the_controller_and_workers_listen_on_127_0_0_1_only_by_default(stack):
    """Started without --host (tests/serving_stack.py): LLaVA's defaults were 0.0.0.0 and localhost."""
    servers = [stack["controller"]] + [worker for worker, *_ in stack["kinds"].values()]
    for server in servers:
        assert listening_addresses(server.port) == {"127.0.0.1"}, server.name


# ---- bad requests ------------------------------------------------------------------------------------------------

def bomb_png(side: int) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_bad_requests_are_named_and_the_worker_goes_on(stack, zoo):
    worker = stack["kinds"]["dpa"][0]
    good_prompt, stop = prompt_for("qwen_3", [("<image>\n" + QUESTIONS[0], None)])
    good = {"prompt": good_prompt, "stop": stop, "images": [image_b64(zoo)], "temperature": 0, "max_new_tokens": 4}
    expected = answer_of(stream(worker.url, good), good_prompt)
    two_images, _ = prompt_for("qwen_3", [("<image>\n<image>\n" + QUESTIONS[0], None)])
    cases = {
        "malformed base64": ({"images": ["not base64!!"]}, ["not valid base64", "base64-encoded"]),
        "not an image": ({"images": [base64.b64encode(b"hello, not a picture").decode()]},
                         ["is not an image", "PNG, JPEG or WebP"]),
        "decompression bomb": ({"images": [bomb_png(512)]}, ["512x512", f"limit of {MAX_PIXELS}",
                                                              "--max-image-pixels", "send a smaller image"]),
        "more <image> than images": ({"prompt": two_images}, ["2 '<image>'", "1 image(s)", "exactly one"]),
        "fewer <image> than images": ({"images": [image_b64(zoo)] * 2}, ["1 '<image>'", "2 image(s)"]),
        "too long": ({"prompt": good_prompt.replace(QUESTIONS[0], "word " * 3000)},
                     ["this model reads at most", "start a new conversation"]),
        "no stop": ({"stop": None}, ["no 'stop'", "'<|im_end|>'"]),
        "no prompt": ({"prompt": None}, ["no 'prompt'", "qwen_3"]),
        "bad max_new_tokens": ({"max_new_tokens": "many"}, ["'max_new_tokens' must be a int"]),
        "NaN temperature": ({"temperature": "NaN"}, ["'temperature' must be a finite float", "not finite"]),
    }
    for case, (change, needles) in cases.items():
        result = stream(worker.url, {**good, **change}, timeout=60)
        assert result["error_code"] == 2, (case, result)
        assert "NETWORK ERROR" not in result["text"]
        for needle in needles:
            assert needle in result["text"], (case, needle, result["text"])
        # the next good request is answered
        assert answer_of(stream(worker.url, good), good_prompt) == expected, case
    # a body that is not JSON: a named refusal in the stream, not a bare 500; JSON's NaN literal: refused too
    for body, needle in ((b'{"prompt": "hi", ', "not valid JSON"),
                         (json.dumps({**good, "temperature": float("nan")}).encode(), "must be a finite float")):
        response = requests.post(worker.url + "/worker_generate_stream", data=body, timeout=60)
        assert response.status_code == 200, response.text
        refused = json.loads(response.content.split(b"\0")[0])
        assert refused["error_code"] == 2 and needle in refused["text"], refused
    assert answer_of(stream(worker.url, good), good_prompt) == expected


# ---- request checks without a server -----------------------------------------------------------------------------

def png_b64(width: int, height: int) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.fast
def test_an_image_placeholder_to_a_text_only_model_is_refused():
    from llava_dpa.serving.requests import RequestError, check_image_count

    with pytest.raises(RequestError, match=r"no vision tower.*remove the '<image>' placeholder"):
        check_image_count("<image>\nWhat is it?", [], multimodal=False)
    with pytest.raises(RequestError, match="send text only"):
        check_image_count("What is it?", [png_b64(2, 2)], multimodal=False)
    check_image_count("What is it?", [], multimodal=False)


@pytest.mark.fast
def test_the_pixel_limit_is_per_request_and_read_from_the_headers(monkeypatch):
    from PIL import ImageFile

    from llava_dpa.serving.requests import MAX_IMAGES, RequestError, check_image_count, decode_images

    loaded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loaded.append(self.size) or real_load(self))
    two = [png_b64(100, 100), png_b64(100, 60)]
    with pytest.raises(RequestError, match=r"image 1 is 100x100, image 2 is 100x60: 16000 pixels in all, over "
                                           r"this worker's limit of 15000 pixels per request \(--max-image-pixels\)"):
        decode_images(two, 15000)
    assert loaded == []  # refused before any image was decoded
    assert [im.size for im in decode_images(two, 16000)] == [(100, 100), (100, 60)]
    many = [png_b64(1, 1)] * (MAX_IMAGES + 1)
    with pytest.raises(RequestError, match=f"more than this worker takes in one request \\({MAX_IMAGES}\\)"):
        check_image_count("<image>" * len(many), many, multimodal=True)


@pytest.mark.fast
def test_numbers_must_be_finite_not_boolean_and_whole_for_ints():
    from llava_dpa.serving.requests import RequestError, number

    for value, kind in ((float("nan"), float), (float("inf"), float), ("-inf", float), (True, float), (True, int),
                        (4.5, int), ("4.5", int), (float("inf"), int), (None, int)):
        with pytest.raises(RequestError, match=f"must be a (finite )?{kind.__name__}"):
            number({"x": value}, "x", 1, kind)
    assert number({"x": 4.0}, "x", 1, int) == 4 and number({"x": "7"}, "x", 1, int) == 7
    assert number({"x": 10**30}, "x", 1, int) == 10**30 and number({}, "x", 0.5, float) == 0.5


@pytest.mark.fast
def test_max_image_pixels_must_be_positive():
    import argparse

    from llava_dpa.serving.requests import DEFAULT_MAX_IMAGE_PIXELS
    from llava_dpa.serving.worker import add_arguments, pixel_limit

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).max_image_pixels == DEFAULT_MAX_IMAGE_PIXELS
    assert parser.parse_args(["--max-image-pixels", "16384"]).max_image_pixels == 16384
    for bad in ("0", "-5", "many"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--max-image-pixels", bad])
    assert pixel_limit(None) == DEFAULT_MAX_IMAGE_PIXELS and pixel_limit(7) == 7
    with pytest.raises(argparse.ArgumentTypeError):
        pixel_limit(0)


@pytest.mark.fast
def test_an_unknown_template_is_logged_by_model_and_name(monkeypatch, caplog):
    from llava_dpa.serving import web

    monkeypatch.setattr(web, "worker_status", lambda url, model: {"conv_template": "no_such_template"})
    # Read the warning at the logger itself: a server run earlier in this process may have reconfigured logging
    # (uvicorn, LLaVA's build_logger), which is not what this test is about.
    logger = logging.getLogger("llava_dpa.serving")
    monkeypatch.setattr(logger, "disabled", False)
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("WARNING", logger="llava_dpa.serving"):
            assert web.template_for("http://127.0.0.1:1", "my-model") == web.FALLBACK_TEMPLATE
    finally:
        logger.removeHandler(caplog.handler)
    assert "my-model" in caplog.text and "no_such_template" in caplog.text
    monkeypatch.setattr(web, "worker_status", lambda url, model: {"conv_template": "qwen_3"})
    assert web.template_for("http://127.0.0.1:1", "my-model") == "qwen_3"


# ---- load ----------------------------------------------------------------------------------------------------------

def test_the_load_client_reports_each_round(stack, zoo, capsys):
    """`python -m llava_dpa.serving.client` (docs/serving_llava.md, "Load"): one JSON line per round, every request
    answered."""
    from llava_dpa.serving.client import main

    worker = stack["kinds"]["dpa"][0]
    images = [f"{zoo['images']}/img_{i:03d}.png" for i in range(2)]
    assert main(["--worker", worker.url, *(a for im in images for a in ("--image", im)), "--requests", "4",
                 "--concurrency", "4", "--rounds", "2", "--max-new-tokens", "2"]) == 0
    rounds = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(r["round"], r["requests"], r["concurrency"], r["errors"]) for r in rounds] == [(0, 4, 4, 0), (1, 4, 4, 0)]
    assert all(r["requests_per_s"] > 0 and 0 < r["p50_s"] <= r["p95_s"] for r in rounds), rounds


@pytest.mark.parametrize("kind", ["baseline_tiles", "dpa"])
def test_32_concurrent_streams_answer_like_one_at_a_time_with_bounded_memory(stack, zoo, kind):
    worker = stack["kinds"][kind][0]
    prompt, stop = prompt_for("qwen_3", [("<image>\n" + QUESTIONS[0], None)])
    images = [image_b64(zoo, f"img_{i:03d}.png") for i in range(4)]
    payloads = [{"prompt": prompt, "stop": stop, "images": [images[i % 4]], "temperature": 0, "max_new_tokens": 4}
                for i in range(32)]
    alone = [answer_of(stream(worker.url, payloads[i]), prompt) for i in range(4)]
    rss, figures = [], []
    for _ in range(3):
        result = load_run(worker.url, payloads, concurrency=32, timeout=120)
        assert [r["error_code"] for r in result["results"]] == [0] * 32
        assert [answer_of(r, prompt) for r in result["results"]] == [alone[i % 4] for i in range(32)]
        rss.append(worker.rss_bytes())
        figures.append((round(result["requests_per_s"], 2), round(result["p50_s"], 3), round(result["p95_s"], 3)))
    print(f"\n{kind}: 32 requests, --limit-model-concurrency 4: (req/s, p50 s, p95 s) per round {figures}; "
          f"worker RSS {[r >> 20 for r in rss]} MiB")
    # no growth across rounds once warm (the first round allocates the caches)
    assert rss[2] - rss[1] < 64 << 20, rss


def test_the_towers_memo_under_concurrent_requests(perceiver):
    """Many threads encode one image (and others, evicting) through the DPA tower's memo: no error, equal
    features, the memo within its size."""
    from types import SimpleNamespace

    from llava_dpa.llava_integration.tower_registry import build_vision_tower

    tower = build_vision_tower(SimpleNamespace(mm_vision_tower=str(perceiver), mm_vision_select_layer=-1))
    tower.eval()  # inference: the memo is used
    torch.manual_seed(0)
    shared = torch.randn(1, 3, 32, 32)
    others = [torch.randn(1, 3, 32, 32) for _ in range(12)]
    with torch.inference_mode():
        expected = tower.features(shared)
    # one image, 12 threads x 6 calls: each thread encodes at most once (two that miss together may both encode);
    # a tower without its memo would encode 72 times
    before, same, errors = tower.memo.computations, [], []

    def repeat():
        try:
            with torch.inference_mode():
                same.extend(tower(shared).clone() for _ in range(6))
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(repr(exc))

    threads = [threading.Thread(target=repeat) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(same) == 72 and all(torch.equal(r, expected) for r in same), errors
    assert 1 <= tower.memo.computations - before <= 12, tower.memo.computations - before
    # then the same image among 12 others, which evict each other from the 8 entries
    results = []

    def hit(i):
        try:
            with torch.inference_mode():
                for j in range(6):
                    results.append(tower(shared).clone())
                    tower(others[(i + j) % len(others)])
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(repr(exc))

    threads = [threading.Thread(target=hit, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads), errors
    assert len(results) == 72 and all(torch.equal(r, expected) for r in results)
    assert len(tower.memo) <= tower.memo.size


# ---- the web UI in a browser -------------------------------------------------------------------------------------

def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError("no chromium: install Debian's package (apt-get install -y chromium; `make test` does)")


def bot_messages(page) -> list[str]:
    return [m.inner_text().strip() for m in page.locator('#chatbot [data-testid="bot"]').all()]


#: records, in the page, the last bot message's text at every change of the chat (so no state the answer passes
#: through is missed between two polls)
WATCH_CHAT = """() => {
    window.__seen = [];
    const chat = document.querySelector('#chatbot');
    new MutationObserver(() => {
        const bots = chat.querySelectorAll('[data-testid="bot"]');
        if (bots.length) window.__seen.push(bots[bots.length - 1].innerText.trim());
    }).observe(chat, {subtree: true, childList: true, characterData: true});
}"""


def ask(page, question: str, answers_before: int, timeout_s: float = 90) -> tuple[str, list[str]]:
    """Send a question; wait for the answer to finish. Returns (answer, the partial answers the chat showed while
    it streamed: LLaVA's web UI shows the text so far with a cursor '▌')."""
    page.evaluate(WATCH_CHAT)
    page.get_by_placeholder("Enter text and press ENTER").fill(question)
    page.get_by_role("button", name="Send").click()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        messages = bot_messages(page)
        if len(messages) > answers_before and not messages[-1].endswith("▌") and \
                page.get_by_role("button", name="Regenerate").is_enabled():
            partial = [t[:-1].strip() for t in page.evaluate("() => window.__seen") if t.endswith("▌")]
            return messages[-1], partial
        time.sleep(0.05)
    raise AssertionError(f"no answer to {question!r} in {timeout_s} s; chat: {bot_messages(page)}")


def open_chat(browser, url: str, image: str):
    page = browser.new_page(viewport={"width": 1280, "height": 1100})
    page.set_default_timeout(30000)
    page.goto(url)
    page.get_by_role("button", name="Send").wait_for()
    page.get_by_text("Parameters").click()  # greedy decoding (the slider's number box), as the CLI runs
    temperature = page.get_by_label("number input for Temperature")
    temperature.fill("0")
    temperature.press("Enter")
    served = 'img[src*="gradio_api/file="]'  # an uploaded image is shown from the server (Send waits for it)
    before = page.locator(served).count()
    page.locator('input[type="file"]').first.set_input_files(image)
    deadline = time.monotonic() + 30
    while page.locator(served).count() <= before:
        assert time.monotonic() < deadline, "the image upload did not finish in 30 s"
        time.sleep(0.1)
    return page


def test_web_ui_in_headless_chromium(stack, zoo):
    """Both model-list modes: the page loads, an image is uploaded, a question and a follow-up are answered, streamed
    (the chat shows each answer growing) with the answers llava.serve.cli gives; screenshots are saved."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise AssertionError("playwright is missing: pip install -e .[serve]") from None
    _, name, path, _, _ = stack["kinds"]["baseline_tiles"]
    webs = {mode: start_web(stack["controller"], stack["root"], mode) for mode in ("once", "reload")}
    image = f"{zoo['images']}/img_001.png"
    try:
        expected = reference_chat(path, None, False, image, QUESTIONS, max_new_tokens=512)
        for web in webs.values():
            wait_for_web(web)
            assert listening_addresses(web.port) == {"127.0.0.1"}, web.name  # started without --host
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), headless=True, args=["--no-sandbox"])
            try:
                # once: the model chosen by the URL (LLaVA's ?model=); reload: the list's first (the baseline)
                page = open_chat(browser, f"{webs['once'].url}/?model={name}", image)
                first, partial = ask(page, QUESTIONS[0], 0)
                second, partial_second = ask(page, QUESTIONS[1], 1)
                # streamed: the chat showed the answer growing, cursor first, each state a beginning of the answer
                for answer, states in ((first, partial), (second, partial_second)):
                    assert states and all(answer.startswith(state) for state in states), (answer, states)
                assert page.locator("#chatbot img").count() >= 1  # the uploaded image is shown in the chat
                page.screenshot(path=str(ARTIFACTS / "serving-web-ui-once.png"), full_page=True)
                assert [first, second] == expected
                page = open_chat(browser, webs["reload"].url, image)
                assert page.locator("#model_selector_row input").input_value() == name  # sorts first
                again, _ = ask(page, QUESTIONS[0], 0)
                page.screenshot(path=str(ARTIFACTS / "serving-web-ui-reload.png"), full_page=True)
                assert again == expected[0]
            finally:
                browser.close()
        print(f"\nscreenshots in {ARTIFACTS}")
    except BaseException:
        for web in webs.values():
            print(web.output())
        raise
    finally:
        for web in webs.values():
            web.stop()
