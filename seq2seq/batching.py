"""Turning pairs of normalised sentences into padded id tensors, and the order batches come in."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .cornell import Pair
from .kernels import Layout, layout
from .vocab import EOS, PAD, Vocabulary

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


def encode_pairs(pairs: list[Pair], vocab: Vocabulary, max_length: int | None = None) -> list[Example]:
    """Ids of both sides with EOS appended; with `max_length`, longer pairs are left out."""
    examples = [(vocab.encode(q) + [EOS], vocab.encode(a) + [EOS]) for q, a in pairs]
    if max_length is not None:
        examples = [e for e in examples if len(e[0]) <= max_length and len(e[1]) <= max_length]
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
    """

    def __init__(self, n_examples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.global_batch = batch_size * world_size
        if n_examples < self.global_batch:
            raise ValueError(f"{n_examples} training pairs are fewer than one batch of {self.global_batch}")
        self.n_examples, self.batch_size, self.seed, self.rank = n_examples, batch_size, seed, rank
        self.batches_per_epoch = n_examples // self.global_batch
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def indices(self, iteration: int) -> list[int]:
        epoch, position = divmod(iteration, self.batches_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.n_examples, generator=generator)
        start = position * self.global_batch + self.rank * self.batch_size
        return self._order[start : start + self.batch_size].tolist()
