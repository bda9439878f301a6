"""Shared fixtures: a small synthetic corpus written in the official Cornell format."""

from __future__ import annotations

import json
import random
import zipfile
from pathlib import Path

import pytest
import torch

# Tiny models gain nothing from a second thread, and OpenMP threads fighting over two cores can
# slow a suite (or a training run beside it) many times over.
torch.set_num_threads(1)

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


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, dict]:
    folder = tmp_path / "corpus"
    return folder, write_corpus(folder)


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


@pytest.fixture
def pair_dir(tmp_path: Path) -> Path:
    """A data/ folder built by the real pipeline from PAIRS (each twice), every word kept."""
    from seq2seq.cornell import PairSettings
    from seq2seq.download import prepare_data

    corpus = write_pair_corpus(tmp_path / "pair-corpus", PAIRS)
    settings = PairSettings(min_count=1, val_fraction=0.2, test_fraction=0.1)
    prepare_data(tmp_path / "data", settings, source=str(corpus))
    return tmp_path / "data"


def overfit_tiny_model():
    """A tiny model trained 250 steps on PAIRS: (model, vocabulary, the batch, last loss)."""
    from seq2seq.batching import collate, encode_pairs
    from seq2seq.model import ModelConfig, Seq2Seq
    from seq2seq.training import TrainStep, make_optimizer
    from seq2seq.vocab import Vocabulary

    vocab = Vocabulary.build(side for pair in PAIRS for side in pair)
    batch = collate(encode_pairs(PAIRS, vocab))
    torch.manual_seed(0)
    model = Seq2Seq(ModelConfig(len(vocab), 64, 1, 1, 0.0, "general"))
    step = TrainStep(model, make_optimizer(model, "adam", 3e-3, 2.0), clip=5.0)
    for _ in range(250):
        loss, _ = step(batch, teacher_forcing=True)
    return model, vocab, batch, loss.item()


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory) -> Path:
    """overfit_tiny_model() saved as a checkpoint (a few seconds, once per session)."""
    from seq2seq.checkpoint import save_checkpoint

    model, vocab, _, _ = overfit_tiny_model()
    path = tmp_path_factory.mktemp("checkpoint") / "best_model.pth"
    payload = {"model_config": model.config.to_dict(), "model": model.state_dict(), "vocab": vocab.to_dict()}
    save_checkpoint(path, {**payload, "args": {"max_length": 10}})
    return path
