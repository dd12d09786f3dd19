"""`llava-dpa serve`: the DPA splice against the LLaVA path, the OpenAI-compatible endpoint on the hf engine (answers
against LLaVA's own generate, streaming, sampling against transformers' generate, penalties, system messages against
the tokenizer's chat template, bad requests, body limits, failures, clients that leave, 127.0.0.1), the request the
vLLM engine gets (tests/test_vllm_engine.py's stand-in, built from vLLM's own signatures), and lmms-eval's
`openai_compatible` model through the server against the `llava_dpa` model."""
from __future__ import annotations

import base64
import io
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import torch
from conftest import PY, assert_same_greedy, free_port, run
from PIL import Image
from serving_stack import Server, listening_addresses, wait_until
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


def assert_llava_greedy(splice, spliced, answer: str, max_new_tokens=16) -> None:
    """`answer` (the stock target on the splice's embeddings) is LLaVA's own greedy answer on the same prompt, or
    parts from it only at a near-tie (another numeric path: conftest.assert_same_greedy)."""
    expected = llava_greedy(splice, spliced, max_new_tokens)
    assert_same_greedy(splice.model, splice.tokenizer, spliced.input_ids, answer, expected,
                       **llava_path(splice, spliced)[2])


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
    """Greedy answers over HTTP (plain and streamed, through the official `openai` client too) are LLaVA's own
    generate's on the same checkpoint (or part from it at a near-tie: the stock target on embeddings is another
    numeric path); the streamed answer is the plain one (the same path: equal); the server binds 127.0.0.1 only."""
    from openai import OpenAI

    assert listening_addresses(server.port) == {"127.0.0.1"}
    splice = splices["dpa"]
    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == [SERVED]
    for messages in (conversation(zoo)[:1], conversation(zoo), [user(text("What is a shape?"))]):
        spliced = splice.embed(messages)
        answer = chat(server, as_openai(messages)).json()
        content = answer["choices"][0]["message"]["content"]
        assert_llava_greedy(splice, spliced, content)
        assert answer["usage"]["prompt_tokens"] == len(spliced)
        joined, chunks = streamed(server, as_openai(messages))
        assert joined == content
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert chunks[-1]["usage"]["completion_tokens"] == answer["usage"]["completion_tokens"]
        finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
        assert finishes[-1] == answer["choices"][0]["finish_reason"] and set(finishes[:-1]) == {None}
        reply = client.chat.completions.create(model=SERVED, messages=as_openai(messages), max_tokens=16,
                                               temperature=0)
        assert reply.choices[0].message.content == content
        pieces = client.chat.completions.create(model=SERVED, messages=as_openai(messages), max_tokens=16,
                                                temperature=0, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in pieces if c.choices) == content


def test_concurrent_requests_answer_like_one_at_a_time(server, zoo):
    """Eight concurrent streams (one generation at a time per model) get what each gets alone."""
    requests_ = [as_openai([user(picture(image(zoo, i)), text("What colour is the shape?"))]) for i in range(8)]
    alone = [chat(server, m).json()["choices"][0]["message"]["content"] for m in requests_]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda m: streamed(server, m)[0], requests_))
    assert together == alone


# ---- the hf engine in this process: a text model whose answers nothing taught -------------------------------------

@pytest.fixture(scope="module")
def text_service(zoo):
    """The zoo's Qwen3 LM (random weights, never trained: its greedy answers run to max_tokens rather than end at a
    learned word) behind the endpoint on the hf engine, in this process."""
    from llava_dpa.serving.engines import HFEngine
    from llava_dpa.serving.openai_api import ChatService
    from llava_dpa.serving.splice import Splice

    splice = Splice.from_checkpoint(zoo["qwen3_lm"])
    return ChatService(splice, HFEngine(splice.model, splice.tokenizer), "lm", max_request_bytes=4000)


