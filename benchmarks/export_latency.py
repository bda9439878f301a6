"""Every way the bot ships, side by side on one checkpoint: reply latency at batch 1 (greedy,
test-split prompts), replies identical to the eager fp32 model, size on disk, and the time from
a fresh process to its first reply.

    python benchmarks/export_latency.py                    # checkpoints/best_model.pth, 200 prompts
    python benchmarks/export_latency.py --browser          # also the web bot in headless Chromium

Rows: eager PyTorch (fp32, and bf16 as chat.py runs it where the CPU has native bf16), the traced
TorchScript bot (fp32 and int8), torch.export programs driven by the same Python loop (and, with
--aoti, the same programs compiled by AOTInductor), and ONNX Runtime (fp32 and int8) through the
exported folder's own bot.py. The exports are written to a
temporary folder, as convert_to_torchscript.py writes them. The browser row loads the web bot
from a local static server: the first reply after the page is ready, and later replies.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from seq2seq.checkpoint import CheckpointError, load_for_inference, trained_max_length
from seq2seq.checkpoint import context as checkpoint_context
from seq2seq.cli import ArgumentParser, fail, positive_int
from seq2seq.cornell import CorpusError, read_pairs
from seq2seq.decoding import Conversation, DecodeSettings
from seq2seq.export import build_bot, export_parts
from seq2seq.onnx_export import ORT_WEB, load_runtime, onnxruntime_web, write_onnx_bot
from seq2seq.profiling import reply_times
from seq2seq.vocab import detokenize, last_turn, normalize

ROOT = Path(__file__).resolve().parent.parent


def size_mib(*paths: Path) -> float:
    return (
        sum(p.stat().st_size for path in paths for p in ([path] if path.is_file() else path.rglob("*")))
        / 2**20
    )


def first_reply_seconds(command: list[str], prompt: str, cwd: Path) -> float:
    """Wall time of a fresh process that loads a bot and prints its reply to one line."""
    start = time.perf_counter()
    result = subprocess.run(
        command, input=prompt + "\n", capture_output=True, text=True, cwd=cwd, timeout=600
    )
    if result.returncode != 0:
        fail(f"{command[1]} failed: {result.stderr.strip()[-300:]}")
    return time.perf_counter() - start


def browser_times(folder: Path, prompts: list[str]) -> tuple[float, float, float]:
    """The web bot in headless Chromium: ms from navigation to a loaded bot, the first reply, and
    the median of later replies."""
    import socket

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        fail("--browser: no Chromium here (apt install chromium)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=folder,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(1)
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=flags)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator(".status.ok").wait_for(timeout=120_000)
            loaded = page.evaluate("botTimings.loaded")
            times = page.evaluate("""async prompts => {
                const out = [];
                for (const p of prompts) { const t = performance.now(); await bot.respond(p); out.push(performance.now() - t); bot.reset(); }
                return out;
            }""", prompts)  # fmt: skip
            browser.close()
    finally:
        server.terminate()
    return loaded, times[0], statistics.median(times[1:])


def main() -> None:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-path", default="checkpoints/best_model.pth", help="checkpoint to export")
    p.add_argument("--test-data", default="data/test.txt", help="where prompts come from")
    p.add_argument("--prompts", type=positive_int, default=200, help="prompts timed per row")
    p.add_argument("--threads", type=positive_int, default=1, help="threads for every runtime (batch 1: one)")
    p.add_argument("--browser", action="store_true", help="also the web bot in headless Chromium")
    p.add_argument("--aoti", action="store_true", help="also AOTInductor packages of the torch.export programs "
                   "(a C++ compiler and a few minutes)")  # fmt: skip
    args = p.parse_args()
    warnings.filterwarnings("ignore")  # TorchScript's deprecation notices, torch.export's internals
    torch.set_num_threads(args.threads)
    try:
        model, vocab, checkpoint = load_for_inference(args.model_path, "cpu", "fp32")
        half, _, _ = load_for_inference(args.model_path, "cpu", "bf16")
        prompts = [last_turn(source) for source, _ in read_pairs(args.test_data)][: args.prompts]
    except (CheckpointError, CorpusError) as error:
        fail(str(error))
    max_length, context = trained_max_length(checkpoint), checkpoint_context(checkpoint)
    settings = DecodeSettings(max_length=max_length)
    work = Path(tempfile.mkdtemp(prefix="export-latency-"))

    def alone(bot):
        """Each prompt a conversation of its own (they are unrelated test queries)."""

        def reply(text: str) -> str:
            bot.reset()
            return bot.reply(text)

        return reply

    class Eager:
        def __init__(self, m):
            self.model, self.said = m, Conversation(context)

        def reply(self, text: str) -> str:
            query = normalize(text)
            return detokenize(self.said.reply(self.model, vocab, query, settings)) if query else ""

        def reset(self) -> None:
            self.said.reset()

    rows = {"eager PyTorch fp32": (alone(Eager(model)), ROOT / args.model_path)}
    rows["eager PyTorch bf16"] = (alone(Eager(half)), ROOT / args.model_path)
    for int8 in (False, True):
        path = work / f"traced{'-int8' if int8 else ''}.pt"
        build_bot(model, vocab, max_length, "trace", int8, context).save(str(path))
        rows[f"TorchScript {'int8' if int8 else 'fp32'}"] = (alone(torch.jit.load(str(path))), path)
    exported = export_parts(model, vocab, max_length, work / "exported.pt2", context)
    rows["torch.export fp32"] = (alone(exported), [work / "exported.encoder.pt2", work / "exported.step.pt2"])
    if args.aoti:  # AOTInductor: the same programs compiled ahead of time (--method aoti)
        bot = export_parts(model, vocab, max_length, work / "aoti.pt2", context, compiled=True)
        rows["AOTInductor fp32"] = (alone(bot), [work / "aoti.encoder.pt2", work / "aoti.step.pt2"])
    folder = work / "onnx"
    write_onnx_bot(model, vocab, max_length, context, folder, int8=True)
    runtime = load_runtime(folder)
    for int8 in (False, True):
        bot = runtime.Bot(folder, int8=int8, threads=args.threads)
        files = [folder / f"{part}{'.int8' if int8 else ''}.onnx" for part in ("encoder", "step")]
        rows[f"ONNX Runtime {'int8' if int8 else 'fp32'}"] = (alone(bot), files)

    reference = [rows["eager PyTorch fp32"][0](prompt) for prompt in prompts]
    print(
        f"{len(prompts)} test-split prompts, batch 1, greedy, {args.threads} thread(s), {args.model_path}\n"
    )
    print(
        "| bot | p50 ms | p95 ms | same replies as eager fp32 | size MiB |\n| --- | --- | --- | --- | --- |"
    )
    for name, (reply, files) in rows.items():
        times = sorted(reply_times(reply, prompts, warmup=10))
        same = sum(reply(prompt) == want for prompt, want in zip(prompts, reference))
        paths = files if isinstance(files, list) else [files]
        print(f"| {name} | {statistics.median(times):.2f} | {times[int(0.95 * (len(times) - 1))]:.2f} | "
              f"{same}/{len(prompts)} | {size_mib(*paths):.1f} |")  # fmt: skip

    prompt = prompts[0]
    python = sys.executable
    starts = {
        "eager PyTorch (chat.py)": [
            python,
            str(ROOT / "chat.py"),
            "--model-path",
            str(ROOT / args.model_path),
            "--rerank",
            "none",
            "--precision",
            "fp32",
        ],  # fmt: skip
        "TorchScript fp32": [
            python,
            "-c",
            "import sys, torch; bot = torch.jit.load(sys.argv[1]); print(bot.reply(sys.stdin.readline()))",
            str(work / "traced.pt"),
        ],  # fmt: skip
        "ONNX Runtime fp32 (FOLDER/chat.py)": [python, str(folder / "chat.py")],
        "ONNX Runtime int8 (FOLDER/chat.py --int8)": [python, str(folder / "chat.py"), "--int8"],
    }
    print("\n| process start to first reply | seconds |\n| --- | --- |")
    for name, command in starts.items():
        seconds = min(first_reply_seconds(command, prompt, work) for _ in range(3))
        print(f"| {name} | {seconds:.2f} |")
    if args.browser:
        print("\n| web bot in headless Chromium (1 thread) | bot ready after navigation, ms | first reply ms | "
              "later replies p50 ms | page and files MiB |\n| --- | --- | --- | --- | --- |")  # fmt: skip
        for int8 in (False, True):
            web = work / f"web{'-int8' if int8 else ''}"
            write_onnx_bot(model, vocab, max_length, context, web, int8=int8, web=onnxruntime_web(ORT_WEB))
            loaded, first, later = browser_times(web, prompts[:50])
            served = [
                p
                for p in web.iterdir()
                if p.suffix != ".py" and (p.suffix != ".onnx" or (".int8." in p.name) == int8)
            ]
            print(f"| {'int8' if int8 else 'fp32'} graphs | {loaded:.0f} | {first:.1f} | {later:.1f} | "
                  f"{size_mib(*served):.1f} |")  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
