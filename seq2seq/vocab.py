"""Special tokens, text normalisation and the word vocabulary.

This module is the single home of three facts every other part relies on: the special token ids,
how raw text becomes a token sequence, and how words map to ids.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

PAD, SOS, EOS, UNK = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<sos>", "<eos>", "<unk>")


def words_within(max_length: int) -> int:
    """How many words a sentence keeps under a `max_length` counted in tokens: EOS takes the last.

    Pairs are cut to it, and queries at reply time are cut to it, so the model never reads a
    longer query than it was trained on. (export.py's TorchScript bot repeats the rule, since
    TorchScript cannot call this; its parity tests guard the copy.)
    """
    return max_length - 1


# A source is the turns the encoder reads: the earlier turns of the conversation (oldest first),
# if the model takes context, then the query. In memory and in pair files its turns are joined
# by a tab; the encoder reads each turn closed by EOS, so EOS is the turn separator and a source
# without context is encoded exactly as a lone query always was. (The "flat" baseline of
# Serban et al. 2016, one RNN over the concatenated turns with end-of-utterance tokens, is the
# same idea.)
TURN_SEPARATOR = "\t"


def split_turns(source: str) -> list[str]:
    return source.split(TURN_SEPARATOR)


def join_turns(turns: Iterable[str]) -> str:
    return TURN_SEPARATOR.join(turns)


def last_turn(source: str) -> str:
    """The query of a source: what the reply answers, and what a backward model scores."""
    return source.rpartition(TURN_SEPARATOR)[2]


@dataclass(frozen=True)
class Context:
    """How much of the conversation a model reads before the query: up to `turns` earlier
    turns within `tokens` tokens (each turn's words and the EOS that closes it). Training data
    (download_data.py --context-turns) and chat history are cut by the same rule, `cut`."""

    turns: int = 0
    tokens: int = 20

    def cut(self, turns: list[str]) -> list[str]:
        """The last `self.turns` of `turns` (oldest first) that fit the budget; when only part of
        the oldest fits, its last words are kept (text is cut from the left, far from the query)."""
        kept: list[str] = []
        room = self.tokens
        for turn in reversed(turns[max(0, len(turns) - self.turns) :] if self.turns else []):
            words = turn.split()
            if room < 2 or not words:
                break
            words = words[-(room - 1) :]
            kept.append(" ".join(words))
            room -= len(words) + 1
        return kept[::-1]

    def longest_source(self, max_length: int) -> int:
        """Tokens in the longest source of a model trained with --max-length `max_length`: its
        query and EOS, and its earlier turns (EOS each) within their budget."""
        return max_length + (self.tokens if self.turns else 0)

    def source_ids(self, vocab: Vocabulary, source: str, query_words: int | None = None) -> list[int]:
        """Ids of a source: its context as `cut` keeps it, each turn closed by EOS, then its query
        (its first `query_words` words, if given) and EOS."""
        *context, query = split_turns(source)
        ids: list[int] = []
        for turn in self.cut(context):
            ids += [*vocab.encode(turn), EOS]
        return [*ids, *vocab.encode(query)[:query_words], EOS]


NO_CONTEXT = Context()


# Normalisation, applied identically to the corpus, to chat input and to evaluation data:
#   1. Unicode NFKD, combining marks removed (accents stripped: "café" -> "cafe", "…" -> "..."),
#      case folded ("Straße" -> "strasse");
#   2. sentence punctuation . ! ? becomes a token of its own;
#   3. every other character except a-z and the apostrophe becomes a space (digits, symbols,
#      other scripts, control characters);
#   4. an apostrophe is kept only inside a word ("don't", "i'm"), not at its edges ('cause);
#   5. whitespace is collapsed.
# The tutorial drops the apostrophe and splits "don't" into "don t"; we keep the word whole.
_ASCII_TABLE = {c: " " for c in range(128)}
_ASCII_TABLE.update({ord(c): c for c in "abcdefghijklmnopqrstuvwxyz'"})
_ASCII_TABLE.update({ord(c): f" {c} " for c in ".!?"})
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
_EDGE_APOSTROPHE = re.compile(r"(?<![a-z])'|'(?![a-z])")


def _to_ascii(text: str) -> str:
    """Rule 1 and the start of rule 3: folded and stripped of accents, anything else non-ASCII a space."""
    text = unicodedata.normalize("NFKD", text.translate(_APOSTROPHES).casefold())
    text = "".join(c for c in text if not unicodedata.combining(c))
    return _NON_ASCII.sub(" ", text)


def normalize(text: str) -> str:
    """Return `text` normalised to space-separated tokens (see the rules above)."""
    if not text.isascii():
        text = _to_ascii(text)
    text = text.lower().translate(_ASCII_TABLE)
    if "'" in text:
        text = _EDGE_APOSTROPHE.sub(" ", text)
    return " ".join(text.split())


def character_table() -> dict[str, str]:
    """What rule 1 makes of each non-ASCII character that leaves more than a space: for ports of
    `normalize` to languages without Unicode's tables (the web bot's JavaScript). The rule works
    character by character, so the table is the rule; rules 2 to 5 are ASCII."""
    table = {}
    for code in range(0x80, 0x110000):
        if not 0xD800 <= code < 0xE000:  # surrogates are not characters
            ascii_text = _to_ascii(chr(code))
            if not ascii_text.isspace():
                table[chr(code)] = ascii_text
    return table


def detokenize(tokens: Iterable[str]) -> str:
    """Join tokens for display: punctuation attaches to the word before it ("i'm fine.")."""
    out = ""
    for token in tokens:
        if out and token not in ".!?":
            out += " "
        out += token
    return out


def show_source(source: str) -> str:
    """A source for display: its turns detokenised, oldest first, separated by " | "."""
    return " | ".join(detokenize(turn.split()) for turn in split_turns(source))


# Longer messages are cut to this many characters before they are read (a message the model
# would read in full holds far fewer: its first words_within(max_length) words).
MAX_INPUT_CHARS = 1000


def read_message(text: str, vocab: Vocabulary, max_length: int) -> tuple[str, list[str]]:
    """The normalised query the model reads of `text` (empty if nothing is left to answer) and
    notes for whoever wrote it: what was cut, which words the model does not know."""
    notes = []
    if len(text) > MAX_INPUT_CHARS:
        notes.append(f"your message was cut to its first {MAX_INPUT_CHARS} characters")
        text = text[:MAX_INPUT_CHARS]
    words = normalize(text).split()
    if not words:
        return "", [*notes, "nothing to answer: I only read English words and . ! ?"]
    keep = words_within(max_length)
    if len(words) > keep:
        notes.append(f"I only read the first {keep} words")
        words = words[:keep]
    query = " ".join(words)
    unknown = vocab.unknown_words(query)
    if unknown:
        shown = ", ".join(dict.fromkeys(unknown))
        notes.append(f"words I don't know: {shown[:200]}")
    return query, notes


def count_words(sentences: Iterable[str]) -> Counter[str]:
    """Word counts over normalised sentences."""
    counts: Counter[str] = Counter()
    for sentence in sentences:
        counts.update(sentence.split())
    return counts


def random_sentences(words: list[str], count: int, seed: int = 0, max_words: int = 8) -> list[str]:
    """`count` sentences of 1 to `max_words` words drawn from `words`: stand-in queries when no
    data file is at hand (profiling, export checks)."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(words, k=rng.randint(1, max_words))) for _ in range(count)]


