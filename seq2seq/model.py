"""The model: a bidirectional GRU encoder and a Luong-attention GRU decoder sharing one embedding.

Tensors are batch-first: a batch of sources is (B, S), of targets (B, T).

The decoder follows Luong et al. (2015), "Effective Approaches to Attention-based Neural Machine
Translation": the GRU runs first, attention reads the encoder outputs with the GRU's output as the
query, and [GRU output; context] goes through a tanh layer to the output projection. Because
attention comes after the GRU, nothing fed back into the GRU depends on attention, so under
teacher forcing the decoder runs over the whole target in one GRU call and one batched attention.
Free-running training and decoding call the same `Decoder.forward` one step at a time.

Training and validation go through `Seq2Seq.token_losses`, which computes the same losses as
`forward` plus cross-entropy, but only at real target positions: the concat layer, the output
projection and the loss never see padding, and on the CPU neither do the GRUs (`kernels.py`).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import kernels
from .batching import Batch
from .kernels import Layout, Packed
from .vocab import PAD, SOS

ATTENTION_SCORES = ("dot", "general", "concat")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Everything needed to rebuild the network; stored in every checkpoint. (The values a run
    uses come from config.RECIPES.)"""

    vocab_size: int
    hidden_size: int
    encoder_layers: int
    decoder_layers: int
    dropout: float  # between GRU layers and on the decoder's input, as in the tutorial
    attn_model: str
    input_dropout: float  # on the encoder's embedded source
    output_dropout: float  # on the decoder's attentional vector, before the output projection
    tie_embeddings: bool  # output projection shares the embedding matrix

    def to_dict(self) -> dict:
        return asdict(self)


class Memory(NamedTuple):
    """What the decoder attends to: keys (scores' side of the encoder outputs), values, mask."""

    keys: Tensor  # (B, S, H)
    values: Tensor  # (B, S, H)
    mask: Tensor  # (B, S) bool, True at real (non-pad) positions


class GRU(nn.GRU):
    """nn.GRU that runs in the autocast dtype it is asked for, and runs `kernels.gru` on `Packed`
    rows.

    CPU autocast leaves nn.GRU in fp32, and CUDA autocast runs cuDNN's GRU in fp16 even when bf16
    is asked for (see devices.py); the GRUs are most of a training step. Under autocast this runs
    the recurrence with weights, input and state cast to the autocast dtype. The casts are
    differentiable, so gradients still flow to the fp32 weights, as with any autocast op.
    """

    def forward(self, input, hx=None):
        if isinstance(input, Packed):
            return kernels.gru(self, input, hx)
        device = self._flat_weights[0].device.type
        if not torch.is_autocast_enabled(device):
            return super().forward(input, hx)
        dtype = torch.get_autocast_dtype(device)
        master = self._flat_weights
        self._flat_weights = [w.to(dtype) for w in master]
        try:
            if isinstance(input, PackedSequence):
                input = input._replace(data=input.data.to(dtype))
            else:
                input = input.to(dtype)
            with torch.autocast(device, enabled=False), warnings.catch_warnings():
                # cuDNN wants its weights in one buffer and copies the cast ones into one: expected
                warnings.filterwarnings("ignore", message="RNN module weights are not part")
                return super().forward(input, None if hx is None else hx.to(dtype))
        finally:
            self._flat_weights = master


class Dropout(nn.Dropout):
    """nn.Dropout, with `kernels.dropout`'s faster mask on the CPU."""

    def forward(self, input: Tensor) -> Tensor:
        if input.device.type != "cpu":
            return super().forward(input)
        return kernels.dropout(input, self.p, self.training)


class Projection(nn.Linear):
    """The output layer. Given targets, it returns each row's cross-entropy (and, with `hits`,
    whether its argmax is the target) instead of the logits, without writing the (N, V) logits in
    fp32 (the fused kernel in kernels.py)."""

    def forward(
        self, input: Tensor, target: Tensor | None = None, label_smoothing: float = 0.0, hits: bool = False
    ):
        if target is None:
            return super().forward(input)
        return kernels.linear_cross_entropy(input, self, target, label_smoothing, hits)


class Attention(nn.Module):
    """Luong attention with the dot, general or concat score, masked over padding."""

    def __init__(self, method: str, hidden_size: int):
        super().__init__()
        if method not in ATTENTION_SCORES:
            raise ValueError(f"attention score must be one of {ATTENTION_SCORES}, got {method!r}")
        self.method = method
        if method == "general":
            self.W = nn.Linear(hidden_size, hidden_size)
        elif method == "concat":
            self.W = nn.Linear(2 * hidden_size, hidden_size)
            # The tutorial allocates this vector with torch.FloatTensor(H) and never initialises it.
            self.v = nn.Parameter(torch.empty(hidden_size).uniform_(-(hidden_size**-0.5), hidden_size**-0.5))

    def keys(self, encoder_outputs: Tensor) -> Tensor:
        """The part of the score that depends only on the encoder, computed once per source."""
        if self.method == "general":
            return self.W(encoder_outputs)
        if self.method == "concat":  # W [q; k] = W_q q + W_k k: precompute W_k k
            return F.linear(encoder_outputs, self.W.weight[:, encoder_outputs.size(-1) :])
        return encoder_outputs

    def forward(self, query: Tensor, memory: Memory) -> tuple[Tensor, Tensor]:
        """query (B, T, H) -> context (B, T, H) and weights (B, T, S) summing to 1 over real positions."""
        if self.method == "concat":
            q = F.linear(query, self.W.weight[:, : query.size(-1)], self.W.bias)  # (B, T, H)
            scores = torch.tanh(q.unsqueeze(2) + memory.keys.unsqueeze(1)) @ self.v
        else:
            scores = query @ memory.keys.transpose(1, 2)
        scores = scores.masked_fill(~memory.mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores.float(), dim=-1).to(memory.values.dtype)
        return weights @ memory.values, weights


