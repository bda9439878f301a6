"""Diverse beam search and MMI reranking with a backward model."""

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from seq2seq import decoding
from seq2seq.batching import collate
from seq2seq.decoding import (
    DecodeSettings,
    DecodingError,
    backward_log_prob,
    beam_hypotheses,
    decode,
    length_penalty,
    next_token_scores,
)
from seq2seq.model import Seq2Seq, sequence_loss
from seq2seq.vocab import EOS, PAD, SOS
from tests.helpers import A, B, C, MarkovModel, queries, random_model, random_queries, tiny_config


class FirstWordBackward(nn.Module):
    """A stand-in backward model: log p(query | reply) is log q[the reply's first word],
    whatever the query."""

    config = SimpleNamespace(vocab_size=2**40)  # too many logits for a padded pass: token_losses scores

    def __init__(self, q: dict[int, float]):
        super().__init__()
        self.q = q

    def token_losses(self, batch):
        lay = batch.tgt_layout
        steps = batch.tgt.size(1)
        first = batch.src[:, 0][lay.index // steps]
        loss = torch.tensor([-math.log(self.q[int(w)]) for w in first])
        return torch.where(lay.index % steps == 0, loss, 0.0), None


# Forward: "a." 0.5, "b." 0.3, "c a." 0.2; backward: q(query | reply starting with a/b/c).
FORWARD = MarkovModel({SOS: {A: 0.5, B: 0.3, C: 0.2}, A: {EOS: 1.0}, B: {EOS: 1.0}, C: {A: 1.0}})
BACKWARD = FirstWordBackward({A: 0.01, B: 0.5, C: 0.45})


@pytest.mark.parametrize(
    "weight, bonus, best",
    [
        (0.0, 0.0, [A, EOS]),  # forward score alone: the likeliest reply
        (0.5, 0.0, [B, EOS]),  # 0.5 ln .3 + 0.5 ln .5 beats 0.5 ln .5 + 0.5 ln .01
        (0.5, 0.3, [C, A, EOS]),  # the two-word reply gains 0.6, the others 0.3
        (1.0, 0.0, [B, EOS]),  # backward score alone
    ],
)
def test_mmi_picks_the_hand_computed_best(weight, bonus, best):
    forward = {(A,): math.log(0.5), (B,): math.log(0.3), (C, A): math.log(0.2)}
    backward = {A: math.log(0.01), B: math.log(0.5), C: math.log(0.45)}
    hand = {
        words: (1 - weight) * f + weight * backward[words[0]] + bonus * len(words)
        for words, f in forward.items()
    }
    settings = DecodeSettings(
        "beam", beam_size=3, length_penalty=0.0, rerank="mmi", mmi_weight=weight, length_bonus=bonus, n_best=3
    )
    out = decode(FORWARD, queries().src, queries().lengths, settings, BACKWARD)
    assert out.tokens[0, 0, : len(best)].tolist() == best
    expected = sorted(hand.values(), reverse=True)
    assert out.scores[0].tolist() == pytest.approx(expected, abs=1e-5)


def test_a_reply_cut_at_max_length_loses_to_one_that_ended():
    # "c b b b ..." never ends and has the most words; the bonus would make it win
    forward = MarkovModel({SOS: {A: 0.5, C: 0.5}, A: {EOS: 1.0}, C: {B: 1.0}, B: {B: 1.0}})
    settings = DecodeSettings(
        "beam", 6, beam_size=2, n_best=2, length_penalty=0.0, rerank="mmi", length_bonus=5.0
    )
    out = decode(forward, queries().src, queries().lengths, settings, FirstWordBackward({A: 0.5, C: 0.5}))
    assert out.tokens[0, 0].tolist()[:2] == [A, EOS]
    assert out.scores[0, 1] == float("-inf")
    unended = replace(settings, min_length=6)  # no reply can end: the cut ones compete
    out = decode(forward, queries().src, queries().lengths, unended, FirstWordBackward({A: 0.5, C: 0.5}))
    assert out.tokens[0, 0].tolist() == [C, B, B, B, B, B] and out.scores.isfinite().all()


def test_mmi_needs_a_backward_model():
    settings = DecodeSettings("beam", rerank="mmi")
    with pytest.raises(ValueError, match="backward model"):
        decode(FORWARD, queries().src, queries().lengths, settings)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(method="greedy", rerank="mmi"), "use --decoding beam"),
        (dict(method="beam", beam_size=5, beam_groups=2), "does not divide"),
        (dict(method="beam", beam_size=3, beam_groups=2, rerank="mmi"), "does not divide"),
        (dict(method="beam", rerank="mmi", mmi_weight=1.5), r"\[0, 1\]"),
        (dict(rerank="antilm"), "reranker"),
    ],
)
def test_settings_that_cannot_decode_are_refused(settings, message):
    with pytest.raises(DecodingError, match=message):
        DecodeSettings(**settings)