class Vocabulary:
    """Word <-> id mapping with counts. Ids 0-3 are always the special tokens."""

    def __init__(self, words: Iterable[str] = (), counts: dict[str, int] | None = None):
        self.index_to_word: list[str] = list(SPECIAL_TOKENS)
        self.word_to_index: dict[str, int] = {w: i for i, w in enumerate(SPECIAL_TOKENS)}
        self.counts: Counter[str] = Counter()
        for word in words:
            self._add(word)
        if counts:
            self.counts.update({w: c for w, c in counts.items() if w in self.word_to_index})

    def _add(self, word: str) -> None:
        if word not in self.word_to_index:
            self.word_to_index[word] = len(self.index_to_word)
            self.index_to_word.append(word)

    @classmethod
    def build(cls, sentences: Iterable[str], min_count: int = 1) -> Vocabulary:
        """Count the words of normalised `sentences` and keep those seen at least `min_count` times."""
        return cls.from_counts(count_words(sentences), min_count)

    @classmethod
    def from_counts(cls, counts: Counter[str], min_count: int = 1) -> Vocabulary:
        """Keep the words counted at least `min_count` times.

        Words are ordered by falling count, then alphabetically, so the same data always gives the
        same ids whatever order it was read in.
        """
        kept = sorted(
            (w for w, c in counts.items() if c >= min_count and w not in SPECIAL_TOKENS),
            key=lambda w: (-counts[w], w),
        )
        return cls(kept, counts)

    def __len__(self) -> int:
        return len(self.index_to_word)

    def __contains__(self, word: str) -> bool:
        return word in self.word_to_index

    def encode(self, sentence: str) -> list[int]:
        """Ids of the tokens of a normalised sentence; words not in the vocabulary become UNK."""
        lookup = self.word_to_index.get
        return [lookup(w, UNK) for w in sentence.split()]

    def unknown_words(self, sentence: str) -> list[str]:
        """The tokens of a normalised sentence that `encode` would map to UNK."""
        return [w for w in sentence.split() if w not in self.word_to_index]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens for `ids`, stopping at the first EOS and skipping PAD and SOS."""
        words = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i not in (PAD, SOS):
                words.append(self.index_to_word[i])
        return words

    def to_dict(self) -> dict:
        """A plain dict of lists, ints and strings: safe for `torch.load(weights_only=True)`."""
        words = self.index_to_word[len(SPECIAL_TOKENS) :]
        return {"words": words, "counts": [self.counts.get(w, 0) for w in words]}

    @classmethod
    def from_dict(cls, data: dict) -> Vocabulary:
        """The inverse of `to_dict`, for data read from a file: every word must be one the
        normaliser can produce (words reach the terminal, so no control characters, no spaces)."""
        words, counts = data["words"], data["counts"]
        if not (isinstance(words, list) and isinstance(counts, list)) or len(words) != len(counts):
            raise ValueError("vocabulary data is inconsistent (words and counts differ)")
        if len(set(words)) != len(words):
            raise ValueError("vocabulary data is inconsistent (duplicate words)")
        if set(words) & set(SPECIAL_TOKENS):
            raise ValueError("vocabulary data lists a special token among its words")
        for word in words:
            if not isinstance(word, str) or not word or normalize(word) != word or " " in word:
                raise ValueError(f"vocabulary holds {ascii(word)[:40]}, which is not a normalised word")
        if not all(type(c) is int and c >= 0 for c in counts):
            raise ValueError("vocabulary counts are not counts")
        return cls(words, dict(zip(words, counts)))
