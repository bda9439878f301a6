"""Turning a trained model's scores into replies: greedy search, beam search (plain or diverse),
sampling, and MMI reranking of a beam's hypotheses.

All are batched (no Python loop over batch items or hypotheses) and stop as soon as every sequence has
produced EOS. They share one step function and one place that adjusts the next-token scores:
PAD, SOS and UNK are never produced, EOS is held back until `min_length`, and with
`no_repeat_ngram = n` no n-gram appears twice in a reply (OpenNMT's and fairseq's n-gram
blocking).

Sampling draws each token from uniforms given per query (`sampling_noise`), by the inverse of the
cumulative distribution: a query's reply then depends on its own draws alone, not on what else
shares its batch, so a seeded request gets the same reply however the server batches it.

Beam search ranks hypotheses by log-probability divided by the length penalty of Wu et al. (2016),
"Google's Neural Machine Translation System": lp(Y) = ((5 + |Y|) / 6) ** alpha, where |Y| counts
the reply's tokens including EOS. alpha = 0 ranks by raw log-probability (which favours short,
generic replies); alpha = 1 is close to the average log-probability per token.

Diverse beam search (Vijayakumar et al. 2016, "Diverse Beam Search", arXiv 1610.02424) splits the
beams into G groups that advance one after another at each step; a group's candidates lose
`diversity_strength` for every earlier group's beam that chose the same word at this step
(their Hamming diversity). With G = 1 it is plain beam search.

MMI-bidi reranking (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural
Conversation Models", arXiv 1510.03055) orders the final beams by
(1 - lambda) log p(T|S) + lambda log p(S|T) + gamma |T|: a backward model (train.py --reverse)
scores how well each reply predicts the query, which generic replies ("i don't know.") do
badly. Every hypothesis of every query is scored in one teacher-forced pass; one cut at
max_length competes only when none of its query's hypotheses ended.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from .batching import Batch, collate
from .kernels import layout
from .model import Memory, Seq2Seq, sequence_loss
from .vocab import EOS, NO_CONTEXT, PAD, SOS, UNK, Context, Vocabulary, join_turns, words_within

METHODS = ("greedy", "beam", "sample")
RERANKERS = ("none", "mmi")
NEVER_GENERATED = (PAD, SOS, UNK)
# Decoding with MMI reranking, unless a flag says otherwise: the setting of highest validation
# BLEU among those that meet the reply goals there (top-10 share <= 25%, distinct-2 >= 0.15;
# benchmarks/reply_quality.py) and answer within 100 ms on a 2-core CPU (beam 40's take 131 ms).
# README, "Conversation quality".
MMI_DEFAULTS = {"n_best": 20, "mmi_weight": 0.85, "length_bonus": 0.0}


class DecodingError(ValueError):
    """Settings that cannot decode, said in one line."""


@dataclass(frozen=True)
class DecodeSettings:
    method: str = "greedy"
    max_length: int = 10  # tokens, EOS included
    min_length: int = 1  # tokens before EOS may be produced
    beam_size: int = 5
    length_penalty: float = 0.6  # Wu et al.'s alpha; 0 = raw log-probability
    n_best: int = 1  # hypotheses returned; the beam holds at least this many
    beam_groups: int = 1  # diverse beam search's G; 1 = plain beam search
    diversity_strength: float = 1.0  # penalty per earlier group's beam on the same word
    rerank: str = "none"  # "mmi": reorder the final beams with a backward model
    mmi_weight: float = MMI_DEFAULTS["mmi_weight"]  # lambda: weight of log p(S|T) against log p(T|S)
    length_bonus: float = MMI_DEFAULTS["length_bonus"]  # gamma: added per word of the reply
    no_repeat_ngram: int = 0  # 0 = off
    temperature: float = 1.0
    top_k: int = 0  # 0 = whole vocabulary
    top_p: float = 1.0  # nucleus mass; 1 = whole vocabulary

    def __post_init__(self):
        """Settings that cannot decode are refused here, so a script can say so in one line."""
        if self.method not in METHODS:
            raise DecodingError(f"decoding method must be one of {METHODS}, got {self.method!r}")
        if self.rerank not in RERANKERS:
            raise DecodingError(f"reranker must be one of {RERANKERS}, got {self.rerank!r}")
        if self.rerank != "none" and self.method != "beam":
            raise DecodingError("MMI reranks a beam search's hypotheses: use --decoding beam")
        if self.method == "beam" and self.width % self.beam_groups:
            raise DecodingError(
                f"--beam-groups {self.beam_groups} does not divide the beam of {self.width} (--beam-size, "
                "or --n-best when larger)"
            )
        if not 0.0 <= self.mmi_weight <= 1.0:
            raise DecodingError(f"the MMI weight must be in [0, 1], got {self.mmi_weight}")

    @property
    def width(self) -> int:
        """Beams kept: --beam-size, widened to the n-best list asked for."""
        return max(self.beam_size, self.n_best)


class Replies(NamedTuple):
    tokens: Tensor  # (B, n, L) ids, EOS-terminated, PAD after; n = n_best for beam, else 1
    scores: Tensor  # (B, n) the ranking score: summed log-probabilities (beam: divided by the
    # length penalty; MMI: the reranking score)


class Hypotheses(NamedTuple):
    """The final beams of a beam search, best first by length-normalised log-probability."""

    tokens: Tensor  # (B, K, L) ids; a beam cut at max_length has no EOS
    log_prob: Tensor  # (B, K) log p(T|S), summed over tokens, EOS included (-inf: a dead beam)
    ranked: Tensor  # (B, K) log_prob / length penalty


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


def _sample(scores: Tensor, settings: DecodeSettings, uniform: Tensor) -> Tensor:
    """One token per row from temperature-scaled scores restricted by top-k and top-p: the first
    whose cumulative probability exceeds the row's `uniform` draw (N,) in [0, 1)."""
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
    cumulative = scores.double().softmax(-1).cumsum(-1)
    total = cumulative[:, -1:]
    # strictly below the total, so that the token found has probability > 0
    target = torch.minimum(uniform.double().unsqueeze(1) * total, total.nextafter(torch.zeros_like(total)))
    return torch.searchsorted(cumulative, target, right=True).squeeze(1)