def test_n_best_widens_the_beam():
    settings = DecodeSettings("beam", beam_size=3, n_best=10)
    assert settings.width == 10
    out = decode(random_model(), random_queries(2).src, random_queries(2).lengths, settings)
    assert out.tokens.shape[:2] == (2, 10)


def tiny_pair(seed: int = 0) -> tuple[Seq2Seq, Seq2Seq]:
    torch.manual_seed(seed)
    return (
        Seq2Seq(tiny_config(40, decoder_layers=2, attn_model="general")).eval(),
        Seq2Seq(tiny_config(40, attn_model="dot")).eval(),
    )


@pytest.mark.parametrize("padded", [True, False])
def test_backward_scores_batched_equal_one_at_a_time(padded, monkeypatch):
    if not padded:  # the packed pass that large batches take
        monkeypatch.setattr(decoding, "PADDED_SCORING_LOGITS", 0)
    forward, backward = tiny_pair()
    batch = random_queries(5)
    # max_length 4 cuts some hypotheses before EOS: those get the EOS every source ends in
    hypotheses = beam_hypotheses(forward, batch.src, batch.lengths, DecodeSettings("beam", 4, beam_size=4))
    together = backward_log_prob(backward, batch.src, batch.lengths, hypotheses.tokens)
    assert together.shape == (5, 4)
    cut = 0
    for i in range(5):
        query = batch.src[i, : int(batch.lengths[i])].tolist()
        for j in range(4):
            reply = [t for t in hypotheses.tokens[i, j].tolist() if t != PAD]
            if reply[-1] != EOS:
                reply.append(EOS)
                cut += 1
            alone = collate([(reply, query)])
            logits = backward(alone.src, alone.lengths, alone.tgt)
            expected = -sequence_loss(logits, alone.tgt, reduction="sum")
            assert together[i, j].item() == pytest.approx(expected.item(), abs=1e-4)
    assert cut > 0  # the case is covered


def reference_diverse_beam(model, src, settings):
    """Diverse beam search for one query, one hypothesis at a time, straight from the paper."""
    memory, hidden = model.encode(src, torch.tensor([src.size(1)]))
    size = settings.width // settings.beam_groups

    def rank(h):
        return h["raw"] / float(length_penalty(torch.tensor(h["length"]), settings.length_penalty))

    start = {"tokens": [], "raw": 0.0, "length": 0, "done": False, "hidden": hidden}
    groups = [
        [start] + [dict(start, raw=-math.inf) for _ in range(size - 1)] for _ in range(settings.beam_groups)
    ]
    for _ in range(settings.max_length):
        chosen = torch.zeros(model.config.vocab_size)
        for g, beams in enumerate(groups):
            candidates = []
            for h in beams:
                if h["done"]:
                    candidates.append((rank(h), dict(h, tokens=h["tokens"] + [PAD])))
                    continue
                token = torch.tensor([[h["tokens"][-1] if h["tokens"] else SOS]])
                logits, new_hidden, _ = model.decoder(token, h["hidden"], memory)
                scores = next_token_scores(
                    logits[:, -1], torch.tensor([h["tokens"]], dtype=torch.long), settings
                )[0]
                for word in range(len(scores)):
                    raw = h["raw"] + float(scores[word])
                    new = {"tokens": h["tokens"] + [word], "raw": raw, "length": h["length"] + 1,
                           "done": word == EOS or math.isinf(raw), "hidden": new_hidden}  # fmt: skip
                    candidates.append((rank(new) - settings.diversity_strength * float(chosen[word]), new))
            candidates.sort(key=lambda c: c[0], reverse=True)
            groups[g] = [h for _, h in candidates[:size]]
            for h in groups[g]:
                if h["tokens"][-1] != PAD:
                    chosen[h["tokens"][-1]] += 1
        if all(h["done"] for beams in groups for h in beams):
            break
    finals = sorted((h for beams in groups for h in beams), key=rank, reverse=True)
    return [([t for t in h["tokens"] if t != PAD], h["raw"]) for h in finals]


