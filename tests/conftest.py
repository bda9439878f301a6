"""Shared fixtures: small synthetic corpora in the official Cornell format, and a trained model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import (
    CONTEXT,
    PAIRS,
    overfit_context_model,
    overfit_tiny_model,
    write_corpus,
    write_pair_corpus,
)

# Tiny models gain nothing from a second thread, and OpenMP threads fighting over two cores can
# slow a suite (or a training run beside it) many times over.
torch.set_num_threads(1)


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, dict]:
    folder = tmp_path / "corpus"
    return folder, write_corpus(folder)


@pytest.fixture
def pair_dir(tmp_path: Path) -> Path:
    """A data/ folder built by the real pipeline from PAIRS (each twice), every word kept."""
    from seq2seq.cornell import PairSettings
    from seq2seq.download import prepare_data

    corpus = write_pair_corpus(tmp_path / "pair-corpus", PAIRS)
    settings = PairSettings(min_count=1, val_fraction=0.2, test_fraction=0.1)
    prepare_data(tmp_path / "data", settings, source=str(corpus))
    return tmp_path / "data"


def _save_tiny_model(folder: Path, reverse: bool) -> Path:
    from seq2seq.checkpoint import save_checkpoint

    model, vocab, _, _ = overfit_tiny_model(reverse)
    path = folder / "best_model.pth"
    config = {"model": model.config.to_dict(), "pairs": {"max_length": 10}, "data": {"reverse": reverse}}
    save_checkpoint(path, {"config": config, "model": model.state_dict(), "vocab": vocab.to_dict()})
    return path


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory) -> Path:
    """overfit_tiny_model() saved as an inference-only checkpoint (a few seconds, once per session)."""
    return _save_tiny_model(tmp_path_factory.mktemp("checkpoint"), reverse=False)


@pytest.fixture(scope="session")
def backward_checkpoint(tmp_path_factory) -> Path:
    """Its backward model, overfit_tiny_model(reverse=True), saved the same way."""
    return _save_tiny_model(tmp_path_factory.mktemp("backward"), reverse=True)


@pytest.fixture(scope="session")
def context_checkpoint(tmp_path_factory) -> Path:
    """overfit_context_model() of CONTEXT, saved as an inference-only checkpoint that says so."""
    from seq2seq.checkpoint import save_checkpoint
    from seq2seq.vocab import Context

    model, vocab = overfit_context_model(Context(CONTEXT["context_turns"], CONTEXT["context_length"]))
    path = tmp_path_factory.mktemp("context") / "best_model.pth"
    config = {"model": model.config.to_dict(), "pairs": {"max_length": 10, **CONTEXT}}
    save_checkpoint(path, {"config": config, "model": model.state_dict(), "vocab": vocab.to_dict()})
    return path