@pytest.fixture(scope="module")
def text_client(text_service):
    from fastapi.testclient import TestClient

    from llava_dpa.serving.openai_api import create_app

    with TestClient(create_app(text_service)) as client:
        yield client


def ask(client, question="Name three colours.", **params):
    body = {"model": "lm", "messages": [{"role": "user", "content": question}], "max_tokens": 12, "temperature": 0,
            **params}
    return client.post("/v1/chat/completions", json=body)


def sse(client, body) -> list:
    """The events of a streamed request: parsed JSON objects, then the literal [DONE]."""
    with client.stream("POST", "/v1/chat/completions", json=dict(body, stream=True)) as r:
        assert r.status_code == 200, r.read()
        events = [line[len("data: "):] for line in r.iter_lines() if line]
    return [json.loads(e) for e in events[:-1]] + events[-1:]


def test_streamed_chunks_arrive_in_order_and_make_the_answer(text_client):
    """A twelve-token answer streams in several content chunks, in order (each a piece, none repeated), whose
    concatenation is the plain answer; `length` ends both."""
    plain = ask(text_client).json()
    whole = plain["choices"][0]["message"]["content"]
    assert plain["usage"]["completion_tokens"] == 12 and plain["choices"][0]["finish_reason"] == "length"
    events = sse(text_client, {"model": "lm", "messages": [{"role": "user", "content": "Name three colours."}],
                               "max_tokens": 12, "temperature": 0})
    assert events[-1] == "[DONE]"
    pieces = [e["choices"][0]["delta"].get("content") for e in events[1:-1]]
    content = [p for p in pieces if p]
    assert len(content) > 1, pieces
    assert "".join(content) == whole
    running = ""
    for piece in content:  # in order: each chunk continues the text so far
        assert whole.startswith(running + piece)
        running += piece
    assert [e["choices"][0]["finish_reason"] for e in events[1:-1]][-1] == "length"


def test_stop_strings_and_length(text_client):
    """A stop string ends the answer before its first occurrence (plain and streamed, `stop`); max_tokens ends it
    with `length`."""
    varied = {"presence_penalty": 2.0, "frequency_penalty": 2.0}  # the random model repeats one token without them
    whole = ask(text_client, **varied).json()["choices"][0]["message"]["content"]
    # a stop string in the answer's second half, where it first occurs (no partial character in it or before it)
    k = next(k for k in range(len(whole) // 2, len(whole) - 2)
             if whole.find(whole[k:k + 3]) == k and "\ufffd" not in whole[:k + 3])
    stop = whole[k:k + 3]
    cut = ask(text_client, stop=[stop], **varied).json()["choices"][0]
    assert (cut["message"]["content"], cut["finish_reason"]) == (whole[:k], "stop")
    events = sse(text_client, {"model": "lm", "messages": [{"role": "user", "content": "Name three colours."}],
                               "max_tokens": 12, "temperature": 0, "stop": stop, **varied})
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events[1:-1]) == whole[:k]
    one = ask(text_client, max_tokens=1).json()
    assert one["choices"][0]["finish_reason"] == "length" and one["usage"]["completion_tokens"] == 1


