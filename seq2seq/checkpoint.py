"""The checkpoint format: the one module that writes it, checks it, upgrades it and reads it.

A checkpoint is a dict of tensors and plain Python data (no pickled classes), so it loads with
`torch.load(..., weights_only=True)` and carries everything needed without the training data:

    format      "chatbot-seq2seq/2"
    config      the run as resolved (config.RunConfig.to_dict()); config["model"] is the
                ModelConfig, config["pairs"]["max_length"] the --max-length its queries and
                replies were cut to (trained_max_length), config["pairs"]["context_turns"] and
                ["context_length"] the context its sources held (context)
    turn_separator  the token that closes each turn of a source, "<eos>" (vocab.TURN_SEPARATOR;
                checkpoints from before context have none, and closed their one turn with it too)
    model       the model's state_dict           vocab      Vocabulary.to_dict()
    optimizer   the optimizer's state_dict       scaler     GradScaler state (fp16) or None
    rng         torch (and CUDA) generator states
    TrainState's fields: iteration, best_val_loss, best_iteration, evals_without_improvement,
                history {"train": [[it, loss]], "val": [[it, loss]]}, seconds (training time so
                far), clock ([[it, seconds]] at each validation)

Inference needs format, config["model"], model and vocab; resuming needs the rest. Checkpoints
of format 1 (flat flags under "args", the architecture under "model_config") are upgraded as
they are loaded, by `upgrade`.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from . import config as run_config
from .cli import first_line
from .cornell import PairSettings
from .devices import resolve_device, resolve_precision
from .files import atomic_path
from .model import ModelConfig, Seq2Seq
from .vocab import EOS, SPECIAL_TOKENS, Context, Vocabulary

FORMAT = "chatbot-seq2seq/2"
LAST, BEST = "last.pth", "best_model.pth"  # what a run writes in its --save-dir
FORMAT_1 = "chatbot-seq2seq/1"
REQUIRED = ("config", "model", "vocab")
# What a format-1 model config lacks when it was written before these options existed: it was
# trained without them, as the tutorial's recipe is.
FORMAT_1_MODEL = {
    name: run_config.TUTORIAL[name] for name in ("input_dropout", "output_dropout", "tie_embeddings")
}


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message is one line for the user."""


def run_checkpoints(folder: str | Path) -> list[str]:
    """The names of the run checkpoints `folder` holds."""
    return [name for name in (LAST, BEST) if (Path(folder) / name).exists()]


@dataclass
class TrainState:
    """What a resumed run needs besides weights and optimizer: where it was, what it measured."""

    iteration: int = 0
    best_val_loss: float = math.inf
    best_iteration: int = 0
    evals_without_improvement: int = 0
    history: dict = field(default_factory=lambda: {"train": [], "val": []})
    seconds: float = 0.0  # training time so far (validations and saves included), over resumed calls
    clock: list = field(default_factory=list)  # [iteration, seconds] at each validation


# The keys a checkpoint must hold to be resumed, each with the type its value must have.
def _count(value) -> bool:
    return type(value) is int and 0 <= value < 10**12  # a run counts far below that


def _number(value) -> bool:
    return type(value) in (int, float)


def _series(value) -> bool:
    """Whether `value` is a list of [iteration, number] pairs, as history and clock are."""
    return isinstance(value, list) and all(
        isinstance(e, list) and len(e) == 2 and _count(e[0]) and _number(e[1]) for e in value
    )


def _history(value) -> bool:
    return isinstance(value, dict) and all(_series(value.get(k)) for k in ("train", "val"))


def _rng(value) -> bool:
    torch_state = value.get("torch") if isinstance(value, dict) else None
    return isinstance(torch_state, torch.Tensor) and torch_state.dtype == torch.uint8


# What resuming reads besides the config, and what each must be.
RESUME_KEYS = {"optimizer": lambda v: isinstance(v, dict), "rng": _rng, "iteration": _count,
               "best_val_loss": _number, "best_iteration": _count, "evals_without_improvement": _count,
               "history": _history, "seconds": _number, "clock": _series}  # fmt: skip
assert set(RESUME_KEYS) >= {f.name for f in fields(TrainState)}  # a new field needs its check here


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write `payload` (plus the format tag) atomically: a crash leaves the old file intact."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **payload}, tmp)