class Encoder(nn.Module):
    """Bidirectional GRU over packed sequences; the two directions are summed."""

    def __init__(
        self, embedding: nn.Embedding, hidden_size: int, n_layers: int, dropout: float, input_dropout: float
    ):
        super().__init__()
        self.embedding = embedding
        self.input_dropout = Dropout(input_dropout)
        self.n_layers = n_layers
        self.gru = GRU(
            hidden_size,
            hidden_size,
            n_layers,
            dropout=0.0 if n_layers == 1 else dropout,
            bidirectional=True,
            batch_first=True,
        )

    def forward(self, src: Tensor, lengths: Tensor, lay: Layout | None = None) -> tuple[Tensor, Tensor]:
        """src (B, S), lengths (B,) -> outputs (B, S, H), final states per layer (L, B, H).

        With the source's packed layout on the CPU, the GRU runs `kernels.gru` over the real
        positions only; otherwise cuDNN's or PyTorch's packed GRU."""
        half = self.gru.hidden_size
        if lay is not None and src.device.type == "cpu":
            packed, hidden = self.gru(Packed(self.input_dropout(self.embedding(kernels.pack(src, lay))), lay))
            outputs = kernels.unpack(packed.data[:, :half] + packed.data[:, half:], lay, src.size(1))
        else:
            packed = pack_padded_sequence(
                self.input_dropout(self.embedding(src)), lengths.cpu(), batch_first=True, enforce_sorted=False
            )
            outputs, hidden = self.gru(packed)
            outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=src.size(1))
            outputs = outputs[..., :half] + outputs[..., half:]
        # hidden is (L * 2, B, H) ordered layer by layer, forward then backward within a layer
        hidden = hidden.view(self.n_layers, 2, *hidden.shape[1:]).sum(dim=1)
        return outputs, hidden


