"""Train the seq2seq chatbot on data/train.txt, validating on data/val.txt.

    python train.py                                     # the tuned recipe (README: Conversation quality)
    python train.py --recipe tutorial                   # the PyTorch tutorial's recipe, 4,000 iterations
    python train.py --precision fp32                    # fp32 even where bf16 is native (the default: auto)
    python train.py --resume --iterations 10000         # continue checkpoints/last.pth to 10,000

Builds data/ first if it is missing (give --source for an offline copy of the corpus).
Every flag is also accepted in snake case (--learning_rate=0.0003), as a W&B agent passes it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from seq2seq import distributed, kernels
from seq2seq.batching import encode_pairs, iterate_batches
from seq2seq.checkpoint import CheckpointError, build_model, load_checkpoint
from seq2seq.cli import (
    ArgumentParser,
    add_data_arguments,
    boolean,
    build_data,
    decay_factor,
    dropout_rate,
    fail,
    non_negative_int,
    pair_settings,
    positive_float,
    positive_int,
    probability,
)
from seq2seq.cornell import CorpusError, PairSettings, read_pairs
from seq2seq.devices import DEVICES, PRECISIONS, DeviceError, resolve_device, resolve_precision
from seq2seq.model import ATTENTION_SCORES, ModelConfig, Seq2Seq
from seq2seq.tracking import WANDB_MODES, WandbLogger
from seq2seq.training import (
    OPTIMIZERS,
    LoopSettings,
    Trainer,
    TrainingError,
    TrainStep,
    make_optimizer,
    perplexity,
    plot_losses,
)
from seq2seq.vocab import Vocabulary

ARCHITECTURE = ("hidden_size", "encoder_layers", "decoder_layers", "attn_model", "dropout", "input_dropout",
                "output_dropout", "tie_embeddings")  # fmt: skip
RESUME_KEYS = ("args", "optimizer", "rng", "iteration", "history", "best_val_loss", "best_iteration")
# flags about this machine and this invocation, never taken from a checkpoint being resumed
MACHINE_FLAGS = ("resume", "device", "num_threads", "compile", "save_dir", "plot", "source", "url",
                 "use_wandb", "wandb_project", "wandb_entity", "wandb_mode")  # fmt: skip
SAVE_DIR = "checkpoints"  # --save-dir's default, read by both parsers below
SAMPLE_QUERIES = 5  # validation queries whose replies W&B shows at each validation

# Named sets of defaults. "tutorial" is the PyTorch chatbot tutorial's recipe, as the seed ran it;
# "tuned" reached 21.9% lower validation perplexity on the same validation pairs (README
# "Conversation quality", measured with benchmarks/quality.py). Flags given explicitly still win.
TUTORIAL = dict(iterations=4000, batch_size=64, learning_rate=1e-4, decoder_learning_ratio=5.0, clip=50.0,
                teacher_forcing_ratio=1.0, dropout=0.1, input_dropout=0.0, output_dropout=0.0,
                tie_embeddings=False, label_smoothing=0.0, warmup=0, lr_decay=1.0, patience=0,
                long_pairs=False, bucket_pool=0)  # fmt: skip
RECIPES = {
    "tuned": {
        **TUTORIAL,
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
        "iterations": 5000,
    },
    "tutorial": TUTORIAL,
}


def make_parser(recipe: str = "tuned") -> ArgumentParser:
    """The flags, with `recipe`'s values as their defaults (so --help shows them)."""
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", choices=RECIPES, default=recipe,
                   help="the defaults of the flags below: tuned, or the tutorial's (README: Conversation "
                   "quality); a resumed run keeps its own")  # fmt: skip
    length = p.add_mutually_exclusive_group()
    length.add_argument("--iterations", type=positive_int, default=4000, help="total training iterations")
    length.add_argument(
        "--epochs", type=positive_int, help="total passes over train.txt (instead of --iterations)"
    )
    p.add_argument("--batch-size", type=positive_int, default=64, help="pairs per iteration")
    p.add_argument(
        "--learning-rate", type=positive_float, default=1e-4, help="encoder and embedding learning rate"
    )
    p.add_argument(
        "--decoder-learning-ratio", type=positive_float, default=5.0, help="decoder rate = ratio × rate"
    )
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="optimizer")
    p.add_argument("--clip", type=positive_float, default=50.0, help="max gradient norm over all parameters")
    p.add_argument(
        "--teacher-forcing-ratio", type=probability, default=1.0, help="share of teacher-forced batches"
    )
    p.add_argument("--hidden-size", type=positive_int, default=500, help="embedding and GRU size")
    p.add_argument("--encoder-layers", type=positive_int, default=2, help="bidirectional GRU layers")
    p.add_argument("--decoder-layers", type=positive_int, default=2, help="decoder GRU layers")
    p.add_argument(
        "--dropout", type=dropout_rate, default=0.1, help="dropout between GRU layers, on decoder input"
    )
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
    p.add_argument("--label-smoothing", type=dropout_rate,
                   help="training targets' smoothing (validation loss stays plain cross-entropy)")  # fmt: skip
    p.add_argument("--warmup", type=non_negative_int, help="iterations over which learning rates rise from 0")
    p.add_argument("--lr-decay", type=decay_factor,
                   help="multiply learning rates by this after each validation that does not improve (1: never)")  # fmt: skip
    p.add_argument("--bucket-pool", type=non_negative_int,
                   help="length-bucketed batches: sort pairs by length within pools of this many batches, "
                   "then shuffle the batches (0: random batches)")  # fmt: skip
    p.add_argument("--attn-model", choices=ATTENTION_SCORES, default="dot", help="Luong attention score")
    add_data_arguments(p, keep_built=True)
    p.add_argument("--save-dir", default=SAVE_DIR, help="folder for last.pth and best_model.pth")
    p.add_argument("--save-every", type=positive_int, default=500, help="write last.pth every N iterations")
    p.add_argument("--eval-every", type=positive_int, default=250, help="validate every N iterations")
    p.add_argument(
        "--patience", type=non_negative_int, help="stop after N validations without improvement (0: never)"
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="",
        metavar="PATH",
        help="continue a run from PATH (default: last.pth in --save-dir)",
    )
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed for weights, batches and dropout")
    p.add_argument("--device", choices=DEVICES, default="auto", help="where to train")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="bf16 autocast (CPU, CUDA), fp16 with gradient scaling (CUDA), fp32; auto: bf16 where "
                   "the hardware runs it natively, else fp32")  # fmt: skip
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (the GRU recurrence and the loss kernel stay eager)")  # fmt: skip
    p.add_argument("--num-threads", type=positive_int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--use-wandb", action="store_true", help="log to Weights & Biases (see README)")
    p.add_argument("--wandb-project", default="chatbot-seq2seq", help="W&B project")
    p.add_argument("--wandb-entity", help="W&B entity (user or team; default: yours)")
    p.add_argument("--wandb-mode", choices=WANDB_MODES,
                   help="default: online with an API key, else offline with a notice")  # fmt: skip
    p.add_argument(
        "--plot",
        nargs="?",
        const="images/training_loss.png",
        metavar="PATH",
        help="draw train and validation loss to PATH (default images/training_loss.png)",
    )
    p.set_defaults(**RECIPES[recipe])
    return p


def model_config(args: argparse.Namespace, vocab_size: int) -> ModelConfig:
    """The architecture the flags describe."""
    return ModelConfig(vocab_size, **{name: getattr(args, name) for name in ARCHITECTURE})


def _recipe_and_resume(argv: list[str] | None) -> argparse.Namespace:
    """Just --recipe, --resume and --save-dir, read before the full parser is built."""
    p = ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--recipe", choices=RECIPES)
    p.add_argument("--resume", nargs="?", const="")
    p.add_argument("--save-dir", default=SAVE_DIR)
    return p.parse_known_args(argv)[0]


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict | None]:
    """Flags, and the checkpoint to resume from. On resume the saved flags are the defaults, so
    only flags given now change; the architecture cannot change."""
    early = _recipe_and_resume(argv)
    if early.resume is None:
        recipe = early.recipe or "tuned"
        parser = make_parser(recipe)
        args = parser.parse_args(argv)
        if args.recipe != recipe:  # an abbreviated --recipe, which the early reading does not see
            parser.error("spell --recipe in full")
        return args, None
    path = Path(early.resume or Path(early.save_dir) / "last.pth")
    checkpoint = load_checkpoint(path)
    missing = [key for key in RESUME_KEYS if key not in checkpoint]
    if missing or not isinstance(checkpoint["args"], dict) or "optimizer" not in checkpoint["args"]:
        raise CheckpointError(
            f"{path} cannot be resumed: it lacks the training state ({', '.join(missing) or 'args'})"
        )
    saved = checkpoint["args"]
    recipe = saved.get("recipe", "tutorial")  # runs from before recipes had the tutorial's values
    if early.recipe not in (None, recipe):
        raise CheckpointError(
            f"--recipe {early.recipe} differs from the checkpoint's {recipe}; a resumed run keeps it"
        )
    parser = make_parser(recipe)
    parser.set_defaults(**{k: v for k, v in saved.items() if k not in MACHINE_FLAGS} | {"recipe": recipe})
    args = parser.parse_args(argv)
    args.resume = str(path)
    fixed = {
        **{name: checkpoint["model_config"].get(name, getattr(ModelConfig, name)) for name in ARCHITECTURE},
        "optimizer": saved["optimizer"],
    }
    for name, value in fixed.items():
        if getattr(args, name) != value:
            raise CheckpointError(
                f"--{name.replace('_', '-')} {getattr(args, name)} differs from the checkpoint's {value}; "
                f"{'the architecture' if name in ARCHITECTURE else 'the optimizer'} cannot change on resume"
            )
    return args, checkpoint