def test_sampling_is_transformers_generate_with_the_requests_settings(text_service, text_client, monkeypatch):
    """temperature, top_p, top_k and seed reach transformers' generate: the settings it receives make a valid
    GenerationConfig with those values, and the answer is what generate itself samples with them from the same
    seed (so the same seed gives the same answer, through the engine's lock and thread)."""
    from transformers import GenerationConfig

    engine = text_service.engine
    passed, generate = [], engine.target.generate

    def spied(**kwargs):
        passed.append(kwargs)
        return generate(**kwargs)

    monkeypatch.setattr(engine.target, "generate", spied)
    params = dict(temperature=0.7, top_p=0.9, top_k=5, seed=1234, max_tokens=8)
    first = ask(text_client, **params).json()["choices"][0]["message"]["content"]
    assert ask(text_client, **params).json()["choices"][0]["message"]["content"] == first
    kwargs = passed[-1]
    config = GenerationConfig(**{k: v for k, v in kwargs.items() if k in GenerationConfig().to_dict()})
    config.validate()
    assert (config.do_sample, config.temperature, config.top_p, config.top_k, config.max_new_tokens) == (
        True, 0.7, 0.9, 5, 8)
    spliced = text_service.splice.embed([{"role": "user", "content": "Name three colours."}])
    reference = {k: v for k, v in kwargs.items() if k not in ("streamer", "stopping_criteria")}
    torch.manual_seed(1234)
    with torch.inference_mode():
        out = generate(**reference)
    assert first == text_service.splice.tokenizer.decode(out[0], skip_special_tokens=True)
    assert torch.equal(reference["inputs_embeds"][0], spliced.embeds)
    greedy = ask(text_client, temperature=0, top_k=5, top_p=0.5).json()
    assert passed[-1]["do_sample"] is False and "top_k" not in passed[-1]  # greedy: no sampling settings at all
    assert greedy["choices"][0]["message"]["content"] == ask(text_client).json()["choices"][0]["message"]["content"]


class OpenAIPenalties:
    """OpenAI's (and vLLM's) presence and frequency penalties, written here from their definition: a token's logit
    minus `presence` if it occurs in the reply so far, minus `frequency` times its count there."""

    def __init__(self, presence, frequency):
        self.presence, self.frequency = presence, frequency

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        for row, ids in enumerate(input_ids.tolist()):  # generating from embeddings: the reply's tokens only
            for token in set(ids):
                scores[row, token] -= self.presence + self.frequency * ids.count(token)
        return scores


def test_presence_and_frequency_penalties(text_service, text_client, monkeypatch):
    """The engine's penalties equal the definition's, on a made-up reply and on a whole greedy generation (the
    engine's answer is generate's with the reference processor in its place); without them the answer differs."""
    from transformers import LogitsProcessorList

    from llava_dpa.serving.engines import Penalties

    scores, ids = torch.zeros(1, 10), torch.tensor([[3, 3, 5]])
    expected = OpenAIPenalties(0.5, 0.25)(ids, scores)
    assert expected[0, 3] == -1.0 and expected[0, 5] == -0.75 and expected[0, 4] == 0
    assert torch.equal(Penalties(0.5, 0.25)(torch.zeros(1, 0, dtype=torch.long), scores), scores)
    penalties = Penalties(0.5, 0.25)
    penalties(torch.zeros(1, 0, dtype=torch.long), scores)  # the first step: no reply yet
    torch.testing.assert_close(penalties(ids, scores), expected, rtol=0, atol=0)

    engine = text_service.engine
    passed, generate = [], engine.target.generate

    def spied(**kwargs):
        passed.append(kwargs)
        return generate(**kwargs)

    monkeypatch.setattr(engine.target, "generate", spied)
    params = dict(max_tokens=16, presence_penalty=1.5, frequency_penalty=2.0)
    penalised = ask(text_client, **params).json()["choices"][0]["message"]["content"]
    reference = {k: v for k, v in passed[-1].items() if k not in ("streamer", "stopping_criteria")}
    reference["logits_processor"] = LogitsProcessorList([OpenAIPenalties(1.5, 2.0)])
    with torch.inference_mode():
        out = generate(**reference)
    assert penalised == text_service.splice.tokenizer.decode(out[0], skip_special_tokens=True)
    assert penalised != ask(text_client, max_tokens=16).json()["choices"][0]["message"]["content"]


