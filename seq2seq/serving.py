"""serve.py's machinery: OpenAI-style chat-completion requests read into decoding jobs, a batcher
that answers the jobs of many clients in one decoding call, and the FastAPI app around them.

The server keeps no conversation: each request carries its own history (OpenAI's `messages`),
so no client can read another's. Requests that share decoding settings are decoded together
(decoding is batched with no loop over queries); a request's sampling draws come from its own
generator (decoding.sampling_noise), so its reply does not depend on what shares its batch.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect

from .chatbot import Chatbot
from .cli import first_line
from .decoding import DecodeSettings, DecodingError, decode, encode_queries, sampling_noise, seeded
from .vocab import EOS, PAD, detokenize, join_turns, read_message, words_within

WEB_DIR = Path(__file__).resolve().parent / "web"
# The page and what it loads, served from memory with their types.
WEB_FILES = {"/": ("index.html", "text/html"), "/chat.js": ("chat.js", "text/javascript"),
             "/conversation.js": ("conversation.js", "text/javascript"),
             "/chat.css": ("chat.css", "text/css"), "/favicon.svg": ("favicon.svg", "image/svg+xml")}  # fmt: skip
HONOURED = {"model", "messages", "n", "max_tokens", "max_completion_tokens", "temperature", "top_p",
            "seed", "stop", "stream", "stream_options"}  # fmt: skip
# Chat-completion parameters OpenAI defines that change nothing here, whatever their value.
IGNORED = {"user", "safety_identifier", "metadata", "store", "service_tier", "prompt_cache_key",
           "prompt_cache_retention", "prompt_cache_options", "moderation", "parallel_tool_calls"}  # fmt: skip
# Parameters accepted only with the values that ask for nothing this model cannot do (or null),
# and why others are refused.
TOOLS = "this model does not call tools"
UNSUPPORTED = {
    "frequency_penalty": ((0, 0.0), "the server's --no-repeat-ngram is its repetition control"),
    "presence_penalty": ((0, 0.0), "the server's --no-repeat-ngram is its repetition control"),
    "logprobs": ((False,), "beam search and MMI choose replies by more than their probability"),
    "top_logprobs": ((0,), "beam search and MMI choose replies by more than their probability"),
    "logit_bias": (({},), "the vocabulary is the model's own words, not OpenAI's token ids"),
    "tools": (([],), TOOLS), "functions": (([],), TOOLS), "tool_choice": (("none",), TOOLS),
    "function_call": (("none",), TOOLS),
    "response_format": (({"type": "text"},), "it only writes plain sentences"),
    "modalities": ((["text"],), "it only writes text"), "audio": ((), "it only writes text"),
    "prediction": ((), "it writes replies of a few words"), "web_search_options": ((), "it does not search"),
    "reasoning_effort": ((), "it does not reason step by step"),
    "verbosity": ((), "its replies have the length it learned"),
}  # fmt: skip
ROLES = ("system", "developer", "user", "assistant")
SEED_RANGE = (-(2**63), 2**64 - 1)


class ApiError(Exception):
    """A request the server cannot answer, as OpenAI reports one: a status, a one-line message,
    the parameter at fault and a code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask: body bytes, messages, choices, stop sequences."""

    max_body: int = 256 * 1024
    max_messages: int = 100
    max_n: int = 8
    max_stop: int = 4


@dataclass
class ChatRequest:
    """A chat-completion request as the model will answer it."""

    source: str  # the normalised turns the model reads, joined (vocab.join_turns)
    settings: DecodeSettings
    n: int  # choices asked for
    rows: int  # decoding rows: n for sampling (a draw each), else 1 (beam search gives n)
    seed: int | None  # of the sampling draws (decoding.sampling_noise), when the request samples
    prompt_tokens: int
    stream: bool = False
    include_usage: bool = False
    stop: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    max_tokens: int | None = None  # words and punctuation a reply may hold


def _type_name(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)  # fmt: skip


def _wrong_type(name: str, expected: str, value) -> ApiError:
    return ApiError(400, f"Invalid type for '{name}': expected {expected}, but got {_type_name(value)} instead.",
                    name, "invalid_type")  # fmt: skip


def _number(payload: dict, name: str, low: float, high: float, integer: bool = False):
    """payload[name] if it is a number (an integer with `integer`) in [low, high]; None when absent or null."""
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise _wrong_type(name, "an integer" if integer else "a number", value)
    if not low <= value <= high:
        raise ApiError(400, f"Invalid '{name}': {value} is not in [{low}, {high}].", name, "invalid_value")
    return value


def _flag(payload: dict, name: str) -> bool:
    value = payload.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _wrong_type(name, "a boolean", value)
    return value


def read_json(body: bytes) -> dict:
    """The request body as a JSON object; anything else is a 400 with the reason."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ApiError(400, f"The request body is not UTF-8 (byte {error.start}).") from None

    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    try:
        payload = json.loads(text, parse_constant=refuse)
    except json.JSONDecodeError as error:
        raise ApiError(
            400, f"The request body is not valid JSON: {error.msg} (character {error.pos})."
        ) from None
    except ValueError as error:
        raise ApiError(400, f"The request body is not valid JSON: {error}.") from None
    except RecursionError:
        raise ApiError(400, "The request body nests too deeply.") from None
    if not isinstance(payload, dict):
        raise ApiError(400, f"The request body must be a JSON object, not {_type_name(payload)}.")
    return payload


