"""The Cornell Movie-Dialogs Corpus: reading it, cutting query/reply pairs, splitting, pair files.

Two layouts are read:
- the official release: `movie_lines.txt` and `movie_conversations.txt`, fields separated by
  " +++$+++ ", 8-bit text;
- ConvoKit's `movie-corpus`: `utterances.jsonl`, one JSON utterance a line (the PyTorch tutorial
  switched to it when the original links moved).

Either way a corpus becomes a list of conversations, each a list of normalised utterances in
spoken order, where `None` marks an utterance that could not be used (missing, empty or
undecodable). Bad items are skipped and counted by reason, never fatal.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .files import atomic_path
from .vocab import SPECIAL_TOKENS, Vocabulary, count_words, normalize, words_within

FIELD_SEP = " +++$+++ "
SPLITS = ("train", "val", "test")
RARE_WORD_POLICIES = ("unk", "drop")

Conversation = list[str | None]
Pair = tuple[str, str]


class CorpusError(Exception):
    """A corpus folder or pair file that cannot be used; the message is one line for the user."""


def find_corpus(folder: str | Path) -> tuple[str, Path]:
    """Locate a corpus inside `folder` (or one level below): ("cornell" | "convokit", its folder)."""
    folder = Path(folder)
    for candidate in [folder, *sorted(p for p in folder.glob("*") if p.is_dir())]:
        if (candidate / "movie_lines.txt").is_file() and (candidate / "movie_conversations.txt").is_file():
            return "cornell", candidate
        if (candidate / "utterances.jsonl").is_file():
            return "convokit", candidate
    raise CorpusError(
        f"no Cornell corpus in {folder}: expected movie_lines.txt and movie_conversations.txt "
        "(official release) or utterances.jsonl (ConvoKit movie-corpus)"
    )


def read_corpus(folder: str | Path) -> tuple[list[Conversation], Counter[str]]:
    """Read the corpus in `folder` in whichever layout it has."""
    layout, path = find_corpus(folder)
    return read_cornell(path) if layout == "cornell" else read_convokit(path)


def _decode_lines(path: Path, skipped: Counter[str]) -> list[str]:
    """Lines of a corpus file as text.

    The release calls itself ISO-8859-1, but its dashes are Windows-1252 bytes (0x96, 0x97), so we
    decode as Windows-1252, whose printable range includes ISO-8859-1's. A line holding a byte
    with no character there (0x81, 0x8d, 0x8f, 0x90, 0x9d) is skipped and counted. A file that
    is valid UTF-8 and not plain ASCII was re-saved as UTF-8 (the release's lone accented bytes
    are never valid UTF-8): read as Windows-1252 it would become mojibake, so it is read as UTF-8.
    """
    data = path.read_bytes()
    if not data.isascii():
        try:
            return data.decode("utf-8-sig").split("\n")
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("cp1252").split("\n")
    except UnicodeDecodeError:
        lines = []
        for raw in data.split(b"\n"):
            try:
                lines.append(raw.decode("cp1252"))
            except UnicodeDecodeError:
                skipped["undecodable_line"] += 1
        return lines


def _parse_id_list(text: str) -> list[str] | None:
    """Parse "['L194', 'L195']" as data (never `eval`); None if it is not such a list."""
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    ids = []
    for item in text[1:-1].split(","):
        item = item.strip()
        if len(item) < 3 or item[0] != item[-1] or item[0] not in "'\"":
            return None
        ids.append(item[1:-1])
    return ids


def read_cornell(folder: Path) -> tuple[list[Conversation], Counter[str]]:
    """Read the official layout. Utterances are normalised once, as they are read."""
    skipped: Counter[str] = Counter()
    text_of: dict[str, str | None] = {}
    for line in _decode_lines(folder / "movie_lines.txt", skipped):
        if not line.strip():
            continue
        fields = line.rstrip("\r").split(FIELD_SEP, 4)
        if len(fields) != 5:
            skipped["malformed_line"] += 1
            continue
        text = normalize(fields[4])
        if not text:
            skipped["empty_utterance"] += 1
        text_of[fields[0].strip()] = text or None

    conversations: list[Conversation] = []
    for line in _decode_lines(folder / "movie_conversations.txt", skipped):
        if not line.strip():
            continue
        fields = line.rstrip("\r").split(FIELD_SEP)
        ids = _parse_id_list(fields[3]) if len(fields) == 4 else None
        if not ids:
            skipped["malformed_conversation"] += 1
            continue
        conversation = []
        for line_id in ids:
            if line_id not in text_of:
                skipped["missing_line_id"] += 1
            conversation.append(text_of.get(line_id))
        conversations.append(conversation)
    return conversations, skipped


def read_convokit(folder: Path) -> tuple[list[Conversation], Counter[str]]:
    """Read ConvoKit's `utterances.jsonl`; a conversation's utterances are ordered by line number."""
    skipped: Counter[str] = Counter()
    grouped: dict[str, list[tuple[int, str | None]]] = {}
    with open(folder / "utterances.jsonl", encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, order = str(item["conversation_id"]), int(str(item["id"]).lstrip("L"))
                text = normalize(str(item.get("text") or ""))
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
                skipped["malformed_line"] += 1
                continue
            if not text:
                skipped["empty_utterance"] += 1
            grouped.setdefault(key, []).append((order, text or None))
    conversations = [[text for _, text in sorted(turns, key=lambda t: t[0])] for turns in grouped.values()]
    return conversations, skipped


def conversation_pairs(conversation: Conversation) -> list[Pair]:
    """Each utterance with the one that answers it. An unusable utterance breaks the chain."""
    return [(q, a) for q, a in zip(conversation, conversation[1:]) if q is not None and a is not None]


def split_conversations(n: int, val_fraction: float, test_fraction: float, seed: int) -> list[str]:
    """Assign each of `n` conversations to a split, by a seeded shuffle (deterministic)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    assignment = ["train"] * n
    for rank, index in enumerate(order):
        if rank < n_val:
            assignment[index] = "val"
        elif rank < n_val + n_test:
            assignment[index] = "test"
    return assignment


