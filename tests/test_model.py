import math

import pytest
import torch
import torch.nn.functional as F

from seq2seq.batching import collate
from seq2seq.checkpoint import build_model, load_checkpoint
from seq2seq.model import ATTENTION_SCORES, Seq2Seq, sequence_loss
from seq2seq.vocab import EOS, PAD, SOS
from tests.helpers import tiny_config, tiny_run

V, H = 30, 16


def make_model(attn="dot", enc=2, dec=2, dropout=0.0, seed=0) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq(
        tiny_config(
            V, hidden_size=H, encoder_layers=enc, decoder_layers=dec, dropout=dropout, attn_model=attn
        )
    ).eval()


def make_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = [5, 2, 7, 1]
    examples = [
        (
            torch.randint(4, V, (n,), generator=g).tolist() + [EOS],
            torch.randint(4, V, (m,), generator=g).tolist() + [EOS],
        )
        for n, m in zip(lengths, [3, 6, 1, 4])
    ]
    return collate(examples)


@pytest.mark.parametrize("attn", ATTENTION_SCORES)
def test_shapes(attn):
    model, batch = make_model(attn), make_batch()
    B, S = batch.src.shape
    outputs, hidden = model.encoder(batch.src, batch.lengths)
    assert outputs.shape == (B, S, H) and hidden.shape == (2, B, H)
    assert model(batch.src, batch.lengths, batch.tgt).shape == (*batch.tgt.shape, V)
    assert model(batch.src, batch.lengths, batch.tgt, teacher_forcing=False).shape == (*batch.tgt.shape, V)


@pytest.mark.parametrize("attn", ATTENTION_SCORES)
def test_attention_weights_cover_real_positions_only(attn):
    model, batch = make_model(attn), make_batch()
    memory, hidden = model.encode(batch.src, batch.lengths)
    _, _, weights = model.decoder(batch.tgt[:, :3], hidden, memory)
    pad = batch.src == PAD
    assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:2]), atol=1e-6)
    assert weights.masked_select(pad.unsqueeze(1).expand_as(weights)).abs().max() == 0
    assert (weights.masked_select(~pad.unsqueeze(1).expand_as(weights)) > 0).all()


@pytest.mark.parametrize("attn", ATTENTION_SCORES)
def test_padding_does_not_change_a_sequence(attn):
    model, batch = make_model(attn), make_batch()
    full = model(batch.src, batch.lengths, batch.tgt)
    for i in range(batch.src.size(0)):
        n, m = int(batch.lengths[i]), int((batch.tgt[i] != PAD).sum())
        alone = model(batch.src[i : i + 1, :n], batch.lengths[i : i + 1], batch.tgt[i : i + 1, :m])
        assert torch.allclose(alone[0], full[i, :m], atol=1e-5)


@pytest.mark.parametrize("attn", ATTENTION_SCORES)
def test_fast_path_equals_step_by_step(attn):
    model, batch = make_model(attn), make_batch()
    fast = model(batch.src, batch.lengths, batch.tgt)
    memory, hidden = model.encode(batch.src, batch.lengths)
    token, steps = torch.full_like(batch.tgt[:, :1], SOS), []
    for t in range(batch.tgt.size(1)):
        logits, hidden, _ = model.decoder(token, hidden, memory)
        steps.append(logits)
        token = batch.tgt[:, t : t + 1]  # feed the gold token, one step at a time
    assert torch.allclose(fast, torch.cat(steps, dim=1), atol=1e-5)


def test_free_running_feeds_back_its_own_argmax():
    model, batch = make_model(), make_batch()
    logits = model(batch.src, batch.lengths, batch.tgt, teacher_forcing=False)
    predicted = logits.argmax(-1)
    replay = model(batch.src, batch.lengths, predicted)  # teacher-forcing its own choices
    assert torch.allclose(logits, replay, atol=1e-5)


def test_bridge_hands_each_decoder_layer_its_own_encoder_layer():
    model, batch = make_model(enc=3, dec=2), make_batch()
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        model.embedding(batch.src), batch.lengths, batch_first=True, enforce_sorted=False
    )
    _, h = torch.nn.GRU.forward(model.encoder.gru, packed)  # (layers * 2, B, H)
    per_layer = [h[2 * layer] + h[2 * layer + 1] for layer in range(3)]  # forward + backward
    _, initial = model.encode(batch.src, batch.lengths)
    assert torch.allclose(initial[0], per_layer[1]) and torch.allclose(initial[1], per_layer[2])

    deeper = make_model(enc=1, dec=3)
    _, initial = deeper.encode(batch.src, batch.lengths)
    assert initial.shape == (3, 4, H) and torch.equal(initial[0], initial[2])