def _message_text(message: dict, where: str) -> str:
    """A message's text: its content string, or its text parts joined."""
    content = message.get("content")
    if message.get("tool_calls"):
        raise ApiError(
            400, f"{where}: tool calls are not supported: this model does not call tools.", "messages"
        )
    if content is None and message.get("role") == "assistant":
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (
                isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
            ):
                kind = part.get("type") if isinstance(part, dict) else _type_name(part)
                raise ApiError(400, f"{where}: only text content is supported, got a part of type {str(kind)[:40]!r}.",
                               "messages")  # fmt: skip
            texts.append(part["text"])
        return "\n".join(texts)
    raise _wrong_type(f"{where}.content", "a string or an array of text parts", content)


def read_messages(payload: dict, bot: Chatbot, limits: Limits) -> tuple[str, list[str]]:
    """The source the model reads (the earlier user and assistant turns a context model keeps,
    then the last user message as chat.py cuts it) and the notes on that message."""
    messages = payload.get("messages")
    if not isinstance(messages, list):
        raise _wrong_type("messages", "an array of messages", messages)
    if not messages:
        raise ApiError(
            400, "'messages' is empty: send at least the user's message.", "messages", "empty_array"
        )
    if len(messages) > limits.max_messages:
        raise ApiError(400, f"'messages' holds {len(messages)} messages; this server takes at most "
                       f"{limits.max_messages} (send the recent ones).", "messages", "array_above_max_length")  # fmt: skip
    turns = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _wrong_type(where, "an object", message)
        role = message.get("role")
        if role not in ROLES:
            raise ApiError(400, f"{where}.role: expected one of {', '.join(ROLES)}, got {str(role)[:40]!r} "
                           "(this model does not call tools).", f"{where}.role", "invalid_value")  # fmt: skip
        text = _message_text(message, where)
        if role in ("user", "assistant"):
            turns.append((role, text))
    if messages[-1].get("role") != "user":
        raise ApiError(
            400, "The last message must be the user's: it is the one the model answers.", "messages"
        )
    max_length = bot.settings.max_length
    query, notes = read_message(turns[-1][1], bot.vocab, max_length)
    if not query:
        raise ApiError(400, "Nothing to answer in the last user message: the model reads only English words "
                       "and . ! ?", "messages")  # fmt: skip
    earlier = turns[:-1][-bot.context.turns :] if bot.context.turns else []
    history = [read_message(text, bot.vocab, max_length)[0] for _, text in earlier]
    return join_turns([*bot.context.cut(history), query]), notes


def _stop_sequences(payload: dict, limits: Limits) -> list[str]:
    stop = payload.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _wrong_type("stop", "a string or an array of strings", stop)
    if len(stops) > limits.max_stop:
        raise ApiError(400, f"'stop' holds {len(stops)} sequences; at most {limits.max_stop}.", "stop")
    return [s for s in stops if s]


def _max_tokens(payload: dict) -> int | None:
    value = _number(payload, "max_completion_tokens", 1, 2**31, integer=True)
    return _number(payload, "max_tokens", 1, 2**31, integer=True) if value is None else value