def test_system_and_developer_messages_are_the_templates_system_turn(text_service, text_client, splices, zoo):
    """A system message, and a developer message alike, render as the tokenizer's own chat template renders a
    system turn; the endpoint reads them (the prompt's token count) and answers them as LLaVA's generate does."""
    from llava_dpa.serving.splice import conversation_prompt

    tokenizer = text_service.splice.tokenizer
    for role in ("system", "developer"):
        messages = [{"role": role, "content": "Answer in one word."}, {"role": "user", "content": "What is red?"}]
        prompt, _ = conversation_prompt("qwen_3", messages)
        reference = tokenizer.apply_chat_template([{"role": "system", "content": "Answer in one word."},
                                                   {"role": "user", "content": "What is red?"}], tokenize=False,
                                                  add_generation_prompt=True, enable_thinking=False)
        assert prompt == reference
        answer = text_client.post("/v1/chat/completions", json={"model": "lm", "messages": messages,
                                                                "max_tokens": 4}).json()
        assert answer["usage"]["prompt_tokens"] == len(tokenizer(reference, add_special_tokens=False).input_ids)
    # on the DPA checkpoint, with an image: LLaVA's generate on the same rendered prompt
    splice = splices["dpa"]
    from fastapi.testclient import TestClient

    from llava_dpa.serving.engines import HFEngine
    from llava_dpa.serving.openai_api import ChatService, create_app

    messages = [{"role": "developer", "content": "Be brief."}, user(picture(image(zoo, 1)), text("Its colour?"))]
    spliced = splice.embed(messages)
    assert spliced.prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    with TestClient(create_app(ChatService(splice, HFEngine(splice.model, splice.tokenizer), SERVED))) as client:
        answer = client.post("/v1/chat/completions", json={"model": SERVED, "messages": as_openai(messages),
                                                           "max_tokens": 16, "temperature": 0}).json()
    assert answer["usage"]["prompt_tokens"] == len(spliced)
    assert_llava_greedy(splice, spliced, answer["choices"][0]["message"]["content"])


