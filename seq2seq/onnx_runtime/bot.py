"""The chatbot without PyTorch: its encoder and decoder step as ONNX graphs, run by ONNX Runtime,
with the search on the host in NumPy. Needs `pip install onnxruntime numpy`, nothing else.

    from bot import Bot
    bot = Bot("path/to/this/folder")          # int8=True: the int8 graphs, if exported
    bot.reply("Where are you going?")          # a model trained with context hears the conversation

The folder holds encoder.onnx and step.onnx (convert_to_torchscript.py --method onnx), bot.json
(the vocabulary, max_length, the context), and vocab.py: the package's own normalisation and
context rules, copied verbatim, so text is read here exactly as in training. Replies follow
seq2seq.decoding's greedy search and, with a beam, its beam search: PAD, SOS and UNK are never
produced, EOS not first; beams rank by Wu et al.'s length penalty.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
from vocab import (
    EOS,
    PAD,
    SOS,
    SPECIAL_TOKENS,
    UNK,
    Context,
    Vocabulary,
    detokenize,
    join_turns,
    read_message,
)

FORMAT = "chatbot-seq2seq-onnx/1"


def _setting(config: dict, name: str, low: float, kind: type = int):
    value = config.get(name)
    if type(value) is not kind or not low <= value < 10**6:
        raise ValueError(
            f"bot.json: {name} must be {'an integer' if kind is int else 'a number'} >= {low}, got {value!r}"
        )
    return value


class Bot:
    """Greedy (or beam search) replies from the exported graphs; keeps the conversation a model
    trained with context reads, as chat.py does (`reset` forgets it). A folder that is not an
    export of this format, or whose parts disagree, raises ValueError or an ONNX Runtime error."""

    def __init__(self, folder: str | Path, int8: bool = False, beam_size: int = 1, threads: int = 1):
        folder = Path(folder)
        config = json.loads((folder / "bot.json").read_text(encoding="utf-8"))
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise ValueError(f"{folder}/bot.json is not a bot of format {FORMAT}")
        if config.get("special") != dict(zip(SPECIAL_TOKENS, (PAD, SOS, EOS, UNK))):
            raise ValueError("bot.json: its special tokens are not vocab.py's")
        try:
            self.vocab = Vocabulary.from_dict(config["vocab"])  # words that reach the terminal are checked
        except (KeyError, TypeError):
            raise ValueError("bot.json: its vocabulary is missing or misshapen") from None
        self.max_length = _setting(config, "max_length", 2)
        self.query_words = _setting(config, "query_words", 1)
        self.min_length = _setting(config, "min_length", 0)
        self.length_penalty = _setting(config, "length_penalty", 0.0, float)
        self.never = config.get("never_generated")
        if not isinstance(self.never, list) or not all(type(i) is int and i >= 0 for i in self.never):
            raise ValueError("bot.json: never_generated must list token ids")
        self.context = Context(_setting(config, "context_turns", 0), _setting(config, "context_tokens", 1))
        self.beam_size = beam_size
        self.history: list[str] = []
        options = onnxruntime.SessionOptions()
        # 0: ONNX Runtime's choice, every core; one reply at a time was as fast or faster on one
        # thread (2-core CPU: int8 3.7 ms on one, 6.8 on two; fp32 10.4 and 9.7)
        options.intra_op_num_threads = threads
        suffix = ".int8.onnx" if int8 else ".onnx"
        if int8 and not (folder / f"step{suffix}").exists():
            raise FileNotFoundError(f"{folder} holds no int8 graphs (export them with --quantize int8)")
        self.encoder, self.step = (
            onnxruntime.InferenceSession(
                str(folder / f"{part}{suffix}"), options, providers=["CPUExecutionProvider"]
            )
            for part in ("encoder", "step")
        )
        length = self.encoder.get_inputs()[0].shape[1]  # the int8 encoder's, unrolled: ids are padded to it
        self.source_length = length if isinstance(length, int) else 0
        words = len(self.vocab)
        if self.step.get_outputs()[0].shape[1] != words or max(self.never, default=0) >= words:
            raise ValueError(f"bot.json's {len(self.vocab)} words do not match step.onnx's outputs")

    def encode(self, sources: list[str]) -> dict[str, np.ndarray]:
        """The encoder's outputs for normalised sources (earlier turns, then the query)."""
        rows = [self.context.source_ids(self.vocab, s, self.query_words) for s in sources]
        ids = np.full((len(rows), max(self.source_length, *map(len, rows))), PAD, dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
        lengths = np.array([len(row) for row in rows], dtype=np.int64)
        names = [o.name for o in self.encoder.get_outputs()]
        return dict(zip(names, self.encoder.run(None, {"ids": ids, "lengths": lengths})))

    def _scores(self, token: np.ndarray, memory: dict, step: int) -> np.ndarray:
        """Log-probabilities of the next token (N, V), with the rules of decoding.next_token_scores."""
        logits, memory["state"] = self.step.run(None, {"token": token, **memory})
        logits = logits.astype(np.float64)
        shifted = logits - logits.max(axis=1, keepdims=True)
        scores = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        scores[:, self.never] = -np.inf
        if step < self.min_length:
            scores[:, EOS] = -np.inf
        return scores

    def greedy(self, memory: dict) -> list[list[int]]:
        """The likeliest word at each step, for every source of `memory` at once."""
        batch = memory["state"].shape[1]
        token = np.full(batch, SOS, dtype=np.int64)
        finished = np.zeros(batch, dtype=bool)
        replies: list[list[int]] = [[] for _ in range(batch)]
        for step in range(self.max_length):
            choice = self._scores(token, memory, step).argmax(axis=1)
            for i in np.flatnonzero(~finished):
                replies[i].append(int(choice[i]))
            finished |= choice == EOS
            if finished.all():
                break
            token = choice.astype(np.int64)
        return replies

    def beam(self, memory: dict, k: int) -> list[int]:
        """Beam search of width k for one source: seq2seq.decoding's, with a finished beam kept
        in the beam at its frozen score."""
        memory = {
            name: np.repeat(value, k, axis=1 if name == "state" else 0) for name, value in memory.items()
        }
        raw = np.full(k, -np.inf)
        raw[0] = 0.0
        length = np.zeros(k)
        finished = np.zeros(k, dtype=bool)
        history = np.zeros((k, 0), dtype=np.int64)
        token = np.full(k, SOS, dtype=np.int64)
        for step in range(self.max_length):
            scores = self._scores(token, memory, step)
            frozen = np.full(scores.shape[1], -np.inf)
            frozen[PAD] = 0.0
            scores = np.where(finished[:, None], frozen, scores)
            candidate_raw = raw[:, None] + scores
            candidate_length = np.broadcast_to((length + ~finished)[:, None], candidate_raw.shape)
            ranked = candidate_raw / ((5.0 + candidate_length) / 6.0) ** self.length_penalty
            top = _top_k(ranked.ravel(), k)
            beam, choice = np.divmod(top, scores.shape[1])
            raw, length = candidate_raw.ravel()[top], candidate_length.ravel()[top]
            memory["state"] = memory["state"][:, beam]
            history = np.concatenate([history[beam], choice[:, None]], axis=1)
            finished = finished[beam] | (choice == EOS) | np.isinf(raw)
            if finished.all():
                break
            token = choice.astype(np.int64)
        best = int(np.argmax(raw / ((5.0 + length) / 6.0) ** self.length_penalty))
        return [int(t) for t in history[best] if t != PAD]

    def reply(self, text: str) -> str:
        """The reply to what someone typed (empty if nothing in it can be read)."""
        return self.respond(text)[0]

    def respond(self, text: str) -> tuple[str, list[str]]:
        """The reply and notes for its writer, as chat.py gives them (vocab.read_message)."""
        query, notes = read_message(text, self.vocab, self.max_length)
        if not query:
            return "", notes
        memory = self.encode([join_turns([*self.history, query])])
        ids = self.beam(memory, self.beam_size) if self.beam_size > 1 else self.greedy(memory)[0]
        reply = self.vocab.decode(ids)
        if self.context.turns:  # decoding.Conversation.reply
            self.history = [*self.history, query, " ".join(reply)][-self.context.turns :]
        return detokenize(reply), notes

    def reset(self) -> None:
        """Forget the conversation: the next reply reads no earlier turn."""
        self.history = []


def _top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first, ties to the lower index (exact ties of
    float scores are rare; the parity tests compare beams with eager beam search)."""
    order = np.argsort(-values, kind="stable")
    return order[:k]
