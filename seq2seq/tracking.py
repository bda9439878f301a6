"""Optional experiment tracking with Weights & Biases.

Nothing here imports wandb until a run asks for it (`train.py --use-wandb`). Logged names:

    train/loss, train/tokens_per_s, train/grad_norm,   every 10 iterations (running means)
    train/lr_encoder, train/lr_decoder
    val_loss, val_perplexity, samples                  at each validation (samples: a wandb.Table
                                                       of replies to the first validation queries)
    summary: best_val_loss, best_iteration; media: loss_plot (when --plot is given)

`val_loss` is the metric a sweep minimises.
"""

from __future__ import annotations

import netrc
import os
import re
import sys
from pathlib import Path

from .cli import first_line
from .config import RunConfig
from .decoding import DecodeSettings, reply_batch
from .training import Trainer, TrainingError, perplexity
from .vocab import NO_CONTEXT, detokenize, show_source

WANDB_HOST = "api.wandb.ai"


def _has_api_key() -> bool:
    """Whether wandb would find credentials: the WANDB_API_KEY variable or a ~/.netrc entry."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def sweep_run_folder(save_dir: str) -> str | None:
    """Under `wandb agent`, the folder of this run alone: <save-dir>/<run id>. The agent gives
    every run the same command, so a shared --save-dir would be locked by the first of several
    agents on one machine, and each run would replace the previous run's checkpoints. The agent
    names the run in WANDB_RUN_ID (and a resumed run keeps its id); None outside a sweep."""
    run_id = os.environ.get("WANDB_RUN_ID", "")
    if not os.environ.get("WANDB_SWEEP_ID") or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", run_id):
        return None
    return str(Path(save_dir) / run_id)


def resolve_mode(mode: str | None) -> str:
    """--wandb-mode, else WANDB_MODE, else online with credentials and offline without them."""
    if mode:
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if _has_api_key():
        return "online"
    print(
        "no W&B API key found: logging offline to ./wandb (upload later with `wandb sync`)", file=sys.stderr
    )
    return "offline"


class WandbLogger:
    """A W&B run observing a Trainer (see Trainer's observers)."""

    def __init__(self, flags: dict):
        """Start the run. Under `wandb agent` the run's config holds the trial's values; they
        override the flags (`agent_values`), so a sweep works whether or not its command passes
        them."""
        import wandb

        self.wandb = wandb
        try:
            self.run = wandb.init(
                project=flags["wandb_project"],
                entity=flags["wandb_entity"],
                mode=resolve_mode(flags["wandb_mode"]),
                config=flags,
            )
        except Exception as error:  # wandb's own errors: a bad key or mode, no network, ...
            raise TrainingError(
                f"W&B could not start a run: {first_line(error)} (try --wandb-mode offline)"
            ) from None
        self.agent_values = {k: v for k, v in dict(self.run.config).items() if k in flags and flags[k] != v}
        self.trainer: Trainer | None = None
        self.queries: list[str] = []
        self.settings: DecodeSettings | None = None  # watch() sets them from the run
        self.context = NO_CONTEXT

    def watch(self, trainer: Trainer, sample_queries: list[str], config: RunConfig) -> None:
        """Observe `trainer`, showing replies to `sample_queries` at each validation, as long as
        the run's --max-length lets them be."""
        self.trainer, self.queries = trainer, sample_queries
        self.settings = DecodeSettings(max_length=config.pairs.max_length)
        self.context = config.pairs.context
        trainer.observers.append(self)
        self.run.config.update(config.flags(), allow_val_change=True)  # as the run resolved them

    def after_steps(self, iteration: int, metrics: dict) -> None:
        self.run.log(metrics, step=iteration)

    def after_validation(self, iteration: int, loss: float) -> None:
        model, vocab = self.trainer.step.model, self.trainer.vocab
        replies = (
            reply_batch(model, vocab, self.queries, self.settings, context=self.context)
            if self.queries
            else []
        )
        table = self.wandb.Table(columns=["iteration", "query", "reply"])
        for query, reply in zip(self.queries, replies):
            table.add_data(iteration, show_source(query), detokenize(reply))
        self.run.log({"val_loss": loss, "val_perplexity": perplexity(loss), "samples": table}, step=iteration)

    def finish(self, plot_path: str | None) -> None:
        state = self.trainer.state if self.trainer else None
        if state is not None:
            self.run.summary["best_val_loss"] = state.best_val_loss
            self.run.summary["best_iteration"] = state.best_iteration
        if plot_path and os.path.exists(plot_path):
            self.run.log({"loss_plot": self.wandb.Image(plot_path)})
        self.run.finish()
