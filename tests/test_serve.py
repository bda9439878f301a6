"""serve.py as its users meet it: real servers on 127.0.0.1 asked by the official openai client,
by raw HTTP with bad input, and by a browser; and the batcher it decodes with."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from seq2seq.decoding import DecodeSettings
from seq2seq.serving import ApiError, Batcher, ChatRequest
from tests.helpers import ENV, HOSTILE, PAIRS, ROOT, run_script

MODEL = "chatbot-seq2seq"
CHAT = "/v1/chat/completions"


class Server:
    """serve.py in a subprocess on a free port of 127.0.0.1, its stderr collected."""

    def __init__(self, *args: str, cwd: Path):
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "serve.py"), "--port", "0", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV, cwd=cwd,
        )  # fmt: skip
        self.lines: list[str] = []
        deadline = time.time() + 120
        while time.time() < deadline:
            line = self.process.stderr.readline()
            if not line:
                raise AssertionError(f"serve.py stopped before serving: {''.join(self.lines)}")
            self.lines.append(line)
            if line.startswith("serving '"):
                self.port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
                break
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, headers, JSON body or text) of one request on a fresh connection."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        raw = response.read()
        connection.close()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = raw.decode("utf-8", "replace")
        return response.status, {k.lower(): v for k, v in response.getheaders()}, payload

    def chat(self, payload: dict | bytes, key: str | None = None, **headers):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", **headers}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return self.request("POST", CHAT, body, headers)

    def wait_until_queued(self, count: int, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        while self.request("GET", "/health")[2]["queued"] != count:
            assert time.time() < deadline, f"never {count} requests queued"
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def ask(text: str, history: tuple[str, ...] = (), **parameters) -> dict:
    """A request body: the earlier turns (user first, alternating), then `text` from the user."""
    roles = ("user", "assistant")
    turns = [{"role": roles[i % 2], "content": t} for i, t in enumerate(history)]
    return {"model": MODEL, "messages": [*turns, {"role": "user", "content": text}], **parameters}


def reply_of(payload: dict) -> str:
    return payload["choices"][0]["message"]["content"]


def chat_py(flags: list[str], lines: list[str], cwd: Path) -> list[str]:
    """chat.py's replies to piped lines (a blank line starts a new conversation)."""
    result = run_script("chat.py", *flags, input="\n".join(lines) + "\n", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("\n")[:-1]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A working folder with no checkpoints/backward/ in it."""
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def plain(trained_checkpoint, home):
    server = Server(
        "--model-path", str(trained_checkpoint), "--max-body", "4096", "--max-messages", "8", cwd=home
    )
    yield server
    server.stop()


KEY = "sesame"


@pytest.fixture(scope="module")
def mmi(trained_checkpoint, backward_checkpoint, home):
    # chat.py's --precision default is auto, serve.py's fp32: the same on both sides
    flags = ["--model-path", str(trained_checkpoint), "--backward-model", str(backward_checkpoint), "--n-best", "6",
             "--precision", "fp32"]  # fmt: skip
    server = Server(*flags, "--api-key", KEY, cwd=home)
    server.flags = flags
    yield server
    server.stop()


@pytest.fixture(scope="module")
def context(context_checkpoint, home):
    server = Server("--model-path", str(context_checkpoint), "--rerank", "none", cwd=home)
    yield server
    server.stop()


def test_the_openai_client_gets_chat_py_replies_plain_and_streaming(mmi, home):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{mmi.port}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list().data] == [MODEL]
    queries = [q for q, _ in PAIRS[:8]] + ["Where do you live, Bob?"]
    expected = chat_py(mmi.flags, queries, home)
    assert "replies are reranked by MMI" in mmi.log
    for query, want in zip(queries, expected):
        messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": query}]
        plain = client.chat.completions.create(model=MODEL, messages=messages)
        assert plain.choices[0].message.content == want and plain.choices[0].finish_reason == "stop"
        assert plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens
        chunks = list(client.chat.completions.create(model=MODEL, messages=messages, stream=True,
                                                     stream_options={"include_usage": True}))  # fmt: skip
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert chunks[-1].usage.total_tokens == plain.usage.total_tokens


def test_n_best_stop_and_max_tokens(mmi):
    status, _, body = mmi.chat(ask("what is your name ?", n=3), KEY)
    assert status == 200 and len(body["choices"]) == 3 and reply_of(body) == "my name is bob."
    status, _, body = mmi.chat(ask("what is your name ?", stop=[" is"]), KEY)
    assert reply_of(body) == "my name" and body["choices"][0]["finish_reason"] == "stop"
    status, _, body = mmi.chat(ask("what is your name ?", max_tokens=2), KEY)
    assert reply_of(body) == "my name" and body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2
    status, _, body = mmi.chat(ask("what is your name ?", temperature=0), KEY)
    assert reply_of(body) == "my name is bob."  # temperature 0: the server's own deterministic decoding


def test_the_api_key_guards_the_api_only(mmi):
    assert mmi.chat(ask("hello ."))[0] == 401
    status, _, body = mmi.chat(ask("hello ."), "wrong")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert mmi.request("GET", "/v1/models")[0] == 401
    assert mmi.request("GET", "/health")[0] == 200 and mmi.request("GET", "/")[0] == 200
    assert mmi.chat(ask("hello ."), KEY)[0] == 200


def test_a_context_model_reads_the_history_each_conversation_sends(context, context_checkpoint, home):
    flags = ["--model-path", str(context_checkpoint), "--rerank", "none", "--precision", "fp32"]
    assert chat_py(flags, ["i am sad .", "why ?", "", "i am happy .", "why ?"], home) == [
        "ok.", "i lost my dog.", "", "ok.", "i won the game.",
    ]  # fmt: skip
    assert "reads the last 2 turns" in context.log

    def converse(feeling: str) -> list[str]:
        first = reply_of(context.chat(ask(f"i am {feeling} ."))[2])
        second = reply_of(context.chat(ask("why ?", (f"i am {feeling} .", first)))[2])
        return [first, second]

    with ThreadPoolExecutor(12) as pool:  # interleaved, and batched together
        talks = list(pool.map(converse, ["sad", "happy"] * 12))
    for feeling, talk in zip(["sad", "happy"] * 12, talks):
        assert talk == ["ok.", "i lost my dog." if feeling == "sad" else "i won the game."]
    assert reply_of(context.chat(ask("why ?"))[2]) == "because."  # no history sent, none read
    assert reply_of(context.chat(ask("Why?", ("I am SAD.", "OK.")))[2]) == "i lost my dog."


def test_a_seeded_request_repeats_its_reply_however_it_is_batched(plain):
    def sample(seed: int | None, text: str = "hello .") -> list[str]:
        status, _, body = plain.chat(ask(text, temperature=2, n=4, seed=seed))
        assert status == 200, body
        return [c["message"]["content"] for c in body["choices"]]

    alone = sample(7)
    assert sample(7) == alone
    with ThreadPoolExecutor(16) as pool:  # the same request among others, batched with them
        crowd = list(pool.map(lambda i: sample(7 if i % 4 == 0 else i), range(16)))
    assert all(replies == alone for replies in crowd[::4])
    assert len({tuple(sample(seed)) for seed in range(6)}) > 1
    health = plain.request("GET", "/health")[2]
    assert health["batches"] < health["answered"]  # some requests shared a batch


BAD = [  # (body, extra headers, status, words of the message)
    (b"{not json", {}, 400, "not valid JSON"),
    (b"\xff\xfe{}", {}, 400, "not UTF-8"),
    (b"[1, 2]", {}, 400, "must be a JSON object"),
    (b"[" * 2000 + b"]" * 2000, {}, 400, "nests too deeply"),
    (b'{"model": "chatbot-seq2seq", "messages": [], "n": NaN}', {}, 400, "NaN is not JSON"),
    (b'{"model": "\\ud800", "messages": []}', {}, 404, "does not exist"),  # a lone surrogate, quoted back
    (b'{"\\ud800": 1}', {}, 400, "Unrecognized request argument"),
    ({"model": MODEL}, {}, 400, "'messages'"),
    ({"model": MODEL, "messages": "hello"}, {}, 400, "Invalid type for 'messages'"),
    ({"model": MODEL, "messages": []}, {}, 400, "'messages' is empty"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}] * 9}, {}, 400, "at most 8"),
    ({"model": MODEL, "messages": ["hi"]}, {}, 400, "Invalid type for 'messages[0]'"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, {}, 400, "messages[0].role"),
    ({"model": MODEL, "messages": [{"role": "tool", "content": "hi"}]}, {}, 400, "does not call tools"),
    ({"model": MODEL, "messages": [{"role": "assistant", "content": "hi"}]}, {}, 400, "must be the user's"),
    ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, {}, 400, "messages[0].content"),
    (
        {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        {},
        400,
        "only text",
    ),
    (
        {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
        {},
        200,
        "",
    ),
    ({"model": MODEL, "messages": [{"role": "user", "content": "😀"}]}, {}, 400, "Nothing to answer"),
    ({"messages": [{"role": "user", "content": "hi"}]}, {}, 400, "'model' is required"),
    (ask("hi") | {"model": "gpt-5"}, {}, 404, "does not exist"),
    (ask("hi") | {"model": 5}, {}, 400, "Invalid type for 'model'"),
    (ask("hi", n=0), {}, 400, "'n'"),
    (ask("hi", n=9), {}, 400, "'n'"),
    (ask("hi", n="2"), {}, 400, "Invalid type for 'n'"),
    (ask("hi", n=2), {}, 400, "decodes greedily"),
    (ask("hi", temperature=3), {}, 400, "'temperature'"),
    (ask("hi", temperature="hot"), {}, 400, "Invalid type for 'temperature'"),
    (ask("hi", top_p=-1), {}, 400, "'top_p'"),
    (ask("hi", max_tokens=0), {}, 400, "'max_tokens'"),
    (ask("hi", seed=1.5), {}, 400, "Invalid type for 'seed'"),
    (ask("hi", stream="yes"), {}, 400, "Invalid type for 'stream'"),
    (ask("hi", stream_options={"include_usage": True}), {}, 400, "only allowed when 'stream' is true"),
    (ask("hi", stop=[1]), {}, 400, "Invalid type for 'stop'"),
    (ask("hi", wizardry=1), {}, 400, "Unrecognized request argument"),
    (ask("hi", tools=[{"type": "function"}]), {}, 400, "does not call tools"),
    (ask("hi", logprobs=True), {}, 400, "'logprobs' is not supported"),
    (ask("hi", frequency_penalty=0.5), {}, 400, "'frequency_penalty' is not supported"),
    (ask("hi", frequency_penalty=0, logprobs=False, user="u1", tools=[]), {}, 200, ""),
    (ask("x" * 5000), {}, 413, "larger than this server's limit"),
    (ask("hi"), {"Content-Type": "text/plain"}, 415, "Content-Type must be application/json"),
]


def test_bad_requests_get_a_status_and_one_line(plain):
    for body, headers, status, words in BAD:
        got, _, payload = plain.chat(body if isinstance(body, bytes) else body, **headers)
        assert got == status, (body, payload)
        if status != 200:
            error = payload["error"]
            assert words in error["message"] and "\n" not in error["message"], (body, error)
            assert set(error) == {"message", "type", "param", "code"}
    # the same body streamed in chunks, with no length given, is cut off at the limit too
    connection = http.client.HTTPConnection("127.0.0.1", plain.port, timeout=30)
    connection.request("POST", CHAT, body=iter([json.dumps(ask("hi")).encode()] + [b" " * 1000] * 5),
                       headers={"Content-Type": "application/json"}, encode_chunked=True)  # fmt: skip
    assert connection.getresponse().status == 413
    connection.close()
    status, headers, _ = plain.request("GET", CHAT)
    assert status == 405 and headers["allow"] == "POST"
    status, _, payload = plain.request("GET", "/health", headers={"Host": "rebound.example:8000"})
    assert status == 400 and "Invalid host header" in payload  # a loopback server answers loopback names
    status, _, payload = plain.request("GET", "/nowhere")
    assert status == 404 and "No route" in payload["error"]["message"]
    with socket.create_connection(("127.0.0.1", plain.port), timeout=10) as raw:  # not HTTP at all
        raw.sendall(b"\x16\x03\x01 hello there\r\n\r\n")
        assert raw.recv(1000).startswith(b"HTTP/1.1 400")
    for text in HOSTILE:
        status, _, payload = plain.chat(ask(text))
        assert status in (200, 400, 413), (text, payload)
    status, _, payload = plain.chat(ask("hello . " * 400))
    assert status == 200 and payload["notes"] == ["your message was cut to its first 1000 characters",
                                                  "I only read the first 9 words"]  # fmt: skip
    assert reply_of(plain.chat(ask("hello ."))[2]) == "hi there."  # still answering
    assert "Traceback" not in plain.log and "error" not in plain.log.lower()


def test_the_queue_and_the_timeout_are_bounded(trained_checkpoint, home):
    server = Server("--model-path", str(trained_checkpoint), "--max-wait-ms", "4000", "--max-queue", "1",
                    "--timeout", "1.5", cwd=home)  # fmt: skip
    try:
        # a batch of three rows makes the batcher expect company: a lone request then waits
        assert server.chat(ask("hello .", temperature=1, n=3))[0] == 200
        with ThreadPoolExecutor(2) as pool:
            waiting = pool.submit(server.chat, ask("hello ."))
            server.wait_until_queued(1)
            status, headers, payload = server.chat(ask("hello ."))
            assert status == 503 and headers["retry-after"] == "1" and "busy" in payload["error"]["message"]
            status, _, payload = waiting.result()
            assert status == 504 and "--timeout" in payload["error"]["message"]
        assert server.request("GET", "/health")[2]["queued"] == 0  # the timed-out request left the queue
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw:  # a body that stalls
            raw.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        "Content-Length: 100\r\n\r\n{\"model\":".encode())  # fmt: skip
            assert raw.recv(1000).startswith(b"HTTP/1.1 408")
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_finishes_the_requests_in_flight_and_exits_cleanly(sig, trained_checkpoint, home):
    server = Server("--model-path", str(trained_checkpoint), "--max-wait-ms", "2000", cwd=home)
    assert server.chat(ask("hello .", temperature=1, n=3))[0] == 200
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(server.chat, ask("how are you ?"))
        server.wait_until_queued(1)
        server.process.send_signal(sig)
        status, _, payload = in_flight.result()
    assert status == 200 and reply_of(payload) == "i'm fine."
    assert server.process.wait(30) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5)
    assert (
        "stopping: finishing the requests in flight" in server.log and "stopped after 2 replies" in server.log
    )
    assert "Traceback" not in server.log


def test_start_up_problems_are_one_line(trained_checkpoint, home):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run_script("serve.py", "--model-path", str(trained_checkpoint), "--port", port, cwd=home)
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    result = run_script("serve.py", "--model-path", str(home / "none.pth"), "--port", "0", cwd=home)
    assert result.returncode == 1 and "train one with `python train.py`" in result.stderr
    assert result.stderr.strip().count("\n") == 0
    result = run_script("serve.py", "--max-batch", "0", cwd=home)
    assert result.returncode == 2 and "--max-batch" in result.stderr and "Traceback" not in result.stderr


# The batcher alone, with a stand-in for decoding that records its calls.


def job_request(source: str, settings: DecodeSettings, rows: int = 1) -> ChatRequest:
    return ChatRequest(source, settings, rows, rows, None, 1)


def run_batcher(scenario, max_batch=8, max_wait=0.3, max_queue=16, delay=0.0):
    calls = []

    def decode(sources, settings, noise):
        time.sleep(delay)
        calls.append((list(sources), settings))
        return [[f"reply to {s}"] for s in sources]

    async def main():
        batcher = Batcher(decode, max_batch, max_wait, max_queue)
        worker = asyncio.create_task(batcher.work())
        try:
            return await scenario(batcher)
        finally:
            worker.cancel()
            batcher.executor.shutdown()

    return asyncio.run(main()), calls


GREEDY, BEAM = DecodeSettings(), DecodeSettings("beam")


def test_the_batcher_decodes_requests_with_the_same_settings_together():
    async def scenario(batcher):
        jobs = [batcher.submit(job_request(f"q{i}", BEAM if i % 3 == 0 else GREEDY)) for i in range(12)]
        return [await job.future for job in jobs]

    results, calls = run_batcher(scenario, max_batch=5)
    assert results == [[[f"reply to q{i}"]] for i in range(12)]  # each request's rows
    assert [settings for _, settings in calls] == [BEAM, GREEDY, GREEDY]  # the oldest request's kind first
    assert [len(sources) for sources, _ in calls] == [4, 5, 3]
    for sources, settings in calls:
        assert all((int(s[1:]) % 3 == 0) == (settings == BEAM) for s in sources)


def test_a_lone_request_does_not_wait_but_company_is_awaited():
    async def scenario(batcher):
        start = time.monotonic()
        await batcher.submit(job_request("alone", GREEDY)).future
        lone = time.monotonic() - start
        await batcher.submit(job_request("three rows", GREEDY, rows=3)).future
        start = time.monotonic()
        await batcher.submit(job_request("after a crowd", GREEDY)).future
        return lone, time.monotonic() - start

    (lone, after_crowd), _ = run_batcher(scenario, max_wait=3.0)
    assert lone < 1.5 and after_crowd >= 2.9


def test_the_batcher_refuses_beyond_its_queue_and_forgets_withdrawn_requests():
    async def scenario(batcher):
        first = batcher.submit(job_request("first", GREEDY))
        withdrawn = batcher.submit(job_request("withdrawn", GREEDY))
        batcher.withdraw(withdrawn)
        kept = batcher.submit(job_request("kept", GREEDY))
        with pytest.raises(ApiError) as refused:
            batcher.submit(job_request("one too many", GREEDY))
        await first.future
        await kept.future
        return refused.value

    refused, calls = run_batcher(scenario, max_queue=2, delay=0.05)
    assert refused.status == 503 and refused.headers == {"Retry-After": "1"}
    assert all("withdrawn" not in sources for sources, _ in calls)


def test_a_failed_batch_fails_its_requests_only():
    def scenario_factory():
        async def scenario(batcher):
            job = batcher.submit(job_request("boom", GREEDY))
            with pytest.raises(RuntimeError):
                await job.future
            return await batcher.submit(job_request("fine", BEAM)).future

        return scenario

    def decode(sources, settings, noise):
        if sources == ["boom"]:
            raise RuntimeError("out of memory")
        return [["ok"] for _ in sources]

    async def main():
        batcher = Batcher(decode, 4, 0.1, 4)
        worker = asyncio.create_task(batcher.work())
        try:
            return await scenario_factory()(batcher)
        finally:
            worker.cancel()
            batcher.executor.shutdown()

    assert asyncio.run(main()) == [["ok"]]  # the next batch is answered


# A real browser on the page. CI installs Debian's chromium; the test skips only where none is.
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt install chromium)")
def test_the_web_page_chats_in_a_real_browser(context):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=flags)
        page = browser.new_page()
        failures = []
        page.on("requestfailed", lambda request: failures.append(request.url))
        page.goto(f"http://127.0.0.1:{context.port}/")
        replies = page.locator(".turn.assistant:not(.typing) .bubble")
        for n, text in enumerate(["I am sad.", "Why?"], start=1):
            page.fill("#input", text)
            page.keyboard.press("Enter")
            replies.nth(n - 1).wait_for(timeout=30_000)
        assert replies.all_inner_texts() == ["Ok.", "I lost my dog."]  # the page sent the conversation
        page.reload()  # the conversation survives a reload
        assert page.locator(".turn.assistant .bubble").all_inner_texts() == ["Ok.", "I lost my dog."]
        page.click("#new")
        assert page.locator(".turn").count() == 0 and page.locator("#empty").is_visible()
        page.fill("#input", "Why?")
        page.keyboard.press("Enter")
        replies.first.wait_for(timeout=30_000)
        assert replies.all_inner_texts() == ["Because."]  # a new conversation: no history read
        page.fill("#input", "😀")
        page.keyboard.press("Enter")
        page.locator(".error").wait_for(timeout=30_000)
        assert "Nothing to answer" in page.locator(".error").inner_text()
        assert failures == []
        browser.close()


def test_a_request_withdrawn_while_it_is_decoded_gets_no_result():
    async def scenario(batcher):
        job = batcher.submit(job_request("slow", GREEDY))
        await asyncio.sleep(0.1)  # the batch is decoding now
        batcher.withdraw(job)
        await asyncio.sleep(0.4)
        return job.future.done(), batcher.answered, batcher.batches

    (done, answered, batches), calls = run_batcher(scenario, delay=0.3)
    assert (done, answered, batches) == (False, 0, 1) and len(calls) == 1


def test_request_parameters_map_onto_the_servers_decoding():
    from seq2seq.serving import Limits, _decoding

    beam = DecodeSettings("beam", beam_size=5, max_length=10, min_length=4)
    settings, rows, n, _ = _decoding({"n": 3}, beam, Limits())
    assert (settings.n_best, settings.width, rows, n) == (3, 5, 1, 3)  # the 3 best of the 5 beams
    settings, rows, n, _ = _decoding({"n": 7}, beam, Limits())
    assert (settings.n_best, settings.width) == (7, 7)  # the beam widens to hold them
    settings, rows, n, _ = _decoding({"n": 3, "temperature": 0.5, "top_p": 0.9}, beam, Limits())
    assert (settings.method, settings.temperature, settings.top_p, rows) == ("sample", 0.5, 0.9, 3)
    settings, _, _, max_tokens = _decoding({"max_tokens": 2}, beam, Limits())
    assert (settings.max_length, settings.min_length, max_tokens) == (3, 2, 2)  # 2 words, then EOS may end
    assert _decoding({"temperature": 0}, DecodeSettings("sample"), Limits())[0].method == "greedy"
    assert _decoding({"top_p": 0.5}, GREEDY, Limits())[0].method == "sample"
    assert _decoding({"top_p": 1}, beam, Limits())[0] == beam
