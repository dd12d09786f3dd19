"""`llava-dpa serve`: the DPA splice against the LLaVA path, the OpenAI-compatible endpoint on the hf engine (answers
against LLaVA's own generate, streaming, bad requests, 127.0.0.1), the request the vLLM engine gets (a stand-in for
vLLM's AsyncLLM), and lmms-eval's `openai_compatible` model through the server against the `llava_dpa` model."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import torch
from PIL import Image

from conftest import PY, run
from serving_stack import Server, free_port, listening_addresses, wait_until
from test_official_pipeline import DPA as OFFICIAL_DPA
from test_official_pipeline import official  # noqa: F401  (the session fixture: the Qwen-VL-native perceiver's DPA)

pytestmark = pytest.mark.xdist_group("openai_serve")  # one server per module, on one worker

SERVED = "dpa"
PIXEL_LIMIT = 20_000  # 16 of the zoo's 32x32 images fit; one 200x200 image does not


def png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image(zoo, n: int):
    return Image.open(Path(zoo["images"]) / f"img_{n:03d}.png").convert("RGB")


def user(*parts):
    return {"role": "user", "content": list(parts)}


def text(t):
    return {"type": "text", "text": t}


def picture(pil):
    return {"type": "image", "image": pil}


def as_openai(messages):
    """The splice's messages (PIL images) as an OpenAI request's (data: URLs)."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = [{"type": "image_url", "image_url": {"url": png(p["image"])}} if p["type"] == "image" else p
                       for p in content]
        out.append({"role": m["role"], "content": content})
    return out


def llava_path(splice, spliced):
    """What LLaVA's model computes for a spliced prompt: (its own splice's embeddings, its logits)."""
    from llava.mm_utils import process_images

    model, images = splice.model, spliced.images
    kwargs = {}
    if images:
        kwargs = dict(images=process_images(images, splice.image_processor, model.config),
                      image_sizes=[im.size for im in images])
    ids = spliced.input_ids[None]
    with torch.inference_mode():
        embeds = (model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, kwargs["images"],
                                                             kwargs["image_sizes"])[4][0] if images else None)
        logits = model(input_ids=ids, **kwargs).logits[0]
    return embeds, logits, kwargs


def llava_greedy(splice, spliced, max_new_tokens=16) -> str:
    """LLaVA's own generate (input_ids + images) decoded as the server decodes."""
    _, _, kwargs = llava_path(splice, spliced)
    with torch.inference_mode():
        out = splice.model.generate(spliced.input_ids[None], max_new_tokens=max_new_tokens, do_sample=False, **kwargs)
    return splice.tokenizer.decode(out[0], skip_special_tokens=True)


@pytest.fixture(scope="module")
def splices(dpa_stage2, baseline_stage2):
    from llava_dpa.serving.splice import Splice

    return {"dpa": Splice.from_checkpoint(dpa_stage2), "baseline": Splice.from_checkpoint(baseline_stage2)}


def conversation(zoo):
    """Two user turns, an image in each, the second after its question."""
    return [user(picture(image(zoo, 1)), text("What colour is the shape?")),
            {"role": "assistant", "content": "red"},
            user(text("And in this one?"), picture(image(zoo, 2)))]


# ---- point 2: the splice ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["dpa", "baseline"])
def test_splice_gives_the_llava_paths_embeddings_and_logits(splices, zoo, kind):
    """The splice's embeddings are LLaVA's splice's, and the stock target (Qwen3ForCausalLM, the checkpoint's own
    weights) fed them gives the LLaVA model's logits."""
    from llava_dpa.serving.splice import stock_target

    splice = splices[kind]
    spliced = splice.embed(conversation(zoo))
    assert (spliced.input_ids == -200).sum() == 2 and spliced.prompt.count("<image>") == 2
    embeds, logits, _ = llava_path(splice, spliced)
    assert spliced.embeds.shape == embeds.shape
    torch.testing.assert_close(spliced.embeds, embeds, rtol=0, atol=1e-6)
    target = stock_target(splice.model)
    assert type(target).__name__ == "Qwen3ForCausalLM"
    with torch.inference_mode():
        stock = target(inputs_embeds=spliced.embeds[None]).logits[0]
    torch.testing.assert_close(stock, logits, rtol=0, atol=1e-5)