def test_a_body_over_the_limit_is_413_declared_or_streamed(text_client):
    """--max-request-bytes (4000 here): a body whose Content-Length says more is refused before it is read; a
    chunked body without a length is refused once it passes the limit; the next request is answered."""
    good = ask(text_client).json()["choices"][0]["message"]["content"]
    big = json.dumps({"model": "lm", "messages": [{"role": "user", "content": "x" * 5000}]}).encode()
    declared = text_client.post("/v1/chat/completions", content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413
    assert declared.json()["error"]["message"].startswith(f"the request body is {len(big)} bytes, over this "
                                                          f"server's limit of 4000 (--max-request-bytes)")

    def chunked():
        for start in range(0, len(big), 1000):
            yield big[start:start + 1000]

    streamed_body = text_client.post("/v1/chat/completions", content=chunked(),
                                     headers={"content-type": "application/json"})
    assert streamed_body.status_code == 413
    assert "over this server's limit of 4000 bytes (--max-request-bytes)" in streamed_body.json()["error"]["message"]
    assert ask(text_client).json()["choices"][0]["message"]["content"] == good


class Failing:
    """The hf engine, failing on purpose: a request with max_tokens 13 fails before its first piece, one with 14
    after it; the others are answered."""
    name = "hf"

    def __init__(self, engine):
        self.engine = engine

    async def generate(self, embeds, sampling, request_id):
        if sampling.max_tokens == 13:
            raise RuntimeError("the device fell over")
        async for delta in self.engine.generate(embeds, sampling, request_id):
            yield delta
            if sampling.max_tokens == 14:
                raise RuntimeError("the device fell over mid-answer")


def test_failures_are_500s_or_a_stream_error_and_the_server_goes_on(text_service):
    """An engine that raises: a plain request gets a 500 whose body names the failure; a stream that fails after
    its first piece ends with an error event, then [DONE]; a failing splice is a 500 too; every time the next
    request is answered."""
    from fastapi.testclient import TestClient

    from llava_dpa.serving.openai_api import ChatService, create_app
    from llava_dpa.serving.splice import Splice

    class BrokenSplice(Splice):
        def embed_prompt(self, prompt, images):
            if "BOOM" in prompt:
                raise KeyError("a splice that broke")
            return super().embed_prompt(prompt, images)

    base = text_service.splice
    splice = BrokenSplice(base.model, base.tokenizer, None)
    service = ChatService(splice, Failing(text_service.engine), "lm")
    with TestClient(create_app(service)) as client:
        good = ask(client).json()["choices"][0]["message"]["content"]
        for params in ({"max_tokens": 13}, {"question": "BOOM"}):
            failed = ask(client, **params)
            assert failed.status_code == 500, failed.text
            error = failed.json()["error"]
            assert error["type"] == "server_error" and "goes on serving" in error["message"], error
            assert ("RuntimeError: the device fell over" in error["message"] if "max_tokens" in params else
                    "KeyError: 'a splice that broke'" in error["message"])
            assert ask(client).json()["choices"][0]["message"]["content"] == good
        events = sse(client, {"model": "lm", "messages": [{"role": "user", "content": "Name three colours."}],
                              "max_tokens": 14, "temperature": 0})
        assert events[-1] == "[DONE]"
        assert events[0]["choices"][0]["delta"]["role"] == "assistant"
        assert events[1]["choices"][0]["delta"]["content"]  # the piece sent before the failure
        assert events[-2] == {"error": {"message": "generation failed (RuntimeError: the device fell over "
                                                   "mid-answer); the server goes on serving", "type": "server_error",
                                        "param": None, "code": None}}
        assert ask(client).json()["choices"][0]["message"]["content"] == good


def test_a_client_that_leaves_stops_its_generation(text_service, monkeypatch):
    """Under uvicorn (a real socket): a client that closes a stream after its first chunk, or gives up on a plain
    request, stops the generation well before max_tokens (the model here cannot end its answer by itself); the
    server answers the next request."""
    import threading
    import time

    import uvicorn

    from llava_dpa.serving.openai_api import create_app

    engine = text_service.engine
    finished, generate = [], engine.target.generate

    def spied(**kwargs):
        kwargs["min_new_tokens"] = kwargs["max_new_tokens"]  # no eos before max_tokens: only the client may stop it
        out = generate(**kwargs)
        finished.append((out.shape[1], kwargs["max_new_tokens"]))
        return out

    monkeypatch.setattr(engine.target, "generate", spied)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(text_service), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = {"model": "lm", "messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 2000,
            "temperature": 0}

    def stopped_early(count: int, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while len(finished) < count:
            assert time.monotonic() < deadline, "the generation did not end after its client left"
            time.sleep(0.05)
        generated, asked = finished[-1]
        return asked > 1000 and generated < asked

    try:
        wait_until("uvicorn", lambda: server.started, [], 30)
        with requests.post(url, json=dict(body, stream=True), stream=True, timeout=60) as r:
            for line in r.iter_lines():
                if b'"content":"' in line and b'"content":""' not in line:
                    break  # the first piece of the answer: leave
        assert stopped_early(1), finished
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.post(url, json=body, timeout=(5, 1.0))
        assert stopped_early(2), finished
        answer = requests.post(url, json=dict(body, max_tokens=3), timeout=60).json()
        assert answer["usage"]["completion_tokens"] == 3 and finished[-1] == (3, 3)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


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

@pytest.fixture(scope="module")
def vllm_app(splices):
    """The endpoint on the vLLM engine, vLLM being tests/test_vllm_engine.py's stand-in (vLLM 0.11.1's names)."""
    from fastapi.testclient import TestClient
    from test_vllm_engine import stand_in

    from llava_dpa.serving.engines import VLLMEngine
    from llava_dpa.serving.openai_api import ChatService, create_app

    classes, recorded = stand_in("0.11.1")
    delta = classes.RequestOutputKind.DELTA
    service = ChatService(splices["dpa"], VLLMEngine(classes.AsyncLLM(), classes.SamplingParams, delta), SERVED)
    with TestClient(create_app(service)) as client:
        yield client, recorded, service, delta


def test_the_vllm_engine_gets_the_splice_and_mapped_sampling(vllm_app, splices, zoo):
    client, recorded, service, delta = vllm_app
    messages = conversation(zoo)
    body = {"model": SERVED, "messages": as_openai(messages), "max_tokens": 7, "temperature": 0, "seed": 3,
            "stop": ["xyz"], "presence_penalty": 0.5, "frequency_penalty": 0.25, "top_p": 0.5}
    answer = client.post("/v1/chat/completions", json=body).json()
    assert answer["choices"][0]["message"]["content"] == "The shape is red."
    assert answer["choices"][0]["finish_reason"] == "stop" and answer["usage"]["completion_tokens"] == 6
    call = recorded.calls[-1]
    spliced = splices["dpa"].embed(messages)
    assert set(call.prompt) == {"prompt_embeds"}  # vLLM's EmbedsPrompt
    embeds = call.prompt["prompt_embeds"]
    assert embeds.device.type == "cpu" and embeds.dtype == spliced.embeds.dtype
    assert torch.equal(embeds, spliced.embeds)  # the splice's embeddings, nothing else
    tokenizer = splices["dpa"].tokenizer
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eos = splices["dpa"].model.generation_config.eos_token_id
    stops = sorted({im_end, *([eos] if isinstance(eos, int) else eos)})
    assert call.params.kwargs == dict(n=1, max_tokens=7, temperature=0.0, top_p=1.0, seed=3, stop=["xyz"],
                                      stop_token_ids=stops, ignore_eos=True, presence_penalty=0.5,
                                      frequency_penalty=0.25, skip_special_tokens=True, output_kind=delta)
    assert call.request_id == answer["id"]

    sampled = dict(body, temperature=0.7, top_k=20, max_tokens=None, stream=True)
    with client.stream("POST", "/v1/chat/completions", json=sampled) as r:
        events = [line[len("data: "):] for line in r.iter_lines() if line]
    assert events[-1] == "[DONE]"
    deltas = [json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]]
    assert [d for d in deltas if d] == ["The ", "shape ", "is red."]  # vLLM's DELTA pieces, in order
    params = recorded.calls[-1].params.kwargs
    assert (params["temperature"], params["top_p"], params["top_k"]) == (0.7, 0.5, 20)
    assert params["max_tokens"] == service.max_length - len(spliced)  # no max_tokens: the context's room


def test_the_endpoint_serves_the_baseline(splices, zoo):
    """The baseline checkpoint behind the same endpoint (hf engine): plain greedy answers are LLaVA's own generate's
    on it (up to a near-tie), streamed ones the plain ones."""
    from fastapi.testclient import TestClient

    from llava_dpa.serving.engines import HFEngine
    from llava_dpa.serving.openai_api import ChatService, create_app

    splice = splices["baseline"]
    service = ChatService(splice, HFEngine(splice.model, splice.tokenizer), "baseline")
    with TestClient(create_app(service)) as client:
        for messages in (conversation(zoo)[:1], conversation(zoo)):
            body = {"model": "baseline", "messages": as_openai(messages), "max_tokens": 16, "temperature": 0}
            answer = client.post("/v1/chat/completions", json=body).json()
            expected = answer["choices"][0]["message"]["content"]
            assert_llava_greedy(splice, splice.embed(messages), expected)
            assert answer["usage"]["prompt_tokens"] == len(splice.embed(messages))
            with client.stream("POST", "/v1/chat/completions", json=dict(body, stream=True)) as r:
                events = [line[len("data: "):] for line in r.iter_lines() if line]
            assert events[-1] == "[DONE]"
            assert "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]
                           if json.loads(e)["choices"]) == expected


