import math

import pytest
import torch

from seq2seq.decoding import DecodeSettings, decode, sampling_noise
from seq2seq.vocab import EOS, PAD, SOS
from tests.helpers import A, B, C, MarkovModel, queries, random_model, random_queries


def run(model, batch, seed=None, **settings):
    """decode() with the settings given; a `seed` seeds the sampling noise of the whole batch."""
    settings = DecodeSettings(**settings)
    noise = None
    if seed is not None:
        noise = sampling_noise(batch.src.size(0), settings.max_length, torch.Generator().manual_seed(seed))
    return decode(model, batch.src, batch.lengths, settings, noise=noise)


def test_greedy_equals_beam_of_one():
    model, batch = random_model(), random_queries()
    greedy = run(model, batch, method="greedy", max_length=12)
    beam = run(model, batch, method="beam", beam_size=1, max_length=12, length_penalty=1.0)
    width = min(greedy.tokens.size(-1), beam.tokens.size(-1))
    assert torch.equal(greedy.tokens[..., :width], beam.tokens[..., :width])


def test_beam_finds_a_likelier_reply_than_greedy():
    # greedy takes A (0.55) and then has only weak continuations; B then EOS is likelier overall
    model = MarkovModel(
        {SOS: {A: 0.55, B: 0.45}, A: {C: 0.34, B: 0.33, A: 0.33}, B: {EOS: 1.0}, C: {EOS: 1.0}}
    )
    greedy = run(model, queries(), method="greedy")
    beam = run(model, queries(), method="beam", beam_size=2, length_penalty=0.0)
    assert greedy.tokens[0, 0, :3].tolist() == [A, C, EOS]
    assert beam.tokens[0, 0, :2].tolist() == [B, EOS]
    assert beam.scores[0, 0] > greedy.scores[0, 0]
    assert beam.scores[0, 0].item() == pytest.approx(math.log(0.45), abs=1e-5)


def test_n_best_are_sorted_and_distinct():
    model = MarkovModel({SOS: {A: 0.5, B: 0.3, C: 0.2}, A: {EOS: 1.0}, B: {EOS: 1.0}, C: {EOS: 1.0}})
    beam = run(model, queries(2), method="beam", beam_size=3, n_best=3, length_penalty=0.0)
    assert beam.tokens.shape[:2] == (2, 3)
    assert [row[0] for row in beam.tokens[0].tolist()] == [A, B, C]
    assert (beam.scores[:, :-1] >= beam.scores[:, 1:]).all()


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_no_repeat_ngram_blocks_repeats(method):
    model = MarkovModel({SOS: {A: 0.9, B: 0.1}, A: {A: 0.9, B: 0.1}, B: {A: 0.9, B: 0.1}})
    free = run(model, queries(), method=method, max_length=8)
    assert free.tokens[0, 0].tolist().count(A) >= 6  # the model loves repeating A
    blocked = run(model, queries(), method=method, max_length=8, no_repeat_ngram=2)
    tokens = blocked.tokens[0, 0].tolist()
    bigrams = list(zip(tokens, tokens[1:]))
    assert len(bigrams) == len(set(bigrams)), tokens


def test_stops_at_eos_and_pads_after():
    model = MarkovModel({SOS: {A: 1.0}, A: {EOS: 1.0}})
    out = run(model, queries(3), method="greedy", max_length=50)
    assert out.tokens.shape == (3, 1, 2)  # stopped as soon as every row produced EOS
    mixed = random_model()
    result = run(mixed, random_queries(8), method="greedy", max_length=15)
    for row in result.tokens[:, 0].tolist():
        if EOS in row:
            assert all(t == PAD for t in row[row.index(EOS) + 1 :])


def test_min_length_holds_eos_back():
    model = MarkovModel({SOS: {EOS: 0.9, A: 0.1}, A: {EOS: 0.9, B: 0.1}, B: {EOS: 0.9, A: 0.1}})
    assert run(model, queries(), method="greedy").tokens[0, 0].tolist() == [A, EOS]  # EOS at once is barred
    out = run(model, queries(), method="greedy", min_length=3)
    assert out.tokens[0, 0].tolist()[:4] == [A, B, A, EOS]


