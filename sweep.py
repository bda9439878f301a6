"""Run sweep_config.yaml's search without a W&B server: Optuna, with a study kept in a database.

    python sweep.py --config sweep_config.yaml --trials 20
    python sweep.py --config sweep_seed_config.yaml --trials 20 --seeds 2  # then the seed spread
    python sweep.py --trials 20 --storage postgresql://user:pw@host/db --study-name big  # many machines
    python sweep.py --trials 5 --iterations 300 --hidden-size 256                         # fixed flags

Optuna's TPE sampler replaces W&B's Bayesian search; a Hyperband pruner fed with each trial's
validation losses replaces W&B's hyperband early termination. The study lives in SQLite
(checkpoints/sweeps/sweeps.db, beside the plots) by default, so a killed sweep resumes where it
stopped; any SQLAlchemy URL lets several machines share one study. Every trial trains into a
folder of its own, <--save-dir>/<study>/trial-<number>, and keeps its best_model.pth there.
Any other flag is a train.py flag, passed to every trial. The findings (seq2seq/sweeps.py) go
to --images: both plots and a CSV of every trial, named after the config file.
"""

import seq2seq  # noqa: F401, I001  (first: from here on Ctrl-C is one line, see its __init__)
import os
import random
import re
import shlex
import sys
import time
import warnings
from pathlib import Path

import optuna
import yaml

from seq2seq import config as run_config
from seq2seq import run
from seq2seq.checkpoint import LAST, CheckpointError
from seq2seq.cli import ArgumentParser, fail, first_line, non_negative_int, positive_int
from seq2seq.cornell import CorpusError
from seq2seq.devices import DeviceError, huge_pages_for_tensors
from seq2seq.download import DataError
from seq2seq.files import FolderError
from seq2seq.sweeps import FINISHED, pruner, rechecked, report
from seq2seq.training import TrainingError

OUTPUT = "checkpoints/sweeps"  # the default study database and plots, with the runs' other outputs


SUPPORTED = ("log_uniform_values", "uniform", "int_uniform")


def read_config(path: str) -> dict:
    """The sweep configuration, checked: every parameter's distribution must be one sweep.py runs."""
    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        metric, parameters = config["metric"], config["parameters"]
        if metric.get("goal") not in ("minimize", "maximize") or not metric.get("name"):
            raise ValueError("metric needs a name and a goal (minimize or maximize)")
        for name, spec in parameters.items():
            kind = spec.get("distribution") if isinstance(spec, dict) else None
            if kind is not None and kind not in SUPPORTED:
                raise ValueError(
                    f"parameter {name}: distribution {kind} (sweep.py runs {', '.join(SUPPORTED)})"
                )
            if not isinstance(spec, dict) or not (
                {"value", "values"} & set(spec) or {"min", "max"} <= set(spec)
            ):
                raise ValueError(f"parameter {name} needs value, values, or min and max")
        stop = config.get("early_terminate")
        if stop is not None and not (
            isinstance(stop, dict) and stop.get("type") == "hyperband"
            and all(isinstance(stop.get(k, 3), int) and stop.get(k, 3) >= 1 for k in ("min_iter", "eta"))
        ):  # fmt: skip
            raise ValueError("early_terminate must be of type hyperband, with whole numbers min_iter and eta")
        command = config.get("command", [])
        if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
            raise ValueError("command must be a list of strings")
        for name, spec in parameters.items():
            if "values" in spec and not (isinstance(spec["values"], list) and spec["values"]):
                raise ValueError(f"parameter {name}: values must be a non-empty list")
            if "min" in spec and not all(isinstance(spec.get(k), int | float) for k in ("min", "max")):
                raise ValueError(f"parameter {name}: min and max must be numbers")
    except (
        OSError,
        yaml.YAMLError,
        KeyError,
        TypeError,
        AttributeError,
        ValueError,
        RecursionError,
    ) as error:
        fail(f"cannot use {path} as a sweep configuration: {str(error)[:300]}")
    return config