def _decoding(
    payload: dict, server: DecodeSettings, limits: Limits
) -> tuple[DecodeSettings, int, int, int | None]:
    """The settings a request decodes with, the rows it takes, the choices it asks for and the
    tokens a reply may hold.

    temperature 0 asks for the server's deterministic decoding (greedy where the server samples);
    temperature > 0, or top_p < 1, for sampling; max_tokens shortens replies; n asks for n samples,
    or the n best of the beam (which widens to hold them)."""
    settings = server
    temperature = _number(payload, "temperature", 0, 2)
    top_p = _number(payload, "top_p", 0, 1)
    if temperature == 0:
        if settings.method == "sample":
            settings = replace(settings, method="greedy")
    elif temperature is not None or (top_p is not None and top_p < 1):
        temperature = settings.temperature if temperature is None else max(temperature, 1e-3)
        settings = replace(settings, method="sample", rerank="none", temperature=temperature)
        if top_p is not None:
            settings = replace(settings, top_p=max(top_p, 1e-6))
    max_tokens = _max_tokens(payload)
    if max_tokens is not None and max_tokens + 1 < settings.max_length:  # room for EOS after max_tokens
        settings = replace(
            settings, max_length=max_tokens + 1, min_length=min(settings.min_length, max_tokens)
        )
    n = _number(payload, "n", 1, limits.max_n, integer=True) or 1
    if settings.method == "sample":
        return settings, n, n, max_tokens
    if n > 1 and settings.method == "greedy":
        raise ApiError(400, "n > 1 asks for different replies, but this server decodes greedily: ask for "
                       "sampling (temperature > 0), or start the server with --decoding beam.", "n")  # fmt: skip
    if n > settings.n_best:  # decode returns the n_best best of the beam, which widens to hold them
        settings = replace(settings, n_best=n)
    return settings, 1, n, max_tokens


def read_request(payload: dict, bot: Chatbot, model_name: str, limits: Limits) -> ChatRequest:
    """A chat-completion request as the model will answer it: its parameters mapped onto the
    server's decoding settings where they mean something, refused with the reason where not."""
    for name in payload:
        if name in HONOURED or name in IGNORED:
            continue
        if name not in UNSUPPORTED:
            raise ApiError(400, f"Unrecognized request argument supplied: {name[:60]}", name[:60])
        accepted, why = UNSUPPORTED[name]
        if payload[name] is not None and payload[name] not in accepted:
            raise ApiError(
                400, f"'{name}' is not supported by this server: {why}.", name, "unsupported_parameter"
            )
    model = payload.get("model")
    if "model" not in payload:
        raise ApiError(400, f"'model' is required: this server serves '{model_name}'.", "model",
                       "missing_required_parameter")  # fmt: skip
    if not isinstance(model, str):
        raise _wrong_type("model", "a string", model)
    if model != model_name:
        raise ApiError(404, f"The model '{model[:100]}' does not exist: this server serves '{model_name}'.",
                       "model", "model_not_found")  # fmt: skip
    source, notes = read_messages(payload, bot, limits)
    try:
        settings, rows, n, max_tokens = _decoding(payload, bot.settings, limits)
    except DecodingError as error:
        raise ApiError(400, f"These parameters cannot decode: {error}.") from None
    seed = _number(payload, "seed", *SEED_RANGE, integer=True)
    stream = _flag(payload, "stream")
    options = payload.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise ApiError(400, "'stream_options' is only allowed when 'stream' is true.", "stream_options")
        if not isinstance(options, dict):
            raise _wrong_type("stream_options", "an object", options)
        include_usage = _flag(options, "include_usage")
    ids = bot.context.source_ids(bot.vocab, source, words_within(bot.settings.max_length))
    return ChatRequest(source, settings, n, rows, seed, len(ids), stream, include_usage,
                       _stop_sequences(payload, limits), notes, max_tokens)  # fmt: skip


@dataclass(frozen=True)
class Choice:
    """One reply: its tokens, and whether it ended (EOS) rather than reaching max_length."""

    tokens: tuple[str, ...]
    ended: bool


def answer(
    bot: Chatbot, sources: list[str], settings: DecodeSettings, draws: list[tuple[int, int | None]]
) -> list[list[Choice]]:
    """Each source's replies (the n-best list of a beam search, else one), decoded as one batch
    with its requests' sampling draws (their rows and seeds, in order): each request's noise comes
    from its own generator, so its reply does not depend on its batch. Queries are cut as the bot
    reads them, whatever max_length the settings give replies."""
    src, lengths = encode_queries(bot.vocab, sources, bot.settings.max_length, bot.device, bot.context)
    noise = None
    if settings.method == "sample":
        noise = torch.cat([sampling_noise(rows, settings.max_length, seeded(seed)) for rows, seed in draws])
    replies = decode(bot.model, src, lengths, settings, bot.backward, noise)
    out = []
    for row in replies.tokens.cpu().tolist():
        out.append(
            [Choice(tuple(bot.vocab.decode(ids)), EOS in ids) for ids in row if any(i != PAD for i in ids)]
        )
    return out