def test_input_embeddings_in_one_call(dpa_stage2, splices, zoo):
    from llava_dpa.serving.splice import input_embeddings

    messages = conversation(zoo)[:1]
    torch.testing.assert_close(input_embeddings(dpa_stage2, messages), splices["dpa"].embed(messages).embeds,
                               rtol=0, atol=1e-6)


def test_images_are_encoded_once_per_conversation(splices, zoo):
    from llava_dpa.serving.splice import ImageCache

    splice = splices["dpa"]
    splice.cache = ImageCache()
    turn1 = [user(picture(image(zoo, 3)), text("What shape is it?"))]
    assert splice.embed(turn1).encoded == 1
    turn2 = turn1 + [{"role": "assistant", "content": "a circle"}, user(text("Its colour?"))]
    assert splice.embed(turn2).encoded == 0  # the conversation re-sent: its image from the cache
    turn3 = turn2 + [{"role": "assistant", "content": "red"}, user(picture(image(zoo, 4)), text("And this?"))]
    assert splice.embed(turn3).encoded == 1  # only the new image
    # the same picture sent again as other bytes (a JPEG-free re-encode of the same pixels) is the same image
    again = Image.open(io.BytesIO(base64.b64decode(png(image(zoo, 3)).split(",")[1]))).convert("RGB")
    assert splice.embed([user(picture(again), text("What shape is it?"))]).encoded == 0


def test_the_cache_key_holds_what_the_perceiver_reads(dpa_stage2, zoo):
    """With the instruction context, the perceiver reads the image's question: the same image under another
    question is encoded again, and each answer's embeddings are still the LLaVA path's."""
    from llava_dpa.serving.splice import Splice

    splice = Splice.from_checkpoint(dpa_stage2)
    tower = splice.model.get_vision_tower()
    tower.instruction_context = True
    tower.attach_tokenizers(splice.tokenizer)
    first = splice.embed([user(picture(image(zoo, 5)), text("What colour is the shape?"))])
    same = splice.embed([user(picture(image(zoo, 5)), text("What colour is the shape?"))])
    other = splice.embed([user(picture(image(zoo, 5)), text("How many shapes are there?"))])
    assert (first.encoded, same.encoded, other.encoded) == (1, 0, 1)
    for spliced in (first, other):
        torch.testing.assert_close(spliced.embeds, llava_path(splice, spliced)[0], rtol=0, atol=1e-6)
    start = int(torch.where(first.input_ids == -200)[0])  # the image's block: same place, other visual tokens
    size = len(first) - (len(first.input_ids) - 1)
    assert not torch.allclose(first.embeds[start:start + size], other.embeds[start:start + size])