def suggest(trial: optuna.Trial, name: str, spec: dict):
    """One value for a parameter, from its W&B sweep specification."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return trial.suggest_categorical(name, spec["values"])
    kind = spec.get("distribution", "int_uniform" if isinstance(spec["min"], int) else "uniform")
    if kind == "int_uniform":
        return trial.suggest_int(name, spec["min"], spec["max"])
    return trial.suggest_float(name, float(spec["min"]), float(spec["max"]), log=kind == "log_uniform_values")


def fixed_flags(config: dict) -> list[str]:
    """The literal train.py flags of the config's `command` (W&B's ${...} macros left out)."""
    return [a for a in config.get("command", []) if a.startswith("--") and a != "--use-wandb"]


class Pruner:
    """A Trainer observer that reports validation losses to Optuna and stops hopeless trials."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial

    def after_validation(self, iteration: int, loss: float) -> None:
        self.trial.report(loss, step=iteration)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"validation loss {loss:.4f} at iteration {iteration}")


def objective(config: dict, passed: list[str], use_wandb: bool, trials_root: Path):
    """Train one trial into trials_root/trial-<number>, a folder of its own (two sweeps on one
    machine, or one study's workers, never share one), and keep its best_model.pth there: its
    last.pth only ever served to resume it, and Optuna never resumes a finished trial."""

    def run_trial(trial: optuna.Trial) -> float:
        values = {name: suggest(trial, name, spec) for name, spec in config["parameters"].items()}
        save_dir = trials_root / f"trial-{trial.number}"
        seed = trial.user_attrs.get("seed")  # a rerun of another trial's values (--seeds)
        argv = [
            *fixed_flags(config),
            *passed,
            *(f"--{k}={v}" for k, v in values.items()),
            *([f"--seed={seed}"] if seed is not None else []),
            f"--save-dir={save_dir}",
        ]
        argv += ["--use-wandb"] if use_wandb else []
        print(f"trial {trial.number}: train.py {shlex.join(argv)}", file=sys.stderr)
        flags, _ = run.read_flags(argv)
        try:
            trainer, reason = run.train(flags, observers=(Pruner(trial),))
        except optuna.TrialPruned:
            (save_dir / LAST).unlink(missing_ok=True)
            raise
        if reason == "interrupted":  # Ctrl-C: the trial is not finished, and neither is the sweep
            optuna.logging.set_verbosity(optuna.logging.ERROR)  # its "trial failed" is a traceback
            raise KeyboardInterrupt
        (save_dir / LAST).unlink(missing_ok=True)
        return trainer.state.best_val_loss

    return run_trial