@pytest.mark.parametrize("groups, strength", [(1, 0.5), (2, 0.0), (2, 0.7), (4, 3.0)])
def test_beam_search_equals_the_one_at_a_time_reference(groups, strength):
    model = random_model(seed=3)
    batch = random_queries(3, seed=1)
    settings = DecodeSettings("beam", 6, beam_size=4, beam_groups=groups, diversity_strength=strength)
    together = beam_hypotheses(model, batch.src, batch.lengths, settings)
    with torch.no_grad():
        for i in range(3):
            expected = reference_diverse_beam(model, batch.src[i : i + 1, : int(batch.lengths[i])], settings)
            got = [[t for t in row if t != PAD] for row in together.tokens[i].tolist()]
            assert got == [tokens for tokens, _ in expected]
            assert together.log_prob[i].tolist() == pytest.approx([raw for _, raw in expected], abs=1e-4)


def test_groups_start_with_different_words():
    model, batch = random_model(seed=2), random_queries(4)
    plain = beam_hypotheses(model, batch.src, batch.lengths, DecodeSettings("beam", 6, beam_size=4))
    diverse = beam_hypotheses(
        model,
        batch.src,
        batch.lengths,
        DecodeSettings("beam", 6, beam_size=4, beam_groups=4, diversity_strength=100),
    )
    for i in range(4):
        assert len(set(diverse.tokens[i, :, 0].tolist())) == 4  # a strong penalty: four first words
    assert any(len(set(plain.tokens[i, :, 0].tolist())) < 4 for i in range(4))  # which plain beams repeat


def test_reranked_batches_equal_one_at_a_time():
    forward, backward = tiny_pair(seed=4)
    batch = random_queries(6, seed=2)
    settings = DecodeSettings(
        "beam", 8, beam_size=4, beam_groups=2, rerank="mmi", mmi_weight=0.6, length_bonus=0.2
    )
    together = decode(forward, batch.src, batch.lengths, settings, backward)
    for i in range(6):
        n = int(batch.lengths[i])
        alone = decode(forward, batch.src[i : i + 1, :n], batch.lengths[i : i + 1], settings, backward)
        width = alone.tokens.size(-1)
        assert torch.equal(alone.tokens[0], together.tokens[i, :, :width])
        assert together.scores[i].tolist() == pytest.approx(alone.scores[0].tolist(), abs=1e-4)


def test_reranking_never_produces_special_tokens():
    forward, backward = tiny_pair(seed=5)
    batch = random_queries(8, seed=3)
    settings = DecodeSettings("beam", 8, beam_size=6, beam_groups=3, rerank="mmi", n_best=6)
    out = decode(forward, batch.src, batch.lengths, settings, backward)
    for row in out.tokens.flatten(0, 1).tolist():
        words = row[: row.index(EOS)] if EOS in row else [t for t in row if t != PAD]
        assert words and all(t >= 4 for t in words)


def test_decoding_leaves_the_models_in_their_mode():
    forward, backward = tiny_pair()
    forward.train()
    backward.train()
    batch = random_queries(2)
    decode(forward, batch.src, batch.lengths, DecodeSettings("beam", rerank="mmi"), backward)
    assert forward.training and backward.training
