"""What tests share besides fixtures: synthetic corpora, tiny models and runs, stand-in models for
decoding, running a root script."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import zipfile
from pathlib import Path

import torch
from torch import nn

from seq2seq.batching import Batch, collate
from seq2seq.model import Memory, Seq2Seq
from seq2seq.vocab import EOS

ROOT = Path(__file__).resolve().parent.parent
# One OpenMP thread for every script a test runs (see conftest.py).
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# Text no chat should choke on.
HOSTILE = [
    "",
    "   \t  ",
    "x" * 10_000,
    "hello 😀 こんにちは",
    "Привет мир",
    "\x00\x07\x1b[31mred\x1b[0m",
    "zzzq blorft",
    "what is your name?" * 30,
    "/quit",
    "'''---!!!???",
]
# train.py flags for a tiny model that trains in a blink.
TINY_FLAGS = ["--hidden-size", "16", "--encoder-layers", "2", "--decoder-layers", "2", "--batch-size", "4",
              "--device", "cpu", "--precision", "fp32", "--eval-every", "3", "--save-every", "2"]  # fmt: skip


def run_script(script: str, *args: str, cwd: Path = ROOT, env: dict | None = None, timeout: float = 300,
               text: bool = True, **kwargs) -> subprocess.CompletedProcess:  # fmt: skip
    """A root script (or `benchmarks/...`) run as a user would, output captured."""
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env or ENV,
                          capture_output=True, text=text, timeout=timeout, **kwargs)  # fmt: skip


def tiny_config(vocab_size: int, **overrides):
    """A small ModelConfig, by keyword: hidden 16, one layer each side, dot attention, no dropout."""
    from seq2seq.model import ModelConfig

    values = dict(hidden_size=16, encoder_layers=1, decoder_layers=1, dropout=0.0, attn_model="dot",
                  input_dropout=0.0, output_dropout=0.0, tie_embeddings=False)  # fmt: skip
    return ModelConfig(vocab_size=vocab_size, **{**values, **overrides})


def tiny_run(pair_dir: Path, save_dir: Path, *extra: str) -> None:
    """train.py's main (seq2seq.run.main) in this process: TINY_FLAGS on `pair_dir`, into `save_dir`."""
    from seq2seq.run import main

    main([*TINY_FLAGS, "--data-dir", str(pair_dir), "--save-dir", str(save_dir), *extra])


SEP = b" +++$+++ "
WORDS = "hello how are you i am fine what is your name my is bob where do live in town".split()


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, 6))]
    return " ".join(words).capitalize() + rng.choice([".", "?", "!"])


def write_corpus(folder: Path, n_conversations: int = 40, seed: int = 0) -> dict:
    """Write movie_lines.txt / movie_conversations.txt with a few deliberate defects.

    Defects: an ISO-8859-1 accented line, a Windows-1252 dash, an undecodable byte (0x81), an
    empty utterance, a conversation naming a missing line id and a malformed conversation row.
    Returns the expected facts the tests check against.
    """
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines: list[bytes] = []
    conversations: list[bytes] = []
    next_id = 1
    for _ in range(n_conversations):
        ids = []
        for _ in range(rng.randint(2, 5)):
            text = _sentence(rng).encode("latin-1")
            lines.append(SEP.join([f"L{next_id}".encode(), b"u0", b"m0", b"BOB", text]))
            ids.append(f"L{next_id}")
            next_id += 1
        conversations.append(SEP.join([b"u0", b"u1", b"m0", repr(ids).encode()]))

    special = {
        "accent": ("Caf\xe9 cr\xe8me, s'il vous pla\xeet.", "cafe creme s'il vous plait ."),
        "dash": ("Wait\x97 what?", "wait what ?"),
        "reply": ("I don't know.", "i don't know ."),
    }
    extra_ids = []
    for text, _ in special.values():
        lines.append(SEP.join([f"L{next_id}".encode(), b"u1", b"m0", b"ANN", text.encode("latin-1")]))
        extra_ids.append(f"L{next_id}")
        next_id += 1
    # accent -> dash -> reply: two clean pairs
    conversations.append(SEP.join([b"u0", b"u1", b"m0", repr(extra_ids).encode()]))
    # an undecodable line and an empty one, in a conversation with a missing id
    lines.append(SEP.join([f"L{next_id}".encode(), b"u1", b"m0", b"ANN", b"bad \x81 byte"]))
    lines.append(SEP.join([f"L{next_id + 1}".encode(), b"u1", b"m0", b"ANN", b"   "]))
    broken = [f"L{next_id}", f"L{next_id + 1}", "L999999", extra_ids[2]]
    conversations.append(SEP.join([b"u0", b"u1", b"m0", repr(broken).encode()]))
    conversations.append(SEP.join([b"u0", b"u1", b"m0", b"['L1', __import__('os')]"]))

    (folder / "movie_lines.txt").write_bytes(b"\n".join(lines) + b"\n")
    (folder / "movie_conversations.txt").write_bytes(b"\n".join(conversations) + b"\n")
    return {
        "conversations": n_conversations + 2,
        "special": special,
        "skipped": {
            "undecodable_line": 1,
            "empty_utterance": 1,
            "missing_line_id": 2,  # L999999 and the undecodable line's id
            "malformed_conversation": 1,
        },
    }