def test_the_qwen_vl_perceiver_reads_the_sample(official):  # noqa: F811
    """The Qwen-VL-native perceiver (the official release's) reads a sample as one sequence: an image's tokens
    depend on the text before it and on the images before it. The splice equals the LLaVA path's for two images
    of different sizes with text around them; its cache key is the whole prefix of each image."""
    from llava_dpa.serving.splice import Splice, stock_target

    root, _, zoo = official
    splice = Splice.from_checkpoint(root / OFFICIAL_DPA)
    a, b = image(zoo, 1), image(zoo, 2).resize((48, 32))
    messages = [user(text("Look:"), picture(a), text("and then"), picture(b), text("What colours?"))]
    spliced = splice.embed(messages)
    embeds, logits, _ = llava_path(splice, spliced)
    torch.testing.assert_close(spliced.embeds, embeds, rtol=0, atol=1e-6)
    with torch.inference_mode():
        torch.testing.assert_close(stock_target(splice.model)(inputs_embeds=spliced.embeds[None]).logits[0], logits,
                                   rtol=0, atol=1e-5)
    assert spliced.encoded == 2
    follow_up = messages + [{"role": "assistant", "content": "red"}, user(text("Sure?"))]
    assert splice.embed(follow_up).encoded == 0
    # another second image: the first one's key still matches, the sample is encoded again as LLaVA encodes it
    other = [user(text("Look:"), picture(a), text("and then"), picture(image(zoo, 3)), text("What colours?"))]
    spliced = splice.embed(other)
    assert spliced.encoded == 2
    torch.testing.assert_close(spliced.embeds, llava_path(splice, spliced)[0], rtol=0, atol=1e-6)
    # other text before the first image: the perceiver reads it, so nothing is reused
    assert splice.embed([user(text("See:"), picture(a), text("What colour?"))]).encoded == 1
    assert splice.embed([user(text("Look:"), picture(a), text("What colour?"))]).encoded == 0


# ---- point 3: the endpoint on the hf engine ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(dpa_stage2, tmp_path_factory):
    """`python -m llava_dpa.commands.serve` (= `llava-dpa serve`) on the DPA checkpoint, hf engine, CPU, started
    without --host."""
    port = free_port()
    cwd = tmp_path_factory.mktemp("openai_serve")
    proc = Server("serve", [PY, "-m", "llava_dpa.commands.serve", dpa_stage2, "--device", "cpu", "--port", port,
                            "--served-model-name", SERVED, "--max-image-pixels", PIXEL_LIMIT], cwd, port)
    try:
        wait_until("llava-dpa serve", lambda: requests.get(proc.url + "/health", timeout=2).ok, [proc], 180)
        yield proc
    finally:
        proc.stop()


def chat(server, messages, **params):
    body = {"model": SERVED, "messages": messages, "max_tokens": 16, "temperature": 0, **params}
    return requests.post(server.url + "/v1/chat/completions", json=body, timeout=120)


def streamed(server, messages, **params) -> tuple[str, list[dict]]:
    body = {"model": SERVED, "messages": messages, "max_tokens": 16, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, **params}
    with requests.post(server.url + "/v1/chat/completions", json=body, stream=True, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in r.iter_lines(decode_unicode=True) if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]), chunks


def test_chat_answers_equal_llava_generate(server, splices, zoo):
    """Greedy answers over HTTP (plain and streamed, through the official `openai` client too) equal LLaVA's own
    generate on the same checkpoint; the server binds 127.0.0.1 only."""
    from openai import OpenAI

    assert listening_addresses(server.port) == {"127.0.0.1"}
    splice = splices["dpa"]
    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == [SERVED]
    for messages in (conversation(zoo)[:1], conversation(zoo), [user(text("What is a shape?"))]):
        expected = llava_greedy(splice, splice.embed(messages))
        answer = chat(server, as_openai(messages)).json()
        assert answer["choices"][0]["message"]["content"] == expected
        assert answer["usage"]["prompt_tokens"] == len(splice.embed(messages))
        joined, chunks = streamed(server, as_openai(messages))
        assert joined == expected
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert chunks[-1]["usage"]["completion_tokens"] == answer["usage"]["completion_tokens"]
        finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
        assert finishes[-1] == answer["choices"][0]["finish_reason"] and set(finishes[:-1]) == {None}
        reply = client.chat.completions.create(model=SERVED, messages=as_openai(messages), max_tokens=16,
                                               temperature=0)
        assert reply.choices[0].message.content == expected
        pieces = client.chat.completions.create(model=SERVED, messages=as_openai(messages), max_tokens=16,
                                                temperature=0, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in pieces if c.choices) == expected


