"""One training run, from train.py's flags to finished checkpoints: resolve, build, train.

train.py runs `main`, sweep.py `train`; config.py says in what order a run's values are resolved.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import torch

from . import config, distributed, kernels
from .batching import Example, encode_pairs, iterate_batches
from .checkpoint import (
    LAST,
    CheckpointError,
    build_model,
    check_unchanged,
    load_checkpoint,
    restore_training,
    resumed_flags,
    run_checkpoints,
    saved_flags,
)
from .cli import fail
from .cornell import CorpusError, PairSettings, read_pairs
from .devices import DeviceError, huge_pages_for_tensors, resolve_device, resolve_precision
from .download import DataError, build_data, built_settings, read_stats
from .files import FolderError, claimed_folder
from .model import Seq2Seq
from .tracking import WandbLogger, sweep_run_folder
from .training import (
    Trainer,
    TrainingError,
    TrainStep,
    make_optimizer,
    perplexity,
    plot_losses,
    without_run_end_validation,
)
from .vocab import SPECIAL_TOKENS, Vocabulary, last_turn

SAMPLE_QUERIES = 5  # validation queries whose replies W&B shows at each validation


def main(argv: list[str] | None = None) -> None:
    """train.py: a run from its flags, a failure in one line (exit 1, or DataError's code; 130 when
    interrupted) and, on rank 0, the run's summary."""
    started = time.perf_counter()
    huge_pages_for_tensors()  # before anything large is allocated: --resume loads a checkpoint
    try:
        flags, checkpoint = read_flags(argv)
        trainer, reason = train(flags, checkpoint)
    except DataError as error:
        fail(str(error), error.code)
    except (CheckpointError, CorpusError, DeviceError, FolderError, TrainingError) as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail(
            "interrupted before training started, or a second Ctrl-C: checkpoints already written are intact",
            130,
        )
    finally:
        distributed.shutdown()
    s, output = trainer.state, trainer.config["output"]
    if not trainer.world.is_main:
        raise SystemExit(130 if reason == "interrupted" else 0)
    print(
        f"{reason} at iteration {s.iteration} after {time.perf_counter() - started:.0f}s; best validation loss "
        f"{s.best_val_loss:.4f} (perplexity {perplexity(s.best_val_loss):.2f}) at iteration {s.best_iteration}; "
        f"checkpoints in {output['save_dir']}/" + (f"; plot {output['plot']}" if output["plot"] else "")
    )
    if reason == "interrupted":
        raise SystemExit(130)


def read_flags(argv: list[str] | None = None) -> tuple[dict, dict | None]:
    """Every flag's value (config.layer) and the checkpoint being resumed, if any."""
    given = config.parse(argv)
    asked_help = given.pop("help", False)
    save_dir = given.get("save_dir", config.INVOCATION["save_dir"])
    if given.get("use_wandb") and (folder := sweep_run_folder(save_dir)):
        given["save_dir"] = save_dir = folder
    checkpoint = saved = None
    if given.get("resume") is not None:
        path = Path(given["resume"] or Path(save_dir) / LAST)
        checkpoint = load_checkpoint(path)
        saved = resumed_flags(checkpoint, path, given.get("recipe"))
        given["resume"] = str(path)
    flags = config.layer(given, saved)
    if asked_help:
        config.show_help(flags)  # the defaults this run would have, a resumed run's included
    if saved:
        check_unchanged(saved, flags)
        check_pairs(saved, flags)
    return flags, checkpoint


def another_run_in(folder: str) -> str | None:
    """Why a fresh run may not train into `folder`: it would replace another run's checkpoints
    without a word, even a better bot with a worse one. None if nothing would be lost."""
    found = run_checkpoints(folder)
    if not found:
        return None
    return (f"{folder}/ holds another run's checkpoints ({', '.join(found)}): continue that run with --resume, "
            "train into another --save-dir, or replace them with --overwrite")  # fmt: skip


