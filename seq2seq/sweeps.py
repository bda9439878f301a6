"""A sweep's rule for stopping trials, and its findings read from its Optuna study: the best
trial, fANOVA importances weighed against the seed-to-seed spread, how each categorical value
did, plots and a CSV of every trial.

sweep.py runs the trials; the findings only read finished ones, so a study can be reported
again (or from another machine's database) without training anything.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path

import optuna

from .cli import fail
from .files import pyplot, save_figure, write_text_atomic

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's complete trials, as stored (read, never changed, here)."""
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def pruner(config: dict, flags: dict) -> optuna.pruners.BasePruner:
    """W&B's hyperband early termination as Optuna's: W&B counts validations and stops no trial
    before its min_iter-th, Optuna counts the step a trial reports (its iteration), so the first
    rung is at min_iter × --eval-every; brackets shrink by eta (W&B's default 3). A rung at the
    first validation stopped trials as good as the best at 100 iterations. No early_terminate:
    nothing is stopped."""
    stop = config.get("early_terminate")
    if stop is None:
        return optuna.pruners.NopPruner()
    return optuna.pruners.HyperbandPruner(
        min_resource=stop.get("min_iter", 3) * flags["eval_every"],
        max_resource="auto" if flags.get("epochs") else flags["iterations"],
        reduction_factor=stop.get("eta", 3),
    )


def write_plots(
    study: optuna.Study, weighed: optuna.Study, params: list[str], folder: Path, prefix: str
) -> None:
    """Every trial's values in parallel coordinates, and the importances among the trials weighed."""
    pyplot()  # the Agg backend, before optuna draws
    from optuna.visualization import matplotlib as optuna_plots

    for name, draw in [("parallel_coordinates", lambda: optuna_plots.plot_parallel_coordinate(study)),
                       ("importance", lambda: optuna_plots.plot_param_importances(weighed, evaluator=importance(), params=params))]:  # fmt: skip
        axes = draw()
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        figure.set_size_inches(9, 5)
        save_figure(figure, folder / f"{prefix}_{name}.png")


def importance() -> optuna.importance.FanovaImportanceEvaluator:
    """Optuna's fANOVA, seeded so that a finished study always reports the same importances."""
    return optuna.importance.FanovaImportanceEvaluator(seed=0)


def best_loss(trial: optuna.trial.FrozenTrial) -> float | None:
    """A finished trial's best validation loss; a pruned one's best before it was stopped
    (Optuna gives a pruned trial its last reported loss as its value)."""
    if trial.state == optuna.trial.TrialState.COMPLETE:
        return trial.value
    return min(trial.intermediate_values.values(), default=None)


def write_csv(path: Path, rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


def trial_rows(study: optuna.Study, names: list[str]) -> list[dict]:
    """Every finished trial: its values, how it ended, its best validation loss and how far it got."""
    return [
        {"trial": t.number, "state": t.state.name.lower(), **{n: t.params.get(n) for n in names},
         "seed": t.user_attrs.get("seed", ""), "of_trial": t.user_attrs.get("of_trial", ""),
         "val_loss": best_loss(t), "iterations": max(t.intermediate_values, default=0)}
        for t in study.trials if t.state in FINISHED
    ]  # fmt: skip


def by_category(study: optuna.Study, config: dict) -> list[str]:
    """For each parameter with a list of values, how the trials of each value did: pruned trials
    drop out of fANOVA, so this is where a value that is always pruned (SGD, say) shows."""
    finished = [t for t in study.trials if t.state in FINISHED and t.intermediate_values]
    if not finished:
        return []
    common = min(max(t.intermediate_values) for t in finished)  # a step every trial validated at
    lines = []
    for name, spec in config["parameters"].items():
        if len(spec.get("values", [])) < 2:
            continue
        parts = []
        for value in spec["values"]:
            trials = [t for t in finished if t.params.get(name) == value]
            if trials:
                at_common = statistics.median(t.intermediate_values[common] for t in trials)
                pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)
                parts.append(f"{value}: {len(trials)} trials ({pruned} pruned), best {min(map(best_loss, trials)):.4f}, "
                             f"median {at_common:.4f} at iteration {common}")  # fmt: skip
        lines.append(f"  {name}: " + "; ".join(parts))
    return lines


