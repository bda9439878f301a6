"""Run sweep_config.yaml's search without a W&B server: Optuna, with a study kept in a database.

    python sweep.py --config sweep_config.yaml --trials 20
    python sweep.py --trials 20 --storage postgresql://user:pw@host/db --study-name big  # many machines
    python sweep.py --trials 5 --iterations 300 --hidden-size 256                         # fixed flags

Optuna's TPE sampler replaces W&B's Bayesian search; a Hyperband pruner fed with each trial's
validation losses replaces W&B's hyperband early termination. The study lives in SQLite
(checkpoints/sweeps/sweeps.db, beside the plots) by default, so a killed sweep resumes where it
stopped; any SQLAlchemy URL lets several machines share one study. Any other flag is a train.py
flag, passed to every trial.
"""

import seq2seq  # noqa: F401, I001  (first: from here on Ctrl-C is one line, see its __init__)
import math
import os
import random
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna
import yaml

from seq2seq import config as run_config
from seq2seq import run
from seq2seq.checkpoint import CheckpointError
from seq2seq.cli import ArgumentParser, fail, first_line, non_negative_int, positive_int
from seq2seq.cornell import CorpusError
from seq2seq.devices import DeviceError, huge_pages_for_tensors
from seq2seq.download import DataError
from seq2seq.files import FolderError, pyplot, save_figure
from seq2seq.training import TrainingError

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
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


def objective(config: dict, passed: list[str], use_wandb: bool, save_root: Path):
    def run_trial(trial: optuna.Trial) -> float:
        values = {name: suggest(trial, name, spec) for name, spec in config["parameters"].items()}
        with tempfile.TemporaryDirectory(dir=save_root, prefix=f"trial-{trial.number}-") as save_dir:
            argv = [
                *fixed_flags(config),
                *passed,
                *(f"--{k}={v}" for k, v in values.items()),
                f"--save-dir={save_dir}",
            ]
            argv += ["--use-wandb"] if use_wandb else []
            print(f"trial {trial.number}: train.py {shlex.join(argv)}", file=sys.stderr)
            flags, _ = run.read_flags(argv)
            trainer, reason = run.train(flags, observers=(Pruner(trial),))
        if reason == "interrupted":  # Ctrl-C: the trial is not finished, and neither is the sweep
            raise KeyboardInterrupt
        return trainer.state.best_val_loss

    return run_trial


def write_plots(study: optuna.Study, folder: Path) -> None:
    pyplot()  # the Agg backend, before optuna draws
    from optuna.visualization import matplotlib as optuna_plots

    for name, draw in [("sweep_parallel_coordinates.png", optuna_plots.plot_parallel_coordinate),
                       ("sweep_importance.png", optuna_plots.plot_param_importances)]:  # fmt: skip
        axes = draw(study)
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        figure.set_size_inches(9, 5)
        save_figure(figure, folder / name)


def open_study(url: str, name: str, direction: str, attempts: int = 5) -> optuna.Study:
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
                pruner=optuna.pruners.HyperbandPruner(),
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


def main() -> None:
    parser = ArgumentParser(
        description=__doc__.splitlines()[0], epilog="Other flags go to train.py for every trial."
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
    parser.add_argument("--images", default=OUTPUT, help="folder for the two sweep plots")
    args, passed = parser.parse_known_args()
    huge_pages_for_tensors()  # trials run in this process, as train.py runs
    config = read_config(args.config)
    run_config.parse([*fixed_flags(config), *passed])  # a bad train.py flag fails now, not in trial 0
    study_name = args.study_name or f"chatbot-seq2seq-{Path(args.config).stem}"
    direction = "minimize" if config["metric"]["goal"] == "minimize" else "maximize"

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if args.storage.startswith("sqlite:///"):  # SQLite makes the database file, not its folder
        try:
            Path(args.storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            fail(f"cannot make the folder of {args.storage}: {error.strerror or error}")
    study = open_study(args.storage, study_name, direction)
    done = sum(t.state in FINISHED for t in study.trials)
    remaining = args.trials - done
    print(
        f"study {study_name} in {args.storage}: {done} trials finished, {max(0, remaining)} to run",
        file=sys.stderr,
    )
    if args.use_wandb:
        os.environ.setdefault("WANDB_RUN_GROUP", study_name)
    if remaining > 0:
        try:
            study.optimize(
                objective(config, passed, args.use_wandb, Path(tempfile.gettempdir())),
                n_trials=remaining,
                timeout=args.timeout,
                catch=(TrainingError,),  # a diverging trial fails alone
            )
        except DataError as error:
            fail(str(error), error.code)
        except (CheckpointError, CorpusError, DeviceError, FolderError) as error:
            fail(str(error))
        except KeyboardInterrupt:
            fail("interrupted: finished trials are kept in the study; run the same command to go on", 130)

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        fail("no trial finished, so there is no best configuration")
    best = study.best_trial
    print(f"best trial {best.number}: {config['metric']['name']} {best.value:.4f} "
          f"(perplexity {math.exp(min(best.value, 50)):.2f})")  # fmt: skip
    print("  " + " ".join(f"--{k}={v}" for k, v in best.params.items()))
    if len(complete) >= 2:
        importances = optuna.importance.get_param_importances(study)
        print("parameter importances: " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items()))
        write_plots(study, Path(args.images))
        print(f"plots: {args.images}/sweep_parallel_coordinates.png, {args.images}/sweep_importance.png")


if __name__ == "__main__":
    main()
