"""Train the seq2seq chatbot on data/train.txt, validating on data/val.txt.

    python train.py                                     # the tuned recipe (README: Conversation quality)
    python train.py --recipe tutorial                   # the PyTorch tutorial's recipe, 4,000 iterations
    python train.py --precision fp32                    # fp32 even where bf16 is native (the default: auto)
    python train.py --resume --iterations 10000         # continue checkpoints/last.pth to 10,000

Builds data/ first if it is missing (give --source for an offline copy of the corpus).
Every flag is also accepted in snake case (--learning_rate=0.0003), as a W&B agent passes it.
The recipes and the order in which a run's values are resolved: seq2seq/config.py.
"""

from __future__ import annotations

import time

from seq2seq import distributed, run
from seq2seq.checkpoint import CheckpointError
from seq2seq.cli import fail
from seq2seq.cornell import CorpusError
from seq2seq.devices import DeviceError
from seq2seq.download import DataError
from seq2seq.files import FolderError
from seq2seq.training import TrainingError, perplexity


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    try:
        flags, checkpoint = run.read_flags(argv)
        trainer, reason = run.train(flags, checkpoint)
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


if __name__ == "__main__":
    main()
