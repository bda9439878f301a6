"""serve.py under load: the batched server against the one-at-a-time server (--max-batch 1), side
by side in one run, over real HTTP on 127.0.0.1 with real test-split queries.

    python benchmarks/serve_load.py                       # checkpoints/best_model.pth (+ backward)
    python benchmarks/serve_load.py --clients 1 8 32 --seconds 10 --decoders greedy

C clients (closed loop: each sends its next request when its reply arrives, on a kept-alive
connection) per level; for each decoder (greedy: --rerank none; mmi: chat's default with the
backward model) and each server: replies/s, p50/p95/p99 latency, errors, the mean rows a batch
decoded, and the server's memory (RSS) before and after. Then, on the batched greedy server:
`--soak` requests in a row (memory growth after warm-up), and `--hostile` bad requests mixed
into a load run (each must get a 4xx, and every normal request the reply a clean run gave).
The client runs in this process, on the same two cores as the server: it takes its share of
the CPU, said in the output.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from seq2seq.cli import ArgumentParser, fail, positive_int
from seq2seq.cornell import CorpusError, read_pairs
from seq2seq.vocab import split_turns

ROOT = Path(__file__).resolve().parent.parent
MODEL = "chatbot-seq2seq"


class Connection:
    """One kept-alive HTTP/1.1 connection, lean enough that the client costs little CPU."""

    def __init__(self, port: int):
        self.port = port
        self.reader = self.writer = None

    async def post(self, body: bytes, path: str = "/v1/chat/completions",
                   content_type: str = "application/json") -> tuple[int, bytes]:  # fmt: skip
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
        self.writer.write(head + body)
        return await self._response()

    async def _response(self) -> tuple[int, bytes]:
        header = await self.reader.readuntil(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        body = await self.reader.readexactly(int(fields.get("content-length", 0)))
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def request_body(source: str) -> bytes:
    """A test-split source as OpenAI messages: earlier turns alternate, the query is the user's."""
    turns = split_turns(source)
    roles = ["user", "assistant"] * len(turns)
    messages = [{"role": roles[len(turns) - 1 - i], "content": t} for i, t in enumerate(turns)]
    return json.dumps({"model": MODEL, "messages": messages}).encode()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """serve.py in a subprocess on a free port."""

    def __init__(self, flags: list[str]):
        self.process = subprocess.Popen([sys.executable, str(ROOT / "serve.py"), "--port", "0", *flags],
                                        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)  # fmt: skip
        self.log = []
        for line in self.process.stderr:
            self.log.append(line)
            if line.startswith("serving '"):
                self.port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
                break
        else:
            fail(f"serve.py did not start: {''.join(self.log)[-500:]}")

    def health(self) -> dict:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=30) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        self.process.terminate()
        self.log += self.process.stderr.readlines()
        self.process.wait(60)


async def closed_loop(port: int, bodies: list[bytes], clients: int, seconds: float | None = None,
                      total: int | None = None, mixed=None) -> dict:  # fmt: skip
    """C clients sending back to back until `seconds` pass or `total` requests are sent; `mixed`
    (i -> (body, path, content type) or None) replaces some requests with others."""
    latencies, errors, replies = [], 0, {}
    sent = 0
    start = time.perf_counter()
    deadline = start + seconds if seconds else float("inf")

    async def client(k: int) -> None:
        nonlocal sent, errors
        connection = Connection(port)
        while time.perf_counter() < deadline and (total is None or sent < total):
            i = sent
            sent += 1
            special = mixed(i) if mixed else None
            began = time.perf_counter()
            try:
                if special:
                    status, _ = await special(connection)
                    replies[i] = ("hostile", status)
                    continue
                status, body = await connection.post(bodies[i % len(bodies)])
            except (OSError, asyncio.IncompleteReadError, ValueError):
                connection.close()
                errors += 1
                continue
            if status != 200:
                errors += 1
                continue
            latencies.append(time.perf_counter() - began)
            replies[i] = ("reply", json.loads(body)["choices"][0]["message"]["content"])
        connection.close()

    cpu = time.process_time()
    await asyncio.gather(*(client(k) for k in range(clients)))
    elapsed = time.perf_counter() - start
    latencies.sort()

    def pct(q: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")
        )

    return {"replies": len(latencies), "per_s": len(latencies) / elapsed, "p50": pct(0.5), "p95": pct(0.95),
            "p99": pct(0.99), "errors": errors, "seconds": elapsed, "client_cpu": (time.process_time() - cpu) / elapsed,
            "by_index": replies}  # fmt: skip


