"""A training run's configuration: the recipes, train.py's flags, and how a run is resolved.

The recipes below are the only hyperparameter values in the repository; the flags carry no
defaults of their own. A run's values are resolved in one order, each step overriding the ones
before it:

    1. the recipe (--recipe, or the one the checkpoint being resumed was trained with);
    2. the flags saved in that checkpoint, except paths, data flags and this machine's (NOT_RESUMED);
    3. the flags given now;
    4. a W&B sweep agent's values (tracking.WandbLogger);
    5. pair-cutting flags still unset: as data/ was built (data/stats.json), else PairSettings';
    6. what this machine and the data decide: --precision auto, and --epochs as iterations.

Steps 1 to 3 are `layer` (checkpoint.resumed_flags reads step 2), 5 is `pair_settings` and 6
is `resolve`, which returns the frozen `RunConfig` that checkpoints save (`RunConfig.to_dict`)
and `flatten` turns back into flags.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .cli import (
    PAIR_FLAGS,
    ArgumentParser,
    add_data_arguments,
    boolean,
    decay_factor,
    dropout_rate,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
)
from .cornell import PairSettings
from .devices import DEVICES, PRECISIONS
from .download import CORPUS_URL, DATA_DIR, built_settings, read_stats
from .model import ATTENTION_SCORES, ModelConfig

OPTIMIZERS = ("adam", "sgd")
WANDB_MODES = ("online", "offline", "disabled")

# "tutorial" is the PyTorch chatbot tutorial's recipe, as the seed ran it; "tuned" reached 21.9%
# lower validation perplexity on the same validation pairs (README "Conversation quality",
# measured with benchmarks/quality.py).
TUTORIAL = dict(iterations=4000, batch_size=64, optimizer="adam", learning_rate=1e-4, decoder_learning_ratio=5.0,
                clip=50.0, teacher_forcing_ratio=1.0, hidden_size=500, encoder_layers=2, decoder_layers=2,
                attn_model="dot", dropout=0.1, input_dropout=0.0, output_dropout=0.0, tie_embeddings=False,
                label_smoothing=0.0, warmup=0, lr_decay=1.0, patience=0, long_pairs=False, reverse=False, bucket_pool=0,
                eval_every=250, save_every=500, seed=0)  # fmt: skip
RECIPES = {
    "tuned": {
        **TUTORIAL,
        "iterations": 5000,
        "batch_size": 256,
        "learning_rate": 1e-3,
        "decoder_learning_ratio": 1.0,
        "dropout": 0.3,
        "input_dropout": 0.3,
        "output_dropout": 0.3,
        "tie_embeddings": True,
        "long_pairs": True,
        "lr_decay": 0.5,
        "patience": 4,
    },
    "tutorial": TUTORIAL,
}
DEFAULT_RECIPE = "tuned"
# A checkpoint that names no recipe was trained before recipes existed, with the tutorial's values.
RECIPE_OF_UNNAMED = "tutorial"

# Defaults of the flags that are not hyperparameters: where things are, how this machine runs.
# (Pair-cutting flags have none: they default to how data/ was built, step 5 above.)
INVOCATION = dict(recipe=DEFAULT_RECIPE, epochs=None, data_dir=DATA_DIR, source=None, url=CORPUS_URL,
                  save_dir="checkpoints", resume=None, device="auto", precision="auto", compile=False,
                  num_threads=None, use_wandb=False, wandb_project="chatbot-seq2seq", wandb_entity=None,
                  wandb_mode=None, plot=None, overwrite=False)  # fmt: skip
# What --plot without a path draws, in --save-dir with the run's checkpoints.
PLOT_NAME = "training_loss.png"
# Flags never taken from a checkpoint being resumed: this machine's and this invocation's, and
# every path and data flag, so that a checkpoint (a file from anywhere) cannot steer what is
# read, written, downloaded or rebuilt. A resumed run's pairs must match data/ instead
# (run.read_flags).
NOT_RESUMED = ("resume", "overwrite", "epochs", "device", "num_threads", "compile", "save_dir", "plot", "source", "url",
               "use_wandb", "wandb_project", "wandb_entity", "wandb_mode", "data_dir", *PAIR_FLAGS)  # fmt: skip
# Flags that cannot change on resume, and what they are.
FIXED_ON_RESUME = {**{f.name: "the architecture" for f in fields(ModelConfig) if f.name != "vocab_size"},
                   "optimizer": "the optimizer", "reverse": "the direction"}  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class OptimizerSettings:
    optimizer: str
    learning_rate: float  # the encoder's and the shared embedding's
    decoder_learning_ratio: float  # the decoder learns at learning_rate × this
    clip: float  # max gradient norm over all parameters
    label_smoothing: float  # of training targets; validation loss stays plain cross-entropy


@dataclass(frozen=True, kw_only=True)
class LoopSettings:
    iterations: int
    batch_size: int  # per process
    teacher_forcing_ratio: float
    eval_every: int
    save_every: int
    patience: int  # validations without improvement before stopping; 0 never stops early
    seed: int
    warmup: int  # iterations over which the learning rates rise linearly from 0
    lr_decay: float  # rates are multiplied by this after each validation that does not improve
    bucket_pool: int  # batches sorted by length together (BatchSchedule); 0: random batches


@dataclass(frozen=True, kw_only=True)
class DataSettings:
    data_dir: str
    source: str | None
    url: str
    long_pairs: bool  # also train on the pairs longer than max_length that train.txt holds
    reverse: bool  # train p(query | reply): every pair read with its sides swapped (a backward model)


@dataclass(frozen=True, kw_only=True)
class MachineSettings:
    device: str
    precision: str  # as resolved: never "auto"
    compile: bool
    num_threads: int | None


@dataclass(frozen=True, kw_only=True)
class OutputSettings:
    save_dir: str
    plot: str | None
    use_wandb: bool
    wandb_project: str
    wandb_entity: str | None
    wandb_mode: str | None


SECTIONS = {"model": ModelConfig, "pairs": PairSettings, "data": DataSettings, "optimizer": OptimizerSettings,
            "loop": LoopSettings, "machine": MachineSettings, "output": OutputSettings}  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything a training run was resolved to; checkpoints save it (`to_dict`)."""

    recipe: str
    model: ModelConfig
    pairs: PairSettings
    data: DataSettings
    optimizer: OptimizerSettings
    loop: LoopSettings
    machine: MachineSettings
    output: OutputSettings

    def to_dict(self) -> dict:
        return asdict(self)

    def flags(self) -> dict:
        """The run as train.py flags (W&B's config, a resumed run's defaults)."""
        return flatten(self.to_dict())