@dataclass
class PairSettings:
    """How pairs are cut. `max_length` counts the EOS token: a side of 9 tokens fits length 10.

    `train_max_length` lets training pairs be longer than validation and test ones (0 or any
    value up to `max_length`: no longer). The vocabulary is still counted on training pairs
    within `max_length`, so it and the held-out files are exactly those of a build without
    longer pairs; train.py uses the longer pairs only when asked (`--long-pairs`).
    """

    max_length: int = 10
    train_max_length: int = 30
    min_count: int = 3
    rare_words: str = "unk"
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    seed: int = 0


@dataclass
class PairedCorpus:
    splits: dict[str, list[Pair]]
    vocab: Vocabulary  # counted on the training split, trimmed at min_count
    stats: dict = field(default_factory=dict)


def make_pairs(conversations: list[Conversation], settings: PairSettings) -> PairedCorpus:
    """Split conversations, cut pairs, filter them by length and rare words; count every stage.

    Word counts for trimming come from the training split alone, so validation and test data
    never influence what the model may say. With `rare_words="drop"` a pair holding a word seen
    fewer than `min_count` times is dropped from every split (the tutorial's behaviour); with
    "unk" it is kept and the word becomes UNK when encoded.
    """
    if settings.rare_words not in RARE_WORD_POLICIES:
        raise ValueError(f"rare_words must be one of {RARE_WORD_POLICIES}")
    assignment = split_conversations(
        len(conversations), settings.val_fraction, settings.test_fraction, settings.seed
    )
    raw: dict[str, list[Pair]] = {s: [] for s in SPLITS}
    conversation_counts: Counter[str] = Counter()
    for conversation, split in zip(conversations, assignment):
        raw[split].extend(conversation_pairs(conversation))
        conversation_counts[split] += 1

    def fits(pair: Pair, max_length: int) -> bool:
        return all(side.count(" ") + 1 <= words_within(max_length) for side in pair)

    train_length = max(settings.train_max_length, settings.max_length)
    short_pairs = {
        s: [p for p in raw[s] if fits(p, train_length if s == "train" else settings.max_length)]
        for s in SPLITS
    }
    counts = count_words(
        side for pair in short_pairs["train"] if fits(pair, settings.max_length) for side in pair
    )
    vocab = Vocabulary.from_counts(counts, settings.min_count)
    if settings.rare_words == "drop":
        known = vocab.word_to_index

        def keep(pair: Pair) -> bool:
            return all(w in known for side in pair for w in side.split())

        kept = {s: [p for p in short_pairs[s] if keep(p)] for s in SPLITS}
    else:
        kept = short_pairs

    def unk_tokens(pairs: list[Pair]) -> int:
        return sum(len(vocab.unknown_words(side)) for pair in pairs for side in pair)

    seen_in_train = set(kept["train"])

    stats = {
        "conversations": len(conversations),
        "pairs": {
            "raw": sum(len(v) for v in raw.values()),
            "after_length_filter": sum(len(v) for v in short_pairs.values()),
            "after_trimming": sum(len(v) for v in kept.values()),
        },
        "splits": {
            s: {
                "conversations": conversation_counts[s],
                "pairs": len(kept[s]),
                "unk_tokens": unk_tokens(kept[s]),
                # the same (query, reply) text can recur in other conversations ("what ?" / "nothing .")
                "pairs_also_in_train": 0 if s == "train" else sum(p in seen_in_train for p in kept[s]),
            }
            for s in SPLITS
        },
        "vocabulary": {"train_words": len(counts), "kept_words": len(vocab) - len(SPECIAL_TOKENS)},
    }
    return PairedCorpus(kept, vocab, stats)


def write_pairs(path: str | Path, pairs: list[Pair]) -> None:
    """Write one `query<TAB>reply` pair a line, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{q}\t{a}\n" for q, a in pairs), encoding="utf-8")


def read_pairs(path: str | Path) -> list[Pair]:
    """Read a pair file; a malformed line is an error naming the file and the line number.

    Sides are normalised again, so a hand-written or foreign file is read like our own.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CorpusError(f"{path} not found: run `python download_data.py` to build it") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CorpusError(f"cannot read {path}: {error}") from None
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        sides = line.split("\t")
        query, reply = (normalize(s) for s in sides) if len(sides) == 2 else ("", "")
        if not query or not reply:
            raise CorpusError(f"{path}:{number}: expected `query<TAB>reply` with two non-empty sides")
        pairs.append((query, reply))
    return pairs
