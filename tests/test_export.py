"""TorchScript export: parity with the eager model, and a bot that runs without this repository."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from seq2seq.checkpoint import build_model, load_checkpoint
from seq2seq.decoding import DecodeSettings, reply_batch
from seq2seq.export import build_bot
from seq2seq.model import Seq2Seq
from seq2seq.vocab import Vocabulary, detokenize, normalize, random_sentences
from tests.helpers import ENV, HOSTILE, PAIRS, ROOT, run_script, tiny_config

QUERIES = [q for q, _ in PAIRS] + ["who are you bob ?", "where do you like ?", "hello hello hello"]


@pytest.fixture(scope="module")
def model_and_vocab(trained_checkpoint):
    return build_model(load_checkpoint(trained_checkpoint))


@pytest.mark.parametrize("method", ["trace", "script"])
def test_exported_replies_equal_eager_greedy(model_and_vocab, method, tmp_path):
    model, vocab = model_and_vocab
    eager = [detokenize(r) for r in reply_batch(model, vocab, QUERIES, DecodeSettings(max_length=10))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bot = build_bot(model, vocab, 10, method)
        bot.save(str(tmp_path / "bot.pt"))
        loaded = torch.jit.load(str(tmp_path / "bot.pt"))  # through save and load
    assert [loaded.reply(q) for q in QUERIES] == eager
    assert eager[1] == "i'm fine."
    ids = torch.tensor([[vocab.word_to_index[w] for w in "how are you ?".split()] + [2]])
    assert vocab.decode(loaded.forward(ids).tolist()) == ["i'm", "fine", "."]  # the tensor entry point


@pytest.mark.parametrize("attn", ["dot", "general", "concat"])
@pytest.mark.parametrize("layers", [(1, 2), (2, 1), (2, 2)])
@pytest.mark.parametrize("method", ["trace", "script"])
def test_every_architecture_exports_exactly(attn, layers, method):
    """Untrained models of each attention score and layer pairing (the bridge's three cases)."""
    assert_untrained_model_exports_exactly(
        method, encoder_layers=layers[0], decoder_layers=layers[1], attn_model=attn
    )


@pytest.mark.parametrize("method", ["trace", "script"])
def test_tied_model_exports_exactly(method):
    assert_untrained_model_exports_exactly(
        method, encoder_layers=2, decoder_layers=2, attn_model="general", tie_embeddings=True
    )


def assert_untrained_model_exports_exactly(method: str, **options) -> None:
    """An untrained model of hidden size 12 (`options` as ModelConfig's) replies as its export does."""
    torch.manual_seed(0)
    vocab = Vocabulary([a + b for a in "abcdef" for b in "ghijkl"])  # words the normaliser keeps
    model = Seq2Seq(tiny_config(len(vocab), hidden_size=12, **options)).eval()
    queries = random_sentences(vocab.index_to_word[4:], 12, seed=1)
    eager = [detokenize(r) for r in reply_batch(model, vocab, queries, DecodeSettings(max_length=8))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bot = build_bot(model, vocab, 8, method)
    assert [bot.reply(q) for q in queries] == eager


def test_exported_normalisation_matches_the_package(model_and_vocab):
    model, vocab = model_and_vocab
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bot = build_bot(model, vocab, 10, "script")
    texts = [*HOSTILE, "Café crème brûlée", "I don't know... REALLY?!", "'cause we're goin' home", "a'''b",
             "rock'n'roll", "Straße", "Wait\u2026 what", "\ufb01ne", "It\u2019s fine", "ÀÉÎÕÜ çñ",
             "e\u0301te\u0301 cafe\u0301s", "nai\u0308ve", "ＨＥＬＬＯ！", "ª º ™ Ⅳ", "½ ¾"]  # fmt: skip
    for text in texts:
        assert bot.normalize(text) == normalize(text), repr(text)
    assert bot.reply("") == "" and bot.reply("😀") == ""


def test_reply_works_in_a_process_that_never_imported_the_package(model_and_vocab, tmp_path):
    model, vocab = model_and_vocab
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_bot(model, vocab, 10, "trace").save(str(tmp_path / "bot.pt"))
    code = (
        "import sys, warnings; warnings.simplefilter('ignore'); import torch; "
        "bot = torch.jit.load('bot.pt'); print(bot.reply('Hello.')); print(bot.reply('What is your name?')); "
        "print(any(name.startswith('seq2seq') for name in sys.modules))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:3] == ["hi there.", "my name is bob.", "False"]


def convert(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_script("convert_to_torchscript.py", *args, cwd=cwd)


def test_script_checks_parity_quantises_and_benchmarks(trained_checkpoint, tmp_path):
    result = convert("--model-path", str(trained_checkpoint), "--method", "script", "--prompts", "20",
                     "--benchmark", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "parity: 20/20 replies identical" in result.stdout and "| cpu |" in result.stdout
    assert (tmp_path / "checkpoints" / "model_scripted.pt").exists()
    result = convert("--model-path", str(trained_checkpoint), "--quantize", "int8", "--prompts", "20",
                     "--output-path", "q.pt", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "int8" in result.stdout and "replies identical" in result.stdout and (tmp_path / "q.pt").exists()


def test_missing_or_corrupt_checkpoint_is_one_line(tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    for path in ("missing.pth", "bad.pth"):
        result = convert("--model-path", str(tmp_path / path), cwd=tmp_path)
        assert result.returncode == 1 and result.stderr.strip().count("\n") == 0, result.stderr


@pytest.mark.parametrize("method", ["trace", "script"])
def test_building_the_bot_warns_of_nothing_in_its_own_code(model_and_vocab, method):
    model, vocab = model_and_vocab
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_bot(model, vocab, 10, method)
    ours = [w for w in caught if "instance-level annotations" in str(w.message)]
    assert not ours, ours[0].message


def test_an_export_that_would_not_fit_on_the_disk_is_refused_before_writing(trained_checkpoint, tmp_path):
    stale = tmp_path / ".bot.pt.4194000.tmp"  # left by a killed export
    stale.write_bytes(b"partial")
    argv = ["convert_to_torchscript.py", "--model-path", str(trained_checkpoint), "--prompts", "3",
            "--output-path", str(tmp_path / "bot.pt")]  # fmt: skip
    # the script run as python runs it, on a disk with 1,000 bytes free
    code = (f"import runpy, shutil, sys; sys.argv = {argv!r}; sys.path.insert(0, {str(ROOT)!r}); "
            "usage = shutil.disk_usage; shutil.disk_usage = lambda path: usage(path)._replace(free=1000); "
            f"runpy.run_path({str(ROOT / 'convert_to_torchscript.py')!r}, run_name='__main__')")  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=ENV, capture_output=True, text=True
    )
    assert result.returncode == 1 and not (tmp_path / "bot.pt").exists() and not stale.exists()
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: not enough space in {tmp_path}/")