def open_study(
    url: str, name: str, direction: str, pruner: optuna.pruners.BasePruner, attempts: int = 5
) -> optuna.Study:
    """The study `name` in the database at `url`, created if need be. Workers started together on
    a fresh database race to create its tables, and all but one fail: a failed start is retried.
    A missing database driver, or a database still unreachable, is one line."""
    import sqlalchemy.exc

    failures = 0
    while True:
        try:
            storage = optuna.storages.RDBStorage(
                url,
                heartbeat_interval=60,  # a trial left RUNNING by a killed sweep is failed, then retried
                grace_period=120,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
            return optuna.create_study(
                study_name=name,
                storage=storage,
                direction=direction,
                sampler=optuna.samplers.TPESampler(),  # unseeded: resumed or parallel sweeps must not repeat trials
                pruner=pruner,
                load_if_exists=True,
            )
        except ImportError as error:
            missing = getattr(error.__cause__, "name", None) or "its driver"
            fail(f"--storage {url.split(':', 1)[0]}: the database driver ({missing}) is not installed; "
                 "pip install it (PostgreSQL: psycopg[binary] or psycopg2-binary)")  # fmt: skip
        except sqlalchemy.exc.ArgumentError as error:  # a malformed URL: no retry will mend it
            fail(f"--storage {url}: {first_line(error)}")
        except RuntimeError as error:  # optuna: the database's schema is of another version
            fail(f"cannot use the study database {url}: {first_line(error)}")
        except (
            sqlalchemy.exc.SQLAlchemyError,
            optuna.exceptions.DuplicatedStudyError,
            optuna.exceptions.StorageInternalError,  # how optuna wraps a failed commit
        ) as error:
            failures += 1
            if failures == attempts:
                fail(f"cannot open the study in {url}: {first_line(error)}")
            time.sleep(0.5 * failures + random.random())


def folder_name(study_name: str) -> str:
    """A study's name as one folder name: whatever --study-name holds, no path."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", study_name)


def optimize(study: optuna.Study, trials: int, run_trial, timeout: int | None) -> None:
    """Run `trials` more trials of `study`; an error that every trial would meet is one line."""
    if trials <= 0:
        return
    try:
        study.optimize(
            run_trial, n_trials=trials, timeout=timeout, catch=(TrainingError,)
        )  # a diverging trial fails alone
    except DataError as error:
        fail(str(error), error.code)
    except (CheckpointError, CorpusError, DeviceError, FolderError) as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail("interrupted: finished trials are kept in the study; run the same command to go on", 130)


def main() -> None:
    parser = ArgumentParser(  # no abbreviations: --seed is train.py's, not short for --seeds
        description=__doc__.splitlines()[0],
        epilog="Other flags go to train.py for every trial.",
        allow_abbrev=False,
    )
    parser.add_argument("--config", default="sweep_config.yaml", help="a W&B sweep configuration")
    parser.add_argument(
        "--trials", type=positive_int, required=True, help="finished trials the study should hold"
    )
    parser.add_argument(
        "--timeout", type=non_negative_int, help="stop starting trials after this many seconds"
    )
    parser.add_argument(
        "--storage", default=f"sqlite:///{OUTPUT}/sweeps.db", help="SQLAlchemy URL of the study database"
    )
    parser.add_argument("--study-name", help="default: chatbot-seq2seq-<config file name>")
    parser.add_argument("--use-wandb", action="store_true", help="log every trial to W&B (grouped by study)")
    parser.add_argument(
        "--seeds", type=non_negative_int, default=0,
        help="then rerun the best three trials and two middling ones with this many other seeds each, "
        "and weigh each importance against the seed-to-seed spread",
    )  # fmt: skip
    parser.add_argument(
        "--among", metavar="NAME=VALUE",
        help="weigh importances among the complete trials whose NAME is VALUE (optimizer=adam: how the "
        "other parameters matter once Adam is chosen)",
    )  # fmt: skip
    parser.add_argument("--images", default=OUTPUT, help="folder for the plots and the CSVs of every trial")
    args, passed = parser.parse_known_args()
    huge_pages_for_tensors()  # trials run in this process, as train.py runs
    config = read_config(args.config)
    where = tuple(args.among.split("=", 1)) if args.among and "=" in args.among else None
    if args.among and (where is None or where[0] not in config["parameters"]):
        fail(f"--among {args.among}: give NAME=VALUE with NAME one of {', '.join(config['parameters'])}")
    given = run_config.parse([*fixed_flags(config), *passed])  # a bad train.py flag fails now, not in trial 0
    study_name = args.study_name or f"chatbot-seq2seq-{Path(args.config).stem}"
    direction = "minimize" if config["metric"]["goal"] == "minimize" else "maximize"

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if args.storage.startswith("sqlite:///"):  # SQLite makes the database file, not its folder
        try:
            Path(args.storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            fail(f"cannot make the folder of {args.storage}: {error.strerror or error}")
    study = open_study(args.storage, study_name, direction, pruner(config, run_config.layer(given)))
    done = sum(t.state in FINISHED for t in study.trials)
    print(f"study {study_name} in {args.storage}: {done} trials finished, {max(0, args.trials - done)} to run",
          file=sys.stderr)  # fmt: skip
    if args.use_wandb:
        os.environ.setdefault("WANDB_RUN_GROUP", study_name)
    trials_root = Path(given.get("save_dir") or run_config.INVOCATION["save_dir"])
    optimize(study, args.trials - done, objective(config, passed, args.use_wandb, trials_root / folder_name(study_name)),
             args.timeout)  # fmt: skip
    seeds = None
    if args.seeds:
        seeds = open_study(args.storage, f"{study_name}-seeds", direction, optuna.pruners.NopPruner())
        base = run_config.layer(given)["seed"]
        for trial in rechecked(study):
            have = {
                t.user_attrs.get("seed") for t in seeds.trials if t.user_attrs.get("of_trial") == trial.number
            }
            for seed in range(base + 1, base + 1 + args.seeds):
                if seed not in have:
                    seeds.enqueue_trial(trial.params, user_attrs={"of_trial": trial.number, "seed": seed})
        waiting = sum(t.state == optuna.trial.TrialState.WAITING for t in seeds.trials)
        print(f"{waiting} reruns under other seeds to run", file=sys.stderr)
        root = trials_root / folder_name(f"{study_name}-seeds")
        optimize(seeds, waiting, objective(config, passed, args.use_wandb, root), args.timeout)
    try:
        Path(args.images).mkdir(parents=True, exist_ok=True)
        report(study, config, seeds, Path(args.images), Path(args.config).stem, where)
    except OSError as error:
        fail(f"cannot write the sweep's plots and tables in {args.images}/: {error.strerror or error}")


if __name__ == "__main__":
    main()