def test_concat_score_parameters_are_initialised():
    model = make_model("concat")
    v = model.decoder.attention.v
    assert torch.isfinite(v).all() and v.abs().max() <= H**-0.5 and v.abs().sum() > 0


def test_loss_matches_hand_computation():
    logits = torch.tensor(
        [[[2.0, 0.0, 1.0, 0.5], [0.0, 1.0, 0.0, 0.0]], [[0.3, 0.3, 3.0, 0.1], [1.0, 1.0, 1.0, 1.0]]]
    )
    target = torch.tensor([[2, 1], [3, PAD]])
    by_hand = []
    for b, t in [(0, 0), (0, 1), (1, 0)]:  # the PAD position is left out
        z = logits[b, t]
        by_hand.append(-(z[target[b, t]].item() - math.log(sum(math.exp(x) for x in z.tolist()))))
    expected = sum(by_hand) / len(by_hand)
    assert sequence_loss(logits, target).item() == pytest.approx(expected, abs=1e-6)
    # the tutorial's masked NLL: -log of the gathered softmax probability, averaged over real tokens
    probs = F.softmax(logits, -1)
    nll = -torch.log(torch.gather(probs, 2, target.unsqueeze(-1)).squeeze(-1))
    assert sequence_loss(logits, target).item() == pytest.approx(nll[target != PAD].mean().item(), abs=1e-6)


def test_bf16_autocast_runs_the_gru_in_bf16_and_trains_fp32_weights():
    model, batch = make_model().train(), make_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs, _ = model.encoder(batch.src, batch.lengths)
        logits = model(batch.src, batch.lengths, batch.tgt)
    assert outputs.dtype == torch.bfloat16
    sequence_loss(logits, batch.tgt).backward()
    grad = model.encoder.gru.weight_hh_l0.grad
    assert grad is not None and grad.dtype == torch.float32 and grad.abs().sum() > 0
    assert model.encoder.gru.weight_hh_l0.dtype == torch.float32
    with torch.no_grad():
        reference = model.eval()(batch.src, batch.lengths, batch.tgt)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(batch.src, batch.lengths, batch.tgt)
    assert (low.float() - reference).abs().max() < 0.1


def test_tied_embeddings_share_one_matrix_through_a_checkpoint(pair_dir, tmp_path):
    untied = Seq2Seq(tiny_config(50, hidden_size=8))
    tied = Seq2Seq(tiny_config(50, hidden_size=8, tie_embeddings=True))
    assert tied.decoder.out.weight is tied.embedding.weight
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(untied) - count(tied) == 50 * 8
    tiny_run(pair_dir, tmp_path, "--iterations", "4", "--tie-embeddings")
    model, _ = build_model(load_checkpoint(tmp_path / "last.pth"))
    assert model.decoder.out.weight is model.embedding.weight
    assert torch.equal(model.decoder.out.weight, model.embedding.weight)


@pytest.mark.parametrize("where", ["input_dropout", "output_dropout"])
def test_extra_dropout_acts_in_training_only(where):
    torch.manual_seed(0)
    model = Seq2Seq(tiny_config(30, **{where: 0.5}))
    src, lengths, tgt = torch.randint(4, 30, (3, 5)), torch.tensor([5, 4, 2]), torch.randint(4, 30, (3, 4))
    model.train()
    assert not torch.equal(model(src, lengths, tgt), model(src, lengths, tgt))
    model.eval()
    assert torch.equal(model(src, lengths, tgt), model(src, lengths, tgt))


def test_label_smoothing_matches_a_hand_computation():
    logits = torch.tensor([[[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 0.4]]])
    target = torch.tensor([[1, PAD]])  # the PAD position does not count
    eps = 0.1
    logp = F.log_softmax(logits[0, 0], dim=-1)
    expected = (1 - eps) * -logp[1] - eps * logp.mean()
    assert sequence_loss(logits, target, label_smoothing=eps).item() == pytest.approx(
        expected.item(), abs=1e-6
    )
    assert sequence_loss(logits, target).item() == pytest.approx(-logp[1].item(), abs=1e-6)