def test_the_serving_bench_measures_both_checkpoints(dpa_stage2, baseline_stage2, zoo, tmp_path, capsys):
    """`python -m llava_dpa.serving.bench` (docs/performance.md, "Serving throughput") as the GPU run uses it
    (--no-worker: serve only, DPA beside the baseline), at the smallest size: a round per checkpoint with its tokens
    and time, and the report's table and paired ratio."""
    from llava_dpa.serving.bench import main

    out = tmp_path / "bench.json"
    assert main(["--dpa", str(dpa_stage2), "--baseline", str(baseline_stage2), "--images", zoo["images"],
                 "--requests", "2", "--rounds", "1", "--max-tokens", "2", "--no-worker", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["runs"]) == {"baseline/serve", "DPA/serve"} and result["engine"] == "hf"
    assert all(len(runs) == 1 and runs[0]["seconds"] > 0 and 0 <= runs[0]["tokens"] <= 2 * 2
               for runs in result["runs"].values()), result["runs"]
    printed = capsys.readouterr().out
    assert "| DPA | serve |" in printed and "| baseline | serve |" in printed
    assert "| serve: DPA / baseline |" in printed and "one round: its spread is unknown" in printed


@pytest.mark.fast
def test_the_serving_benchs_report_reads_ratios_by_their_rounds():
    from llava_dpa.serving.bench import report

    def runs(*rates):
        return [{"tokens": int(r * 10), "seconds": 10.0} for r in rates]

    result = {"requests": 4, "concurrency": 1, "max_tokens": 8, "device": "cpu", "answers_differing_between_servers":
              ["DPA#1"], "runs": {"baseline/serve": runs(10, 10, 10), "baseline/worker": runs(5, 5, 5),
                                  "DPA/serve": runs(9, 11, 10), "DPA/worker": runs(4, 4, 4)}}
    lines = report(result).splitlines()
    assert "| baseline | serve | 10.0 | 10.0-10.0 | 25.0 |" in lines
    assert "| baseline: serve / worker | 2.000 | 2.000-2.000 | a result |" in lines
    assert "| serve: DPA / baseline | 1.000 | 0.900-1.100 | within noise (rounds on both sides of 1) |" in lines
    assert "| worker: DPA / baseline | 0.800 | 0.800-0.800 | a result |" in lines
    assert lines[-1] == "answers that differ between the two servers: ['DPA#1']"


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
        samples[task] = {r["doc_id"]: (_answer(r["filtered_resps"]), r) for r in rows}
    return results, samples


def _answer(response) -> str:
    while isinstance(response, list):
        response = response[0]
    return str(response).strip()


def test_lmms_eval_through_the_server_scores_as_the_llava_dpa_model(server, dpa_stage2, splices, zoo, tmp_path):
    """lmms-eval's `openai_compatible` model pointed at `llava-dpa serve` runs the local tasks (image and text,
    short answers and multiple choice) and answers what the `llava_dpa` model answers on the same checkpoint,
    question by question (greedy, one prompt at a time; two numeric paths, so an answer may part only at a
    near-tie), and scores what it scores wherever the answers are equal; every request reached the server (no
    failed-request placeholders)."""
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
    answers = [a for task in served.values() for a, _ in task.values()]
    assert len(answers) == 24 + 24 + 1 + 1 and not any("LMMS_EVAL_REQUEST_FAILED" in a for a in answers)
    splice = splices["dpa"]
    for task in tasks.split(","):
        assert served[task].keys() == local[task].keys()
        parted = [doc_id for doc_id in served[task] if served[task][doc_id][0] != local[task][doc_id][0]]
        for doc_id in parted:  # the question as both models got it: its image, then its text
            doc = local[task][doc_id][1]["doc"]
            parts = ([picture(Image.open(doc["image"]).convert("RGB"))] if doc.get("image") else []) + \
                [text(doc["text"])]
            spliced = splice.embed([user(*parts)])
            assert_same_greedy(splice.model, splice.tokenizer, spliced.input_ids, served[task][doc_id][0],
                               local[task][doc_id][0], **llava_path(splice, spliced)[2])
        if parted:
            continue
        scores = {k: v for k, v in direct[task].items() if k.endswith(",none") and "stderr" not in k}
        assert scores, direct[task]
        assert {k: via_server[task][k] for k in scores} == scores, (task, via_server[task], scores)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