def test_stop_strings_length_and_concurrency(server, splices, zoo):
    messages = as_openai(conversation(zoo)[:1])
    full = chat(server, messages).json()["choices"][0]["message"]["content"]
    assert len(full) >= 2
    cut = chat(server, messages, stop=[full[1:]]).json()["choices"][0]
    assert (cut["message"]["content"], cut["finish_reason"]) == (full[:1], "stop")
    joined, _ = streamed(server, messages, stop=full[1:])
    assert joined == full[:1]
    one = chat(server, messages, max_tokens=1).json()
    assert one["choices"][0]["finish_reason"] == "length" and one["usage"]["completion_tokens"] == 1
    # eight concurrent requests (one generation at a time per model) get what one at a time gets
    requests_ = [as_openai([user(picture(image(zoo, i)), text("What colour is the shape?"))]) for i in range(8)]
    alone = [chat(server, m).json()["choices"][0]["message"]["content"] for m in requests_]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda m: streamed(server, m)[0], requests_))
    assert together == alone


def bad_requests(zoo):
    good = png(image(zoo, 1))
    big = png(Image.new("RGB", (200, 200), "red"))
    not_png = "data:image/png;base64," + base64.b64encode(b"this is not an image").decode()

    def with_images(*urls, question="What colour?"):
        return [{"role": "user", "content": [*({"type": "image_url", "image_url": {"url": u}} for u in urls),
                                             {"type": "text", "text": question}]}]

    return [  # (request body, or raw bytes; status; what the message must name)
        ({"messages": with_images("data:image/png;base64,@@@not base64@@@")}, 400, "image 1 is not valid base64"),
        ({"messages": with_images(not_png)}, 400, "image 1 (20 bytes) is not an image Pillow can read"),
        ({"messages": with_images(*[good] * 17)}, 400, "carries 17 images, more than this worker takes in one "
                                                       "request (16)"),
        ({"messages": with_images(big)}, 400, f"40000 pixels in all, over this worker's limit of {PIXEL_LIMIT}"),
        ({"messages": with_images("https://example.com/cat.png")}, 400, "this server fetches nothing"),
        ({"messages": with_images(good, question="word " * 1100)}, 400, "and this model reads at most 1024"),
        ({"messages": [{"role": "user", "content": "hi <image>"}]}, 400, "reserves for images"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "must alternate, starting with the user"),
        ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, 400, "has role 'tool'"),
        ({"messages": [{"role": "user", "content": 3}]}, 400, "message 1 (user) does not follow OpenAI's chat"),
        ({"messages": []}, 400, "no 'messages'"),
        ({"messages": with_images(good), "n": 2}, 400, "'n' = 2"),
        ({"messages": with_images(good), "temperature": 5}, 400, "'temperature' = 5.0 is out of range"),
        ({"messages": with_images(good), "tools": [{"type": "function", "function": {"name": "f"}}]}, 400,
         "'tools' is not supported"),
        ({"messages": with_images(good), "model": "gpt-4o"}, 404, "the model 'gpt-4o' is not served here"),
        (b'{"model": "dpa", "messages": [', 400, "the request body is not valid JSON"),
        (b'{"model": "dpa", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400,
         "NaN is not a JSON number"),
    ]


def test_bad_requests_are_named_and_the_server_keeps_serving(server, zoo):
    good = as_openai(conversation(zoo)[:1])
    expected = chat(server, good).json()["choices"][0]["message"]["content"]
    for body, status, message in bad_requests(zoo):
        if isinstance(body, bytes):
            r = requests.post(server.url + "/v1/chat/completions", data=body,
                              headers={"content-type": "application/json"}, timeout=60)
        else:
            r = requests.post(server.url + "/v1/chat/completions", json={"model": SERVED, "max_tokens": 4, **body},
                              timeout=60)
        assert r.status_code == status, (message, r.status_code, r.text)
        error = r.json()["error"]
        assert message in error["message"], (message, error)
        assert error["type"] in ("invalid_request_error", "not_found_error")
        assert chat(server, good).json()["choices"][0]["message"]["content"] == expected  # still serving
    server.check_alive()