def write_convokit(cornell_folder: Path, folder: Path) -> None:
    """Write the same corpus in ConvoKit's utterances.jsonl layout (clean lines only)."""
    texts = {}
    for raw in (cornell_folder / "movie_lines.txt").read_bytes().splitlines():
        fields = raw.split(SEP)
        try:
            texts[fields[0].decode()] = fields[4].decode("cp1252")
        except UnicodeDecodeError:
            pass
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for raw in (cornell_folder / "movie_conversations.txt").read_bytes().splitlines():
        text = raw.split(SEP)[3].decode()
        if "import" in text or "L999999" in text:  # the malformed and the broken conversation
            continue
        ids = [i.strip(" '") for i in text.strip("[]").split(",")]
        for i in reversed(ids):  # file order need not be spoken order
            if i in texts:
                out.append(
                    json.dumps({"id": i, "conversation_id": ids[0], "text": texts[i], "speaker": "u0"})
                )
    (folder / "utterances.jsonl").write_text("\n".join(out) + "\n", encoding="utf-8")


def make_zip(folder: Path, zip_path: Path, inner: str = "cornell movie-dialogs corpus") -> Path:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in ("movie_lines.txt", "movie_conversations.txt"):
            archive.write(folder / name, f"{inner}/{name}")
        archive.writestr(f"__MACOSX/{inner}/._movie_lines.txt", b"junk")
    return zip_path


PAIRS = [
    ("hello .", "hi there ."),
    ("how are you ?", "i'm fine ."),
    ("what is your name ?", "my name is bob ."),
    ("where do you live ?", "in town ."),
    ("do you like cats ?", "yes i do ."),
    ("are you ok ?", "i am ok ."),
    ("good night .", "sleep well ."),
    ("what time is it ?", "it is late ."),
    ("who are you ?", "a bot ."),
    ("thank you .", "you're welcome ."),
    ("see you later .", "bye ."),
    ("is it raining ?", "no it is sunny ."),
    ("are you hungry ?", "not at all ."),
    ("can you help me ?", "of course ."),
    ("what do you want ?", "nothing ."),
    ("where is bob ?", "at home ."),
    ("do you know me ?", "i know you ."),
    ("is that true ?", "it is true ."),
    ("how old are you ?", "very old ."),
    ("why ?", "because ."),
]


def write_pair_corpus(folder: Path, pairs: list[tuple[str, str]], copies: int = 2) -> Path:
    """A corpus in the official format in which every pair is a two-line conversation."""
    folder.mkdir(parents=True, exist_ok=True)
    lines, conversations = [], []
    for n, (query, reply) in enumerate(pairs * copies):
        ids = [f"L{2 * n + 1}", f"L{2 * n + 2}"]
        lines += [
            SEP.join([i.encode(), b"u0", b"m0", b"A", text.encode()]) for i, text in zip(ids, (query, reply))
        ]
        conversations.append(SEP.join([b"u0", b"u1", b"m0", repr(ids).encode()]))
    (folder / "movie_lines.txt").write_bytes(b"\n".join(lines) + b"\n")
    (folder / "movie_conversations.txt").write_bytes(b"\n".join(conversations) + b"\n")
    return folder