def _location(section: str, field: str) -> str:
    """The flag that sets `field` of `section`."""
    if section == "pairs":
        return {f: flag for flag, f in PAIR_FLAGS.items()}[field]
    return field


def flatten(nested: dict) -> dict:
    """A RunConfig dict (or any part of one) as flags; the vocabulary size is not a flag."""
    flat = {"recipe": nested["recipe"]} if "recipe" in nested else {}
    for section in SECTIONS:
        for name, value in nested.get(section, {}).items():
            if (section, name) != ("model", "vocab_size"):
                flat[_location(section, name)] = value
    return flat


def nest(flags: dict, model: dict | None = None) -> dict:
    """Flags (any subset) as a RunConfig dict with the sections they touch; `model` is the
    ModelConfig dict, which takes the place of the architecture flags. (For checkpoints written
    before the configuration was nested.)"""
    nested: dict = {"recipe": flags["recipe"]} if "recipe" in flags else {}
    for section, kind in SECTIONS.items():
        values = {f.name: flags[_location(section, f.name)] for f in fields(kind)
                  if _location(section, f.name) in flags}  # fmt: skip
        if values:
            nested[section] = values
    if model is not None:
        nested["model"] = dict(model)
    return nested


def make_parser(defaults: dict | None = None) -> ArgumentParser:
    """train.py's flags. Without `defaults` a flag not given is absent from the result (what
    `read_flags` layers); with them, --help shows them."""
    layered = defaults is None
    p = ArgumentParser(
        description="Train the seq2seq chatbot on data/train.txt, validating on data/val.txt.",
        argument_default=argparse.SUPPRESS if layered else None,
        add_help=not layered,
    )
    if layered:  # read_flags shows the help of the recipe asked for, defaults included
        p.add_argument("-h", "--help", action="store_true", help="show this help message and exit")
    p.add_argument("--recipe", choices=RECIPES,
                   help="the defaults of the flags below: tuned, or the tutorial's (README: Conversation "
                   "quality); a resumed run keeps its own")  # fmt: skip
    length = p.add_mutually_exclusive_group()
    length.add_argument("--iterations", type=positive_int, help="total training iterations")
    length.add_argument(
        "--epochs", type=positive_int, help="total passes over train.txt (instead of --iterations)"
    )
    p.add_argument("--batch-size", type=positive_int, help="pairs per iteration")
    p.add_argument("--learning-rate", type=positive_float, help="encoder and embedding learning rate")
    p.add_argument("--decoder-learning-ratio", type=positive_float, help="decoder rate = ratio × rate")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="optimizer")
    p.add_argument("--clip", type=positive_float, help="max gradient norm over all parameters")
    p.add_argument("--teacher-forcing-ratio", type=probability, help="share of teacher-forced batches")
    p.add_argument("--hidden-size", type=positive_int, help="embedding and GRU size")
    p.add_argument("--encoder-layers", type=positive_int, help="bidirectional GRU layers")
    p.add_argument("--decoder-layers", type=positive_int, help="decoder GRU layers")
    p.add_argument("--dropout", type=dropout_rate, help="dropout between GRU layers, on decoder input")
    p.add_argument("--input-dropout", type=dropout_rate, help="dropout on the encoder's embedded source")
    p.add_argument(
        "--output-dropout", type=dropout_rate, help="dropout before the decoder's output projection"
    )
    p.add_argument("--tie-embeddings", type=boolean, nargs="?", const=True, metavar="BOOL",
                   help="the output projection reuses the embedding matrix, which learns at the encoder's "
                   "rate (--tie-embeddings=false: its own matrix)")  # fmt: skip
    p.add_argument("--long-pairs", type=boolean, nargs="?", const=True, metavar="BOOL",
                   help="also train on the pairs longer than --max-length that train.txt holds "
                   "(download_data.py --train-max-length); validation is unchanged")  # fmt: skip
    p.add_argument("--reverse", type=boolean, nargs="?", const=True, metavar="BOOL",
                   help="train the backward model p(query | reply): every training and validation pair with "
                   "its sides swapped")  # fmt: skip
    p.add_argument("--label-smoothing", type=dropout_rate,
                   help="training targets' smoothing (validation loss stays plain cross-entropy)")  # fmt: skip
    p.add_argument("--warmup", type=non_negative_int, help="iterations over which learning rates rise from 0")
    p.add_argument("--lr-decay", type=decay_factor,
                   help="multiply learning rates by this after each validation that does not improve (1: never)")  # fmt: skip
    p.add_argument("--bucket-pool", type=non_negative_int,
                   help="length-bucketed batches: sort pairs by length within pools of this many batches, "
                   "then shuffle the batches (0: random batches)")  # fmt: skip
    p.add_argument("--attn-model", choices=ATTENTION_SCORES, help="Luong attention score")
    add_data_arguments(p, keep_built=True)
    p.add_argument("--save-dir", help="folder for last.pth and best_model.pth")
    p.add_argument("--overwrite", action="store_true",
                   help="let a fresh run replace the checkpoints another run left in --save-dir")  # fmt: skip
    p.add_argument("--save-every", type=positive_int, help="write last.pth every N iterations")
    p.add_argument("--eval-every", type=positive_int, help="validate every N iterations")
    p.add_argument("--patience", type=non_negative_int,
                   help="stop after N validations without improvement (0: never)")  # fmt: skip
    p.add_argument("--resume", nargs="?", const="", metavar="PATH",
                   help="continue a run from PATH (default: last.pth in --save-dir)")  # fmt: skip
    p.add_argument("--seed", type=non_negative_int, help="seed for weights, batches and dropout")
    p.add_argument("--device", choices=DEVICES, help="where to train")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="bf16 autocast (CPU, CUDA), fp16 with gradient scaling (CUDA), fp32; auto: bf16 where "
                   "the hardware runs it natively, else fp32")  # fmt: skip
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (the GRU recurrence and the loss kernel stay eager)")  # fmt: skip
    p.add_argument("--num-threads", type=positive_int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--use-wandb", action="store_true", help="log to Weights & Biases (see README)")
    p.add_argument("--wandb-project", help="W&B project")
    p.add_argument("--wandb-entity", help="W&B entity (user or team; default: yours)")
    p.add_argument(
        "--wandb-mode",
        choices=WANDB_MODES,
        help="default: online with an API key, else offline with a notice",
    )
    p.add_argument("--plot", nargs="?", const="", metavar="PATH",
                   help=f"draw train and validation loss to PATH (--plot alone: {PLOT_NAME} in --save-dir; "
                   "default: no plot)")  # fmt: skip
    if defaults is not None:
        p.set_defaults(**defaults)
    return p


def invalid(flags: dict) -> str | None:
    """The first of `flags` (read from a file, not typed by a user) that train.py's parser would
    not have produced, as "--name value"; None if every one would have been."""
    for action in make_parser()._actions:
        if action.dest not in flags or action.dest == "help":
            continue
        value = flags[action.dest]
        if value is None:
            ok = action.dest in INVOCATION and INVOCATION[action.dest] is None
        elif action.choices:
            ok = value in action.choices
        elif action.type is not None:
            try:
                ok = not isinstance(value, str | bool) or action.type is boolean
                ok = ok and action.type(str(value)) == value
            except (argparse.ArgumentTypeError, ValueError):
                ok = False
        else:  # paths and names, or a store_true flag
            ok = isinstance(value, bool if action.nargs == 0 else str)
        if not ok:
            return f"--{action.dest.replace('_', '-')} {value!r}"
    return None


def parse(argv: list[str] | None = None) -> dict:
    """The flags given (and only those; "help" among them when asked for, see `show_help`)."""
    return vars(make_parser().parse_args(argv))


def show_help(flags: dict) -> None:
    """--help, with the defaults `flags` (from `layer`) would give, then exit."""
    make_parser(flags).print_help()
    raise SystemExit(0)


def layer(given: dict, saved: dict | None = None) -> dict:
    """Steps 1 to 3: every flag's value from the recipe, then `saved` (a resumed checkpoint's
    flags, whose recipe wins over the default), then `given`. Pair-cutting flags nobody set stay
    None, for `pair_settings`; --plot without a path becomes PLOT_NAME in --save-dir."""
    saved = saved or {}
    recipe = given.get("recipe", saved.get("recipe", DEFAULT_RECIPE))
    kept = {name: value for name, value in saved.items() if name not in NOT_RESUMED}
    flags = {**INVOCATION, **RECIPES[recipe], **dict.fromkeys(PAIR_FLAGS), **kept, **given, "recipe": recipe}
    if flags["plot"] == "":  # --plot without a path
        flags["plot"] = str(Path(flags["save_dir"]) / PLOT_NAME)
    return flags


def pair_settings(flags: dict) -> PairSettings:
    """Step 5: the pair-cutting flags, those unset as data/ was built (else PairSettings')."""
    built = built_settings(read_stats(Path(flags["data_dir"]) / "stats.json")) or {}
    fallback = {**vars(PairSettings()), **built}
    return PairSettings(**{field: fallback[field] if flags[flag] is None else flags[flag]
                           for flag, field in PAIR_FLAGS.items()})  # fmt: skip


def model_config(flags: dict, vocab_size: int) -> ModelConfig:
    """The architecture `flags` (or a recipe) describe, for a vocabulary of `vocab_size` words."""
    return _section(ModelConfig, flags, vocab_size=vocab_size)


def _section(kind: type, values: dict, **given):
    return kind(**{f.name: values[f.name] for f in fields(kind) if f.name not in given}, **given)


def resolve(
    flags: dict, pairs: PairSettings, precision: str, vocab_size: int, batches_per_epoch: int
) -> RunConfig:
    """Step 6, and the frozen configuration: `flags` from read_flags (and a sweep agent), the
    resolved pair settings and precision, and the data's vocabulary and batches an epoch."""
    values = {**flags, "precision": precision}
    if values.get("epochs"):
        values["iterations"] = values["epochs"] * batches_per_epoch
    return RunConfig(
        recipe=values["recipe"],
        model=model_config(values, vocab_size),
        pairs=pairs,
        data=_section(DataSettings, values),
        optimizer=_section(OptimizerSettings, values),
        loop=_section(LoopSettings, values),
        machine=_section(MachineSettings, values),
        output=_section(OutputSettings, values),
    )