def load_data(args: argparse.Namespace, vocab: Vocabulary | None, world: distributed.World):
    """Build data/ if it is missing or cut differently from the flags (rank 0 builds, the others
    wait); return the vocabulary (data/vocab.json unless resuming), the encoded training and
    validation examples, and the first validation queries."""
    if world.local_rank == 0:  # one builder per machine; the split is deterministic
        build_data(args)
    distributed.barrier()
    if world.local_rank != 0:
        pair_settings(args)  # the flags as the builder resolved them
    data_dir = Path(args.data_dir)
    if vocab is None:
        try:
            vocab = Vocabulary.from_dict(json.loads((data_dir / "vocab.json").read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError) as error:
            raise CorpusError(
                f"cannot read {data_dir}/vocab.json ({error}); rebuild with download_data.py --force"
            ) from None
    longest = max(args.train_max_length, args.max_length) if args.long_pairs else args.max_length
    train = encode_pairs(read_pairs(data_dir / "train.txt"), vocab, longest)
    if args.long_pairs and args.train_max_length <= args.max_length and world.is_main:
        print(
            f"note: --long-pairs, but {data_dir}/ holds no training pairs longer than --max-length "
            f"{args.max_length}; rebuild it with --train-max-length {PairSettings().train_max_length} to train on them",
            file=sys.stderr,
        )
    val_pairs = read_pairs(data_dir / "val.txt")
    val = encode_pairs(val_pairs, vocab, args.max_length)
    if not val:
        raise CorpusError(
            f"{data_dir}/val.txt has no pairs of at most {args.max_length} tokens to validate on"
        )
    return vocab, train, val, [query for query, _ in val_pairs[:SAMPLE_QUERIES]]


def setup(
    args: argparse.Namespace,
    checkpoint: dict | None,
    device: torch.device,
    world: distributed.World,
) -> tuple[Trainer, list[str]]:
    """Data, model, optimizer and loop from the flags (and the checkpoint when resuming); also
    the first validation queries, for sample replies."""
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    if checkpoint:
        model, vocab = build_model(checkpoint, device)
    else:
        torch.manual_seed(args.seed)  # every rank builds the same model (DDP also broadcasts rank 0's)
        vocab = None
    vocab, train, val, sample_queries = load_data(args, vocab, world)
    if not checkpoint:
        model = Seq2Seq(model_config(args, len(vocab))).to(device)
    batches_per_epoch = len(train) // (args.batch_size * world.size)
    if batches_per_epoch == 0:
        raise CorpusError(
            f"{len(train)} training pairs are fewer than one batch of {args.batch_size * world.size}"
        )
    if args.epochs:
        args.iterations, args.epochs = args.epochs * batches_per_epoch, None
    rates = (args.learning_rate, args.learning_rate * args.decoder_learning_ratio)
    optimizer = make_optimizer(model, args.optimizer, args.learning_rate, args.decoder_learning_ratio)
    step = TrainStep(model, optimizer, args.clip, args.precision, args.label_smoothing)
    state = Trainer.restore(checkpoint, step) if checkpoint else None
    for group, lr in zip(optimizer.param_groups, rates):
        group["lr"] = lr  # a resumed run may be given new rates
    if world.size > 1:  # dropout masks differ between ranks (and after a resume, which restored one state)
        torch.manual_seed(args.seed + 7919 * world.rank + (state.iteration if state else 0))
    if args.compile:
        kernels.keep_eager_under_compile()
        model.compile(dynamic=True)  # free-running batches
        step.losses.compile(dynamic=True)  # teacher-forced ones
    loop = LoopSettings(args.iterations, args.batch_size, args.teacher_forcing_ratio, args.eval_every,
                        args.save_every, args.patience, args.seed, args.warmup, args.lr_decay,
                        args.bucket_pool)  # fmt: skip
    if world.is_main:
        print(
            f"{f'resuming {args.resume} at iteration {state.iteration}' if state else 'training'}"
            f"{f' on {world.size} ranks, batch {args.batch_size} each' if world.size > 1 else ''}: "
            f"{len(train):,} pairs ({batches_per_epoch:,} batches an epoch), {len(val):,} validation pairs, "
            f"{len(vocab):,} words, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
            f"{device}, {args.precision}",
            file=sys.stderr,
        )
    saved_args = {k: v for k, v in vars(args).items() if k != "resume"}
    val_batches = iterate_batches(val, args.batch_size)
    return Trainer(step, vocab, train, val_batches, loop, args.save_dir, saved_args, state), sample_queries


def train(args: argparse.Namespace, checkpoint: dict | None, observers: tuple = ()) -> tuple[Trainer, str]:
    """Set up and run training (with W&B when asked); return the trainer and why it stopped."""
    try:
        world, device = distributed.init_from_env(resolve_device(args.device))
    except ValueError as error:  # e.g. torchrun with MPS, or more local ranks than GPUs
        raise TrainingError(str(error)) from None
    logger = (
        WandbLogger(args) if args.use_wandb and world.is_main else None
    )  # may take a sweep agent's values
    vars(args).update(distributed.from_main(vars(args)))  # every rank runs rank 0's configuration
    args.precision, why = resolve_precision(args.precision, device)  # what the checkpoint records
    if world.is_main:
        print(f"{device}, {args.precision} ({why})", file=sys.stderr)
    trainer, sample_queries = setup(args, checkpoint, device, world)
    if logger:
        logger.watch(trainer, sample_queries, args)  # first, so it sees the validation a pruner stops on
    trainer.observers += observers
    try:
        reason = trainer.run()
    finally:
        if args.plot and world.is_main:
            title = f"{args.attn_model} attention, hidden {args.hidden_size}, {args.precision}"
            plot_losses(trainer.state.history, args.plot, title)
        if logger:
            logger.finish(args.plot)
    return trainer, reason


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    try:
        args, checkpoint = parse_args(argv)
        trainer, reason = train(args, checkpoint)
    except (CheckpointError, CorpusError, DeviceError, TrainingError) as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail(
            "interrupted before training started, or a second Ctrl-C: checkpoints already written are intact",
            130,
        )
    finally:
        distributed.shutdown()
    s = trainer.state
    if not trainer.world.is_main:
        raise SystemExit(130 if reason == "interrupted" else 0)
    print(
        f"{reason} at iteration {s.iteration} after {time.perf_counter() - started:.0f}s; best validation loss "
        f"{s.best_val_loss:.4f} (perplexity {perplexity(s.best_val_loss):.2f}) at iteration {s.best_iteration}; "
        f"checkpoints in {args.save_dir}/" + (f"; plot {args.plot}" if args.plot else "")
    )
    if reason == "interrupted":
        raise SystemExit(130)


if __name__ == "__main__":
    main()