def rechecked(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials worth a second look: the best three, and the two in the middle of the rest."""
    ranked = sorted(complete(study), key=lambda t: t.value,
                    reverse=study.direction == optuna.study.StudyDirection.MAXIMIZE)  # fmt: skip
    rest = ranked[3:]
    return ranked[:3] + rest[max(0, len(rest) // 2 - 1) : len(rest) // 2 + 1]


def seed_spread(study: optuna.Study, seeds: optuna.Study) -> tuple[list[str], float | None]:
    """Each rechecked trial's loss under every seed, and the pooled seed-to-seed standard
    deviation (the square root of the mean of the trials' sample variances)."""
    lines, variances = [], []
    for trial in rechecked(study):
        reruns = [t for t in seeds.trials if t.user_attrs.get("of_trial") == trial.number
                  and t.state == optuna.trial.TrialState.COMPLETE]  # fmt: skip
        losses = [trial.value, *(t.value for t in sorted(reruns, key=lambda t: t.user_attrs["seed"]))]
        if len(losses) >= 2:
            variances.append(statistics.variance(losses))
        spread = (
            f", mean {statistics.mean(losses):.4f}, sd {statistics.stdev(losses):.4f}"
            if len(losses) >= 2
            else ""
        )
        lines.append(f"  trial {trial.number}: " + " ".join(f"{v:.4f}" for v in losses) + spread)
    pooled = math.sqrt(statistics.mean(variances)) if variances else None
    return lines, pooled


def among(study: optuna.Study, name: str, value: str) -> optuna.Study:
    """The complete trials whose `name` is `value`, as a study of their own (in memory): once one
    value of a parameter is plainly best (Adam over SGD), the variance between the values swamps
    every other parameter's, and only the trials of that value say how the others matter."""
    kept = [t for t in complete(study) if str(t.params.get(name)) == value]
    subset = optuna.create_study(direction=study.direction)
    subset.add_trials(kept)
    return subset


def report(
    study: optuna.Study,
    config: dict,
    seeds: optuna.Study | None,
    images: Path,
    prefix: str,
    where: tuple[str, str] | None = None,
) -> None:
    """The sweep's findings: best trial, fANOVA importances (each also as a standard deviation of
    the validation loss: importance is a share of its variance over the complete trials, and the
    seed-to-seed spread is in loss too), each categorical value's trials, plots and CSVs. With
    `where` (name, value), importances are weighed among the trials with that value only."""
    if not complete(study):
        fail("no trial finished, so there is no best configuration")
    best = study.best_trial
    print(f"best trial {best.number}: {config['metric']['name']} {best.value:.4f} "
          f"(perplexity {math.exp(min(best.value, 50)):.2f})")  # fmt: skip
    print("  " + " ".join(f"--{k}={v}" for k, v in best.params.items()))
    names = list(config["parameters"])
    write_csv(images / f"{prefix}_trials.csv", trial_rows(study, names))
    pooled = None
    if seeds is not None:
        lines, pooled = seed_spread(study, seeds)
        print("the same values under other seeds (first: the sweep's own seed):", *lines, sep="\n")
        if pooled is not None:
            print(f"  pooled seed-to-seed sd of {config['metric']['name']}: {pooled:.4f}")
        write_csv(images / f"{prefix}_seeds.csv", trial_rows(seeds, names))
    weighed = among(study, *where) if where else study
    trials = complete(weighed)
    if len(trials) >= 2:
        variance = statistics.pvariance([t.value for t in trials])
        others = [n for n in names if not where or n != where[0]]
        importances = optuna.importance.get_param_importances(weighed, evaluator=importance(), params=others)
        parts = []
        for name, share in importances.items():
            sd = math.sqrt(share * variance)
            verdict = (
                "" if pooled is None else (" above the seed spread" if sd > pooled else " NOT established")
            )
            parts.append(f"{name} {share:.2f} (sd {sd:.4f}{verdict})")
        print(f"parameter importances{f' among {where[0]}={where[1]} ({len(trials)} trials)' if where else ''}: "
              + ", ".join(parts))  # fmt: skip
        write_plots(study, weighed, others, images, prefix)
        print(f"plots: {images}/{prefix}_parallel_coordinates.png, {images}/{prefix}_importance.png")
    print("by value:", *by_category(study, config), sep="\n")
    print(f"every trial: {images}/{prefix}_trials.csv" + (f", {images}/{prefix}_seeds.csv" if seeds else ""))