def overfit_tiny_model(reverse: bool = False):
    """A tiny model trained 250 steps on PAIRS (with `reverse`, the backward model: each reply
    to its query): (model, vocabulary, the batch, last loss)."""
    from seq2seq.batching import collate, encode_pairs
    from seq2seq.model import Seq2Seq
    from seq2seq.training import TrainStep, make_optimizer
    from seq2seq.vocab import Vocabulary

    vocab = Vocabulary.build(side for pair in PAIRS for side in pair)
    batch = collate(encode_pairs([(a, q) for q, a in PAIRS] if reverse else PAIRS, vocab))
    torch.manual_seed(0)
    model = Seq2Seq(tiny_config(len(vocab), hidden_size=64, attn_model="general"))
    step = TrainStep(model, make_optimizer(model, "adam", 3e-3, 2.0), clip=5.0)
    for _ in range(250):
        loss, _ = step(batch, teacher_forcing=True)
    return model, vocab, batch, loss.item()


# Conversations whose last reply depends on an earlier turn: a context model can learn them, a
# model of the query alone cannot ("why ?" has two answers).
CONTEXT_PAIRS = [
    ("i am sad .", "ok ."),
    ("i am happy .", "ok ."),
    ("i am sad .\tok .\twhy ?", "i lost my dog ."),
    ("i am happy .\tok .\twhy ?", "i won the game ."),
    ("why ?", "because ."),
]


CONTEXT = {"context_turns": 2, "context_length": 12}  # what conftest's context_checkpoint model reads


def overfit_context_model(context):
    """A tiny model trained 300 steps on CONTEXT_PAIRS as `context` (vocab.Context) reads them:
    (model, vocabulary)."""
    from seq2seq.batching import collate, encode_pairs
    from seq2seq.model import Seq2Seq
    from seq2seq.training import TrainStep, make_optimizer
    from seq2seq.vocab import Vocabulary, split_turns

    vocab = Vocabulary.build(turn for pair in CONTEXT_PAIRS for side in pair for turn in split_turns(side))
    batch = collate(encode_pairs(CONTEXT_PAIRS, vocab, context=context))
    torch.manual_seed(0)
    model = Seq2Seq(tiny_config(len(vocab), hidden_size=64, attn_model="general"))
    step = TrainStep(model, make_optimizer(model, "adam", 3e-3, 2.0), clip=5.0)
    for _ in range(300):
        step(batch, teacher_forcing=True)
    return model.eval(), vocab


A, B, C = 4, 5, 6  # three ordinary words after the special tokens


class MarkovModel(nn.Module):
    """A stand-in model whose next-token distribution depends only on the previous token."""

    def __init__(self, table: dict[int, dict[int, float]], vocab_size: int = 7):
        super().__init__()
        logp = torch.full((vocab_size, vocab_size), -30.0)
        for previous, nexts in table.items():
            for token, p in nexts.items():
                logp[previous, token] = math.log(p)
        self.register_buffer("logp", logp)

    def encode(self, src, lengths):
        n = src.size(0)
        return Memory(
            torch.zeros(n, 1, 1), torch.zeros(n, 1, 1), torch.ones(n, 1, dtype=torch.bool)
        ), torch.zeros(1, n, 1)

    def decoder(self, token, hidden, memory):
        return self.logp[token], hidden, None


def queries(n: int = 1) -> Batch:
    """`n` copies of the one-word query A."""
    return collate([([A, EOS], []) for _ in range(n)])


def random_model(seed: int = 0) -> Seq2Seq:
    """A tiny untrained model (two decoder layers, general attention) of 40 words, seeded."""
    torch.manual_seed(seed)
    return Seq2Seq(tiny_config(40, decoder_layers=2, attn_model="general")).eval()


def random_queries(n: int = 5, seed: int = 0) -> Batch:
    """`n` random queries of 1 to 7 ordinary words, seeded."""
    g = torch.Generator().manual_seed(seed)
    return collate(
        [
            (
                torch.randint(4, 40, (int(torch.randint(1, 8, (), generator=g)),), generator=g).tolist()
                + [EOS],
                [],
            )
            for _ in range(n)
        ]
    )
