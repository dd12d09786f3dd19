"""`llava-dpa serve`: an OpenAI-compatible chat endpoint for DPA and baseline checkpoints.

    POST /v1/chat/completions   OpenAI's chat request (text and `image_url` parts with data: URLs), streamed as
                                server-sent events in OpenAI's chunk format when `stream` is true
    GET  /v1/models             the one model this server serves
    GET  /health                200 once the model is loaded

The HTTP layer is FastAPI; requests are checked against the `openai` package's own request types (TypedDicts,
validated by pydantic) and answered with its response models (`ChatCompletion`, `ChatCompletionChunk`). What is
written here is what is DPA's: the messages become the checkpoint's conversation template with one `<image>`
per image, the splice (`splice.py`) turns them into the target's input embeddings, and an engine
(`engines.py`: Hugging Face generate or vLLM) generates from them.

Bad requests get a 4xx whose OpenAI-style error names the problem and the fix (the worker's rules: at most 16
images, a pixel limit over all of a request's images read from their headers, the prompt measured with its
images expanded against the model's context); the server goes on serving.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import traceback
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from openai.types import CompletionUsage, Model
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionAssistantMessageParam,
    ChatCompletionChunk,
    ChatCompletionDeveloperMessageParam,
    ChatCompletionMessage,
    ChatCompletionSystemMessageParam,
    ChatCompletionUserMessageParam,
)
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from openai.types.chat.completion_create_params import CompletionCreateParamsBase
from pydantic import TypeAdapter, ValidationError

from llava_dpa.serving.engines import Sampling
from llava_dpa.serving.requests import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_REQUEST_BYTES,
    IMAGE_TOKEN,
    RequestError,
    check_image_count,
    decode_images,
    number,
)
from llava_dpa.serving.splice import Splice, Spliced
from llava_dpa.serving.worker import stop_string

logger = logging.getLogger("llava_dpa.serving")


_MESSAGE_TYPES = {"system": ChatCompletionSystemMessageParam, "developer": ChatCompletionDeveloperMessageParam,
                  "user": ChatCompletionUserMessageParam, "assistant": ChatCompletionAssistantMessageParam}
_MESSAGES = {role: TypeAdapter(kind) for role, kind in _MESSAGE_TYPES.items()}
_PARAMS = TypeAdapter(CompletionCreateParamsBase)
#: request fields this server refuses rather than ignore (ignoring them would answer something else than asked)
_UNSUPPORTED = {"tools": "tool calls", "tool_choice": "tool calls", "functions": "function calls",
                "function_call": "function calls", "audio": "audio output", "prediction": "predicted outputs",
                "logit_bias": "logit_bias", "top_logprobs": "log-probabilities", "web_search_options": "web search"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                       "code": None}}, status_code=self.status)


def _materialise(value):
    """pydantic validates OpenAI's `Iterable[...]` fields lazily: walk them into lists (raising ValidationError)."""
    if isinstance(value, dict):
        return {k: _materialise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ValidatorIterator":
        return [_materialise(v) for v in value]
    return value


def _validation_message(exc: ValidationError, where: str) -> str:
    errors = exc.errors()
    shown = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in errors[:3])
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return f"{where} does not follow OpenAI's chat request schema: {shown}{more}"


def validate_request(body) -> dict:
    """The request body checked against openai's CompletionCreateParams; messages one by one by their role's
    type, so an error names the message."""
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}: send "
                            f"{{'model': ..., 'messages': [...]}}")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "the request has no 'messages' (a non-empty list): send the conversation", "messages")
    checked = []
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in _MESSAGES:
            raise ApiError(400, f"message {index + 1} has role {role!r}: this server takes 'system', 'developer', "
                                f"'user' and 'assistant' messages (no tools or functions)", f"messages.{index}")
        try:
            checked.append(_materialise(_MESSAGES[role].validate_python(message)))
        except ValidationError as exc:
            raise ApiError(400, _validation_message(exc, f"message {index + 1} ({role})"),
                           f"messages.{index}") from None
    try:
        params = _materialise(_PARAMS.validate_python({**body, "messages": []}))
    except ValidationError as exc:
        raise ApiError(400, _validation_message(exc, "the request")) from None
    params["messages"] = checked
    if body.get("stream") not in (None, True, False):  # the Base type leaves `stream` to its two subclasses
        raise ApiError(400, f"'stream' must be true or false, got {body.get('stream')!r}", "stream")
    params["stream"] = bool(body.get("stream"))
    for key, what in _UNSUPPORTED.items():
        if body.get(key) not in (None, [], False):
            raise ApiError(400, f"'{key}' is not supported by this server ({what}): remove it", key)
    if body.get("logprobs"):
        raise ApiError(400, "'logprobs' is not supported by this server: remove it", "logprobs")
    if body.get("n") not in (None, 1):
        raise ApiError(400, f"'n' = {body.get('n')!r}: this server returns one choice per request; send n=1 or "
                            f"omit it (send several requests for several samples)", "n")
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise ApiError(400, "'response_format' other than text is not supported: remove it", "response_format")
    return params


