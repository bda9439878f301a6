"""The packed training path (kernels.py, Seq2Seq.token_losses) against PyTorch's own modules and
the padded reference path, in float64 so that any difference is a bug and not rounding."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2seq import kernels
from seq2seq.batching import collate
from seq2seq.model import ATTENTION_SCORES, GRU, Projection, Seq2Seq, sequence_loss
from seq2seq.vocab import EOS, PAD
from tests.helpers import tiny_config

V, H = 40, 12


def ragged_examples(n: int, seed: int, longest: int = 9) -> list[tuple[list[int], list[int]]]:
    g = torch.Generator().manual_seed(seed)

    def sentence() -> list[int]:
        length = int(torch.randint(0, longest, (), generator=g))
        return torch.randint(4, V, (length,), generator=g).tolist() + [EOS]

    return [(sentence(), sentence()) for _ in range(n)]


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_gru_equals_nn_gru_forward_and_backward(bidirectional):
    torch.manual_seed(0)
    gru = GRU(H, H, 2, bidirectional=bidirectional, batch_first=True).double()
    lengths = torch.tensor([3, 6, 1, 6, 2, 5, 4])
    steps, directions = int(lengths.max()), 2 if bidirectional else 1
    x = torch.randn(len(lengths), steps, H, dtype=torch.double, requires_grad=True)
    h0 = torch.randn(2 * directions, len(lengths), H, dtype=torch.double, requires_grad=True)
    w_out, w_h = (
        torch.randn(len(lengths), steps, directions * H),
        torch.randn(2 * directions, len(lengths), H),
    )

    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, h_n = gru(packed, h0)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=steps)
    ((out * w_out).sum() + (h_n * w_h).sum()).backward()
    expected = {"x": x.grad.clone(), "h0": h0.grad.clone(), **grads(gru)}
    x.grad = h0.grad = None
    gru.zero_grad()

    lay = kernels.layout(lengths, steps)
    rows, h_n2 = gru(kernels.Packed(kernels.pack(x, lay), lay), h0)
    out2 = kernels.unpack(rows.data, lay, steps)
    assert rows.data.size(0) == lay.rows and lay.rows % kernels.ROW_GRAIN == 0
    assert (rows.data[lay.tokens :] == 0).all()
    assert torch.allclose(out2, out, atol=1e-12) and torch.allclose(h_n2, h_n, atol=1e-12)
    ((out2 * w_out).sum() + (h_n2 * w_h).sum()).backward()
    for name, grad in {"x": x.grad, "h0": h0.grad, **grads(gru)}.items():
        assert torch.allclose(grad, expected[name], atol=1e-10), name


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_linear_cross_entropy_equals_cross_entropy_on_logits(smoothing):
    torch.manual_seed(0)
    linear = Projection(H, V).double()
    x = torch.randn(kernels.ROW_GRAIN, H, dtype=torch.double, requires_grad=True)
    target = torch.randint(0, V, (kernels.ROW_GRAIN,))
    weights = torch.randn(kernels.ROW_GRAIN, dtype=torch.double)
    expected_loss = F.cross_entropy(linear(x), target, reduction="none", label_smoothing=smoothing)
    (expected_loss * weights).sum().backward()
    expected = {"x": x.grad.clone(), **grads(linear)}
    x.grad = None
    linear.zero_grad()

    loss, hits = kernels.linear_cross_entropy(x, linear, target, smoothing, hits=True)  # two chunks
    assert torch.allclose(loss, expected_loss, atol=1e-12)
    assert torch.equal(hits, linear(x).argmax(1) == target)
    (loss * weights).sum().backward()
    for name, grad in {"x": x.grad, **grads(linear)}.items():
        assert torch.allclose(grad, expected[name], atol=1e-12), name
    assert kernels.linear_cross_entropy(x, linear, target)[1].numel() == 0  # no hits unless asked


@pytest.mark.parametrize("attn", ATTENTION_SCORES)
@pytest.mark.parametrize("tie", [False, True])
def test_token_losses_equal_the_padded_path_with_its_gradients(attn, tie):
    torch.manual_seed(0)
    model = (
        Seq2Seq(
            tiny_config(
                V, hidden_size=H, encoder_layers=2, decoder_layers=3, attn_model=attn, tie_embeddings=tie
            )
        )
        .double()
        .train()
    )
    batch = collate(ragged_examples(13, seed=1))
    logits = model(batch.src, batch.lengths, batch.tgt)
    flat = logits.reshape(-1, V)  # sequence_loss works in fp32: the reference here stays in fp64
    expected_loss = F.cross_entropy(
        flat, batch.tgt.flatten(), ignore_index=PAD, reduction="sum", label_smoothing=0.1
    )
    expected_hits = int(((logits.argmax(-1) == batch.tgt) & (batch.tgt != PAD)).sum())
    expected_loss.backward()
    expected = grads(model)
    model.zero_grad()

    losses, hits = model.token_losses(batch, label_smoothing=0.1, hits=True)
    assert losses.shape == (batch.n_tokens,) == (int((batch.tgt != PAD).sum()),)
    assert losses.sum().item() == pytest.approx(expected_loss.item(), rel=1e-12)
    assert int(hits.sum()) == expected_hits
    losses.sum().backward()
    for name, grad in grads(model).items():
        assert torch.allclose(grad, expected[name], atol=1e-12), name


def test_free_running_token_losses_equal_sequence_loss():
    torch.manual_seed(0)
    model = Seq2Seq(tiny_config(V, hidden_size=H)).eval()
    batch = collate(ragged_examples(6, seed=2))
    with torch.no_grad():
        losses, hits = model.token_losses(batch, teacher_forcing=False, hits=True)
        logits = model(batch.src, batch.lengths, batch.tgt, teacher_forcing=False)
    assert losses.mean().item() == pytest.approx(sequence_loss(logits, batch.tgt).item(), rel=1e-6)
    assert int(hits.sum()) == int(((logits.argmax(-1) == batch.tgt) & (batch.tgt != PAD)).sum())


def test_bf16_token_losses_stay_close_to_fp32_and_train_fp32_weights():
    torch.manual_seed(0)
    model = Seq2Seq(
        tiny_config(V, hidden_size=H, encoder_layers=2, decoder_layers=2, tie_embeddings=True)
    ).train()
    batch = collate(ragged_examples(32, seed=3))
    reference, _ = model.token_losses(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, _ = model.token_losses(batch)
    assert low.dtype == torch.float32  # losses are reduced in fp32 whatever the matrix products ran in
    assert low.mean().item() == pytest.approx(reference.mean().item(), rel=0.01)
    low.sum().backward()
    weight = model.encoder.gru.weight_hh_l0_reverse
    assert weight.dtype == weight.grad.dtype == torch.float32 and weight.grad.abs().sum() > 0


def test_pack_and_unpack_round_trip_and_empty_sides():
    lengths = torch.tensor([2, 0, 3])
    lay = kernels.layout(lengths, 3)
    assert lay.batch_sizes == [2, 2, 1] and lay.tokens == 5 and lay.rows == kernels.ROW_GRAIN
    grid = torch.arange(9.0).view(3, 3) * (torch.arange(3) < lengths.unsqueeze(1))
    rows = kernels.pack(grid, lay)
    assert rows[:5].tolist() == [6.0, 0.0, 7.0, 1.0, 8.0] and (rows[5:] == 0).all()  # longest first
    assert torch.equal(kernels.unpack(rows, lay, 3), grid)
    empty = kernels.layout(torch.tensor([0, 0]), 0)
    assert empty.batch_sizes == [] and empty.tokens == 0 and empty.rows == 0


def test_dropout_keeps_the_expected_share_and_the_mean():
    torch.manual_seed(0)
    x = torch.ones(200_000)
    dropped = kernels.dropout(x, 0.3, training=True)
    kept = dropped != 0
    assert kept.float().mean().item() == pytest.approx(0.7, abs=0.005)
    assert dropped[kept].unique().tolist() == pytest.approx([65536 / (65536 - round(0.3 * 65536))])
    assert dropped.mean().item() == pytest.approx(1.0, abs=0.01)
    assert kernels.dropout(x, 0.3, training=False) is x and kernels.dropout(x, 0.0, training=True) is x


def test_dropout_scales_kept_values_as_selecting_them_would_and_masks_the_gradient():
    torch.manual_seed(1)
    x = torch.randn(1000, 8, dtype=torch.bfloat16, requires_grad=True)
    y = kernels.dropout(x, 0.3, training=True)
    kept, scale = y != 0, 65536 / (65536 - round(0.3 * 65536))
    assert torch.equal(y, torch.where(kept, x.detach() * scale, 0.0))  # bf16 rounding as x * scale
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, torch.where(kept, torch.full_like(x, scale), 0.0))
