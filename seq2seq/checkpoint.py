"""The checkpoint format: one place that writes it, reads it and rebuilds a model from it.

A checkpoint is a dict of tensors and plain Python data (no pickled classes), so it loads with
`torch.load(..., weights_only=True)` and carries everything needed without the training data:

    format        "chatbot-seq2seq/1"
    model_config  ModelConfig as a dict         model       the model's state_dict
    vocab         Vocabulary.to_dict()          optimizer   the optimizer's state_dict
    args          the training flags            scaler      GradScaler state (fp16) or None
    iteration     iterations done               history     {"train": [[it, loss]], "val": [[it, loss]]}
    best_val_loss, best_iteration               rng         torch (and CUDA) generator states
    seconds       training time so far          clock       [[it, seconds]] at each validation
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from .files import atomic_path
from .model import ModelConfig, Seq2Seq
from .vocab import Vocabulary

FORMAT = "chatbot-seq2seq/1"
REQUIRED = ("format", "model_config", "model", "vocab")


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message is one line for the user."""


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write `payload` (plus the format tag) atomically: a crash leaves the old file intact."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **payload}, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read and validate a checkpoint, or raise CheckpointError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: train one with `python train.py`")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{path} is not a readable checkpoint (corrupt or truncated?): {reason[:200]}"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or any(k not in data for k in REQUIRED):
        raise CheckpointError(f"{path} is not a chatbot-seq2seq checkpoint (format {FORMAT} expected)")
    return data


def trained_max_length(checkpoint: dict) -> int:
    """The --max-length a checkpoint was trained with (EOS included): its replies' natural limit."""
    return checkpoint.get("args", {}).get("max_length", 10)


def build_model(checkpoint: dict, device: str | torch.device = "cpu") -> tuple[Seq2Seq, Vocabulary]:
    """The model (weights loaded, on `device`) and vocabulary a checkpoint describes."""
    try:
        vocab = Vocabulary.from_dict(checkpoint["vocab"])
        config = ModelConfig(**checkpoint["model_config"])
        if config.vocab_size != len(vocab):
            raise ValueError(
                f"its vocabulary has {len(vocab)} words but its model expects {config.vocab_size}"
            )
        model = Seq2Seq(config)
        model.load_state_dict(checkpoint["model"])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(error).__name__)
        raise CheckpointError(f"checkpoint does not describe a usable model: {detail[:200]}") from None
    return model.to(device), vocab