def training_payload(model: Seq2Seq, vocab: Vocabulary, config: dict, optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler, state: TrainState) -> dict:  # fmt: skip
    """A checkpoint a run can be resumed from and a bot can be rebuilt from."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "config": {**config, "model": model.config.to_dict()},
        "turn_separator": SPECIAL_TOKENS[EOS],
        "model": model.state_dict(),
        "vocab": vocab.to_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "rng": rng,
        **asdict(state),
    }


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read, check and upgrade a checkpoint, or raise CheckpointError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: train one with `python train.py`")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        if isinstance(error, pickle.UnpicklingError) and "global" in str(error).lower():
            # weights_only met a class or a function to call: code, not data
            raise CheckpointError(
                f"{path} is not a chatbot-seq2seq checkpoint: it holds Python objects, refused"
            ) from None
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        why = [i for i, line in enumerate(lines) if line.startswith("WeightsUnpickler error")]
        reason = (
            " ".join(lines[why[0] : why[0] + 2]) if why else (lines[0] if lines else type(error).__name__)
        )
        raise CheckpointError(
            f"{path} is not a readable checkpoint (corrupt or truncated?): {reason[:200]}"
        ) from None
    if isinstance(data, dict) and data.get("format") == FORMAT_1:
        data = upgrade(data)
    if (
        not isinstance(data, dict)
        or data.get("format") != FORMAT
        or any(k not in data for k in REQUIRED)
        or not _is_config(data["config"])
    ):
        raise CheckpointError(f"{path} is not a chatbot-seq2seq checkpoint (format {FORMAT} expected)")
    bad = run_config.invalid(run_config.flatten(data["config"]))
    if bad:
        raise CheckpointError(f"{path} is not a usable checkpoint: its {bad} is not a value train.py takes")
    if data.get("turn_separator", SPECIAL_TOKENS[EOS]) != SPECIAL_TOKENS[EOS]:
        raise CheckpointError(
            f"{path} separates the turns of its sources with {ascii(data['turn_separator'])[:40]}; "
            f"this version reads turns closed by {SPECIAL_TOKENS[EOS]}"
        )
    return data


def _is_config(config) -> bool:
    """Whether `config` has the shape RunConfig.to_dict() gives: some of its sections ("model" at
    least), each a dict of its own fields, and a known recipe if it names one."""
    return (
        isinstance(config, dict)
        and config.get("recipe", run_config.DEFAULT_RECIPE) in run_config.RECIPES
        and isinstance(config.get("model"), dict)
        and type(config["model"].get("vocab_size")) is int
        and set(config) <= {"recipe", *run_config.SECTIONS}
        and all(
            isinstance(config[section], dict) and set(config[section]) <= {f.name for f in fields(kind)}
            for section, kind in run_config.SECTIONS.items()
            if section in config
        )
    )


def upgrade(data: dict) -> dict:
    """A format-1 checkpoint as format 2. Its flags become the nested configuration, with the
    model config in place of their architecture; a run that names no recipe was trained with the
    tutorial's, before recipes existed; a run from before the training clock has spent no time."""
    flags, model = data.get("args", {}), data.get("model_config")  # inference-only ones had no flags
    if not isinstance(flags, dict) or not isinstance(model, dict):
        return data  # not a usable checkpoint; load_checkpoint says so
    rest = {k: v for k, v in data.items() if k not in ("format", "args", "model_config")}
    if "iteration" in rest:
        rest = {"seconds": 0.0, "clock": [], **rest}
    flags = {"recipe": run_config.RECIPE_OF_UNNAMED, **flags}
    return {**rest, "format": FORMAT, "config": run_config.nest(flags, {**FORMAT_1_MODEL, **model})}


def resumed_flags(checkpoint: dict, path: str | Path, recipe: str | None) -> dict:
    """The flags a checkpoint was trained with, once it is known to hold a training state a run
    can continue from; `recipe` is the one asked for now, if any."""
    missing = [key for key in RESUME_KEYS if key not in checkpoint]
    config = checkpoint["config"]
    if missing or not {"recipe", "loop"} <= set(config) or "optimizer" not in config.get("optimizer", {}):
        raise CheckpointError(
            f"{path} cannot be resumed: it lacks the training state ({', '.join(missing) or 'its flags'})"
        )
    for key, fits in RESUME_KEYS.items():
        if not fits(checkpoint[key]):
            raise CheckpointError(f"{path} cannot be resumed: its {key} is not what a run saves")
    saved = saved_flags(checkpoint)
    if recipe not in (None, saved["recipe"]):
        raise CheckpointError(
            f"--recipe {recipe} differs from the checkpoint's {saved['recipe']}; a resumed run keeps it"
        )
    return saved


def check_unchanged(saved: dict, flags: dict) -> None:
    """Refuse flags that would change what a resumed run cannot change."""
    for name, what in run_config.FIXED_ON_RESUME.items():
        if name in saved and flags[name] != saved[name]:
            raise CheckpointError(
                f"--{name.replace('_', '-')} {flags[name]} differs from the checkpoint's {saved[name]}; "
                f"{what} cannot change on resume"
            )


