"""Serve a trained checkpoint to many people at once: a web chat page and an OpenAI-compatible API.

    python serve.py                          # checkpoints/best_model.pth on http://127.0.0.1:8000
    python serve.py --host 0.0.0.0 --api-key "$KEY"   # reachable from other machines, with a key

Open http://127.0.0.1:8000/ to chat in a browser, or point any OpenAI client at
http://127.0.0.1:8000/v1 (POST /v1/chat/completions, GET /v1/models, GET /health). The decoding
flags and their defaults are chat.py's (a backward model at checkpoints/backward/best_model.pth
reranks by MMI), but for --precision, fp32 here: memory stays flat under load. Requests that
arrive together and share settings are decoded as one batch.
The server keeps no conversation: each request sends its own. README, "Serving".
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
import sys

from seq2seq import exit_interrupted
from seq2seq.chatbot import Chatbot
from seq2seq.checkpoint import CheckpointError
from seq2seq.cli import (
    ArgumentParser,
    add_decoding_arguments,
    fail,
    non_negative_float,
    positive_float,
    positive_int,
)
from seq2seq.decoding import DecodingError
from seq2seq.devices import DeviceError
from seq2seq.serving import Limits, ServeOptions, create_app, decode_thread

API_KEY_VARIABLE = "SEQ2SEQ_API_KEY"


def make_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-path", default="checkpoints/best_model.pth", help="checkpoint to serve")
    # fp32 by default, unlike chat.py: a bf16 server's memory grows with the batch shapes its
    # matrix products meet (README, "Serving", measured)
    add_decoding_arguments(p, precision="fp32", rerank="auto")
    p.add_argument("--no-context", action="store_true",
                   help="answer every message alone, even with a model trained to read earlier turns")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free one)")
    p.add_argument("--api-key", help=f"require 'Authorization: Bearer KEY' on /v1 (default: ${API_KEY_VARIABLE}, "
                   "else none; the variable keeps the key out of the process list)")  # fmt: skip
    p.add_argument("--model-name", default=ServeOptions.model_name, help="the model's id in the API")
    p.add_argument("--max-batch", type=positive_int, default=ServeOptions.max_batch,
                   help="rows decoded together at most (1: one request at a time)")  # fmt: skip
    p.add_argument("--max-wait-ms", type=non_negative_float, default=ServeOptions.max_wait_ms,
                   help="how long a batch waits for more requests, when more are expected")  # fmt: skip
    p.add_argument("--max-queue", type=positive_int, default=ServeOptions.max_queue,
                   help="requests that may wait; beyond, 503 with Retry-After")  # fmt: skip
    p.add_argument("--timeout", type=positive_float, default=ServeOptions.timeout,
                   help="seconds a request may wait for its reply (then 504)")  # fmt: skip
    p.add_argument(
        "--max-body", type=positive_int, default=Limits.max_body, help="largest request body in bytes"
    )
    p.add_argument("--max-messages", type=positive_int, default=Limits.max_messages,
                   help="most messages a request may send")  # fmt: skip
    p.add_argument("--max-connections", type=positive_int, default=1000,
                   help="open connections at most; beyond, 503 (each holds a file descriptor)")  # fmt: skip
    p.add_argument("--access-log", action="store_true", help="log one line per request")
    return p


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, so that a port in use is one line before the model loads."""
    if not 0 <= port <= 65535:
        fail(f"--port: expected 0 to 65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        fail(f"cannot listen on {host}:{port}: {error.strerror or error}")
    return sock


# The Host headers a loopback server answers: a web page elsewhere cannot reach it through a name
# of its own that resolves to 127.0.0.1 (DNS rebinding).
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main() -> None:
    args = make_parser().parse_args()
    api_key = args.api_key or os.environ.get(API_KEY_VARIABLE) or None
    sock = listen(args.host, args.port)
    executor = decode_thread()
    try:
        bot = executor.submit(Chatbot, args).result()  # in the thread that will decode
    except (CheckpointError, DeviceError, DecodingError) as error:
        fail(str(error))
    except KeyboardInterrupt:  # not waiting for the load to end in the other thread
        exit_interrupted()
    if args.precision == "fp32":
        bot.precision_reason = (
            "serve.py's default: memory stays flat under load; --precision bf16 answers more a second"
        )
    loopback = is_loopback(args.host)
    options = ServeOptions(args.model_name, api_key, Limits(args.max_body, args.max_messages), args.max_batch,
                           args.max_wait_ms, args.max_queue, args.timeout, LOOPBACK_NAMES if loopback else None)  # fmt: skip
    app = create_app(bot, options, executor)

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, stopped by SIGINT or SIGTERM: new requests are refused (503, and no
        new connections), those in flight finish, and the process exits 0. A second Ctrl-C stops
        at once."""

        def handle_exit(self, sig: int, frame) -> None:
            if self.should_exit:
                self.force_exit |= sig == signal.SIGINT
                return
            app.state.serving["draining"] = True
            # os.write: a signal may land while print holds stderr's buffer
            os.write(
                2, b"stopping: finishing the requests in flight, refusing new ones (Ctrl-C again: stop now)\n"
            )
            self.should_exit = True

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)  # Ctrl-C now stops the server as its line says
            for line in announce:
                print(line, file=sys.stderr, flush=True)

    config = uvicorn.Config(app, log_level="warning", access_log=args.access_log,
                            limit_concurrency=args.max_connections, timeout_graceful_shutdown=args.timeout + 5)  # fmt: skip
    if args.access_log:  # uvicorn's access lines are INFO, below the warnings it logs otherwise
        logging.getLogger("uvicorn.access").setLevel(logging.INFO)
    server = Server(config)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    batching = f"batches of up to {args.max_batch} rows" if args.max_batch > 1 else "one request at a time"
    announce = [*bot.startup(), f"serving '{args.model_name}' at http://{shown}:{port}/ (chat page) and "
                f"http://{shown}:{port}/v1 (OpenAI API), {batching}; Ctrl-C stops"]  # fmt: skip
    if not loopback:
        announce.append(f"note: listening on {host}: anyone who can reach this machine can talk to the bot"
                        + ("" if api_key else " (--api-key requires a key)"))  # fmt: skip
    asyncio.run(server.serve(sockets=[sock]))
    batcher = app.state.batcher
    print(f"stopped after {batcher.answered:,} replies in {batcher.batches:,} batches", file=sys.stderr)
    if server.force_exit:
        raise SystemExit(130)


if __name__ == "__main__":
    main()