def stop_token_ids(splice: Splice) -> list[int]:
    """The ids every engine stops on: the template's end of turn (e.g. <|im_end|>) and the checkpoint's
    generation-config eos ids (Qwen3: <|im_end|> and <|endoftext|>), what transformers' generate on the checkpoint
    stops on. The vLLM engine is given exactly these (engines.VLLMEngine.sampling_params)."""
    stop = stop_string(splice.template)
    ids = splice.tokenizer(stop, add_special_tokens=False).input_ids if stop else []
    eos = splice.model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    return sorted(set(ids if len(ids) == 1 else []) | set(eos))


class ChatService:
    """One checkpoint behind the endpoint: its splice, an engine, and the limits requests are checked against."""

    def __init__(self, splice: Splice, engine, model_name: str, *, context_len: int | None = None,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES):
        self.splice, self.engine, self.model_name = splice, engine, model_name
        self.max_image_pixels, self.max_request_bytes = int(max_image_pixels), int(max_request_bytes)
        config = splice.model.config
        limits = [context_len, getattr(config, "tokenizer_model_max_length", None),
                  getattr(config, "max_position_embeddings", None)]
        self.max_length = min(int(x) for x in limits if x) if any(limits) else 2048
        self.stop_token_ids = stop_token_ids(splice)
        self.created = int(time.time())

    # ---- a request, checked and spliced -------------------------------------------------------------------
    def prepare(self, body) -> tuple[dict, Spliced, Sampling]:
        params = validate_request(body)
        if params.get("model") != self.model_name:
            raise ApiError(404, f"the model {params.get('model')!r} is not served here: this server serves "
                                f"{self.model_name!r} (GET /v1/models)", "model", "not_found_error")
        try:
            messages = self._messages(params["messages"])
            spliced = self.splice.embed(messages)
            sampling = self._sampling(body, len(spliced))
        except RequestError as exc:
            raise ApiError(400, str(exc)) from None
        return params, spliced, sampling

    def _messages(self, messages: list[dict]) -> list[dict]:
        """OpenAI messages -> the splice's: image_url parts decoded (data: URLs only, under the pixel limit)."""
        urls = []
        for index, message in enumerate(messages):
            content = message.get("content")
            for part in content if isinstance(content, list) else []:
                if part.get("type") == "image_url":
                    url = part["image_url"]["url"]
                    if not url.startswith("data:"):
                        raise RequestError(f"image {len(urls) + 1} (message {index + 1}) is a {url.split(':')[0]!r} "
                                           f"URL: this server fetches nothing; send the image inline as "
                                           f"'data:image/png;base64,...'")
                    urls.append(url)
                elif part.get("type") not in ("text", "refusal"):
                    raise RequestError(f"message {index + 1}: content parts of type {part.get('type')!r} are not "
                                       f"supported: send 'text' and 'image_url' parts")
        # the worker's rules: a text-only model takes no image, at most MAX_IMAGES per request, then the pixels
        check_image_count(IMAGE_TOKEN * len(urls), urls, self.splice.multimodal)
        images = iter(decode_images(urls, self.max_image_pixels) if urls else [])
        out = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, list):
                content = [{"type": "image", "image": next(images)} if part["type"] == "image_url"
                           else {"type": "text", "text": part.get("text", part.get("refusal", ""))}
                           for part in content]
            out.append({"role": message["role"], "content": content})
        return out

    def _sampling(self, body: dict, prompt_tokens: int) -> Sampling:
        room = self.max_length - prompt_tokens
        if room < 1:
            raise RequestError(f"the prompt is {prompt_tokens} tokens with its images expanded, and this model reads "
                               f"at most {self.max_length}: start a new conversation or send a shorter one (fewer "
                               f"turns, fewer or smaller images)")
        requested = body.get("max_completion_tokens", body.get("max_tokens"))
        max_tokens = room if requested is None else number({"max_tokens": requested}, "max_tokens", 256, int, 1, None)
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        if len(stop) > 4:
            raise RequestError(f"'stop' holds {len(stop)} strings; send at most 4")
        top_k = body.get("top_k")
        seed = body.get("seed")
        return Sampling(
            max_tokens=min(max_tokens, room),
            temperature=number(body, "temperature", 1.0, float, 0.0, 2.0),
            top_p=number(body, "top_p", 1.0, float, 1e-9, 1.0),
            top_k=None if top_k in (None, -1, 0) else number(body, "top_k", 0, int, 1, None),
            seed=None if seed is None else number(body, "seed", 0, int, None, None),
            stop=stop, stop_token_ids=list(self.stop_token_ids),
            presence_penalty=number(body, "presence_penalty", 0.0, float, -2.0, 2.0),
            frequency_penalty=number(body, "frequency_penalty", 0.0, float, -2.0, 2.0))

    # ---- answers --------------------------------------------------------------------------------------------
    async def complete(self, spliced: Spliced, sampling: Sampling, request_id: str) -> ChatCompletion:
        text, finish, tokens = "", "stop", 0
        async for delta in self.engine.generate(spliced.embeds, sampling, request_id):
            text += delta.text
            tokens = delta.completion_tokens
            finish = delta.finish_reason or finish
        return ChatCompletion(
            id=request_id, object="chat.completion", created=int(time.time()), model=self.model_name,
            choices=[Choice(index=0, message=ChatCompletionMessage(role="assistant", content=text),
                            finish_reason=finish)],
            usage=CompletionUsage(prompt_tokens=len(spliced), completion_tokens=tokens,
                                  total_tokens=len(spliced) + tokens))

    async def stream(self, spliced: Spliced, sampling: Sampling, request_id: str, include_usage: bool):
        created = int(time.time())

        def chunk(delta: ChoiceDelta | None, finish=None, usage=None) -> str:
            choices = [] if delta is None else [ChunkChoice(index=0, delta=delta, finish_reason=finish)]
            body = ChatCompletionChunk(id=request_id, object="chat.completion.chunk", created=created,
                                       model=self.model_name, choices=choices, usage=usage)
            return f"data: {body.model_dump_json(exclude_unset=True)}\n\n"

        yield chunk(ChoiceDelta(role="assistant", content=""))
        tokens = 0
        try:
            async for delta in self.engine.generate(spliced.embeds, sampling, request_id):
                tokens = delta.completion_tokens
                if delta.text or delta.finish_reason:
                    yield chunk(ChoiceDelta(content=delta.text) if delta.text else ChoiceDelta(),
                                delta.finish_reason)
        except Exception as exc:  # headers are sent: the error goes into the stream, named
            logger.error("request %s failed:\n%s", request_id, traceback.format_exc())
            yield "data: " + json.dumps({"error": {"message": f"generation failed ({type(exc).__name__}: {exc}); "
                                                              f"the server goes on serving",
                                                   "type": "server_error", "param": None, "code": None}}) + "\n\n"
        if include_usage:
            yield chunk(None, usage=CompletionUsage(prompt_tokens=len(spliced), completion_tokens=tokens,
                                                    total_tokens=len(spliced) + tokens))
        yield "data: [DONE]\n\n"