def hostile_requests(max_body: int) -> list:
    """Coroutines-makers for bad requests, each expected to get a 4xx."""
    ok = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}

    def post(body: bytes, **kw):
        async def send(connection: Connection) -> tuple[int, bytes]:
            fresh = Connection(connection.port)  # its own connection, which the server may close
            try:
                return await fresh.post(body, **kw)
            finally:
                fresh.close()

        return send

    async def garbage(connection: Connection) -> tuple[int, bytes]:
        fresh = Connection(connection.port)
        fresh.reader, fresh.writer = await asyncio.open_connection("127.0.0.1", connection.port)
        fresh.writer.write(b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n")
        status, body = await fresh._response()
        fresh.close()
        return status, body

    return [
        post(b"{not json"), post(b"\xff\xfe\x00garbage"), post(b"[" * 5000 + b"]" * 5000),
        post(json.dumps({**ok, "n": "two"}).encode()), post(json.dumps({**ok, "model": "gpt-4o"}).encode()),
        post(json.dumps({**ok, "messages": []}).encode()), post(json.dumps({**ok, "tools": [{"x": 1}]}).encode()),
        post(json.dumps({**ok, "messages": [{"role": "user", "content": "😀"}]}).encode()),
        post(json.dumps({**ok, "temperature": 9}).encode()), post(b"x" * (max_body + 1)),
        post(json.dumps(ok).encode(), content_type="text/plain"), post(json.dumps(ok).encode(), path="/v1/nothing"),
        garbage,
    ]  # fmt: skip


def run_levels(
    label: str, flags: list[str], bodies: list[bytes], clients: list[int], seconds: float
) -> list[dict]:
    server = Server(flags)
    rows = []
    try:
        asyncio.run(closed_loop(server.port, bodies, 4, total=64))  # warm-up
        for c in clients:
            before, health = rss_mib(server.process.pid), server.health()
            result = asyncio.run(closed_loop(server.port, bodies, c, seconds=seconds))
            after = server.health()
            batches = max(after["batches"] - health["batches"], 1)
            rows.append({"server": label, "clients": c, **result, "batch": (after["answered"] - health["answered"]) / batches,
                         "rss": (before, rss_mib(server.process.pid))})  # fmt: skip
            print(row_text(rows[-1]), flush=True)
    finally:
        server.stop()
    return rows


def row_text(r: dict) -> str:
    return (f"{r['server']:<16}{r['clients']:>8}{r['per_s']:>11.1f}{r['p50']:>9.1f}{r['p95']:>9.1f}{r['p99']:>9.1f}"
            f"{r['errors']:>8}{r['batch']:>8.1f}{r['rss'][0]:>9.0f}{r['rss'][1]:>7.0f}{r['client_cpu']:>8.0%}")  # fmt: skip


def main() -> None:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-path", default="checkpoints/best_model.pth", help="checkpoint to serve")
    p.add_argument("--backward-model", default="checkpoints/backward/best_model.pth", help="for the mmi rows")
    p.add_argument("--test-data", default="data/test.txt", help="pair file whose queries are sent")
    p.add_argument(
        "--clients", type=positive_int, nargs="+", default=[1, 8, 32, 128], help="concurrency levels"
    )
    p.add_argument("--mmi-clients", type=positive_int, nargs="+", default=[1, 8, 32], help="levels for mmi")
    p.add_argument(
        "--decoders",
        nargs="*",
        choices=("greedy", "mmi"),
        default=["greedy", "mmi"],
        help="decoders compared (none: only the soak and the hostile run)",
    )
    p.add_argument("--seconds", type=float, default=15.0, help="length of each level")
    p.add_argument("--max-batch", type=positive_int, default=64, help="the batched server's --max-batch")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="the batched server's --max-wait-ms")
    p.add_argument(
        "--soak", type=int, default=20_000, help="requests in a row on the batched greedy server (0: none)"
    )
    p.add_argument("--hostile", type=int, default=1000, help="bad requests mixed into a load run (0: none)")
    p.add_argument("--precision", default="fp32", help="serve.py --precision (its default: fp32)")
    args = p.parse_args()
    try:
        sources = [source for source, _ in read_pairs(args.test_data)]
    except CorpusError as error:
        fail(str(error))
    random.Random(0).shuffle(sources)
    bodies = [request_body(s) for s in sources]
    base = ["--model-path", args.model_path, "--precision", args.precision]
    print(
        f"{len(bodies):,} test-split queries from {args.test_data}; {os.cpu_count()} CPUs; {args.seconds:g} s a level\n"
    )
    header = (f"{'server':<16}{'clients':>8}{'replies/s':>11}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}"
              f"{'batch':>8}{'RSS MiB':>9}{'→':>7}{'client':>8}")  # fmt: skip
    results = {}
    for decoder in args.decoders:
        flags = (
            [*base, "--rerank", "none"]
            if decoder == "greedy"
            else [*base, "--backward-model", args.backward_model]
        )
        clients = args.clients if decoder == "greedy" else args.mmi_clients
        print(f"{decoder}:\n{header}")
        batched = run_levels("batched", [*flags, "--max-batch", str(args.max_batch), "--max-wait-ms",
                                         str(args.max_wait_ms)], bodies, clients, args.seconds)  # fmt: skip
        single = run_levels("one at a time", [*flags, "--max-batch", "1"], bodies, clients, args.seconds)
        results[decoder] = list(zip(batched, single))
        for b, s in results[decoder]:
            print(
                f"  {b['clients']:>3} clients: {b['per_s'] / s['per_s']:.1f}x the replies/s, p50 "
                f"{b['p50'] - s['p50']:+.1f} ms"
            )
        print()
    if args.soak or args.hostile:
        soak_and_hostile(args, base, bodies)


