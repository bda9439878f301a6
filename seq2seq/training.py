"""The training loop: optimisation step, validation, checkpoints, early stopping, the loss plot.

run.py resolves a run and builds the pieces; everything that happens per iteration lives here.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.profiler import record_function
from tqdm import tqdm

from . import distributed
from .batching import Batch, BatchSchedule, Example, collate
from .checkpoint import BEST, LAST, TrainState, save_checkpoint, training_payload
from .cli import first_line
from .config import OPTIMIZERS, LoopSettings
from .devices import autocast
from .files import pyplot, save_figure
from .model import Seq2Seq
from .vocab import Vocabulary


class TrainingError(Exception):
    """Training cannot go on (e.g. the loss diverged); the message is one line for the user."""


def make_optimizer(model: Seq2Seq, name: str, lr: float, decoder_ratio: float) -> torch.optim.Optimizer:
    """One optimizer, two groups: encoder and the shared embedding at `lr`, decoder at lr × ratio.

    (The tutorial gives the shared embedding to both of its optimizers, so it is stepped twice
    per iteration; here it belongs to the encoder group only.)
    """
    encoder = list(model.encoder.parameters())  # holds the shared embedding
    embedding = {id(p) for p in model.embedding.parameters()}
    decoder = [p for p in model.decoder.parameters() if id(p) not in embedding]
    groups = [{"params": encoder, "lr": lr}, {"params": decoder, "lr": lr * decoder_ratio}]
    if name == "adam":
        device = next(model.parameters()).device
        return torch.optim.Adam(groups, lr=lr, fused=device.type in ("cpu", "cuda"))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}")


class _Losses(nn.Module):
    """`Seq2Seq.token_losses` as a module's forward, the call DistributedDataParallel wraps."""

    def __init__(self, model: Seq2Seq):
        super().__init__()
        self.model = model

    def forward(self, batch: Batch, teacher_forcing: bool, label_smoothing: float) -> tuple[Tensor, Tensor]:
        return self.model.token_losses(batch, teacher_forcing, label_smoothing)


class TrainStep:
    """One optimisation step: forward (teacher-forced fast path or free-running), loss, backward,
    gradient clipping over all parameters, update. fp16 goes through a gradient scaler.

    Under torchrun, `model` runs wrapped in DistributedDataParallel, which averages gradients
    over ranks. Each rank scales its summed token losses by world size / all ranks' tokens, so the
    averaged gradient is exactly that of the mean over every token of the global batch: N ranks
    with batch B step like one process with batch N·B.
    """

    def __init__(
        self,
        model: Seq2Seq,
        optimizer: torch.optim.Optimizer,
        clip: float,
        precision: str = "fp32",
        label_smoothing: float = 0.0,
    ):
        self.model, self.optimizer, self.clip = model, optimizer, clip
        self.label_smoothing = label_smoothing
        self.device = next(model.parameters()).device
        self.precision = precision
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.world = distributed.current()
        self.losses = _Losses(model)
        if self.world.size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.losses = nn.parallel.DistributedDataParallel(self.losses, device_ids=ids)

    def __call__(self, batch: Batch, teacher_forcing: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the global batch's loss (mean per target token, with the label smoothing it is
        trained with) and the gradient norm before clipping."""
        batch = batch.to(self.device)
        with autocast(self.device, self.precision):
            losses, _ = self.losses(batch, teacher_forcing, self.label_smoothing)
        with record_function("loss"):  # named ranges for profile.py; near free when not profiling
            total = losses.sum()
            sums = distributed.all_reduce_sum(torch.stack([total.detach(), total.new_tensor(batch.n_tokens)]))
            loss = sums[0] / sums[1]
            if not torch.isfinite(loss):  # the same verdict on every rank
                raise TrainingError(
                    f"the loss became {loss.item()}; lower --learning-rate or --clip, or use fp32"
                )
        with record_function("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total * self.world.size / sums[1]).backward()
        with record_function("optimizer step"):
            self.scaler.unscale_(self.optimizer)
            grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return loss, grad_norm.detach()


@torch.no_grad()
def teacher_forced_scores(
    model: Seq2Seq, batches: list[Batch], precision: str = "fp32"
) -> tuple[float, float]:
    """Loss per target token and token accuracy (argmax = target) over all `batches`, teacher-forced.

    Every non-PAD target token weighs the same, whatever batch it is in.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, correct, tokens = 0.0, 0, 0
    try:
        for batch in batches:
            with autocast(device, precision):
                losses, hits = model.token_losses(batch.to(device), hits=True)
            total += losses.sum().item()
            correct += int(hits.sum())
            tokens += batch.n_tokens
    finally:
        model.train(was_training)
    return total / tokens, correct / tokens


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


