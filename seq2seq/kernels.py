"""Training kernels in plain PyTorch: a GRU over packed sequences with a hand-written backward,
the output projection fused with cross-entropy, and a cheaper dropout mask for the CPU.

Why: on a CPU, autograd through `nn.GRU` records a dozen small ops per time step, and its
backward accumulates each weight's gradient step by step, fills and copies a zero tensor for
every slice of a packed batch, and so spends more time on bookkeeping than on arithmetic. Here
each layer's input projection is one matrix product over all real positions, the recurrence
saves its gates, and the backward walks the steps with one matrix product each, leaving the
weight gradients to one large product after the loop (the scheme cuDNN uses). Padding costs
nothing: a packed batch holds only real positions, and the loss is computed only there.

A packed batch is time-major: step t holds the first `batch_sizes[t]` sequences, the rows being
sorted by decreasing length (as `pack_padded_sequence` lays them out). Its row count is rounded
up to a multiple of ROW_GRAIN with zero rows at the end: oneDNN, which runs bf16 matrix products
on the CPU, compiles a kernel for every new shape (2 to 40 ms each, measured here), and the number
of real tokens changes with every batch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

ROW_GRAIN = 128


class Layout(NamedTuple):
    """Where the real positions of a padded (B, T) batch go in its packed form."""

    batch_sizes: list[int]  # sequences still running at each step
    sorted_indices: Tensor  # (B,) batch row of each packed column, longest first
    unsorted_indices: Tensor  # (B,) inverse permutation
    index: Tensor  # (N,) position b * T + t in the padded batch of each real packed row
    rows: int  # N rounded up to a multiple of ROW_GRAIN: rows N and after are zeros

    @property
    def batch(self) -> int:
        return len(self.sorted_indices)

    @property
    def tokens(self) -> int:
        return len(self.index)

    def to(self, device: torch.device | str) -> Layout:
        return self._replace(
            sorted_indices=self.sorted_indices.to(device),
            unsorted_indices=self.unsorted_indices.to(device),
            index=self.index.to(device),
        )


class Packed(NamedTuple):
    """Rows of a packed batch (rows, ...) with their layout: what `gru` reads and writes."""

    data: Tensor
    layout: Layout


def _steps_and_columns(batch_sizes: Tensor) -> tuple[Tensor, Tensor]:
    """For each real packed row, its time step and its place among that step's sequences."""
    step = torch.repeat_interleave(torch.arange(len(batch_sizes)), batch_sizes)
    return step, torch.cat(
        [torch.arange(n) for n in batch_sizes.tolist()] or [torch.zeros(0, dtype=torch.long)]
    )