class Decoder(nn.Module):
    """GRU -> attention over the encoder outputs -> tanh(W [output; context]) -> vocabulary logits."""

    def __init__(self, embedding: nn.Embedding, config: ModelConfig):
        super().__init__()
        h = config.hidden_size
        self.embedding = embedding
        self.embedding_dropout = Dropout(config.dropout)
        self.gru = GRU(
            h,
            h,
            config.decoder_layers,
            dropout=0.0 if config.decoder_layers == 1 else config.dropout,
            batch_first=True,
        )
        self.attention = Attention(config.attn_model, h)
        self.concat = nn.Linear(2 * h, h)
        self.output_dropout = Dropout(config.output_dropout)
        self.out = Projection(h, config.vocab_size)
        if config.tie_embeddings:  # Press & Wolf (2017): one matrix for input and output words
            # nn.Embedding's N(0, 1) rows would give logits of norm ~sqrt(h) at the start: use the
            # scale an output layer starts with instead. (The PAD row starts at zero; as an output
            # row it then learns, harmlessly: PAD inputs are packed away or masked.)
            with torch.no_grad():
                embedding.weight.normal_(0.0, h**-0.5)
                embedding.weight[PAD].zero_()
            self.out.weight = embedding.weight

    def forward(self, inputs: Tensor, hidden: Tensor, memory: Memory) -> tuple[Tensor, Tensor, Tensor]:
        """inputs (B, T) -> logits (B, T, V), new hidden (L, B, H), attention weights (B, T, S).

        T is the whole target under teacher forcing, 1 when stepping.
        """
        embedded = self.embedding_dropout(self.embedding(inputs))
        output, hidden = self.gru(embedded, hidden)
        context, weights = self.attention(output, memory)
        combined = torch.tanh(self.concat(torch.cat([output, context], dim=-1)))
        return self.out(self.output_dropout(combined)), hidden, weights

    def token_losses(
        self, inputs: Tensor, target: Tensor, lay: Layout, hidden: Tensor, memory: Memory, label_smoothing: float,
        hits: bool,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """`forward` over the whole target (B, T) and cross-entropy against `target`, at the
        layout's real positions only: per-token losses (N,) and argmax hits (N,), packed order."""
        steps = inputs.size(1)
        if inputs.device.type == "cpu":  # the GRU over real positions only
            embedded = self.embedding_dropout(self.embedding(kernels.pack(inputs, lay)))
            output = self.gru(Packed(embedded, lay), hidden)[0].data
            padded = kernels.unpack(output, lay, steps)
        else:  # cuDNN on the padded batch: packing costs more than it saves on a GPU (README)
            padded, _ = self.gru(self.embedding_dropout(self.embedding(inputs)), hidden)
            output = kernels.pack(padded, lay)
        context, _ = self.attention(padded, memory)
        combined = torch.tanh(self.concat(torch.cat([output, kernels.pack(context, lay)], dim=-1)))
        losses, correct = self.out(
            self.output_dropout(combined), kernels.pack(target, lay), label_smoothing, hits
        )
        return losses[: lay.tokens], correct[: lay.tokens]


class Seq2Seq(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=PAD)
        self.encoder = Encoder(
            self.embedding, config.hidden_size, config.encoder_layers, config.dropout, config.input_dropout
        )
        self.decoder = Decoder(self.embedding, config)

    def bridge(self, encoder_hidden: Tensor) -> Tensor:
        """The decoder's initial state from the encoder's final states (L_enc, B, H).

        Layers are matched from the top: decoder layer -1 starts from encoder layer -1, and so on.
        A deeper decoder's extra bottom layers start from the encoder's bottom layer. (The
        tutorial's `encoder_hidden[:n_layers]` instead hands the decoder layer 0's forward and
        backward states as if they were layers 0 and 1.)
        """
        n_enc, n_dec = encoder_hidden.size(0), self.config.decoder_layers
        if n_dec <= n_enc:
            return encoder_hidden[n_enc - n_dec :].contiguous()
        extra = encoder_hidden[:1].expand(n_dec - n_enc, -1, -1)
        return torch.cat([extra, encoder_hidden]).contiguous()

    def encode(self, src: Tensor, lengths: Tensor, lay: Layout | None = None) -> tuple[Memory, Tensor]:
        """Run the encoder; return the decoder's memory and initial hidden state."""
        outputs, hidden = self.encoder(src, lengths, lay)
        mask = torch.arange(src.size(1), device=src.device) < lengths.to(src.device).unsqueeze(1)
        memory = Memory(self.decoder.attention.keys(outputs), outputs, mask)
        return memory, self.bridge(hidden)

    def forward(self, src: Tensor, lengths: Tensor, tgt: Tensor, teacher_forcing: bool = True) -> Tensor:
        """Logits (B, T, V) for predicting `tgt` (B, T, ending in EOS then PAD).

        Teacher forcing feeds the gold previous token, all steps at once; otherwise each step is
        fed the model's own previous argmax, one step at a time.
        """
        memory, hidden = self.encode(src, lengths)
        sos = torch.full_like(tgt[:, :1], SOS)
        if teacher_forcing:
            logits, _, _ = self.decoder(torch.cat([sos, tgt[:, :-1]], dim=1), hidden, memory)
            return logits
        token, steps = sos, []
        for _ in range(tgt.size(1)):
            logits, hidden, _ = self.decoder(token, hidden, memory)
            steps.append(logits)
            token = logits.argmax(dim=-1)
        return torch.cat(steps, dim=1)

    def token_losses(
        self, batch: Batch, teacher_forcing: bool = True, label_smoothing: float = 0.0, hits: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Cross-entropy (N,) in fp32 at each of the batch's N real target tokens, in the target
        layout's order: `forward` then `sequence_loss` without the padding. With `hits`, also
        whether each token's argmax was right (N,); else an empty tensor. Label smoothing is
        for training only (see sequence_loss)."""
        lay = batch.tgt_layout
        if not teacher_forcing:
            logits = self(batch.src, batch.lengths, batch.tgt, teacher_forcing=False)
            rows, target = logits.flatten(0, 1)[lay.index].float(), batch.tgt.flatten()[lay.index]
            loss = F.cross_entropy(rows, target, reduction="none", label_smoothing=label_smoothing)
            return loss, (rows.argmax(-1) == target) if hits else target.new_zeros(0, dtype=torch.bool)
        memory, hidden = self.encode(batch.src, batch.lengths, batch.src_layout)
        inputs = torch.cat([torch.full_like(batch.tgt[:, :1], SOS), batch.tgt[:, :-1]], dim=1)
        return self.decoder.token_losses(inputs, batch.tgt, lay, hidden, memory, label_smoothing, hits)


def sequence_loss(
    logits: Tensor, target: Tensor, reduction: str = "mean", label_smoothing: float = 0.0
) -> Tensor:
    """Cross-entropy over the non-PAD target tokens: their mean (the tutorial's masked NLL, per
    token) or, with reduction="sum", their sum. Label smoothing is for training only: it moves
    the loss away from the log-likelihood that perplexity reports."""
    flat = logits.reshape(-1, logits.size(-1)).float()
    return F.cross_entropy(
        flat, target.reshape(-1), ignore_index=PAD, reduction=reduction, label_smoothing=label_smoothing
    )
