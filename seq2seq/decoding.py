"""Turning a trained model's scores into replies: greedy search, beam search and sampling.

All three are batched (no Python loop over batch items) and stop as soon as every sequence has
produced EOS. They share one step function and one place that adjusts the next-token scores:
PAD, SOS and UNK are never produced, EOS is held back until `min_length`, and with
`no_repeat_ngram = n` no n-gram appears twice in a reply (OpenNMT's and fairseq's n-gram
blocking).

Beam search ranks hypotheses by log-probability divided by the length penalty of Wu et al. (2016),
"Google's Neural Machine Translation System": lp(Y) = ((5 + |Y|) / 6) ** alpha, where |Y| counts
the reply's tokens including EOS. alpha = 0 ranks by raw log-probability (which favours short,
generic replies); alpha = 1 is close to the average log-probability per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from .batching import collate
from .model import Memory, Seq2Seq
from .vocab import EOS, PAD, SOS, UNK, Vocabulary, words_within

METHODS = ("greedy", "beam", "sample")
NEVER_GENERATED = (PAD, SOS, UNK)


@dataclass
class DecodeSettings:
    method: str = "greedy"
    max_length: int = 10  # tokens, EOS included
    min_length: int = 1  # tokens before EOS may be produced
    beam_size: int = 5
    length_penalty: float = 0.6  # Wu et al.'s alpha; 0 = raw log-probability
    n_best: int = 1
    no_repeat_ngram: int = 0  # 0 = off
    temperature: float = 1.0
    top_k: int = 0  # 0 = whole vocabulary
    top_p: float = 1.0  # nucleus mass; 1 = whole vocabulary
    seed: int | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"decoding method must be one of {METHODS}, got {self.method!r}")


class Replies(NamedTuple):
    tokens: Tensor  # (B, n, L) ids, EOS-terminated, PAD after; n = n_best for beam, else 1
    scores: Tensor  # (B, n) summed log-probabilities (beam: divided by the length penalty)


def length_penalty(length: Tensor, alpha: float) -> Tensor:
    return ((5.0 + length) / 6.0) ** alpha


def _ngram_penalty(history: Tensor, n: int, vocab_size: int) -> Tensor:
    """-inf at each token that would repeat an n-gram already in `history` (N, t); else 0."""
    penalty = torch.zeros(history.size(0), vocab_size, device=history.device)
    if n <= 0 or history.size(1) < n:
        return penalty
    grams = history.unfold(1, n, 1)  # (N, t - n + 1, n)
    prefix = history[:, history.size(1) - n + 1 :]  # the last n - 1 tokens
    seen = (grams[:, :, : n - 1] == prefix.unsqueeze(1)).all(-1)  # for n = 1 every token is "seen"
    banned = torch.where(seen, float("-inf"), 0.0)
    return penalty.scatter_reduce_(1, grams[:, :, -1], banned, reduce="amin")


def next_token_scores(logits: Tensor, history: Tensor, settings: DecodeSettings) -> Tensor:
    """Log-probabilities (N, V) of the next token after `history` (N, t), with the rules applied."""
    scores = torch.log_softmax(logits.float(), dim=-1)
    scores[:, list(NEVER_GENERATED)] = float("-inf")
    if history.size(1) < settings.min_length:
        scores[:, EOS] = float("-inf")
    if settings.no_repeat_ngram:
        scores = scores + _ngram_penalty(history, settings.no_repeat_ngram, scores.size(1))
    return scores


def _sample(scores: Tensor, settings: DecodeSettings, generator: torch.Generator | None) -> Tensor:
    """Draw one token per row from temperature-scaled scores restricted by top-k and top-p."""
    scores = scores / settings.temperature
    if settings.top_k:
        kth = scores.topk(min(settings.top_k, scores.size(-1)), dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if settings.top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        # drop a token once the tokens ranked above it already hold top_p of the mass
        drop = cumulative - sorted_scores.softmax(-1) >= settings.top_p
        scores = scores.scatter(1, order, sorted_scores.masked_fill(drop, float("-inf")))
    probs = scores.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.no_grad()
def decode(model: Seq2Seq, src: Tensor, lengths: Tensor, settings: DecodeSettings) -> Replies:
    """Replies to a batch of encoded queries (src (B, S) on the model's device).

    The model decodes in eval mode (no dropout) and is handed back in the mode it came in.
    """
    was_training = model.training
    model.eval()
    try:
        return _greedy_or_sample(model, src, lengths, settings)
    finally:
        model.train(was_training)


def _greedy_or_sample(model: Seq2Seq, src: Tensor, lengths: Tensor, settings: DecodeSettings) -> Replies:
    memory, hidden = model.encode(src, lengths)
    if settings.method == "beam":
        return _beam_search(model, memory, hidden, settings)
    generator = None  # greedy, or sampling from a seeded generator of its own
    if settings.method == "sample" and settings.seed is not None:
        generator = torch.Generator(device=src.device).manual_seed(settings.seed)
    batch = src.size(0)
    history = torch.empty(batch, 0, dtype=torch.long, device=src.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=src.device)
    total = torch.zeros(batch, device=src.device)
    token = torch.full((batch, 1), SOS, dtype=torch.long, device=src.device)
    for _ in range(settings.max_length):
        logits, hidden, _ = model.decoder(token, hidden, memory)
        scores = next_token_scores(logits[:, -1], history, settings)
        choice = _sample(scores, settings, generator) if settings.method == "sample" else scores.argmax(-1)
        total += torch.where(finished, 0.0, scores.gather(1, choice.unsqueeze(1)).squeeze(1))
        choice = choice.masked_fill(finished, PAD)
        history = torch.cat([history, choice.unsqueeze(1)], dim=1)
        finished |= choice == EOS
        if finished.all():
            break
        token = choice.unsqueeze(1)
    return Replies(history.unsqueeze(1), total.unsqueeze(1))


def _beam_search(model: Seq2Seq, memory: Memory, hidden: Tensor, settings: DecodeSettings) -> Replies:
    """Batched beam search over B queries × K beams, flattened to B·K rows.

    A finished beam stays in the beam with its score frozen (it can only be extended by PAD, at
    no cost), so all beams of all queries advance together as one tensor.
    """
    batch, k, device = memory.values.size(0), settings.beam_size, memory.values.device
    expand = torch.arange(batch, device=device).repeat_interleave(k)
    memory = Memory(*(t[expand] for t in memory))
    hidden = hidden[:, expand]
    raw = torch.full((batch, k), float("-inf"), device=device)
    raw[:, 0] = 0.0  # at the start only one beam is real
    length = torch.zeros(batch, k, device=device)
    finished = torch.zeros(batch, k, dtype=torch.bool, device=device)
    history = torch.empty(batch * k, 0, dtype=torch.long, device=device)
    token = torch.full((batch * k, 1), SOS, dtype=torch.long, device=device)
    for _ in range(settings.max_length):
        logits, hidden, _ = model.decoder(token, hidden, memory)
        scores = next_token_scores(logits[:, -1], history, settings).view(batch, k, -1)
        vocab_size = scores.size(-1)
        # a finished beam may only continue with PAD, keeping its score
        frozen = torch.full_like(scores[0, 0], float("-inf"))
        frozen[PAD] = 0.0
        scores = torch.where(finished.unsqueeze(-1), frozen, scores)
        candidate_raw = raw.unsqueeze(-1) + scores  # (B, K, V)
        candidate_length = (length + (~finished).float()).unsqueeze(-1).expand_as(candidate_raw)
        ranked = candidate_raw / length_penalty(candidate_length, settings.length_penalty)
        top = ranked.view(batch, -1).topk(k, dim=-1).indices  # (B, K)
        beam, choice = top // vocab_size, top % vocab_size
        raw = candidate_raw.view(batch, -1).gather(1, top)
        length = candidate_length.reshape(batch, -1).gather(1, top)
        rows = (beam + torch.arange(batch, device=device).unsqueeze(1) * k).view(-1)
        hidden = hidden[:, rows]
        history = torch.cat([history[rows], choice.view(-1, 1)], dim=1)
        # a beam is done at EOS, or dead when nothing allowed was left to extend it with
        finished = finished.gather(1, beam) | (choice == EOS) | raw.isinf()
        if finished.all():
            break
        token = choice.view(-1, 1)
    final = raw / length_penalty(length, settings.length_penalty)
    n = min(settings.n_best, k)
    best = final.topk(n, dim=-1)
    rows = (best.indices + torch.arange(batch, device=device).unsqueeze(1) * k).view(-1)
    tokens = history[rows].view(batch, n, -1)
    width = int((tokens != PAD).sum(-1).max())  # drop columns that only pad the kept replies
    return Replies(tokens[..., :width], best.values)


def reply_batch(
    model: Seq2Seq, vocab: Vocabulary, queries: list[str], settings: DecodeSettings
) -> list[list[str]]:
    """The best reply's tokens for each normalised query, decoded as one batch.

    A query is cut to the words the model was trained on (`words_within(max_length)`).
    """
    device = next(model.parameters()).device
    keep = words_within(settings.max_length)
    batch = collate([([*vocab.encode(q)[:keep], EOS], []) for q in queries])
    replies = decode(model, batch.src.to(device), batch.lengths, settings)
    return [vocab.decode(row[0].tolist()) for row in replies.tokens.cpu()]