def layout(lengths: Tensor, steps: int) -> Layout:
    """The packed layout of sequences with these lengths in a (B, steps) grid. The recurrence
    needs every length to be at least 1 (an empty side, as in a batch of queries alone, has no
    positions to run over)."""
    lengths = lengths.cpu()
    order = torch.argsort(lengths, descending=True, stable=True)
    batch_sizes = (lengths.unsqueeze(0) > torch.arange(steps).unsqueeze(1)).sum(1)
    batch_sizes = batch_sizes[batch_sizes > 0]
    step, column = _steps_and_columns(batch_sizes)
    tokens = int(batch_sizes.sum())
    rows = -(-tokens // ROW_GRAIN) * ROW_GRAIN
    return Layout(batch_sizes.tolist(), order, torch.argsort(order), order[column] * steps + step, rows)


def _pad_rows(data: Tensor, rows: int) -> Tensor:
    return (
        data
        if data.size(0) == rows
        else torch.cat([data, data.new_zeros(rows - data.size(0), *data.shape[1:])])
    )


def pack(padded: Tensor, lay: Layout) -> Tensor:
    """(B, T, ...) -> (rows, ...): the real positions, time-major, then zero rows (PAD for ids)."""
    return _pad_rows(padded.flatten(0, 1)[lay.index], lay.rows)


def unpack(data: Tensor, lay: Layout, steps: int) -> Tensor:
    """(rows, ...) -> (B, T, ...) with zeros at padded positions; the inverse of `pack`."""
    out = data.new_zeros((lay.batch * steps, *data.shape[1:]))
    return out.index_copy(0, lay.index, data[: lay.tokens]).view(lay.batch, steps, *data.shape[1:])


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout with a mask drawn 16 bits an element from 64-bit draws: on a CPU,
    F.dropout's Bernoulli sampling takes four times as long. The drop rate is p rounded to a
    multiple of 2^-16, and kept values are scaled by the inverse of that rate's keep rate.
    The mask multiplies rather than selects: torch.where on a CPU takes about four times as
    long as a product with the boolean mask, forward and again in its backward."""
    dropped = round(p * 65536)
    if not training or dropped == 0:
        return x
    if dropped == 65536:
        return x * 0.0
    words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
    keep = words.view(torch.int16)[: x.numel()].view(x.shape) >= dropped - 32768
    return x.mul(keep).mul_(65536 / (65536 - dropped))


def _previous_rows(batch_sizes: list[int], reverse: bool) -> Tensor:
    """For each real packed row, the row of cat([h0, outputs]) holding its previous hidden state."""
    sizes = torch.tensor(batch_sizes)
    offsets = torch.cumsum(sizes, 0) - sizes
    step, column = _steps_and_columns(sizes)
    if not reverse:  # step t continues step t - 1 (every running sequence ran then too)
        starts = step == 0
        neighbour = offsets[(step - 1).clamp(min=0)]
    else:  # step t continues step t + 1, if the sequence had reached it
        later = (step + 1).clamp(max=len(sizes) - 1)
        starts = (step == len(sizes) - 1) | (column >= sizes[later])
        neighbour = offsets[later]
    return torch.where(starts, column, batch_sizes[0] + neighbour + column)


class _Recurrence(torch.autograd.Function):
    """One GRU layer in one direction over packed input projections W_ih x (rows, 3H).

    PyTorch's gate order and equations: r, z = sigmoid(gi_rz + gh_rz), n = tanh(gi_n + r * gh_n)
    with gi = W_ih x + b_ih, gh = W_hh h + b_hh, and h' = (1 - z) n + z h = lerp(n, h, z). Returns
    every step's h' (rows, H; zero past the real rows) and each sequence's last one (B, H), both
    in packed order. Biases are added by broadcasting rather than by addmm, which on a CPU first
    copies its broadcast bias into the output, costing more than the product at these sizes.
    """

    @staticmethod
    def forward(ctx, wx: Tensor, h0: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, batch_sizes: list[int],
                reverse: bool):  # fmt: skip
        offsets = [0]
        for n in batch_sizes:
            offsets.append(offsets[-1] + n)
        tokens, hidden = offsets[-1], h0.size(1)
        # r and z take both biases at once; n's recurrent bias stays inside r * (W_hn h + b_hn)
        gi = wx[:tokens] + torch.cat([b_ih[: 2 * hidden] + b_hh[: 2 * hidden], b_ih[2 * hidden :]]).to(
            wx.dtype
        )
        b_hn = b_hh[2 * hidden :].to(wx.dtype)
        gh = gi.new_empty(tokens, 3 * hidden)
        rz = gi.new_empty(tokens, 2 * hidden)
        new = gi.new_empty(tokens, hidden)
        out = gi.new_empty(wx.size(0), hidden)
        out[tokens:] = 0
        h = h0
        for t in range(len(batch_sizes) - 1, -1, -1) if reverse else range(len(batch_sizes)):
            n, rows = batch_sizes[t], slice(offsets[t], offsets[t + 1])
            if n > h.size(0):  # reverse: sequences that end later start here, from h0
                h = torch.cat([h, h0[h.size(0) : n]])
            hp = h[:n]
            torch.mm(hp, w_hh.t(), out=gh[rows])
            gh[rows, 2 * hidden :] += b_hn
            torch.add(gi[rows, : 2 * hidden], gh[rows, : 2 * hidden], out=rz[rows]).sigmoid_()
            torch.addcmul(
                gi[rows, 2 * hidden :], rz[rows, :hidden], gh[rows, 2 * hidden :], out=new[rows]
            ).tanh_()
            h = torch.lerp(new[rows], hp, rz[rows, hidden:], out=out[rows])
        if reverse:
            h_n = out[: batch_sizes[0]]
        else:  # each sequence's last step: sequence i of length L is row i of step L - 1
            lengths = (torch.tensor(batch_sizes).unsqueeze(1) > torch.arange(batch_sizes[0])).sum(0)
            h_n = out[torch.tensor(offsets)[lengths - 1] + torch.arange(batch_sizes[0])]
        ctx.save_for_backward(h0, w_hh, gh, rz, new, out)
        ctx.batch_sizes, ctx.offsets, ctx.reverse, ctx.bias_dtype = batch_sizes, offsets, reverse, b_hh.dtype
        return out, h_n.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out: Tensor | None, d_hn: Tensor | None):
        h0, w_hh, gh, rz, new, out = ctx.saved_tensors
        batch_sizes, offsets = ctx.batch_sizes, ctx.offsets
        tokens, hidden = offsets[-1], h0.size(1)
        previous = torch.cat([h0, out])[_previous_rows(batch_sizes, ctx.reverse)]
        r, z, gh_n = rz[:, :hidden], rz[:, hidden:], gh[:, 2 * hidden :]
        # d h' / d (pre-activations) per row, all steps at once; the loop only multiplies by d h'
        c_n = (1 - z) * (1 - new * new)  # through n = tanh(a_n)
        coefficients = torch.stack(
            [c_n * gh_n * r * (1 - r), (previous - new) * z * (1 - z), c_n * r], dim=1
        )  # (N, 3, H): for a_r, a_z and gh_n
        d_new = torch.empty_like(new)  # total gradient at each step's output
        d_g = gh.new_empty(out.size(0), 3 * hidden)  # d gh, then d gi in place
        d_g[tokens:] = 0
        d_h = d_hn.clone() if d_hn is not None else h0.new_zeros(h0.shape)
        if d_out is None:
            d_out = out.new_zeros(out.shape)
        for t in range(len(batch_sizes)) if ctx.reverse else range(len(batch_sizes) - 1, -1, -1):
            n, rows = batch_sizes[t], slice(offsets[t], offsets[t + 1])
            g = torch.add(d_h[:n], d_out[rows], out=d_new[rows])
            torch.mul(g.unsqueeze(1), coefficients[rows], out=d_g[rows].view(n, 3, hidden))
            torch.mul(g, z[rows], out=d_h[:n]).addmm_(d_g[rows], w_hh)
        wide = _wide(d_g.dtype)
        d_w = d_g.t().mm(_pad_rows(previous, out.size(0)))
        d_b_hh = d_g.sum(0, dtype=wide)
        torch.mul(d_new, c_n, out=d_g[:tokens, 2 * hidden :])  # d gh_n = d a_n * r; d gi_n = d a_n
        d_b_ih = torch.cat([d_b_hh[: 2 * hidden], d_g[:, 2 * hidden :].sum(0, dtype=wide)])
        return d_g, d_h, d_w, d_b_ih.to(ctx.bias_dtype), d_b_hh.to(ctx.bias_dtype), None, None


def _wide(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums and softmax statistics are kept in: fp32 for bf16 and fp16."""
    return torch.promote_types(dtype, torch.float32)


def _cast(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def _compute_dtype(x: Tensor) -> torch.dtype:
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def gru(module: nn.GRU, packed: Packed, h0: Tensor | None = None) -> tuple[Packed, Tensor]:
    """`module` (an nn.GRU's weights, its dropout and directions) over packed rows (rows, input).

    Returns the packed outputs (rows, directions * H) and the final states (layers * directions,
    B, H) in batch order, as `module` would for the same PackedSequence. Under autocast the whole
    recurrence runs in the autocast dtype; gradients reach the fp32 weights through the casts
    (the biases' gradients are summed in fp32 and never rounded to the autocast dtype).
    """
    data, lay = packed
    dtype = _compute_dtype(data)
    directions = 2 if module.bidirectional else 1
    if h0 is None:
        h0 = data.new_zeros(module.num_layers * directions, lay.batch, module.hidden_size, dtype=dtype)
    h0 = _cast(h0, dtype)[:, lay.sorted_indices]
    x, finals = _cast(data, dtype), []
    with torch.autocast(data.device.type, enabled=False):
        for layer in range(module.num_layers):
            outputs = []
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                w_ih, w_hh = getattr(module, "weight_ih" + suffix), getattr(module, "weight_hh" + suffix)
                b_ih, b_hh = getattr(module, "bias_ih" + suffix), getattr(module, "bias_hh" + suffix)
                out, h_n = _Recurrence.apply(
                    x.mm(_cast(w_ih, dtype).t()), h0[layer * directions + direction], _cast(w_hh, dtype),
                    b_ih, b_hh, lay.batch_sizes, bool(direction),
                )  # fmt: skip
                outputs.append(out)
                finals.append(h_n)
            x = torch.cat(outputs, dim=1) if directions == 2 else outputs[0]
            if layer < module.num_layers - 1:
                x = dropout(x, module.dropout, module.training)
    return Packed(x, lay), torch.stack(finals)[:, lay.unsorted_indices]


class _LinearCrossEntropy(torch.autograd.Function):
    """Per-row cross-entropy of logits = x W^T + b against `target`, with label smoothing, and
    (when asked) whether each row's largest logit is its target's.

    The (rows, V) logits are made in the matrix product's dtype and reduced in fp32 a chunk of
    rows at a time, so no fp32 (rows, V) tensor is ever written; the backward overwrites the saved
    logits with their gradient in place. The bias is added chunk by chunk (see _Recurrence).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, target: Tensor, smoothing: float, hits: bool,
                chunk: int):  # fmt: skip
        logits = x.mm(weight.t())
        lse = torch.empty(x.size(0), dtype=_wide(x.dtype), device=x.device)
        loss = torch.empty_like(lse)
        bias_dtype = bias.dtype
        correct = torch.zeros(x.size(0) if hits else 0, dtype=torch.bool, device=x.device)
        bias = bias.to(lse.dtype)
        for start in range(0, x.size(0), chunk):
            rows = slice(start, start + chunk)
            block = logits[rows].to(lse.dtype) + bias
            torch.logsumexp(block, dim=1, out=lse[rows])
            gold = block.gather(1, target[rows].unsqueeze(1)).squeeze(1)
            nll = lse[rows] - gold
            loss[rows] = (
                nll if not smoothing else (1 - smoothing) * nll + smoothing * (lse[rows] - block.mean(1))
            )
            if hits:
                correct[rows] = block.argmax(1) == target[rows]
        ctx.save_for_backward(x, weight, bias, target, logits, lse)
        ctx.smoothing, ctx.chunk, ctx.bias_dtype = smoothing, chunk, bias_dtype
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_loss: Tensor, _d_correct: None):
        x, weight, bias, target, grad, lse = ctx.saved_tensors
        smoothing, vocab = ctx.smoothing, weight.size(0)
        d_loss = d_loss.to(lse.dtype)
        d_bias = torch.zeros_like(bias)
        for start in range(0, x.size(0), ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            block = (grad[rows].to(lse.dtype) + bias).sub_(lse[rows].unsqueeze(1)).exp_()  # softmax
            if smoothing:
                block -= smoothing / vocab
            block.scatter_add_(
                1, target[rows].unsqueeze(1), block.new_full((block.size(0), 1), smoothing - 1)
            )
            block.mul_(d_loss[rows].unsqueeze(1))
            d_bias += block.sum(0)
            grad[rows] = block
        return grad.mm(weight), grad.t().mm(x), d_bias.to(ctx.bias_dtype), None, None, None, None


def linear_cross_entropy(
    x: Tensor,
    linear: nn.Linear,
    target: Tensor,
    label_smoothing: float = 0.0,
    hits: bool = False,
) -> tuple[Tensor, Tensor]:
    """Per-row loss (rows,) in fp32 of `linear`'s logits on x (rows, H) against `target` (rows,),
    and with `hits` whether each row's argmax is its target (else an empty tensor). Under
    autocast the matrix products run in its dtype; the bias and its gradient stay in fp32."""
    dtype = _compute_dtype(x)
    chunk = 64 if x.device.type == "cpu" else 4096  # rows of fp32 logits that stay in a CPU's cache
    with torch.autocast(x.device.type, enabled=False):
        return _LinearCrossEntropy.apply(
            _cast(x, dtype), _cast(linear.weight, dtype), linear.bias, target, label_smoothing, hits, chunk
        )


def keep_eager_under_compile() -> None:
    """Have torch.compile run these kernels eagerly (train.py --compile): traced, their loops over
    time steps and chunks would unroll into a new graph for every batch's lengths. Done on
    request only, since importing the compiler costs about a second."""
    global gru, linear_cross_entropy, dropout
    gru, linear_cross_entropy, dropout = map(torch.compiler.disable, (gru, linear_cross_entropy, dropout))