@dataclass
class _Window:
    """Running training metrics between two reports (every 10 iterations)."""

    started: float
    loss: float = 0.0
    iterations: int = 0
    tokens: int = 0


def without_run_end_validation(state: TrainState, eval_every: int) -> TrainState:
    """`state` without the validation its run made because it ended before its first regular one
    (so that best_model.pth always exists; `eval_every` is that run's). A run that goes on
    validates at multiples of its own interval only, and its best loss, patience count and
    learning-rate schedule must see exactly the validations an unbroken run sees."""
    val = state.history["val"]
    if not val or val[-1][0] != state.iteration or state.iteration % eval_every == 0:
        return state
    best, best_iteration, without = math.inf, 0, 0
    for iteration, loss in val[:-1]:
        if loss < best:
            best, best_iteration, without = loss, iteration, 0
        else:
            without += 1
    clock = state.clock[:-1] if state.clock and state.clock[-1][0] == state.iteration else state.clock
    history = {**state.history, "val": val[:-1]}
    return dataclasses.replace(state, best_val_loss=best, best_iteration=best_iteration,
                               evals_without_improvement=without, history=history, clock=clock)  # fmt: skip


class Trainer:
    """Runs a TrainStep over a BatchSchedule, validating and checkpointing as it goes.

    Observers (W&B logging, a sweep's pruner) may define `after_steps(iteration, metrics)`,
    called with running training metrics every 10 iterations, and `after_validation(iteration,
    loss)`; an exception raised there stops the run.
    """

    def __init__(
        self,
        step: TrainStep,
        vocab: Vocabulary,
        train_examples: list[Example],
        val_batches: list[Batch],
        loop: LoopSettings,
        save_dir: str | Path,
        config: dict,
        state: TrainState | None = None,
        observers: tuple = (),
    ):
        """`config` is what checkpoints record of the run (config.RunConfig.to_dict())."""
        self.step, self.vocab, self.examples, self.val_batches = step, vocab, train_examples, val_batches
        self.loop, self.save_dir, self.config = loop, Path(save_dir), config
        self.state = state or TrainState()
        self.observers = list(observers)
        self.world = step.world
        lengths = [(len(src), len(tgt)) for src, tgt in train_examples] if loop.bucket_pool else None
        self.schedule = BatchSchedule(
            len(train_examples),
            loop.batch_size,
            loop.seed,
            self.world.rank,
            self.world.size,
            lengths,
            loop.bucket_pool,
        )
        self.base_rates = [group["lr"] for group in step.optimizer.param_groups]
        self._stop_requested = False
        self._started, self._seconds_before = time.perf_counter(), self.state.seconds

    # -- checkpoints -----------------------------------------------------------------------------
    def save(self, name: str) -> Path:
        """Write a checkpoint (rank 0 only: every rank holds the same weights)."""
        path = self.save_dir / name
        self.state.seconds = self.elapsed()
        if self.world.is_main:
            step = self.step
            payload = training_payload(
                step.model, self.vocab, self.config, step.optimizer, step.scaler, self.state
            )
            try:
                save_checkpoint(path, payload)
            except (
                OSError,
                RuntimeError,
            ) as error:  # a full disk reaches torch.save's writer as a RuntimeError
                cause = error.__cause__ or error.__context__ or error
                reason = getattr(cause, "strerror", None) or first_line(cause)
                if shutil.disk_usage(self.save_dir).free < 2**20:  # torch's writer names no cause
                    reason = f"the disk is full: {reason}"
                raise TrainingError(
                    f"cannot write {path} ({reason}); the checkpoints written before are intact"
                ) from None
        return path

    def elapsed(self) -> float:
        """Seconds of training so far, earlier calls of a resumed run included."""
        return self._seconds_before + time.perf_counter() - self._started

    # -- the loop ----------------------------------------------------------------------------------
    def validate(self) -> float:
        """Validation loss; a new best is saved to best_model.pth at once."""
        s = self.state
        loss, _ = teacher_forced_scores(self.step.model, self.val_batches, self.step.precision)
        loss = distributed.from_main(loss)  # ranks agree on "best" and on early stopping, bit for bit
        s.history["val"].append([s.iteration, loss])
        s.clock.append([s.iteration, round(self.elapsed(), 3)])
        if loss < s.best_val_loss:
            s.best_val_loss, s.best_iteration, s.evals_without_improvement = loss, s.iteration, 0
            self.save(BEST)
        else:
            s.evals_without_improvement += 1
        self._notify("after_validation", s.iteration, loss)
        return loss

    def _notify(self, event: str, *args) -> None:
        for observer in self.observers:
            handler = getattr(observer, event, None)
            if handler is not None:
                handler(*args)

    def _request_stop(self, signum, frame) -> None:
        if signum == signal.SIGHUP:  # the terminal is gone: writing to it would fail the save
            devnull = os.open(os.devnull, os.O_WRONLY)
            for fd in (1, 2):
                os.dup2(devnull, fd)
            os.close(devnull)
        elif signum == signal.SIGINT and self._stop_requested:  # a second Ctrl-C stops at once, unsaved
            raise KeyboardInterrupt
        self._stop_requested = True

    def run(self) -> str:
        """Train up to `loop.iterations`; return why it stopped: done, early stop or interrupt.

        Validation happens at multiples of `eval_every` only, so a run split by a resume sees
        exactly the validations (and early-stopping decisions) of one uninterrupted run.
        Ctrl-C, SIGTERM or SIGHUP finishes the current iteration, then saves last.pth and stops.
        """
        loop, s = self.loop, self.state
        self._started, self._seconds_before = time.perf_counter(), s.seconds
        reason = "done"
        stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # SIGHUP: the terminal was closed
        previous = {sig: signal.signal(sig, self._request_stop) for sig in stops}
        bar = tqdm(total=loop.iterations, initial=s.iteration, unit="it", desc="training", dynamic_ncols=True,
                   disable=not self.world.is_main)  # fmt: skip
        window = _Window(time.perf_counter())
        try:
            while s.iteration < loop.iterations:
                grad_norm = self._step(window)
                bar.update(1)
                if window.iterations == 10 or s.iteration == loop.iterations:
                    self._report(window, grad_norm, bar)
                    window = _Window(time.perf_counter())
                if s.iteration % loop.eval_every == 0:
                    val = self.validate()
                    if self.world.is_main:
                        bar.write(
                            f"iteration {s.iteration}: train loss {self.recent_train_loss():.4f}, "
                            f"val loss {val:.4f}, val perplexity {perplexity(val):.2f}"
                        )
                    if loop.patience and s.evals_without_improvement >= loop.patience:
                        reason = "early stop"
                        break
                if s.iteration % loop.save_every == 0:
                    self.save(LAST)
                if distributed.any_rank(self._stop_requested, self.step.device):  # all ranks stop together
                    reason = "interrupted"
                    break
        finally:
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if not s.history["val"]:
            self.validate()  # a run always ends with a validated best_model.pth
        self.save(LAST)
        return reason

    def _step(self, window: _Window) -> torch.Tensor:
        """Train iteration `state.iteration + 1`, adding it to `window`; return its gradient norm."""
        s = self.state
        batch = collate([self.examples[i] for i in self.schedule.indices(s.iteration)])
        scale = self.lr_scale(s.iteration)
        for group, rate in zip(self.step.optimizer.param_groups, self.base_rates):
            group["lr"] = rate * scale
        try:
            loss, grad_norm = self.step(batch, self.teacher_forcing(s.iteration))
        except TrainingError as error:
            raise TrainingError(
                f"{error} (stopped at iteration {s.iteration + 1}; saved checkpoints are untouched)"
            ) from None
        s.iteration += 1
        s.history["train"].append([s.iteration, loss.item()])
        window.loss += s.history["train"][-1][1]
        window.iterations += 1
        window.tokens += batch.n_tokens
        return grad_norm

    def _report(self, window: _Window, grad_norm: torch.Tensor, bar: tqdm) -> None:
        """The window's running metrics to the progress bar and the observers."""
        groups, best = self.step.optimizer.param_groups, self.state.best_val_loss
        metrics = {
            "train/loss": window.loss / window.iterations,
            "train/tokens_per_s": window.tokens / (time.perf_counter() - window.started),
            "train/grad_norm": grad_norm.item(),
            "train/lr_encoder": groups[0]["lr"],
            "train/lr_decoder": groups[1]["lr"],
        }
        bar.set_postfix(
            loss=f"{metrics['train/loss']:.3f}",
            tok_s=f"{metrics['train/tokens_per_s']:,.0f}",
            best_val=f"{best:.3f}" if best < math.inf else "-",
        )
        self._notify("after_steps", self.state.iteration, metrics)

    def teacher_forcing(self, iteration: int) -> bool:
        """Whether iteration `iteration` is teacher-forced: a pure function of the seed and the
        iteration, so every rank agrees and a resumed run decides as an unbroken one."""
        ratio = self.loop.teacher_forcing_ratio
        return ratio >= 1.0 or random.Random(self.loop.seed * 1_000_003 + iteration).random() < ratio

    def lr_scale(self, iteration: int) -> float:
        """The learning rates' multiplier before iteration `iteration + 1`: a linear warm-up, then
        `lr_decay` to the power of the validations so far that did not beat the best before them.
        A pure function of the iteration and the validation history, so a resume continues it."""
        loop, best, plateaus = self.loop, math.inf, 0
        for _, loss in self.state.history["val"]:
            if loss < best:
                best = loss
            else:
                plateaus += 1
        warmup = min(1.0, (iteration + 1) / loop.warmup) if loop.warmup else 1.0
        return warmup * loop.lr_decay**plateaus

    def recent_train_loss(self) -> float:
        recent = self.state.history["train"][-self.loop.eval_every :]
        return sum(loss for _, loss in recent) / max(1, len(recent))


def plot_losses(history: dict, path: str | Path, title: str = "") -> None:
    """Train loss (averaged over windows) and validation loss against iterations, as a PNG."""
    train, val = history["train"], history["val"]
    fig, ax = pyplot().subplots(figsize=(7, 4))
    if train:
        window = max(1, len(train) // 100)
        xs = [train[min(i + window, len(train)) - 1][0] for i in range(0, len(train), window)]
        ys = [
            sum(v for _, v in train[i : i + window]) / len(train[i : i + window])
            for i in range(0, len(train), window)
        ]
        ax.plot(xs, ys, label=f"train (mean of {window} iterations)", color="tab:blue")
    if val:
        ax.plot([i for i, _ in val], [v for _, v in val], "o-", label="validation", color="tab:orange")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy per token")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)