def create_app(service: ChatService) -> FastAPI:
    app = FastAPI(title="llava-dpa serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": service.model_name, "engine": service.engine.name}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [Model(id=service.model_name, created=service.created, object="model",
                                                  owned_by="llava-dpa").model_dump()]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        try:
            body = await _read_json(request, service.max_request_bytes)
            params, spliced, sampling = await asyncio.to_thread(service.prepare, body)
        except ApiError as exc:
            logger.warning("refused a request (%s): %s", exc.status, exc.message)
            return exc.response()
        except Exception as exc:
            logger.error("request %s failed:\n%s", request_id, traceback.format_exc())
            return ApiError(500, f"the server failed on this request ({type(exc).__name__}: {exc}); it goes on "
                                 f"serving, and its log has the traceback", kind="server_error").response()
        logger.info("%s: %d prompt tokens (%d images, %d encoded), max_tokens %d, temperature %s", request_id,
                    len(spliced), len(spliced.images), spliced.encoded, sampling.max_tokens, sampling.temperature)
        if params.get("stream"):
            include_usage = bool((params.get("stream_options") or {}).get("include_usage"))
            return _ClosingStream(service.stream(spliced, sampling, request_id, include_usage),
                                  media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            answer = await _unless_disconnected(request, service.complete(spliced, sampling, request_id))
            if answer is None:
                logger.info("%s: the client left; its generation was stopped", request_id)
                return Response(status_code=499)  # nobody reads it: nginx's "client closed request"
        except Exception as exc:
            logger.error("request %s failed:\n%s", request_id, traceback.format_exc())
            return ApiError(500, f"generation failed ({type(exc).__name__}: {exc}); the server goes on serving",
                            kind="server_error").response()
        return JSONResponse(answer.model_dump(exclude_unset=True))

    return app


class _ClosingStream(StreamingResponse):
    """A StreamingResponse that closes its body generator however the response ends. A client that left is seen
    when a chunk cannot be sent; closing the generator then runs the engine's own clean-up at once (the hf engine
    stops generating, vLLM aborts the request), not whenever the garbage collector finalises the generator."""

    async def stream_response(self, send) -> None:
        try:
            await super().stream_response(send)
        finally:
            await self.body_iterator.aclose()


async def _unless_disconnected(request: Request, work, poll_s: float = 0.25):
    """`await work`, cancelled when the client disconnects (then None): a plain request sends nothing until its
    answer is whole, so the connection is watched meanwhile. Cancelling stops the engine's generation."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return None
    except asyncio.CancelledError:  # the server itself is stopping
        task.cancel()
        raise


async def _read_json(request: Request, limit: int):
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is {declared} bytes, over this server's limit of {limit} "
                            f"(--max-request-bytes): send fewer or smaller images")
    raw = bytearray()
    async for piece in request.stream():
        raw += piece
        if len(raw) > limit:
            raise ApiError(413, f"the request body is over this server's limit of {limit} bytes "
                                f"(--max-request-bytes): send fewer or smaller images")
    try:
        body = json.loads(bytes(raw), parse_constant=_no_constant)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity
        raise ApiError(400, f"the request body is not valid JSON ({exc}): send a JSON object with 'model' and "
                            f"'messages'") from None
    return body


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")