def check_pairs(saved: dict, flags: dict) -> None:
    """A resumed run trains on pairs cut as its checkpoint's were, unless flags given now say
    otherwise (which rebuilds data/ as they say): data/ as it is built must match. (Longer
    training pairs matter only with --long-pairs.)"""
    data_dir, pairs = flags["data_dir"], config.pair_settings(flags)
    differ = [(flag, getattr(pairs, field), saved[flag]) for flag, field in config.PAIR_FLAGS.items()
              if flag in saved and flags[flag] is None and getattr(pairs, field) != saved[flag]
              and (flag != "train_max_length" or flags["long_pairs"])]  # fmt: skip
    if not differ:
        return
    spell = lambda flag, value: f"--{flag.replace('_', '-')} {value}"  # noqa: E731
    wanted = " ".join(spell(flag, then) for flag, _, then in differ)
    built = built_settings(read_stats(Path(data_dir) / "stats.json")) is not None
    now = ", ".join(spell(flag, value) for flag, value, _ in differ)
    where = f"{data_dir}/ is cut with {now}" if built else f"{data_dir}/ is not built"
    moved = saved.get("data_dir") not in (None, data_dir)
    hint = (
        f" (it was trained on --data-dir {saved['data_dir']!r}: paths are not taken from a checkpoint)"
        if moved
        else ""
    )
    raise CorpusError(f"{where}, the resumed run's pairs with {wanted}{hint}: give {wanted} to build it so")


def directed(pairs: list[tuple[str, str]], reverse: bool) -> list[tuple[str, str]]:
    """The pairs as the model learns them: (source, reply), or (reply, query) for a backward
    model, which scores the query alone (decoding.backward_log_prob): it drops any context."""
    return [(reply, last_turn(source)) for source, reply in pairs] if reverse else pairs


def load_data(flags: dict, vocab: Vocabulary | None, world: distributed.World):
    """Build data/ if it is missing or cut differently from the flags (rank 0 of each machine
    builds, the others wait); return the pair settings it was cut with, the vocabulary
    (data/vocab.json unless resuming), the encoded training and validation examples, and the
    first validation queries."""
    if world.local_rank == 0:  # one builder per machine; the split is deterministic
        build_data(flags["data_dir"], config.pair_settings(flags), flags["source"], flags["url"])
    distributed.barrier()
    pairs = config.pair_settings(flags)  # as the build resolved them
    data_dir = Path(flags["data_dir"])
    if vocab is None:
        try:
            vocab = Vocabulary.from_dict(json.loads((data_dir / "vocab.json").read_text(encoding="utf-8")))
            if len(vocab) == len(SPECIAL_TOKENS):
                raise ValueError("it holds no word")
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as error:
            raise CorpusError(
                f"cannot use {data_dir}/vocab.json ({error}); rebuild with download_data.py --force"
            ) from None
    longest = max(pairs.train_max_length, pairs.max_length) if flags["long_pairs"] else pairs.max_length
    context = pairs.context
    train = encode_pairs(
        directed(read_pairs(data_dir / "train.txt"), flags["reverse"]), vocab, longest, context
    )
    if flags["long_pairs"] and pairs.train_max_length <= pairs.max_length and world.is_main:
        print(
            f"note: --long-pairs, but {data_dir}/ holds no training pairs longer than --max-length "
            f"{pairs.max_length}; rebuild it with --train-max-length {PairSettings().train_max_length} to train on them",
            file=sys.stderr,
        )
    val_pairs = directed(read_pairs(data_dir / "val.txt"), flags["reverse"])
    val = encode_pairs(val_pairs, vocab, pairs.max_length, context)
    if not val:
        raise CorpusError(
            f"{data_dir}/val.txt has no pairs of at most {pairs.max_length} tokens to validate on"
        )
    return pairs, vocab, train, val, [query for query, _ in val_pairs[:SAMPLE_QUERIES]]


def build(cfg: config.RunConfig, model: Seq2Seq, vocab: Vocabulary, train: list[Example], val: list[Example],
          checkpoint: dict | None, world: distributed.World) -> Trainer:  # fmt: skip
    """Optimizer, step and loop around `model` as `cfg` says (restored from `checkpoint` when
    resuming)."""
    opt, loop = cfg.optimizer, cfg.loop
    rates = (opt.learning_rate, opt.learning_rate * opt.decoder_learning_ratio)
    optimizer = make_optimizer(model, opt.optimizer, opt.learning_rate, opt.decoder_learning_ratio)
    step = TrainStep(model, optimizer, opt.clip, cfg.machine.precision, opt.label_smoothing)
    state = None
    if checkpoint:
        saved_interval = checkpoint["config"]["loop"].get("eval_every", loop.eval_every)
        state = without_run_end_validation(
            restore_training(checkpoint, optimizer, step.scaler), saved_interval
        )
    for group, lr in zip(optimizer.param_groups, rates):
        group["lr"] = lr  # a resumed run may be given new rates
    if world.size > 1:  # dropout masks differ between ranks (and after a resume, which restored one state)
        torch.manual_seed(loop.seed + 7919 * world.rank + (state.iteration if state else 0))
    if cfg.machine.compile:
        kernels.keep_eager_under_compile()
        model.compile(dynamic=True)  # free-running batches
        step.losses.compile(dynamic=True)  # teacher-forced ones
    val_batches = iterate_batches(val, loop.batch_size)
    return Trainer(step, vocab, train, val_batches, loop, cfg.output.save_dir, cfg.to_dict(), state)