def soak(args, flags: list[str], bodies: list[bytes], label: str) -> None:
    """`--soak` requests in a row at 32 clients, after a warm-up of 1,000 requests at each of 1,
    8, 32 and 128 clients (batches of the sizes the load will meet)."""
    server = Server(flags)
    try:
        for clients in (1, 8, 32, 128):
            asyncio.run(closed_loop(server.port, bodies, clients, total=1000))
        before = rss_mib(server.process.pid)
        rows = [before]
        done = {"replies": 0, "errors": 0, "seconds": 0.0}
        for _ in range(10):  # in tenths, to see whether memory levels off
            part = asyncio.run(closed_loop(server.port, bodies, 32, total=args.soak // 10))
            done = {k: done[k] + part[k] for k in done}
            rows.append(rss_mib(server.process.pid))
        print(f"soak, {label}: {done['replies']:,} replies of {args.soak // 10 * 10:,} requests at 32 clients, "
              f"{done['errors']} errors, {done['replies'] / done['seconds']:.0f}/s; server RSS {before:.0f} -> "
              f"{rows[-1]:.0f} MiB ({rows[-1] / before - 1:+.1%}) after 4,000 warm-up requests; every tenth: "
              + " ".join(f"{r:.0f}" for r in rows[1:]))  # fmt: skip
    finally:
        server.stop()


def soak_and_hostile(args, base: list[str], bodies: list[bytes]) -> None:
    flags = [*base, "--rerank", "none", "--max-batch", str(args.max_batch)]
    if args.soak:
        soak(args, flags, bodies, f"--precision {args.precision}")
        if args.precision == "fp32":  # serve.py's default, for flat memory: what bf16 would do
            soak(args, [*flags, "--precision", "bf16"], bodies, "--precision bf16")
    server = Server(flags)
    try:
        if args.hostile:
            total = args.hostile * 5
            clean = asyncio.run(closed_loop(server.port, bodies, 32, total=total))
            bad = hostile_requests(256 * 1024)
            every = (total + args.hostile) // args.hostile  # one request in `every` is a bad one

            def mixed(i: int):
                return bad[(i // every) % len(bad)] if i % every == every - 1 else None

            dirty = asyncio.run(closed_loop(server.port, bodies, 32, total=total + args.hostile, mixed=mixed))
            hostile = [v for kind, v in dirty["by_index"].values() if kind == "hostile"]
            normal = {i: v for i, (kind, v) in dirty["by_index"].items() if kind == "reply"}
            reference = {i % len(bodies): v for i, (kind, v) in clean["by_index"].items()}
            same = sum(
                v == reference.get(i % len(bodies)) for i, v in normal.items() if i % len(bodies) in reference
            )
            compared = sum(i % len(bodies) in reference for i in normal)
            print(f"hostile: {len(hostile):,} bad requests mixed into {len(normal):,} normal ones at 32 clients: "
                  f"{sum(400 <= s < 500 for s in hostile):,} got a 4xx ({sorted(set(hostile))}), "
                  f"{dirty['errors']} normal requests failed, {same:,} of {compared:,} normal replies equal the "
                  "clean run's")  # fmt: skip
    finally:
        server.stop()
    tracebacks = sum("Traceback" in line for line in server.log)
    print(f"server log: {len(server.log)} lines, {tracebacks} tracebacks")


if __name__ == "__main__":
    main()
