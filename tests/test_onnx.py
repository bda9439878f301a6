"""The ONNX bot: its graphs against the eager model, its folder in a process that cannot import
torch, and the web bot in Chromium against the Python one."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from seq2seq.decoding import DecodeSettings, encode_queries, reply_batch
from seq2seq.model import Seq2Seq
from seq2seq.onnx_export import load_runtime, write_onnx_bot
from seq2seq.vocab import NO_CONTEXT, Vocabulary, detokenize, normalize, random_sentences
from tests.helpers import ENV, HOSTILE, PAIRS, ROOT, run_script, tiny_config

ARCHITECTURES = [("dot", 1, 1), ("general", 2, 2), ("concat", 2, 1), ("dot", 1, 2)]


def tiny_model(attn: str, encoder_layers: int, decoder_layers: int, tie: bool = False):
    torch.manual_seed(0)
    vocab = Vocabulary.build(side for pair in PAIRS for side in pair)
    config = tiny_config(len(vocab), hidden_size=24, attn_model=attn, encoder_layers=encoder_layers,
                         decoder_layers=decoder_layers, tie_embeddings=tie)  # fmt: skip
    return Seq2Seq(config).eval(), vocab


@pytest.mark.parametrize("attn, encoder_layers, decoder_layers", ARCHITECTURES)
def test_onnx_replies_equal_eager_greedy_and_beam(attn, encoder_layers, decoder_layers, tmp_path):
    model, vocab = tiny_model(attn, encoder_layers, decoder_layers, tie=attn == "general")
    write_onnx_bot(model, vocab, 10, NO_CONTEXT, tmp_path / "bot")
    runtime = load_runtime(tmp_path / "bot")
    prompts = random_sentences(vocab.index_to_word[4:], 40, seed=1) + ["", "zzzq blorft", "x " * 30]
    for beam in (1, 4):
        bot = runtime.Bot(tmp_path / "bot", beam_size=beam)
        settings = DecodeSettings("beam" if beam > 1 else "greedy", max_length=10, beam_size=beam)
        readable = [normalize(p) for p in prompts if normalize(p)]
        eager = iter(detokenize(r) for r in reply_batch(model, vocab, readable, settings))
        assert [bot.reply(p) for p in prompts] == [next(eager) if normalize(p) else "" for p in prompts], beam


def test_the_encoder_reads_a_batch_of_different_lengths_as_eager_does(tmp_path):
    model, vocab = tiny_model("general", 2, 2)
    write_onnx_bot(model, vocab, 10, NO_CONTEXT, tmp_path / "bot")
    bot = load_runtime(tmp_path / "bot").Bot(tmp_path / "bot")
    sources = [normalize(s) for s in random_sentences(vocab.index_to_word[4:], 6, seed=2, max_words=9)]
    got = bot.encode(sources)
    src, lengths = encode_queries(vocab, sources, 10, torch.device("cpu"))
    with torch.no_grad():
        memory, state = model.encode(src, lengths)
    for name, expected in (("values", memory.values), ("keys", memory.keys), ("state", state)):
        assert np.abs(got[name] - expected.numpy()).max() < 1e-5, name
    assert np.array_equal(np.isneginf(got["attention_bias"]), ~memory.mask.numpy())


@pytest.mark.parametrize("attn, encoder_layers, decoder_layers", ARCHITECTURES)
def test_the_unrolled_encoder_of_the_int8_graphs_equals_eager(attn, encoder_layers, decoder_layers):
    import onnxruntime

    from seq2seq.onnx_export import encoder_graph

    model, vocab = tiny_model(attn, encoder_layers, decoder_layers, tie=attn == "dot")
    sources = [normalize(s) for s in random_sentences(vocab.index_to_word[4:], 5, seed=3, max_words=9)]
    src, lengths = encode_queries(vocab, sources, 10, torch.device("cpu"))
    padded = torch.nn.functional.pad(src, (0, 12 - src.size(1)))  # the graph is unrolled over 12 positions
    session = onnxruntime.InferenceSession(encoder_graph(model, unrolled=12).SerializeToString())
    got = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {"ids": padded.numpy(), "lengths": lengths.numpy()})))  # fmt: skip
    with torch.no_grad():
        memory, state = model.encode(padded, lengths)  # padding past the batch's longest: zeros, masked
    for name, expected in (("values", memory.values), ("keys", memory.keys), ("state", state)):
        assert np.abs(got[name] - expected.numpy()).max() < 1e-5, name
    assert np.array_equal(np.isneginf(got["attention_bias"]), ~memory.mask.numpy())


def torch_free_env(tmp_path: Path) -> dict:
    """An environment in which `import torch` fails, as on a machine without PyTorch."""
    blocker = tmp_path / "no-torch" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('PyTorch is not installed here')\n")
    return {**ENV, "PYTHONPATH": str(blocker.parent)}


def export(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = run_script("convert_to_torchscript.py", *args, "--prompts", "20", cwd=cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "parity: 20/20 replies identical" in result.stdout
    return result


def folder_chat(folder: Path, lines: list[str], env: dict, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(folder / "chat.py"), *flags], input="\n".join(lines) + "\n",
                          capture_output=True, text=True, env=env, cwd=folder.parent, timeout=120)  # fmt: skip


def test_the_onnx_folder_talks_like_chat_py_where_torch_cannot_be_imported(trained_checkpoint, tmp_path):
    result = export(
        "--model-path", str(trained_checkpoint), "--method", "onnx", "--quantize", "int8", cwd=tmp_path
    )
    assert "parity (int8):" in result.stdout
    moved = tmp_path / "elsewhere" / "bot"  # copied anywhere, it needs nothing beside it
    shutil.copytree(tmp_path / "checkpoints" / "onnx", moved)
    lines = [q for q, _ in PAIRS[:6]] + HOSTILE + ["Where is BOB?!", "café crème ’cause naïve"]
    env = torch_free_env(tmp_path)
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert "PyTorch is not installed here" in probe.stderr
    talked = folder_chat(moved, lines, env)
    assert talked.returncode == 0, talked.stderr
    eager = run_script("chat.py", "--model-path", str(trained_checkpoint), "--rerank", "none", "--precision",
                       "fp32", input="\n".join(lines) + "\n", cwd=tmp_path)  # fmt: skip
    assert talked.stdout == eager.stdout and len(talked.stdout.splitlines()) == len(lines)

    def notes(err: str) -> list[str]:
        return [line for line in err.splitlines() if line.startswith("line ")]

    assert notes(talked.stderr) == notes(eager.stderr) and "words I don't know" in talked.stderr
    int8 = folder_chat(moved, lines[:6], env, "--int8", "--beam-size", "3")
    assert int8.returncode == 0 and len(int8.stdout.splitlines()) == 6, int8.stderr
    config = json.loads((moved / "bot.json").read_text())
    damages = {
        "step.onnx": b"damaged",
        "bot.json": [b"{", json.dumps({**config, "format": "other/1"}).encode(),
                     json.dumps({**config, "max_length": "10"}).encode(),
                     json.dumps({**config, "vocab": {"words": ["\x1b]0;pwned\x07"], "counts": [1]}}).encode(),
                     json.dumps({**config, "vocab": {"words": ["a", "b"], "counts": [1, 1]}}).encode()],
    }  # fmt: skip
    for name, contents in damages.items():
        for content in contents if isinstance(contents, list) else [contents]:
            original = (moved / name).read_bytes()
            (moved / name).write_bytes(content)
            broken = folder_chat(moved, ["hello"], env)
            (moved / name).write_bytes(original)
            assert broken.returncode == 1 and broken.stderr.startswith("error: cannot load the bot"), (
                broken.stderr
            )
            assert broken.stderr.strip().count("\n") == 0 and "\x1b" not in broken.stderr


def test_a_context_model_exported_to_onnx_keeps_the_conversation(context_checkpoint, tmp_path):
    export("--model-path", str(context_checkpoint), "--method", "onnx", cwd=tmp_path)
    lines = ["i am sad .", "why ?", "", "i am happy .", "why ?", "why ?"]
    talked = folder_chat(tmp_path / "checkpoints" / "onnx", lines, torch_free_env(tmp_path))
    assert talked.stdout.splitlines() == ["ok.", "i lost my dog.", "", "ok.", "i won the game.", "because."]


def test_torch_export_keeps_the_length_dynamic(trained_checkpoint, tmp_path):
    export("--model-path", str(trained_checkpoint), "--method", "export", cwd=tmp_path)
    encoder = torch.export.load(str(tmp_path / "checkpoints" / "model_exported.encoder.pt2")).module()
    for length in (2, 5, 9):
        keys, values, state = encoder(torch.randint(4, 20, (1, length)))
        assert keys.shape[1] == values.shape[1] == length


def test_aotinductor_without_a_compiler_is_one_line_and_writes_nothing(trained_checkpoint, tmp_path):
    result = run_script("convert_to_torchscript.py", "--model-path", str(trained_checkpoint), "--method", "aoti",
                        "--prompts", "3", cwd=tmp_path, env={**ENV, "CXX": "/nowhere/g++"})  # fmt: skip
    assert (
        result.returncode == 1
        and "install g++ (or set CXX)" in result.stderr
        and result.stderr.count("\n") == 1
    )
    assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").iterdir())


def test_aotinductor_packages_answer_as_eager(trained_checkpoint, tmp_path):
    result = export("--model-path", str(trained_checkpoint), "--method", "aoti", cwd=tmp_path)
    assert "model_aoti.encoder.pt2 and" in result.stdout and "Warning" not in result.stderr
    encoder = torch._inductor.aoti_load_package(str(tmp_path / "checkpoints" / "model_aoti.encoder.pt2"))
    for length in (2, 7):
        keys, values, state = encoder(torch.randint(4, 20, (1, length)))
        assert keys.shape[1] == values.shape[1] == length


def test_an_export_replaces_only_a_bot_it_wrote(trained_checkpoint, tmp_path):
    export("--model-path", str(trained_checkpoint), "--method", "onnx", "--output-path", "bot", cwd=tmp_path)
    (tmp_path / "bot" / "stale.txt").write_text("from the last export")
    export("--model-path", str(trained_checkpoint), "--method", "onnx", "--output-path", "bot", cwd=tmp_path)
    assert not (tmp_path / "bot" / "stale.txt").exists() and (tmp_path / "bot" / "bot.json").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    (tmp_path / "link").symlink_to(tmp_path / "bot")
    for target, words in (
        ("mine", "holds other files"),
        ("link", "is a symbolic link"),
        (".", "holds other files"),
    ):
        result = run_script("convert_to_torchscript.py", "--model-path", str(trained_checkpoint), "--method",
                            "onnx", "--output-path", target, "--prompts", "3", cwd=tmp_path)  # fmt: skip
        assert result.returncode == 1 and words in result.stderr and result.stderr.count("\n") == 1, (
            result.stderr
        )
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious" and (tmp_path / "link").is_symlink()


def test_torch_export_without_the_gru_decomposition_says_what_it_needs(monkeypatch):
    import importlib

    from seq2seq.export import ExportError, export_parts

    model, vocab = tiny_model("dot", 1, 1)
    real = importlib.import_module

    def without_patches(name, *args):
        if name == "torch.export._patches":
            raise ModuleNotFoundError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_patches)
    with pytest.raises(ExportError, match="from torch 2.13 on"):
        export_parts(model, vocab, 10, Path("unused.pt2"))


def test_export_problems_are_one_line(trained_checkpoint, tmp_path):
    result = run_script("convert_to_torchscript.py", "--model-path", str(trained_checkpoint), "--method", "web",
                        "--onnxruntime-web", str(tmp_path / "nowhere"), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1 and "run `npm ci`" in result.stderr and result.stderr.count("\n") == 1
    (tmp_path / "taken").write_text("a file, not a folder")
    result = run_script("convert_to_torchscript.py", "--model-path", str(trained_checkpoint), "--method", "onnx",
                        "--output-path", str(tmp_path / "taken"), "--prompts", "3", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1 and "is not a folder" in result.stderr and result.stderr.count("\n") == 1
    assert (tmp_path / "taken").read_text() == "a file, not a folder"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # nothing half-written left


# The web bot in a real browser, against the Python ONNX bot on the same graphs.
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
ORT_WEB = ROOT / "node_modules" / "onnxruntime-web" / "dist"


def unicode_soup(count: int, seed: int = 0) -> list[str]:
    """Strings that reach every branch of normalize: letters with accents, ligatures, full-width
    and mathematical letters, apostrophes, combining marks, other scripts, emoji, controls."""
    rng = random.Random(seed)
    pools = ["abcXYZ .!?'", "éÈçÑøßǅﬁﬂ", "ＡＢｃ１２", "𝐀𝐁𝓒𝔡", "’‘ʼ'", "\u0301\u0308\u20dd", "Привет こんにちは",
             "😀👍🏽", "\x00\x07\x1b\t\n", "ΣσςİıŉǰΐÅ", "¼½²℃™…—–"]  # fmt: skip
    return ["".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 30))) for _ in range(count)]


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt install chromium)")
@pytest.mark.skipif(not ORT_WEB.is_dir(), reason="onnxruntime-web is not installed (npm ci)")
def test_the_web_bot_answers_in_chromium_as_the_python_bot_does(context_checkpoint, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    export("--model-path", str(context_checkpoint), "--method", "web", "--quantize", "int8", cwd=tmp_path)
    folder = tmp_path / "checkpoints" / "web"
    python_bot = load_runtime(folder).Bot(folder, int8=True)  # the page loads the int8 graphs
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                              cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=flags)
            page = browser.new_page()
            for _ in range(50):  # the server may take a moment to listen
                try:
                    page.goto(f"http://127.0.0.1:{port}/")
                    break
                except sync_api.Error:
                    page.wait_for_timeout(100)
            page.locator(".status.ok").wait_for(timeout=60_000)
            texts = [*HOSTILE, *unicode_soup(200), "I'm 'quoted' can't ''x'' rock'n'roll"]
            assert page.evaluate("texts => texts.map(t => bot.normalize(t))", texts) == [
                normalize(t) for t in texts
            ]
            said = ["i am sad .", "Why?", *HOSTILE, "i am happy .", "why ?", *unicode_soup(10, seed=1)]
            expected = []
            for text in said:
                expected.append(list(python_bot.respond(text)))
            got = page.evaluate("""async texts => {
                bot.reset();
                const out = [];
                for (const t of texts) { const r = await bot.respond(t); out.push([r.reply, r.notes]); }
                return out;
            }""", said)  # fmt: skip
            assert got == expected
            page.evaluate("bot.reset()")
            for n, text in enumerate(["I am happy.", "Why?"]):
                page.fill("#input", text)
                page.keyboard.press("Enter")
                page.locator(".turn.assistant .bubble").nth(n).wait_for(timeout=30_000)
            assert page.locator(".turn.assistant .bubble").all_inner_texts() == ["Ok.", "I won the game."]
            page.click("#new")  # a new conversation: no history read
            page.fill("#input", "Why?")
            page.keyboard.press("Enter")
            page.locator(".turn.assistant .bubble").first.wait_for(timeout=30_000)
            assert page.locator(".turn.assistant .bubble").all_inner_texts() == ["Because."]
            browser.close()
    finally:
        server.terminate()
        server.wait(10)