def train(flags: dict, checkpoint: dict | None = None, observers: tuple = ()) -> tuple[Trainer, str]:
    """Resolve, build and run a training (with W&B when asked); return the trainer and why it
    stopped. `flags` and `checkpoint` are read_flags'."""
    try:
        world, device = distributed.init_from_env(resolve_device(flags["device"]))
    except ValueError as error:  # e.g. torchrun with MPS, or more local ranks than GPUs
        raise TrainingError(str(error)) from None
    with ExitStack() as finally_:
        problem = None
        if world.is_main:  # the folder is writable and this run's alone, before any work is done
            try:
                finally_.enter_context(claimed_folder(flags["save_dir"]))
                if not checkpoint and not flags["overwrite"]:
                    problem = another_run_in(flags["save_dir"])
            except FolderError as error:
                problem = str(error)
        problem = distributed.from_main(problem)  # every rank stops, not only the one that knows
        if problem:
            raise FolderError(problem)
        logger = WandbLogger(flags) if flags["use_wandb"] and world.is_main else None
        if logger:
            finally_.callback(lambda: logger.finish(flags["plot"]))
        flags = distributed.from_main({**flags, **(logger.agent_values if logger else {})})  # rank 0's run
        if checkpoint:
            check_unchanged(saved_flags(checkpoint), flags)  # nor may a sweep agent change them
        trainer, cfg, sample_queries = _build_run(flags, checkpoint, world, device)
        if logger:
            logger.watch(trainer, sample_queries, cfg)  # first, so it sees the validation a pruner stops on
        trainer.observers += observers
        try:
            reason = trainer.run()
        finally:
            if cfg.output.plot and world.is_main:
                title = f"{cfg.model.attn_model} attention, hidden {cfg.model.hidden_size}, {cfg.machine.precision}"
                try:
                    plot_losses(trainer.state.history, cfg.output.plot, title)
                except OSError as error:
                    print(
                        f"note: cannot write the plot {cfg.output.plot}: {error.strerror or error}",
                        file=sys.stderr,
                    )
    return trainer, reason


def _build_run(flags: dict, checkpoint: dict | None, world: distributed.World, device: torch.device):
    """The trainer, the frozen configuration and the sample queries of a run."""
    precision, why = resolve_precision(flags["precision"], device)
    if world.is_main:
        print(f"{device}, {precision} ({why})", file=sys.stderr)
    if flags["num_threads"]:
        torch.set_num_threads(flags["num_threads"])
    if checkpoint:
        model, vocab = build_model(checkpoint, device)
    else:
        torch.manual_seed(flags["seed"])  # every rank builds the same model (DDP also broadcasts rank 0's)
        vocab = None
    pairs, vocab, train_examples, val, sample_queries = load_data(flags, vocab, world)
    batches_per_epoch = len(train_examples) // (flags["batch_size"] * world.size)
    if batches_per_epoch == 0:
        raise CorpusError(
            f"{len(train_examples)} training pairs are fewer than one batch of {flags['batch_size'] * world.size}"
        )
    cfg = config.resolve(flags, pairs, precision, len(vocab), batches_per_epoch)
    if not checkpoint:
        model = Seq2Seq(cfg.model).to(device)
    trainer = build(cfg, model, vocab, train_examples, val, checkpoint, world)
    if world.is_main:
        resuming = f"resuming {flags['resume']} at iteration {trainer.state.iteration}"
        print(
            f"{resuming if checkpoint else 'training'}"
            f"{f' on {world.size} ranks, batch {cfg.loop.batch_size} each' if world.size > 1 else ''}: "
            f"{len(train_examples):,} pairs ({batches_per_epoch:,} batches an epoch), {len(val):,} validation "
            f"pairs, {len(vocab):,} words, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
            f"{device}, {precision}",
            file=sys.stderr,
        )
    return trainer, cfg, sample_queries