def test_special_tokens_are_never_produced():
    model = MarkovModel({SOS: {3: 0.9, A: 0.1}, A: {PAD: 0.9, EOS: 0.1}})  # 3 is UNK
    for method in ("greedy", "beam", "sample"):
        tokens = run(model, queries(), method=method, seed=0).tokens[0, 0].tolist()
        assert tokens == [A, EOS], method


def test_top_k_one_sampling_equals_greedy():
    model, batch = random_model(), random_queries()
    greedy = run(model, batch, method="greedy", max_length=12)
    sampled = run(model, batch, method="sample", top_k=1, temperature=0.7, seed=1, max_length=12)
    assert torch.equal(greedy.tokens, sampled.tokens)
    tiny_nucleus = run(model, batch, method="sample", top_p=1e-6, seed=2, max_length=12)
    assert torch.equal(greedy.tokens, tiny_nucleus.tokens)


def test_sampling_is_reproducible_with_a_seed():
    model, batch = random_model(), random_queries(16)
    first = run(model, batch, method="sample", temperature=1.5, seed=7, max_length=12)
    again = run(model, batch, method="sample", temperature=1.5, seed=7, max_length=12)
    other = run(model, batch, method="sample", temperature=1.5, seed=8, max_length=12)
    assert torch.equal(first.tokens, again.tokens)
    assert not torch.equal(first.tokens, other.tokens)


def test_top_k_restricts_to_the_k_likeliest():
    model = MarkovModel({SOS: {A: 0.4, B: 0.35, C: 0.25}, A: {EOS: 1.0}, B: {EOS: 1.0}, C: {EOS: 1.0}})
    firsts = {
        run(model, queries(), method="sample", top_k=2, seed=s).tokens[0, 0, 0].item() for s in range(40)
    }
    assert firsts == {A, B}


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_batched_equals_one_at_a_time(method):
    model, batch = random_model(), random_queries(6)
    together = run(model, batch, method=method, max_length=10, beam_size=3)
    for i in range(6):
        n = int(batch.lengths[i])
        alone = decode(
            model, batch.src[i : i + 1, :n], batch.lengths[i : i + 1], DecodeSettings(method, 10, beam_size=3)
        )
        width = alone.tokens.size(-1)
        assert torch.equal(alone.tokens[0], together.tokens[i, :, :width])
        assert (together.tokens[i, :, width:] == PAD).all()


def test_sampling_takes_the_token_where_the_cumulative_probability_passes_the_draw():
    model = MarkovModel({SOS: {A: 0.4, B: 0.35, C: 0.25}, A: {EOS: 1.0}, B: {EOS: 1.0}, C: {EOS: 1.0}})
    draws = torch.tensor([0.0, 0.39, 0.41, 0.74, 0.76, 0.999999])
    noise = torch.stack([draws, torch.zeros(6)], dim=1)  # the second step draws EOS, the only choice
    settings = DecodeSettings("sample", max_length=2)
    tokens = decode(model, queries(6).src, queries(6).lengths, settings, noise=noise).tokens[:, 0, 0]
    assert tokens.tolist() == [A, A, B, B, C, C]


def test_sampling_draws_as_often_as_the_probabilities_say():
    model = MarkovModel({SOS: {A: 0.5, B: 0.3, C: 0.2}, A: {EOS: 1.0}, B: {EOS: 1.0}, C: {EOS: 1.0}})
    batch = queries(4000)
    torch.manual_seed(0)
    firsts = decode(model, batch.src, batch.lengths, DecodeSettings("sample", max_length=2)).tokens[:, 0, 0]
    shares = [(firsts == t).float().mean().item() for t in (A, B, C)]
    assert shares == pytest.approx([0.5, 0.3, 0.2], abs=0.03)  # 4.5 standard errors at most


def test_a_sampled_reply_depends_on_its_own_draws_not_on_its_batch():
    model, batch = random_model(), random_queries(6)
    settings = DecodeSettings("sample", max_length=10, temperature=1.5)
    noise = sampling_noise(6, 10, torch.Generator().manual_seed(3))
    together = decode(model, batch.src, batch.lengths, settings, noise=noise).tokens
    for i in (0, 4):
        n = int(batch.lengths[i])
        alone = decode(
            model, batch.src[i : i + 1, :n], batch.lengths[i : i + 1], settings, noise=noise[i : i + 1]
        )
        width = alone.tokens.size(-1)
        assert torch.equal(alone.tokens[0], together[i, :, :width])