# ---- point 3: the vLLM engine, up to the engine call ------------------------------------------------------------

class FakeSamplingParams:
    """Stands in for vllm.SamplingParams: keeps what it was built with."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs


class FakeAsyncLLM:
    """Stands in for vllm.v1.engine.async_llm.AsyncLLM: records each request, streams a fixed reply in DELTA
    outputs (RequestOutput-shaped), and notes when its generator is closed early."""

    def __init__(self, reply=("The ", "shape ", "is red."), finish="stop"):
        self.reply, self.finish, self.calls, self.closed = reply, finish, [], []

    async def generate(self, prompt, sampling_params, request_id):
        self.calls.append(SimpleNamespace(prompt=prompt, params=sampling_params, request_id=request_id))
        done = False
        try:
            for i, piece in enumerate(self.reply):
                last = i == len(self.reply) - 1
                yield SimpleNamespace(finished=last, outputs=[SimpleNamespace(
                    text=piece, token_ids=[7] * (i + 1), finish_reason=self.finish if last else None)])
                await asyncio.sleep(0)
            done = True
        finally:
            if not done:
                self.closed.append(request_id)


@pytest.fixture(scope="module")
def vllm_app(splices):
    from fastapi.testclient import TestClient

    from llava_dpa.serving.engines import VLLMEngine
    from llava_dpa.serving.openai_api import ChatService, create_app

    fake = FakeAsyncLLM()
    service = ChatService(splices["dpa"], VLLMEngine(fake, FakeSamplingParams, "DELTA"), SERVED)
    with TestClient(create_app(service)) as client:
        yield client, fake, service


def test_the_vllm_engine_gets_the_splice_and_mapped_sampling(vllm_app, splices, zoo):
    client, fake, service = vllm_app
    messages = conversation(zoo)
    body = {"model": SERVED, "messages": as_openai(messages), "max_tokens": 7, "temperature": 0, "seed": 3,
            "stop": ["xyz"], "presence_penalty": 0.5, "frequency_penalty": 0.25, "top_p": 0.5}
    answer = client.post("/v1/chat/completions", json=body).json()
    assert answer["choices"][0]["message"]["content"] == "The shape is red."
    assert answer["choices"][0]["finish_reason"] == "stop" and answer["usage"]["completion_tokens"] == 6
    call = fake.calls[-1]
    spliced = splices["dpa"].embed(messages)
    assert set(call.prompt) == {"prompt_embeds"}  # vLLM's EmbedsPrompt
    embeds = call.prompt["prompt_embeds"]
    assert embeds.device.type == "cpu" and embeds.dtype == spliced.embeds.dtype
    assert torch.equal(embeds, spliced.embeds)  # the splice's embeddings, nothing else
    im_end = splices["dpa"].tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert call.params.kwargs == dict(n=1, max_tokens=7, temperature=0.0, top_p=1.0, seed=3, stop=["xyz"],
                                      stop_token_ids=[im_end], presence_penalty=0.5, frequency_penalty=0.25,
                                      skip_special_tokens=True, output_kind="DELTA")
    assert call.request_id == answer["id"]

    sampled = dict(body, temperature=0.7, top_k=20, max_tokens=None, stream=True)
    with client.stream("POST", "/v1/chat/completions", json=sampled) as r:
        events = [line[len("data: "):] for line in r.iter_lines() if line]
    assert events[-1] == "[DONE]"
    deltas = [json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]]
    assert "".join(deltas) == "The shape is red."
    params = fake.calls[-1].params.kwargs
    assert (params["temperature"], params["top_p"], params["top_k"]) == (0.7, 0.5, 20)
    assert params["max_tokens"] == service.max_length - len(spliced)  # no max_tokens: the context's room


def test_the_vllm_engine_closes_a_request_the_client_left(splices, zoo):
    from llava_dpa.serving.engines import Sampling, VLLMEngine

    fake = FakeAsyncLLM()
    engine = VLLMEngine(fake, FakeSamplingParams, "DELTA")
    spliced = splices["dpa"].embed(conversation(zoo)[:1])

    async def first_delta_only():
        stream = engine.generate(spliced.embeds, Sampling(max_tokens=5, temperature=0), "req-1")
        first = await stream.__anext__()
        await stream.aclose()  # the client went away
        return first

    assert asyncio.run(first_delta_only()).text == "The "
    assert fake.closed == ["req-1"]  # AsyncLLM aborts a request whose generator is closed


def test_serve_builds_the_vllm_engine_on_a_stock_target(dpa_stage2, splices, zoo, monkeypatch):
    """`build_service(engine="vllm")` (what `serve --engine vllm` runs), vLLM's start replaced by the stand-in: the
    engine is started on an exported target folder that loads as the stock class and whose logits on the prompt
    embeddings the engine receives are the LLaVA model's; the serving process keeps no target layers and still
    sends the full splice's embeddings."""
    from fastapi.testclient import TestClient
    from transformers import AutoModelForCausalLM

    from llava_dpa.serving import server as serving
    from llava_dpa.serving.engines import VLLMEngine
    from llava_dpa.serving.openai_api import create_app

    fake, started = FakeAsyncLLM(), {}

    def start(target_dir, **kwargs):
        started.update(kwargs, target_dir=target_dir)
        return VLLMEngine(fake, FakeSamplingParams, "DELTA")

    monkeypatch.setattr(serving.VLLMEngine, "start", staticmethod(start))
    service = serving.build_service(dpa_stage2, engine="vllm", device="cpu", model_name=SERVED)
    assert service.engine.name == "vllm" and started["dtype"] == "float32"
    assert started["max_model_len"] == service.max_length
    assert len(service.splice.model.get_model().layers) == 0  # the target's layers run on vLLM, not here
    messages = conversation(zoo)
    with TestClient(create_app(service)) as client:
        answer = client.post("/v1/chat/completions", json={"model": SERVED, "messages": as_openai(messages),
                                                           "max_tokens": 5, "temperature": 0})
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "The shape is red."
    embeds = fake.calls[-1].prompt["prompt_embeds"]
    spliced = splices["dpa"].embed(messages)  # the full model's splice
    assert torch.equal(embeds, spliced.embeds)
    target = AutoModelForCausalLM.from_pretrained(started["target_dir"], dtype=torch.float32)
    assert type(target).__name__ == "Qwen3ForCausalLM"
    config = json.loads((Path(started["target_dir"]) / "config.json").read_text())
    assert config["model_type"] == "qwen3" and not any(k.startswith("mm_") for k in config)
    with torch.inference_mode():
        logits = target(inputs_embeds=embeds[None]).logits[0]
    torch.testing.assert_close(logits, llava_path(splices["dpa"], spliced)[1], rtol=0, atol=1e-5)