@dataclass(eq=False)
class Job:
    """A request waiting for its rows to be decoded."""

    sources: list[str]
    settings: DecodeSettings
    seed: int | None
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)
    abandoned: bool = False  # timed out: nobody waits for the result


class Batcher:
    """Decodes queued jobs that share settings together, one batch at a time, in a worker thread
    (the event loop keeps accepting meanwhile).

    A batch starts when it holds `max_batch` rows, when its first job has waited `max_wait`
    seconds, or as soon as it holds as many rows as the largest of the recent batches: a lone
    client never waits for company that is not coming, and many clients are gathered again
    after each batch. At most `max_queue` jobs wait; beyond, a request is refused (503).

    `executor` is the one thread that runs torch (`decode_thread`); `run` gets each batch's
    sources, settings and its jobs' rows and seeds (`answer`).
    """

    def __init__(self, run: Callable[[list[str], DecodeSettings, list[tuple[int, int | None]]], list], max_batch: int,
                 max_wait: float, max_queue: int, executor: ThreadPoolExecutor | None = None):  # fmt: skip
        self.run, self.max_batch, self.max_wait, self.max_queue = run, max_batch, max_wait, max_queue
        self.pending: deque[Job] = deque()
        self.recent: deque[int] = deque([1], maxlen=16)
        self.executor = executor or decode_thread()
        self.arrival = asyncio.Event()
        self.answered = 0
        self.batches = 0

    def submit(self, request: ChatRequest) -> Job:
        if len(self.pending) >= self.max_queue:
            raise ApiError(503, f"The server is busy: {self.max_queue} requests are waiting. Retry shortly.",
                           code="server_busy", kind="server_error", headers={"Retry-After": "1"})  # fmt: skip
        job = Job([request.source] * request.rows, request.settings, request.seed,
                  asyncio.get_running_loop().create_future())  # fmt: skip
        self.pending.append(job)
        self.arrival.set()
        return job

    def withdraw(self, job: Job) -> None:
        """Forget a job whose request gave up waiting, decoded or not."""
        job.abandoned = True
        if job in self.pending:
            self.pending.remove(job)

    async def _gather(self) -> list[Job]:
        while not self.pending:
            self.arrival.clear()
            await self.arrival.wait()
        key = self.pending[0].settings
        deadline = self.pending[0].arrived + self.max_wait
        expected = min(self.max_batch, max(self.recent))
        while True:
            rows = sum(len(j.sources) for j in self.pending if j.settings == key)
            left = deadline - time.monotonic()
            if rows >= expected or left <= 0 or not self.pending:
                break
            self.arrival.clear()
            try:
                await asyncio.wait_for(self.arrival.wait(), left)
            except TimeoutError:
                pass
        batch, rows = [], 0
        for job in list(self.pending):
            if job.settings == key and (not batch or rows + len(job.sources) <= self.max_batch):
                batch.append(job)
                rows += len(job.sources)
                self.pending.remove(job)
        return batch

    async def work(self) -> None:
        """Decode batches until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            jobs = [job for job in await self._gather() if not job.abandoned]
            if not jobs:
                continue
            sources = [s for job in jobs for s in job.sources]
            draws = [(len(job.sources), job.seed) for job in jobs]
            try:
                choices = await loop.run_in_executor(
                    self.executor, self.run, sources, jobs[0].settings, draws
                )
            except Exception as error:  # a fault of this batch: each of its requests says so
                for job in jobs:
                    if not job.abandoned:
                        job.future.set_exception(error)
                continue
            self.batches += 1
            self.recent.append(len(sources))
            start = 0
            for job in jobs:
                if not job.abandoned:
                    job.future.set_result(choices[start : start + len(job.sources)])
                    self.answered += 1
                start += len(job.sources)


@dataclass(frozen=True)
class ServeOptions:
    """serve.py's flags that shape the app."""

    model_name: str = "chatbot-seq2seq"
    api_key: str | None = None
    limits: Limits = Limits()
    max_batch: int = 64
    max_wait_ms: float = 10.0
    max_queue: int = 256
    timeout: float = 30.0
    allowed_hosts: tuple[str, ...] | None = None  # Host headers answered (None: any)


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    cuts = [text.find(s) for s in stops if s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def completion(request: ChatRequest, choices: list[Choice], model_name: str, fingerprint: str) -> dict:
    """The chat.completion object for a request and its choices (OpenAI's shape, plus `notes`)."""
    out, completion_tokens = [], 0
    for index, choice in enumerate(choices):
        if request.max_tokens is not None and len(choice.tokens) > request.max_tokens:  # a cut reply
            choice = Choice(choice.tokens[: request.max_tokens], ended=False)
        text, stopped = _cut_at_stop(detokenize(choice.tokens), request.stop)
        completion_tokens += len(choice.tokens) + choice.ended
        out.append({"index": index, "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None, "finish_reason": "stop" if choice.ended or stopped else "length"})  # fmt: skip
    usage = {"prompt_tokens": request.prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": request.prompt_tokens + completion_tokens}  # fmt: skip
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model_name, "system_fingerprint": fingerprint, "choices": out, "usage": usage,
            "notes": request.notes}  # fmt: skip


def completion_chunks(body: dict, include_usage: bool = False) -> list[str]:
    """A completion as server-sent `chat.completion.chunk` events: the role, the reply word by
    word (as detokenize spaces it), the finish reason, usage if asked for, then [DONE]."""
    head = {k: body[k] for k in ("id", "created", "model", "system_fingerprint")}
    head["object"] = "chat.completion.chunk"

    def event(choices: list, **extra) -> str:
        return f"data: {json.dumps({**head, 'choices': choices, **extra}, separators=(',', ':'))}\n\n"

    events = []
    for choice in body["choices"]:
        i, text = choice["index"], choice["message"]["content"]
        first = {"role": "assistant", "content": ""}
        events.append(event([{"index": i, "delta": first, "logprobs": None, "finish_reason": None}],
                            **({"notes": body["notes"]} if i == 0 else {})))  # fmt: skip
        pieces = [word if n == 0 else " " + word for n, word in enumerate(text.split(" "))] if text else []
        for piece in pieces:
            events.append(
                event([{"index": i, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}])
            )
        events.append(
            event([{"index": i, "delta": {}, "logprobs": None, "finish_reason": choice["finish_reason"]}])
        )
    if include_usage:
        events.append(event([], usage=body["usage"]))
    return [*events, "data: [DONE]\n\n"]


def fingerprint(bot: Chatbot) -> str:
    """Names the model file and the decoding: the same seed gives the same reply while it holds."""
    path = Path(bot.args.model_path)
    stat = path.stat()
    facts = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{bot.settings}:{bot.backward_path}:{bot.precision}"
    return "fp_" + hashlib.sha256(facts.encode()).hexdigest()[:12]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def decode_thread() -> ThreadPoolExecutor:
    """The one thread that runs torch: the model is loaded and every batch decoded there.

    OpenMP keeps a team of threads for each thread that enters a parallel region; a model loaded
    in the main thread and decoded in another left two teams spinning on two cores, and MMI
    replies took 113 ms instead of 72 (measured on the default model)."""
    return ThreadPoolExecutor(1, thread_name_prefix="decode")


def create_app(bot: Chatbot, options: ServeOptions, executor: ThreadPoolExecutor | None = None) -> FastAPI:
    """The FastAPI app: the page at /, the API under /v1, /health; `executor` is the thread that
    loaded `bot` (decode_thread)."""
    batcher = Batcher(lambda *a: answer(bot, *a), options.max_batch, options.max_wait_ms / 1000,
                      options.max_queue, executor)  # fmt: skip
    served_print = fingerprint(bot)
    created = int(Path(bot.args.model_path).stat().st_mtime)
    web = {route: ((WEB_DIR / name).read_bytes(), kind) for route, (name, kind) in WEB_FILES.items()}
    state = {"draining": False, "broken": None}

    def worker_ended(worker: asyncio.Task) -> None:
        """The batcher only ends when cancelled; if it failed, the server says so and refuses work."""
        if not worker.cancelled() and worker.exception() is not None:
            state["broken"] = f"{type(worker.exception()).__name__}: {first_line(worker.exception())}"
            log(f"error: the decoding worker stopped ({state['broken']}); restart serve.py")

    @asynccontextmanager
    async def lifespan(app) -> AsyncIterator[None]:
        worker = asyncio.create_task(batcher.work())
        worker.add_done_callback(worker_ended)
        yield
        worker.cancel()
        batcher.executor.shutdown(wait=True)

    app = FastAPI(title="chatbot-seq2seq", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    if options.allowed_hosts:  # a loopback server answers loopback names only (no DNS rebinding)
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(options.allowed_hosts))
    app.state.batcher = batcher
    app.state.serving = state

    def error(e: ApiError) -> Response:
        # ASCII JSON: an error may quote what the client sent, lone surrogates included
        return Response(json.dumps(e.body()), e.status, e.headers, media_type="application/json")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        message = {404: f"No route {request.method} {request.url.path[:100]}.",
                   405: f"{request.method} is not allowed on {request.url.path[:100]}."}.get(exc.status_code, str(exc.detail))  # fmt: skip
        return error(ApiError(exc.status_code, message, headers=exc.headers))

    def authorize(request: Request) -> None:
        if state["broken"]:
            raise ApiError(
                503, f"The server cannot decode ({state['broken']}); restart it.", kind="server_error"
            )
        if state["draining"]:
            raise ApiError(503, "The server is shutting down.", code="shutting_down", kind="server_error")
        if options.api_key is None:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise ApiError(401, "No API key given: send 'Authorization: Bearer KEY' (serve.py --api-key).",
                           code="missing_api_key")  # fmt: skip
        if not hmac.compare_digest(key.strip().encode(), options.api_key.encode()):
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    def model_card() -> dict:
        return {
            "id": options.model_name,
            "object": "model",
            "created": created,
            "owned_by": "chatbot-seq2seq",
        }

    async def page(request: Request) -> Response:
        content, kind = web[request.url.path]
        headers = {"Content-Security-Policy": "default-src 'self'; base-uri 'none'; frame-ancestors 'none'",
                   "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}  # fmt: skip
        return Response(content, media_type=kind, headers=headers)

    for route in web:
        app.add_api_route(route, page, methods=["GET"], include_in_schema=False)

    @app.get("/health")
    async def health() -> JSONResponse:
        status = "broken" if state["broken"] else "shutting down" if state["draining"] else "ok"
        body = {"status": status, "model": options.model_name, "max_messages": options.limits.max_messages,
                "queued": len(batcher.pending), "answered": batcher.answered, "batches": batcher.batches}  # fmt: skip
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        try:
            authorize(request)
        except ApiError as e:
            return error(e)
        return JSONResponse({"object": "list", "data": [model_card()]})

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: Request) -> Response:
        try:
            authorize(request)
            if name != options.model_name:
                raise ApiError(404, f"The model '{name[:100]}' does not exist: this server serves "
                               f"'{options.model_name}'.", "model", "model_not_found")  # fmt: skip
        except ApiError as e:
            return error(e)
        return JSONResponse(model_card())

    async def read_body(request: Request) -> bytes:
        limit = options.limits.max_body
        declared = request.headers.get("content-length", "")
        too_big = ApiError(413, f"The request body is larger than this server's limit of {limit:,} bytes.",
                           code="request_too_large")  # fmt: skip
        if declared.isdigit() and int(declared) > limit:
            raise too_big
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise ApiError(415, f"Content-Type must be application/json, not {kind[:60] or 'none'!r}.")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        job = None
        try:
            authorize(request)
            try:
                async with asyncio.timeout(options.timeout):  # a body that never arrives ends too
                    body = await read_body(request)
            except TimeoutError:
                raise ApiError(
                    408, f"The request body did not arrive within {options.timeout:g} s."
                ) from None
            chat = read_request(read_json(body), bot, options.model_name, options.limits)
            job = batcher.submit(chat)
            try:
                choices = await asyncio.wait_for(asyncio.shield(job.future), options.timeout)
            except TimeoutError:
                raise ApiError(504, f"No reply within the server's {options.timeout:g} s (--timeout): it is "
                               "busy. Retry shortly.", code="timeout", kind="server_error") from None  # fmt: skip
            body = completion(
                chat, [c for row in choices for c in row][: chat.n], options.model_name, served_print
            )
        except ApiError as e:
            return error(e)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read it
        except Exception as e:  # a fault of the server, told in one line, never a traceback
            log(f"error: {request.method} {request.url.path}: {type(e).__name__}: {first_line(e)}")
            return error(
                ApiError(500, "The server failed to answer; it said so in its log.", kind="server_error")
            )
        finally:
            if job is not None and not job.future.done():
                batcher.withdraw(job)
        if not chat.stream:
            return JSONResponse(body)

        async def events() -> AsyncIterator[str]:
            for event in completion_chunks(body, chat.include_usage):
                yield event

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    return app
