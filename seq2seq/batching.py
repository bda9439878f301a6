"""Turning pairs of normalised sentences into padded id tensors, and the order batches come in."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .cornell import Pair
from .kernels import Layout, layout
from .vocab import EOS, NO_CONTEXT, PAD, Context, Vocabulary, last_turn

Example = tuple[list[int], list[int]]


class Batch(NamedTuple):
    src: Tensor  # (B, S) query ids ending in EOS, PAD after
    lengths: Tensor  # (B,) on the CPU, as pack_padded_sequence wants
    tgt: Tensor  # (B, T) reply ids ending in EOS, PAD after
    src_layout: Layout  # where the real positions of each side go when packed
    tgt_layout: Layout

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.src.to(device),
            self.lengths,
            self.tgt.to(device),
            self.src_layout.to(device),
            self.tgt_layout.to(device),
        )

    @property
    def n_tokens(self) -> int:
        """Real (non-PAD) target tokens, known without reading the device."""
        return self.tgt_layout.tokens


def encode_pairs(
    pairs: list[Pair], vocab: Vocabulary, max_length: int | None = None, context: Context = NO_CONTEXT
) -> list[Example]:
    """Ids of both sides, the source's as `context.source_ids` reads it; with `max_length`, pairs
    whose query or reply is longer are left out (the context has its own budget)."""
    examples = []
    for source, reply in pairs:
        target = [*vocab.encode(reply), EOS]
        if max_length is None or max(len(target), len(last_turn(source).split()) + 1) <= max_length:
            examples.append((context.source_ids(vocab, source), target))
    return examples


def pad(sequences: list[list[int]]) -> Tensor:
    out = torch.full((len(sequences), max(map(len, sequences))), PAD, dtype=torch.long)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = torch.tensor(seq)
    return out


def collate(examples: list[Example]) -> Batch:
    sources, targets = zip(*examples)
    src, tgt = pad(sources), pad(targets)
    lengths = torch.tensor([len(s) for s in sources])
    tgt_lengths = torch.tensor([len(t) for t in targets])
    return Batch(src, lengths, tgt, layout(lengths, src.size(1)), layout(tgt_lengths, tgt.size(1)))


def iterate_batches(examples: list[Example], batch_size: int) -> list[Batch]:
    """All examples in file order, in batches (the last may be smaller): for evaluation."""
    return [collate(examples[i : i + batch_size]) for i in range(0, len(examples), batch_size)]


class BatchSchedule:
    """Which examples form training batch number `i`: a pure function of (seed, i).

    Each epoch is a fresh seeded permutation cut into full global batches of `batch_size` ×
    `world_size` examples, so any iteration's batch can be found again after a resume without
    saving sampler state. Under torchrun, rank r trains on the r-th slice of each global batch
    (a distributed sampler without its state): N ranks see exactly the examples one process with
    batch N × batch_size would.

    With `pool` > 0 (and each example's `lengths`), batches are length-bucketed as fairseq and
    OpenNMT-py bucket them: the permutation is cut into pools of `pool` global batches, each pool
    is sorted by target then source length and cut into batches, and the epoch's batches are
    shuffled. Pairs of a batch then have similar lengths, so a batch has fewer time steps; which
    pairs share a batch changes, which is why it is a choice.
    """

    def __init__(
        self,
        n_examples: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        lengths: list[tuple[int, int]] | None = None,
        pool: int = 0,
    ):
        self.global_batch = batch_size * world_size
        if n_examples < self.global_batch:
            raise ValueError(f"{n_examples} training pairs are fewer than one batch of {self.global_batch}")
        if pool and (lengths is None or len(lengths) != n_examples):
            raise ValueError("length bucketing needs the (source, target) length of every example")
        self.n_examples, self.batch_size, self.seed, self.rank = n_examples, batch_size, seed, rank
        self.batches_per_epoch = n_examples // self.global_batch
        self.pool = pool
        # target length first, then source length, as one integer to sort by
        self._keys = torch.tensor([t * (1 << 20) + s for s, t in lengths]) if pool else None
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def _epoch_order(self, epoch: int) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.n_examples, generator=generator)
        if not self.pool:
            return order
        order = order[: self.batches_per_epoch * self.global_batch]
        pool = self.pool * self.global_batch
        order = torch.cat(
            [part[torch.argsort(self._keys[part], stable=True)] for part in order.split(pool)]
        )  # sorted within each pool
        batches = order.view(self.batches_per_epoch, self.global_batch)
        batches = batches[:, torch.randperm(self.global_batch, generator=generator)]  # ranks get alike slices
        return batches[torch.randperm(self.batches_per_epoch, generator=generator)].flatten()

    def indices(self, iteration: int) -> list[int]:
        epoch, position = divmod(iteration, self.batches_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, self._epoch_order(epoch)
        start = position * self.global_batch + self.rank * self.batch_size
        return self._order[start : start + self.batch_size].tolist()