def test_the_endpoint_serves_the_baseline(splices, zoo):
    """The baseline checkpoint behind the same endpoint (hf engine): plain and streamed greedy answers equal
    LLaVA's own generate on it."""
    from fastapi.testclient import TestClient

    from llava_dpa.serving.engines import HFEngine
    from llava_dpa.serving.openai_api import ChatService, create_app

    splice = splices["baseline"]
    service = ChatService(splice, HFEngine(splice.model, splice.tokenizer), "baseline")
    with TestClient(create_app(service)) as client:
        for messages in (conversation(zoo)[:1], conversation(zoo)):
            expected = llava_greedy(splice, splice.embed(messages))
            body = {"model": "baseline", "messages": as_openai(messages), "max_tokens": 16, "temperature": 0}
            answer = client.post("/v1/chat/completions", json=body).json()
            assert answer["choices"][0]["message"]["content"] == expected
            assert answer["usage"]["prompt_tokens"] == len(splice.embed(messages))
            with client.stream("POST", "/v1/chat/completions", json=dict(body, stream=True)) as r:
                events = [line[len("data: "):] for line in r.iter_lines() if line]
            assert events[-1] == "[DONE]"
            assert "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]
                           if json.loads(e)["choices"]) == expected


def test_vllm_is_imported_only_by_the_vllm_engine():
    code = ("import sys, llava_dpa.serving.engines, llava_dpa.serving.openai_api, llava_dpa.commands.serve; "
            "assert 'vllm' not in sys.modules, 'vllm imported'")
    run([PY, "-c", code])