def restore_training(
    checkpoint: dict, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler
) -> TrainState:
    """Load optimizer, scaler and RNG states from a checkpoint (checked by `resumed_flags`) whose
    weights the model holds. The optimizer state is loaded after the model is on its device, so
    it lands there too."""
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(checkpoint["scaler"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if "cuda" in checkpoint["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"checkpoint's training state does not fit this run: {first_line(error)}"
        ) from None
    return TrainState(**{f.name: checkpoint[f.name] for f in fields(TrainState)})


def saved_flags(checkpoint: dict) -> dict:
    """The flags a checkpoint's run was resolved to (its architecture included)."""
    return run_config.flatten(checkpoint["config"])


def _pair_settings(checkpoint: dict) -> PairSettings:
    """How the checkpoint's pairs were cut (load_checkpoint has checked the values as train.py's
    flags); what it records none of was PairSettings' default: a default build, no context."""
    return PairSettings(**checkpoint["config"].get("pairs", {}))


def trained_max_length(checkpoint: dict) -> int:
    """The --max-length a checkpoint was trained with (EOS included): its replies' natural limit."""
    return _pair_settings(checkpoint).max_length


def context(checkpoint: dict) -> Context:
    """What a checkpoint's model reads before the query."""
    return _pair_settings(checkpoint).context


def build_model(checkpoint: dict, device: str | torch.device = "cpu") -> tuple[Seq2Seq, Vocabulary]:
    """The model (weights loaded, on `device`) and vocabulary a checkpoint describes."""
    try:
        vocab = Vocabulary.from_dict(checkpoint["vocab"])
        config = ModelConfig(**checkpoint["config"]["model"])
        if config.vocab_size != len(vocab):
            raise ValueError(
                f"its vocabulary has {len(vocab)} words but its model expects {config.vocab_size}"
            )
        _check_shapes(config, checkpoint["model"])
        model = Seq2Seq(config)
        model.load_state_dict(checkpoint["model"])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(error).__name__)
        raise CheckpointError(f"checkpoint does not describe a usable model: {detail[:200]}") from None
    return model.to(device), vocab


def _check_shapes(config: ModelConfig, weights: dict) -> None:
    """Refuse weights that do not fit `config` before the model is built: a config claiming a
    huge model next to small weights must not allocate the huge model first."""
    with torch.device("meta"):  # shapes without memory
        expected = {name: tuple(t.shape) for name, t in Seq2Seq(config).state_dict().items()}
    if not isinstance(weights, dict) or set(weights) != set(expected):
        names = set(weights) if isinstance(weights, dict) else set()
        odd = sorted(names ^ set(expected))
        raise ValueError(f"its weights and its model config name different tensors ({', '.join(odd[:3])})")
    for name, shape in expected.items():
        tensor = weights[name]
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
            found = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(
                f"size mismatch for {name}: the checkpoint holds {found}, its config makes {shape}"
            )


def is_backward(checkpoint: dict) -> bool:
    """Whether a checkpoint models p(query | reply) (train.py --reverse) rather than replies."""
    return checkpoint["config"].get("data", {}).get("reverse", False)


def load_for_inference(
    path: str | Path, device: str, precision: str, backward: bool = False
) -> tuple[Seq2Seq, Vocabulary, dict]:
    """The checkpoint at `path` as an eval-mode model on `device` in `precision` (auto, fp32,
    bf16), its vocabulary and the checkpoint itself; it must be a backward model if and only if
    `backward`. Raises CheckpointError or DeviceError."""
    where = resolve_device(device)
    precision, _ = resolve_precision(precision, where)
    checkpoint = load_checkpoint(path, map_location=where)
    if is_backward(checkpoint) != backward:
        kind = (
            "a backward model (train.py --reverse: it scores queries from replies)"
            if not backward
            else "a forward model"
        )
        wanted = "a forward one, trained without --reverse" if not backward else "one trained with --reverse"
        raise CheckpointError(f"{path} is {kind}; give {wanted}")
    model, vocab = build_model(checkpoint, where)
    if precision == "bf16":
        model.to(torch.bfloat16)
    return model.eval(), vocab, checkpoint


def load_backward(path: str | Path, vocab: Vocabulary, device: str, precision: str) -> Seq2Seq:
    """The backward model (train.py --reverse) at `path` for reranking a forward model of
    `vocab`: it reads the forward model's ids, so it must have the same vocabulary."""
    if not Path(path).is_file():
        raise CheckpointError(
            f"no backward model at {path}: train one with `python train.py --reverse --save-dir {Path(path).parent}`"
        )
    model, own, _ = load_for_inference(path, device, precision, backward=True)
    if own.index_to_word != vocab.index_to_word:
        raise CheckpointError(
            f"{path} has another vocabulary than the forward model: train both on the same data/"
        )
    return model
