"""An OpenAI-compatible HTTP server for one loaded model: `/v1/models`, `/v1/chat/completions` and
`/v1/completions`, streamed (server-sent events) or not, with OpenAI's request fields, response and
chunk shapes, usage counts and error JSON. `trainer.cli.serve` is its command-line front end.

Why not `transformers serve` (checked with transformers 5.25): it loads models by id with
AutoConfig / AutoModel in a separate engine process, so a PEFT adapter run (adapter_config.json, no
config.json) does not load without merging it first, and a QLoRA run would lose its 4-bit base; its
/v1/completions ignores `n`; and it has no API-key check. This is a small FastAPI app over our own
loader instead (`trainer.inference.load`), so every run folder serves as it was trained: its chat
template, its end-of-turn markers, an adapter applied to its base unmerged.

Generation runs one request at a time on one worker thread (the model is never used by two threads
at once); up to `max_queue` further requests wait in order, and beyond that a request is answered
429 at once. A streaming client that disconnects cancels its generation. Defaults are OpenAI's:
temperature 1 (0 is greedy), top_p 1, n 1; `max_tokens` absent means up to the context left, at most
`default_max_tokens`; a prompt plus `max_tokens` beyond the model's context is a 400
`context_length_exceeded`, as OpenAI answers (not silently clamped). Streaming with `n` > 1 streams
the choices one after another (choice i sampled with seed + i when a seed is given).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from trainer.inference.generation import (
    Completion,
    PromptError,
    Sampling,
    Stream,
    check_length,
    generate,
    prompt_ids,
)
from trainer.inference.load import Loaded

log = logging.getLogger("trainer.serve")

DEFAULT_MAX_TOKENS = 256
MAX_N = 128
ROLES = {"system", "developer", "user", "assistant"}
# OpenAI fields this server does not implement: refused when set to anything but their "off" value.
UNSUPPORTED: dict[str, Callable[[Any], bool]] = {
    "logprobs": lambda v: v not in (None, False, 0),
    "top_logprobs": lambda v: v not in (None, 0),
    "tools": lambda v: bool(v),
    "functions": lambda v: bool(v),
    "tool_choice": lambda v: v not in (None, "none", "auto"),
    "function_call": lambda v: v not in (None, "none", "auto"),
    "response_format": lambda v: v is not None and v != {"type": "text"},
    "logit_bias": lambda v: bool(v),
    "frequency_penalty": lambda v: v not in (None, 0),
    "presence_penalty": lambda v: v not in (None, 0),
    "echo": lambda v: bool(v),
    "suffix": lambda v: bool(v),
    "best_of": lambda v: v not in (None, 1),
}


class ApiError(Exception):
    """A request answered with OpenAI's error JSON: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, error_type, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _kind(value: Any) -> str:
    """A JSON value's type, as OpenAI's messages name it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _wrong_type(param: str, expected: str, value: Any) -> ApiError:
    return ApiError(
        400,
        f"Invalid type for '{param}': expected {expected}, but got {_kind(value)} instead.",
        param=param,
        code="invalid_type",
    )


def _bad_value(param: str, message: str) -> ApiError:
    return ApiError(400, f"Invalid '{param}': {message}", param=param, code="invalid_value")


def _integer(
    body: dict[str, Any], name: str, minimum: int | None = None, maximum: int | None = None
) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(name, "an integer", value)
    if minimum is not None and value < minimum:
        raise _bad_value(
            name, f"integer below minimum value. Expected a value >= {minimum}, but got {value} instead."
        )
    if maximum is not None and value > maximum:
        raise _bad_value(
            name, f"integer above maximum value. Expected a value <= {maximum}, but got {value} instead."
        )
    return value


def _number(body: dict[str, Any], name: str, low: float, high: float, low_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong_type(name, "a number", value)
    if value < low or (low_open and value == low) or value > high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise _bad_value(name, f"expected a value in {interval}, but got {value:g} instead.")
    return float(value)


def _boolean(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _wrong_type(name, "a boolean", value)
    return value


def _stops(body: dict[str, Any]) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise _wrong_type("stop", "a string or an array of strings", value)
    if any(not s for s in items):
        raise _bad_value("stop", "a stop sequence cannot be empty.")
    return list(items)


def _text_content(content: Any, param: str) -> str:
    """A message's content: a string, or an array of text parts (joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            where = f"{param}[{i}]"
            if not isinstance(part, dict):
                raise _wrong_type(where, "an object", part)
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(
                    400,
                    f"Invalid '{where}': only text content parts ({{'type': 'text', 'text': ...}}) are "
                    f"supported, got type {part.get('type')!r}.",
                    param=where,
                    code="invalid_value",
                )
            texts.append(part["text"])
        return "".join(texts)
    raise _wrong_type(param, "a string or an array of content parts", content)


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    value = body.get("messages")
    if value is None:
        raise ApiError(
            400,
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    if not isinstance(value, list):
        raise _wrong_type("messages", "an array", value)
    if not value:
        raise _bad_value("messages", "empty array. Expected an array with minimum length 1.")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _wrong_type(where, "an object", message)
        role = message.get("role")
        if not isinstance(role, str):
            raise _wrong_type(f"{where}.role", "a string", role)
        if role not in ROLES:
            roles = ", ".join(sorted(ROLES))
            raise _bad_value(f"{where}.role", f"role {role!r} is not supported here (supported: {roles}).")
        content = message.get("content")
        text = "" if content is None and role == "assistant" else _text_content(content, f"{where}.content")
        out.append({"role": "system" if role == "developer" else role, "content": text})
    return out


def _prompt(body: dict[str, Any]) -> str:
    value = body.get("prompt")
    if value is None:
        raise ApiError(
            400, "Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter"
        )
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    if isinstance(value, list) and all(isinstance(p, str) for p in value):
        raise _bad_value("prompt", f"one prompt per request, got {len(value)}.")
    if not isinstance(value, str):
        raise _wrong_type("prompt", "a string or an array of one string", value)
    return value


@dataclass
class Job:
    """One validated request."""

    kind: str  # "chat" | "text"
    ids: list[int]
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    id: str = field(init=False)

    def __post_init__(self) -> None:
        self.id = f"{'chatcmpl' if self.kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


class QueueFull(Exception):
    pass


class Worker:
    """Runs generation jobs one at a time on one thread, in arrival order; at most `max_queue` wait
    behind the running one."""

    def __init__(self, max_queue: int):
        self.max_queue = max_queue
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainer-serve")
        self._lock = threading.Lock()
        self.pending = 0  # running + waiting
        self.stats = {"completed": 0, "rejected": 0, "cancelled": 0, "failed": 0}
        self.cancelled_tokens: list[int] = []  # tokens each cancelled generation had made

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        with self._lock:
            if self.pending > self.max_queue:
                self.stats["rejected"] += 1
                raise QueueFull()
            self.pending += 1

        def job() -> Any:
            try:
                return fn()
            finally:
                with self._lock:
                    self.pending -= 1

        return self.executor.submit(job)

    def count(self, what: str, tokens: int | None = None) -> None:
        with self._lock:
            self.stats[what] += 1
            if tokens is not None:
                self.cancelled_tokens.append(tokens)


class StreamJob:
    """A streamed request on the worker thread: each choice's text pieces go to an asyncio queue as
    they are generated; `cancel()` (the client left) stops the generation at its next token, or
    skips it when it has not started."""

    def __init__(self, loaded: Loaded, job: Job, worker: Worker, loop: asyncio.AbstractEventLoop):
        self.loaded, self.job, self.worker, self.loop = loaded, job, worker, loop
        self.queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._lock = threading.Lock()
        self._cancelled = False
        self._stream: Stream | None = None

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            if self._stream is not None:
                self._stream.cancel()

    def _put(self, *item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is gone (server shut down)
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def run(self) -> None:
        sampling = self.job.sampling
        try:
            for index in range(sampling.num_return_sequences):
                seed = None if sampling.seed is None else (sampling.seed + index) % 2**32
                one = replace(sampling, num_return_sequences=1, seed=seed)
                with self._lock:
                    if self._cancelled:  # the client left while this request waited
                        self.worker.count("cancelled", 0)
                        return
                    stream = self._stream = Stream(self.loaded, self.job.ids, one)
                for piece in stream:
                    self._put("piece", index, piece)
                completion = stream.completion
                assert completion is not None
                if completion.finish_reason == "cancelled":
                    self.worker.count("cancelled", completion.tokens)
                    return
                self._put("end", index, completion)
            self.worker.count("completed")
        except Exception as err:  # reported to the client as an error event
            log.exception("generation failed")
            self.worker.count("failed")
            self._put("error", err)
        finally:
            self._put("done")


class HeldStreamingResponse(StreamingResponse):
    """A StreamingResponse that cancels its job however the response ends, even when the body was
    never iterated (the client left before the first byte)."""

    def __init__(self, content: AsyncIterator[str], job: StreamJob, done: Callable[[StreamJob], None]):
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.job, self.done = job, done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()  # nothing left to stop when it finished
            self.done(self.job)


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


class Server:
    """The state the routes share: the model, its name, the API key, the worker."""

    def __init__(
        self,
        loaded: Loaded,
        *,
        model_name: str | None = None,
        api_key: str | None = None,
        max_queue: int = 16,
        default_max_tokens: int | None = None,
    ):
        self.loaded = loaded
        self.name = model_name or loaded.name
        self.api_key = api_key or None
        self.worker = Worker(max_queue)
        self.created = int(time.time())
        configured = getattr(getattr(loaded.model, "generation_config", None), "max_new_tokens", None)
        self.default_max_tokens = default_max_tokens or configured or DEFAULT_MAX_TOKENS
        self.streams: set[StreamJob] = set()

    # requests -------------------------------------------------------------------------------------

    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        ):
            message = (
                "Incorrect API key provided."
                if header
                else "You didn't provide an API key. Send it as the "
                "header 'Authorization: Bearer KEY' (the server's --api-key / TRAINER_API_KEY)."
            )
            raise ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def body(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(
                400,
                "We could not parse the JSON body of your request. The body must be a JSON object, sent "
                "with the header 'Content-Type: application/json'.",
                code="invalid_json",
            ) from None
        if not isinstance(body, dict):
            raise ApiError(
                400, f"The request body must be a JSON object, got {_kind(body)}.", code="invalid_json"
            )
        return body

    def check_model(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        if model is None:
            raise ApiError(
                400,
                f"You must provide a model parameter (this server serves '{self.name}').",
                param="model",
                code="missing_required_parameter",
            )
        if not isinstance(model, str):
            raise _wrong_type("model", "a string", model)
        if model != self.name:
            raise ApiError(
                404,
                f"The model '{model}' does not exist; this server serves '{self.name}'.",
                param="model",
                code="model_not_found",
            )

    def parse(self, body: dict[str, Any], kind: str) -> Job:
        """The request as a Job, or the ApiError of its first problem."""
        self.check_model(body)
        for name, unsupported in UNSUPPORTED.items():
            if unsupported(body.get(name)):
                raise ApiError(
                    400,
                    f"'{name}' is not supported by this server.",
                    param=name,
                    code="unsupported_parameter",
                )
        if kind == "chat":
            messages = _messages(body)
            if not self.loaded.chat:
                why = next(
                    (
                        n[len("prompt format: ") :]
                        for n in self.loaded.notes
                        if n.startswith("prompt format: ")
                    ),
                    "",
                )
                raise ApiError(
                    400,
                    f"The model '{self.name}' has no chat template in use ({why or 'raw text prompts'}), "
                    "so it cannot take chat messages: send the prompt as raw text to /v1/completions.",
                    param="messages",
                    code="chat_template_missing",
                )
            try:
                ids = prompt_ids(self.loaded, messages)
            except PromptError as err:
                raise ApiError(400, str(err), param="messages", code="invalid_value") from None
        else:
            prompt = _prompt(body)
            ids = list(self.loaded.tokenizer(prompt, add_special_tokens=True).input_ids)
            if not ids:
                raise _bad_value("prompt", "the prompt is empty.")
        max_tokens = _integer(body, "max_tokens", minimum=1)
        if kind == "chat":
            max_tokens = _integer(body, "max_completion_tokens", minimum=1) or max_tokens
        n = _integer(body, "n", minimum=1, maximum=MAX_N) or 1
        temperature = _number(body, "temperature", 0, 2)
        top_p = _number(body, "top_p", 0, 1, low_open=True)
        top_k = _integer(body, "top_k", minimum=0)  # extensions (vLLM's names), not OpenAI's
        repetition_penalty = _number(body, "repetition_penalty", 0, float("inf"), low_open=True)
        seed = _integer(body, "seed")  # any integer, as OpenAI takes; numpy's RNG wants 0..2**32-1
        stop = _stops(body)
        stream = _boolean(body, "stream")
        options = body.get("stream_options")
        include_usage = False
        if options is not None:
            if not stream:
                raise _bad_value("stream_options", "only allowed when 'stream' is true.")
            if not isinstance(options, dict):
                raise _wrong_type("stream_options", "an object", options)
            include_usage = _boolean(options, "include_usage")
        max_new = self._max_new_tokens(ids, max_tokens, "messages" if kind == "chat" else "prompt")
        sampling = Sampling(
            max_new_tokens=max_new,
            temperature=1.0 if temperature is None else temperature,
            top_p=1.0 if top_p is None else top_p,
            top_k=top_k or 0,
            repetition_penalty=1.0 if repetition_penalty is None else repetition_penalty,
            num_return_sequences=n,
            seed=None if seed is None else seed % 2**32,
            stop=stop,
        )
        problems = sampling.problems()
        if problems:  # not reached through the checks above; kept as the last word
            raise ApiError(400, "; ".join(problems), code="invalid_value")
        return Job(kind=kind, ids=ids, sampling=sampling, stream=stream, include_usage=include_usage)

    def _max_new_tokens(self, ids: list[int], max_tokens: int | None, param: str) -> int:
        """`max_tokens`, or by default up to the context left (at most default_max_tokens); a 400
        context_length_exceeded when the prompt (and max_tokens) do not fit, as OpenAI answers."""
        limit = self.loaded.context_length
        try:
            check_length(self.loaded, ids, max_tokens or 1)
        except PromptError:
            raise ApiError(
                400,
                f"This model's maximum context length is {limit} tokens. However, your prompt is "
                f"{len(ids)} tokens, which leaves no room for a completion. Please reduce the length of "
                f"the {param}.",
                param=param,
                code="context_length_exceeded",
            ) from None
        if max_tokens is None:
            room = self.default_max_tokens if limit is None else limit - len(ids)
            return max(1, min(self.default_max_tokens, room))
        if limit is not None and len(ids) + max_tokens > limit:
            raise ApiError(
                400,
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{len(ids) + max_tokens} tokens ({len(ids)} in the {param}, {max_tokens} in the "
                f"completion). Please reduce the length of the {param} or the completion (max_tokens).",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return max_tokens

    # responses ------------------------------------------------------------------------------------

    def _busy(self) -> ApiError:
        return ApiError(
            429,
            f"The server is busy: one request is generating and {self.worker.max_queue} are waiting "
            "(--max-queue). Retry later.",
            error_type="server_busy",
            code="queue_full",
            headers={"Retry-After": "1"},
        )

    def _usage(self, job: Job, completions: list[Completion]) -> dict[str, int]:
        generated = sum(c.tokens for c in completions)
        return {
            "prompt_tokens": len(job.ids),
            "completion_tokens": generated,
            "total_tokens": len(job.ids) + generated,
        }

    def _choice(self, job: Job, index: int, completion: Completion) -> dict[str, Any]:
        if job.kind == "chat":
            message = {"role": "assistant", "content": completion.text}
            return {
                "index": index,
                "message": message,
                "logprobs": None,
                "finish_reason": completion.finish_reason,
            }
        return {
            "index": index,
            "text": completion.text,
            "logprobs": None,
            "finish_reason": completion.finish_reason,
        }

    def _envelope(self, job: Job, chunk: bool) -> dict[str, Any]:
        obj = (
            ("chat.completion.chunk" if chunk else "chat.completion")
            if job.kind == "chat"
            else "text_completion"
        )
        return {
            "id": job.id,
            "object": obj,
            "created": job.created,
            "model": self.name,
            "system_fingerprint": None,
        }

    async def respond(self, job: Job) -> Response:
        if job.stream:
            return self._stream(job)
        try:
            future = self.worker.submit(
                lambda: generate(self.loaded, [job.ids], job.sampling, batch_size=1)[0]
            )
        except QueueFull:
            raise self._busy() from None
        try:
            completions: list[Completion] = await asyncio.wrap_future(future)
        except Exception:
            self.worker.count("failed")
            raise
        self.worker.count("completed")
        body = self._envelope(job, chunk=False)
        body["choices"] = [self._choice(job, i, c) for i, c in enumerate(completions)]
        body["usage"] = self._usage(job, completions)
        return JSONResponse(body)

    def _stream(self, job: Job) -> Response:
        stream_job = StreamJob(self.loaded, job, self.worker, asyncio.get_running_loop())
        try:
            self.worker.submit(stream_job.run)
        except QueueFull:
            raise self._busy() from None
        self.streams.add(stream_job)
        return HeldStreamingResponse(self._events(stream_job), stream_job, self.streams.discard)

    async def _events(self, stream_job: StreamJob) -> AsyncIterator[str]:
        job = stream_job.job
        completions: list[Completion] = []
        usage_field = {"usage": None} if job.include_usage else {}

        def chunk(index: int, delta: dict[str, Any] | str, finish: str | None = None) -> str:
            body = self._envelope(job, chunk=True)
            if job.kind == "chat":
                choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": index, "text": delta, "logprobs": None, "finish_reason": finish}
            return _sse({**body, "choices": [choice], **usage_field})

        started: set[int] = set()

        def start(index: int) -> str:
            started.add(index)
            return chunk(index, {"role": "assistant", "content": ""}) if job.kind == "chat" else ""

        try:
            if job.kind == "chat":
                yield start(0)  # at once, even while the request waits in the queue
            while True:
                item = await stream_job.queue.get()
                if item[0] == "done":
                    break
                if item[0] == "error":
                    err = item[1]
                    yield _sse(
                        ApiError(
                            500, f"generation failed: {type(err).__name__}: {err}", error_type="server_error"
                        ).body()
                    )
                    break
                index = item[1]
                if index not in started and (head := start(index)):
                    yield head
                if item[0] == "piece":
                    yield chunk(index, {"content": item[2]} if job.kind == "chat" else item[2])
                else:  # "end"
                    completion: Completion = item[2]
                    completions.append(completion)
                    yield chunk(index, {} if job.kind == "chat" else "", completion.finish_reason)
            finished = len(completions) == job.sampling.num_return_sequences
            if finished and job.include_usage:
                yield _sse(
                    {**self._envelope(job, chunk=True), "choices": [], "usage": self._usage(job, completions)}
                )
            yield "data: [DONE]\n\n"
        except BaseException:  # the client left (this task cancelled): stop generating for it
            stream_job.cancel()
            raise

    def shutdown(self) -> None:
        for stream_job in list(self.streams):
            stream_job.cancel()
        self.worker.executor.shutdown(wait=False, cancel_futures=True)


def create_app(
    loaded: Loaded,
    *,
    model_name: str | None = None,
    api_key: str | None = None,
    max_queue: int = 16,
    default_max_tokens: int | None = None,
) -> FastAPI:
    """The ASGI app serving `loaded` (see the module docstring); `app.state.server` is its Server."""
    server = Server(
        loaded,
        model_name=model_name,
        api_key=api_key,
        max_queue=max_queue,
        default_max_tokens=default_max_tokens,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        server.shutdown()

    app = FastAPI(title="trainer serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.server = server

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return err.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = (
            f"Unknown request URL: {request.method} {request.url.path}."
            if err.status_code == 404
            else f"{err.detail} ({request.method} {request.url.path})."
        )
        code = "unknown_url" if err.status_code == 404 else None
        return ApiError(err.status_code, message, code=code).response()

    @app.exception_handler(Exception)
    async def server_error(request: Request, err: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return ApiError(
            500, f"Internal server error: {type(err).__name__}: {err}", error_type="server_error"
        ).response()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok"}  # no key needed: says nothing about the model

    def model_card() -> dict[str, Any]:
        return {"id": server.name, "object": "model", "created": server.created, "owned_by": "trainer"}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        server.authorize(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model:path}")
    async def model(request: Request, model: str) -> dict[str, Any]:
        server.authorize(request)
        server.check_model({"model": model})
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        server.authorize(request)
        return await server.respond(server.parse(await server.body(request), "chat"))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        server.authorize(request)
        return await server.respond(server.parse(await server.body(request), "text"))

    return app