def seeded(seed: int | None) -> torch.Generator | None:
    """A generator seeded once with `seed` (a chat session's, a request's), for sampling_noise;
    None without a seed (torch's global generator)."""
    return None if seed is None else torch.Generator().manual_seed(seed % 2**64)


def sampling_noise(rows: int, max_length: int, generator: torch.Generator | None = None) -> Tensor:
    """The uniforms (rows, max_length) that sampling turns into each row's tokens, one per step,
    from `generator` (a session's or a request's own), else from torch's global one."""
    return torch.rand(rows, max_length, generator=generator)


@contextmanager
def _evaluating(*models: Seq2Seq | None) -> Iterator[None]:
    """Decode in eval mode (no dropout) and hand each model back in the mode it came in."""
    modes = [(m, m.training) for m in models if m is not None]
    for m, _ in modes:
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in modes:
            m.train(mode)


def decode(
    model: Seq2Seq,
    src: Tensor,
    lengths: Tensor,
    settings: DecodeSettings,
    backward: Seq2Seq | None = None,
    noise: Tensor | None = None,
) -> Replies:
    """Replies to a batch of encoded queries (src (B, S) on the model's device); MMI reranking
    needs the `backward` model, p(query | reply); sampling draws from `noise` (B, >= max_length,
    `sampling_noise`), else from torch's global generator."""
    if settings.method == "beam":
        hypotheses = beam_hypotheses(model, src, lengths, settings)
        score = hypotheses.ranked
        if settings.rerank == "mmi":
            if backward is None:
                raise DecodingError("MMI reranking needs a backward model")
            query_given_reply = backward_log_prob(backward, *last_turns(src, lengths), hypotheses.tokens)
            score = mmi_score(hypotheses, query_given_reply, settings.mmi_weight, settings.length_bonus)
        return best(hypotheses.tokens, score, settings.n_best)
    with _evaluating(model):
        memory, hidden = model.encode(src, lengths)
        if settings.method == "sample" and noise is None:
            noise = sampling_noise(src.size(0), settings.max_length)
        return _greedy_or_sample(model, memory, hidden, settings, noise)


