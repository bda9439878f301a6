"""The Cornell Movie-Dialogs Corpus and other dialogue: reading it, cutting query/reply pairs,
splitting, pair files.

Three layouts are read:
- the official Cornell release: `movie_lines.txt` and `movie_conversations.txt`, fields
  separated by " +++$+++ ", 8-bit text;
- a ConvoKit corpus (its `utterances.jsonl`, one JSON utterance a line): the `movie-corpus` the
  PyTorch tutorial switched to when the original links moved, or any other;
- a plain dialogue file: one turn a line, a blank line between conversations.

Each way a corpus becomes a list of conversations, each a list of normalised utterances in
spoken order, where `None` marks an utterance that could not be used (missing, empty or
undecodable). Bad items are skipped and counted by reason, never fatal.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .files import atomic_path
from .vocab import (
    NO_CONTEXT,
    SPECIAL_TOKENS,
    Context,
    Vocabulary,
    count_words,
    join_turns,
    last_turn,
    normalize,
    split_turns,
    words_within,
)

FIELD_SEP = " +++$+++ "
CONVOKIT_FILE = "utterances.jsonl"
SPLITS = ("train", "val", "test")
RARE_WORD_POLICIES = ("unk", "drop")

Conversation = list[str | None]
Utterance = tuple[str, str | None, str | None]  # ConvoKit's (id, reply_to, normalised text)
Pair = tuple[str, str]  # (source, reply); a source may hold earlier turns (vocab.TURN_SEPARATOR)


class CorpusError(Exception):
    """A corpus folder or pair file that cannot be used; the message is one line for the user."""


def find_corpus(folder: str | Path) -> tuple[str, Path]:
    """Locate a corpus inside `folder` (or one level below): ("cornell" | "convokit", its folder)."""
    folder = Path(folder)
    for candidate in [folder, *sorted(p for p in folder.glob("*") if p.is_dir())]:
        if (candidate / "movie_lines.txt").is_file() and (candidate / "movie_conversations.txt").is_file():
            return "cornell", candidate
        if (candidate / CONVOKIT_FILE).is_file():
            return "convokit", candidate
    raise CorpusError(
        f"no Cornell corpus in {folder}: expected movie_lines.txt and movie_conversations.txt "
        f"(official release) or {CONVOKIT_FILE} (a ConvoKit corpus); give a dialogue file by its own path"
    )


def read_corpus(path: str | Path) -> tuple[list[Conversation], Counter[str]]:
    """Read the corpus at `path`: a folder in either layout, or a file, which is a dialogue file
    unless it is ConvoKit's utterances file itself."""
    path = Path(path)
    if path.is_file():
        return read_convokit(path.parent) if path.name == CONVOKIT_FILE else read_dialogues(path)
    layout, folder = find_corpus(path)
    return read_cornell(folder) if layout == "cornell" else read_convokit(folder)


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
    """Read a ConvoKit `utterances.jsonl` (fields `id`, `conversation_id`, `reply_to`, `text`).

    Conversations come in the order their ids first appear. A conversation is ordered by its
    reply tree (`_reply_chains`); one where no utterance replies to another (an old export
    without `reply_to`) by the number in its ids, as the movie-corpus numbers lines in spoken
    order ("L1044"), else as the file has it.
    """
    skipped: Counter[str] = Counter()
    grouped: dict[str, list[Utterance]] = {}
    with open(folder / CONVOKIT_FILE, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, utterance_id = str(item["conversation_id"]), str(item["id"])
                reply_to = item.get("reply_to")
                text = normalize(str(item.get("text") or ""))
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
                skipped["malformed_line"] += 1
                continue
            if not text:
                skipped["empty_utterance"] += 1
            reply_to = None if reply_to is None else str(reply_to)
            grouped.setdefault(key, []).append((utterance_id, reply_to, text or None))
    conversations = [
        _reply_chains(turns, skipped) if any(r is not None for _, r, _ in turns) else _by_line_number(turns)
        for turns in grouped.values()
    ]
    return conversations, skipped


def _by_line_number(turns: list[Utterance]) -> Conversation:
    """Texts ordered by the number in their ids ("L1044" -> 1044); in file order if one has none."""
    try:
        turns = sorted(turns, key=lambda t: int(t[0].lstrip("L")))
    except ValueError:
        pass
    return [text for _, _, text in turns]


def _reply_chains(turns: list[Utterance], skipped: Counter[str]) -> Conversation:
    """A conversation's reply tree as linear chains, so that every reply gives exactly one pair.

    Walking the tree depth first, an utterance's first reply (in file order) continues its chain
    and every further reply starts a new chain with a copy of the utterance it answers. A branch
    thus carries context from its parent on only: copying the earlier turns as well would repeat
    their pairs. The chains stay one conversation, apart by a `None` (no pair spans it), so that
    a thread is never split between training and test. An utterance whose `reply_to` is not in
    its conversation starts a chain of its own (counted); a cycle of replies, which a tree never
    has, is cut at one reply (counted) and read like a tree from there.
    """
    index: dict[str, int] = {}
    for i, (utterance_id, _, _) in enumerate(turns):
        index.setdefault(utterance_id, i)
    parent: list[int | None] = [None if r is None else index.get(r) for _, r, _ in turns]
    children: list[list[int]] = [[] for _ in turns]
    roots = []
    for i, (_, reply_to, _) in enumerate(turns):
        if parent[i] is None:
            if reply_to is not None:
                skipped["missing_reply_to"] += 1
            roots.append(i)
        else:
            children[parent[i]].append(i)
    seen = [False] * len(turns)
    chains = [chain for root in roots for chain in _walk(root, children, seen)]
    for i in range(len(turns)):  # what no root reaches hangs in or below a cycle
        if not seen[i]:
            skipped["reply_cycle"] += 1
            chains += _walk(_in_cycle(i, parent), children, seen)
    conversation: Conversation = []
    for chain in chains:
        conversation += ([None] if conversation else []) + [turns[i][2] for i in chain]
    return conversation


def _walk(root: int, children: list[list[int]], seen: list[bool]) -> list[list[int]]:
    """The chains of `root`'s tree, depth first, without recursion (a thread may be deep)."""
    chains = []
    stack = [[root]]
    while stack:
        chain = stack.pop()
        node = chain[-1]
        while True:
            seen[node] = True
            replies = [r for r in children[node] if not seen[r]]
            stack.extend([node, r] for r in reversed(replies[1:]))
            if not replies:
                break
            node = replies[0]
            chain.append(node)
        chains.append(chain)
    return chains


def _in_cycle(node: int, parent: list[int | None]) -> int:
    """An utterance of the reply cycle above `node` (every utterance up there has a parent)."""
    passed = set()
    while node not in passed:
        passed.add(node)
        node = parent[node]
    return node


# A speaker label: up to three words, at most 32 characters, then a colon and a space ("Dr. Who: ").
_SPEAKER = re.compile(r"[ \t]*(?=[^:]{1,32}:)[^\s:]+(?: [^\s:]+){0,2}:(?:\s|$)")


def read_dialogues(path: Path) -> tuple[list[Conversation], Counter[str]]:
    """Read a plain dialogue file: one turn a line, a blank line between conversations.

    A conversation's speaker labels ("Ann: hi") are stripped only when every one of its turns
    has one, so that a "note: ..." in unlabelled text stays text. The file is UTF-8, or else
    Windows-1252, what Windows editors save (a byte with no character there reads as a space:
    dropping its line would join the turns around it into a false pair). A file that is binary,
    empty or gives no pairs is an error that says why.
    """
    data = path.read_bytes()
    if b"\0" in data:
        raise CorpusError(
            f"{path} is not a dialogue file: it holds NUL bytes (binary, or UTF-16: save it as UTF-8)"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("cp1252", errors="replace")
    skipped: Counter[str] = Counter()
    conversations: list[Conversation] = []
    block: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.strip():
            block.append(line)
        elif block:
            labels = [_SPEAKER.match(turn) for turn in block]
            if all(labels):
                block = [turn[label.end() :] for turn, label in zip(block, labels)]
            conversation: Conversation = [normalize(turn) or None for turn in block]
            if None in conversation:
                skipped["empty_utterance"] += conversation.count(None)
            conversations.append(conversation)
            block = []
    layout = "put each turn on its own line and a blank line between conversations"
    if not conversations:
        raise CorpusError(f"{path} holds no text: {layout}")
    if all(len(c) < 2 for c in conversations):
        raise CorpusError(f"{path} gives no pairs: every conversation has a single turn; {layout}")
    if not any(conversation_pairs(c) for c in conversations):
        raise CorpusError(
            f"{path} gives no pairs: no two turns in a row both hold words (letters a-z, . ! ?)"
        )
    return conversations, skipped


def conversation_pairs(conversation: Conversation, context: Context = NO_CONTEXT) -> list[Pair]:
    """Each utterance with the one that answers it, as (source, reply): the source is the
    utterance, after up to `context.turns` earlier ones (`context.cut`). An unusable utterance
    breaks the chain: no pair spans it, and no context reaches back past it."""
    pairs = []
    for i, (query, reply) in enumerate(zip(conversation, conversation[1:])):
        if query is None or reply is None:
            continue
        earlier: list[str] = []
        for turn in reversed(conversation[max(0, i - context.turns) : i]):
            if turn is None:
                break
            earlier.insert(0, turn)
        pairs.append((join_turns([*context.cut(earlier), query]), reply))
    return pairs


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
    value up to `max_length`: no longer). `context_turns` earlier turns within `context_length`
    tokens go before each query (vocab.Context); the lengths, the rare words and the vocabulary
    look at queries and replies only, so every split holds the same (query, reply) pairs
    whatever the context. The vocabulary is still counted on training pairs
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
    context_turns: int = 0
    context_length: int = Context.tokens

    @property
    def context(self) -> Context:
        return Context(self.context_turns, self.context_length)


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
        raw[split].extend(conversation_pairs(conversation, settings.context))
        conversation_counts[split] += 1

    def fits(pair: Pair, max_length: int) -> bool:
        return all(side.count(" ") + 1 <= words_within(max_length) for side in (last_turn(pair[0]), pair[1]))

    train_length = max(settings.train_max_length, settings.max_length)
    short_pairs = {
        s: [p for p in raw[s] if fits(p, train_length if s == "train" else settings.max_length)]
        for s in SPLITS
    }
    counts = count_words(
        side for pair in short_pairs["train"] if fits(pair, settings.max_length) for side in exchange(pair)
    )
    vocab = Vocabulary.from_counts(counts, settings.min_count)
    if settings.rare_words == "drop":
        known = vocab.word_to_index

        def keep(pair: Pair) -> bool:
            return all(w in known for side in exchange(pair) for w in side.split())

        kept = {s: [p for p in short_pairs[s] if keep(p)] for s in SPLITS}
    else:
        kept = short_pairs

    def unk_tokens(pairs: list[Pair]) -> int:
        return sum(len(vocab.unknown_words(side)) for pair in pairs for side in exchange(pair))

    seen_in_train = set(map(exchange, kept["train"]))

    def also_in_train(split: str) -> int:
        # the same (query, reply) text can recur in other conversations ("what ?" / "nothing .")
        return 0 if split == "train" else sum(exchange(p) in seen_in_train for p in kept[split])

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
                "pairs_also_in_train": also_in_train(s),
                **({"context": context_stats(kept[s])} if settings.context_turns else {}),
            }
            for s in SPLITS
        },
        "vocabulary": {"train_words": len(counts), "kept_words": len(vocab) - len(SPECIAL_TOKENS)},
    }
    return PairedCorpus(kept, vocab, stats)


def exchange(pair: Pair) -> Pair:
    """A pair without its context: (query, reply)."""
    return last_turn(pair[0]), pair[1]


def context_stats(pairs: list[Pair]) -> dict:
    """How much context a split's sources carry: pairs with any, turns and tokens (EOS included)."""
    contexts = [split_turns(source)[:-1] for source, _ in pairs]
    return {
        "pairs_with_context": sum(bool(c) for c in contexts),
        "turns": sum(map(len, contexts)),
        "tokens": sum(len(turn.split()) + 1 for c in contexts for turn in c),
    }


def write_pairs(path: str | Path, pairs: list[Pair]) -> None:
    """Write one pair a line, atomically: `query<TAB>reply`, or with context
    `earlier turn<TAB>...<TAB>query<TAB>reply` (the source's turns, oldest first, then the reply)."""
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
        sides = [normalize(side) for side in line.split("\t")]
        if len(sides) < 2 or not all(sides):
            raise CorpusError(
                f"{path}:{number}: expected `query<TAB>reply` (earlier turns before the query, each "
                "followed by a TAB), every field non-empty"
            )
        pairs.append((join_turns(sides[:-1]), sides[-1]))
    return pairs