# ---- point 4: lmms-eval through the server -----------------------------------------------------------------------

TEXT_QUESTIONS = [
    {"question_id": "t0", "text": "What color is the shape?", "answer": "red", "type": "short"},
    {"question_id": "t1", "text": "What shape is it?\nA. circle\nB. square\nC. triangle", "answer": "A",
     "type": "mc", "choices": ["circle", "square", "triangle"]},
]


def lmms_eval(out: Path, folder: Path, tasks: str, model: str, model_args: str):
    pytest.importorskip("lmms_eval", reason="lmms-eval is not installed on this line (make setup-eval)")
    run([PY, "-m", "lmms_eval", "--model", model, "--model_args", model_args, "--tasks", tasks, "--include_path",
         str(folder), "--device", "cpu", "--batch_size", "1", "--output_path", str(out), "--log_samples"],
        env={"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}, timeout=900)
    results = json.loads(next(out.rglob("*_results.json")).read_text())["results"]
    samples = {}
    for task in tasks.split(","):
        rows = [json.loads(x) for x in next(out.rglob(f"*_samples_{task}.jsonl")).read_text().splitlines()]
        samples[task] = {r["doc_id"]: _answer(r["filtered_resps"]) for r in rows}
    return results, samples


def _answer(response) -> str:
    while isinstance(response, list):
        response = response[0]
    return str(response).strip()


def test_lmms_eval_through_the_server_scores_as_the_llava_dpa_model(server, dpa_stage2, zoo, tmp_path):
    """lmms-eval's `openai_compatible` model pointed at `llava-dpa serve` runs the local tasks (image and text,
    short answers and multiple choice) and scores exactly what the `llava_dpa` model scores on the same checkpoint,
    greedy, one prompt at a time; every request reached the server (no failed-request placeholders)."""
    from llava_dpa.eval.lmms_tasks import write_task

    folder = tmp_path / "tasks"
    questions = tmp_path / "text.jsonl"
    questions.write_text("\n".join(json.dumps(q) for q in TEXT_QUESTIONS) + "\n")
    write_task(zoo["benchmark"], zoo["images"], str(folder), "zoo")
    write_task(str(questions), None, str(folder), "text")
    tasks = "zoo_short,zoo_mc,text_short,text_mc"
    via_server, served = lmms_eval(tmp_path / "server", folder, tasks, "openai_compatible",
                                   f"model={SERVED},base_url={server.url}/v1,api_key=unused,num_concurrent=4,"
                                   f"max_retries=1,timeout=120")
    direct, local = lmms_eval(tmp_path / "direct", folder, tasks, "llava_dpa", f"pretrained={dpa_stage2}")
    answers = [a for task in served.values() for a in task.values()]
    assert len(answers) == 24 + 24 + 1 + 1 and not any("LMMS_EVAL_REQUEST_FAILED" in a for a in answers)
    assert served == local  # the same answers, question by question
    for task in tasks.split(","):
        scores = {k: v for k, v in direct[task].items() if k.endswith(",none") and "stderr" not in k}
        assert scores, direct[task]
        assert {k: via_server[task][k] for k in scores} == scores, (task, via_server[task], scores)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