def _greedy_or_sample(
    model: Seq2Seq, memory: Memory, hidden: Tensor, settings: DecodeSettings, noise: Tensor | None
) -> Replies:
    batch, device = memory.values.size(0), memory.values.device
    if noise is not None:
        noise = noise.to(device)
    history = torch.empty(batch, 0, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    total = torch.zeros(batch, device=device)
    token = torch.full((batch, 1), SOS, dtype=torch.long, device=device)
    for step in range(settings.max_length):
        logits, hidden, _ = model.decoder(token, hidden, memory)
        scores = next_token_scores(logits[:, -1], history, settings)
        sampled = settings.method == "sample"
        choice = _sample(scores, settings, noise[:, step]) if sampled else scores.argmax(-1)
        total += torch.where(finished, 0.0, scores.gather(1, choice.unsqueeze(1)).squeeze(1))
        choice = choice.masked_fill(finished, PAD)
        history = torch.cat([history, choice.unsqueeze(1)], dim=1)
        finished |= choice == EOS
        if finished.all():
            break
        token = choice.unsqueeze(1)
    return Replies(history.unsqueeze(1), total.unsqueeze(1))


def beam_hypotheses(model: Seq2Seq, src: Tensor, lengths: Tensor, settings: DecodeSettings) -> Hypotheses:
    """Batched beam search over B queries × K beams (in G groups), flattened to B·K rows.

    A finished beam stays in the beam with its score frozen (it can only be extended by PAD, at
    no cost), so all beams of all queries advance together as one tensor.
    """
    with _evaluating(model):
        memory, hidden = model.encode(src, lengths)
        return _beam_search(model, memory, hidden, settings)


def _beam_search(model: Seq2Seq, memory: Memory, hidden: Tensor, settings: DecodeSettings) -> Hypotheses:
    batch, k, device = memory.values.size(0), settings.width, memory.values.device
    groups = settings.beam_groups
    size = k // groups
    expand = torch.arange(batch, device=device).repeat_interleave(k)
    memory = Memory(*(t[expand] for t in memory))
    hidden = hidden[:, expand]
    raw = torch.full((batch, groups, size), float("-inf"), device=device)
    raw[:, :, 0] = 0.0  # at the start only one beam of each group is real
    length = torch.zeros(batch, groups, size, device=device)
    finished = torch.zeros(batch, groups, size, dtype=torch.bool, device=device)
    history = torch.empty(batch * k, 0, dtype=torch.long, device=device)
    token = torch.full((batch * k, 1), SOS, dtype=torch.long, device=device)
    # the row of each group's first beam among the B·K rows
    first_row = (torch.arange(batch, device=device).view(-1, 1, 1) * k
                 + torch.arange(groups, device=device).view(1, -1, 1) * size)  # fmt: skip
    for _ in range(settings.max_length):
        logits, hidden, _ = model.decoder(token, hidden, memory)
        scores = next_token_scores(logits[:, -1], history, settings).view(batch, groups, size, -1)
        vocab_size = scores.size(-1)
        # a finished beam may only continue with PAD, keeping its score
        frozen = torch.full_like(scores[0, 0, 0], float("-inf"))
        frozen[PAD] = 0.0
        scores = torch.where(finished.unsqueeze(-1), frozen, scores)
        candidate_raw = raw.unsqueeze(-1) + scores  # (B, G, K/G, V)
        candidate_length = (length + (~finished).float()).unsqueeze(-1).expand_as(candidate_raw)
        ranked = candidate_raw / length_penalty(candidate_length, settings.length_penalty)
        top = _choose(ranked, settings.diversity_strength)  # (B, G, K/G) into each group's K/G·V
        beam, choice = top // vocab_size, top % vocab_size
        raw = candidate_raw.flatten(2).gather(2, top)
        length = candidate_length.flatten(2).gather(2, top)
        rows = (beam + first_row).view(-1)
        hidden = hidden[:, rows]
        history = torch.cat([history[rows], choice.view(-1, 1)], dim=1)
        # a beam is done at EOS, or dead when nothing allowed was left to extend it with
        finished = finished.gather(2, beam) | (choice == EOS) | raw.isinf()
        if finished.all():
            break
        token = choice.view(-1, 1)
    raw, length = raw.view(batch, k), length.view(batch, k)
    ranked, order = (raw / length_penalty(length, settings.length_penalty)).sort(dim=-1, descending=True)
    rows = (order + torch.arange(batch, device=device).unsqueeze(1) * k).view(-1)
    return Hypotheses(history[rows].view(batch, k, -1), raw.gather(1, order), ranked)


def _choose(ranked: Tensor, diversity_strength: float) -> Tensor:
    """Each group's K/G best candidates (B, G, K/G) among its K/G·V (ranked (B, G, K/G, V)).

    Groups choose in turn; a word chosen at this step by an earlier group's beam costs each
    later group `diversity_strength` (PAD, a finished beam's only continuation, costs nothing).
    """
    batch, groups, size, vocab_size = ranked.shape
    if groups == 1:
        return ranked.flatten(2).topk(size, dim=-1).indices
    chosen = torch.zeros(batch, vocab_size, device=ranked.device)
    picks = []
    for group in range(groups):
        penalised = ranked[:, group] - diversity_strength * chosen.unsqueeze(1)
        top = penalised.flatten(1).topk(size, dim=-1).indices  # (B, K/G)
        words = top % vocab_size
        chosen.scatter_add_(1, words, (words != PAD).float())
        picks.append(top)
    return torch.stack(picks, dim=1)


# Up to this many logits (pairs × query tokens × vocabulary), the backward model scores in one
# padded pass: at chat's batch of one, packing the pairs costs more than the padding it saves.
PADDED_SCORING_LOGITS = 2**24


def last_turns(src: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Each source's last turn (its query, EOS included), left-aligned, and the lengths: what a
    backward model scores, since it learns p(query | reply) from pairs without their context
    (run.directed). Sources without context come back as they are."""
    eos = src == EOS
    turns = eos.sum(1, keepdim=True)
    if int(turns.max()) <= 1:
        return src, lengths
    turn = eos.long().cumsum(1) - eos.long()  # the turn each position belongs to
    keep = (turn == turns - 1) & (src != PAD)
    order = torch.argsort((~keep).int(), dim=1, stable=True)  # the query's positions first, in order
    query = src.gather(1, order).masked_fill(~keep.gather(1, order), PAD)
    query_lengths = keep.sum(1).cpu()
    return query[:, : int(query_lengths.max())], query_lengths


def backward_log_prob(backward: Seq2Seq, src: Tensor, lengths: Tensor, tokens: Tensor) -> Tensor:
    """log p(S | T) (B, K): each query of `src` (B, S) given each of its hypotheses `tokens`
    (B, K, L), under the backward model, in one teacher-forced pass over all B·K pairs.

    A hypothesis cut at max_length gets the EOS the backward model saw ending every source.
    """
    batch, k, _ = tokens.shape
    device = tokens.device
    replies = torch.cat([tokens.flatten(0, 1), tokens.new_full((batch * k, 1), PAD)], dim=1)
    reply_lengths = (replies != PAD).sum(1)
    ended = (replies == EOS).any(1)
    replies.scatter_(1, reply_lengths.unsqueeze(1), torch.where(ended, PAD, EOS).unsqueeze(1))
    reply_lengths = (reply_lengths + (~ended).long()).cpu()
    queries = src.repeat_interleave(k, dim=0)
    with _evaluating(backward):
        if queries.numel() * backward.config.vocab_size <= PADDED_SCORING_LOGITS:
            losses = sequence_loss(backward(replies, reply_lengths, queries), queries, reduction="none")
            return -losses.view(batch, k, -1).sum(-1)
        query_lengths = lengths.cpu().repeat_interleave(k)
        pairs = Batch(
            replies, reply_lengths, queries,
            layout(reply_lengths, replies.size(1)), layout(query_lengths, queries.size(1)),
        ).to(device)  # fmt: skip
        losses, _ = backward.token_losses(pairs)
    row = pairs.tgt_layout.index // queries.size(1)
    total = torch.zeros(batch * k, device=device).index_add_(0, row, losses.float())
    return -total.view(batch, k)


def mmi_score(
    hypotheses: Hypotheses, query_given_reply: Tensor, weight: float, length_bonus: float
) -> Tensor:
    """(1 - weight) log p(T|S) + weight log p(S|T) + length_bonus |T| (B, K), |T| in words.

    -inf for a dead beam, and for a beam cut at max_length while another of its query ended:
    a cut reply is not a sentence, and the length bonus would otherwise favour it."""
    tokens = hypotheses.tokens
    words = ((tokens != PAD) & (tokens != EOS)).sum(-1).float()
    score = (1.0 - weight) * hypotheses.log_prob + weight * query_given_reply + length_bonus * words
    dead = hypotheses.log_prob.isneginf()
    ended = (tokens == EOS).any(-1) & ~dead
    cut = ~ended & ended.any(-1, keepdim=True)
    return score.masked_fill(dead | cut, float("-inf"))


def best(tokens: Tensor, score: Tensor, n: int) -> Replies:
    """The `n` best of each query's hypotheses (B, K, L) by `score` (B, K), best first."""
    top = score.topk(min(n, score.size(1)), dim=-1)
    kept = tokens.gather(1, top.indices.unsqueeze(-1).expand(-1, -1, tokens.size(-1)))
    width = max(int((kept != PAD).sum(-1).max()), 1)  # drop columns that only pad the kept replies
    return Replies(kept[..., :width], top.values)


def reply_batch(
    model: Seq2Seq,
    vocab: Vocabulary,
    queries: list[str],
    settings: DecodeSettings,
    backward: Seq2Seq | None = None,
    context: Context = NO_CONTEXT,
    generator: torch.Generator | None = None,
) -> list[list[str]]:
    """The best reply's tokens for each normalised source (a query, after its earlier turns if
    any), decoded as one batch; `context` is what the model reads of the earlier turns; sampling
    draws from `generator` (a session's, seeded once), else from torch's global one.

    A query is cut to the words the model was trained on (`words_within(max_length)`).
    """
    device = next(model.parameters()).device
    src, lengths = encode_queries(vocab, queries, settings.max_length, device, context)
    noise = (
        sampling_noise(len(queries), settings.max_length, generator) if settings.method == "sample" else None
    )
    replies = decode(model, src, lengths, settings, backward, noise)
    return [vocab.decode(row[0].tolist()) for row in replies.tokens.cpu()]


@dataclass
class Conversation:
    """The turns said so far, as many as `context` reads: what makes a context model's next
    reply follow the conversation (chat.py; export.Bot repeats the rule in TorchScript)."""

    context: Context = NO_CONTEXT
    history: list[str] = field(default_factory=list)  # normalised turns, oldest first

    def reply(
        self,
        model: Seq2Seq,
        vocab: Vocabulary,
        query: str,
        settings: DecodeSettings,
        backward: Seq2Seq | None = None,
        generator: torch.Generator | None = None,
    ) -> list[str]:
        """The reply's tokens to a normalised query after the turns so far; both then join them,
        the query as the model read it (`words_within(max_length)`)."""
        query = " ".join(query.split()[: words_within(settings.max_length)])
        source = join_turns([*self.history, query])
        reply = reply_batch(model, vocab, [source], settings, backward, self.context, generator)[0]
        if self.context.turns:
            self.history = [*self.history, query, " ".join(reply)][-self.context.turns :]
        return reply

    def reset(self) -> None:
        self.history = []


def encode_queries(
    vocab: Vocabulary,
    queries: list[str],
    max_length: int,
    device: torch.device,
    context: Context = NO_CONTEXT,
) -> tuple[Tensor, Tensor]:
    """Normalised sources as the padded ids (B, S) on `device` and lengths (B,) on the CPU that
    `decode` takes, each query cut to the words the model was trained on
    (`words_within(max_length)`), its earlier turns to `context`."""
    keep = words_within(max_length)
    batch = collate([(context.source_ids(vocab, q, keep), []) for q in queries])
    return batch.src.to(device), batch.lengths
