"""Held-out quality of training recipes trained on the same files, side by side.

    python benchmarks/quality.py                      # tutorial vs tuned recipe, one after the other
    python benchmarks/quality.py --jobs 2             # both at once, a core each
    python benchmarks/quality.py --run no-tie="--recipe tuned --tie-embeddings=false"
    python benchmarks/quality.py --jobs 8 --minutes 7 --precision fp32   # on one GPU, 7 minutes a run

Every run is train.py with its flags, into OUT/NAME/ (log in OUT/NAME/train.log), on the same
data/ (so the same training and validation files, vocabulary and UNK policy), unless its flags
name another --data-dir: builds that differ only in --context-turns hold the same pairs. A finished run is
reused on the next call and an interrupted one resumes, so adding a run costs only that run.
With --minutes, a run still training when its time is up is stopped as if by Ctrl-C (train.py
saves it) and counts as finished: its best checkpoint so far is what gets scored.
Each best_model.pth (chosen on validation loss) is then scored by evaluate.py's code on the test
file: perplexity, and greedy replies' BLEU, distinct-1/2 and top-10 share. Prints the validation
curve of every run, the best validation perplexity each run had reached by each minute of
training, and the summary; draws the curves to OUT/quality_curves.png (by iteration) and
OUT/time_to_quality.png (by minute), beside OUT/results.json (--plot and --time-plot put them
elsewhere, such as the README's images/).
"""

import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seq2seq import evaluation  # noqa: E402
from seq2seq.checkpoint import CheckpointError, load_checkpoint, saved_flags  # noqa: E402
from seq2seq.cli import ArgumentParser, fail, positive_float, positive_int  # noqa: E402
from seq2seq.devices import PRECISIONS  # noqa: E402
from seq2seq.files import pyplot, save_figure, write_text_atomic  # noqa: E402
from seq2seq.training import perplexity  # noqa: E402

RECIPE_RUNS = {name: f"--recipe {name}" for name in ("tutorial", "tuned")}
CURVES, TIMES = "quality_curves.png", "time_to_quality.png"  # the charts' names in --out by default


def parse_run(text: str) -> tuple[str, str]:
    name, eq, flags = text.partition("=")
    if not eq or not name or "/" in name:
        raise ValueError(f'expected NAME="train.py flags", got {text!r}')
    return name, flags


def claim(folder: Path) -> int:
    """Lock a run's folder so two calls never train the same run at once. The lock is an flock
    that train.py inherits, so it holds while the training does, even if this process is killed,
    and goes with the last process holding it."""
    fd = os.open(folder / "running.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError(f"{folder} is being trained by another process; wait for it or stop it") from None
    return fd


def train_run(name: str, flags: str, args, threads: int) -> dict:
    """Train one run (or finish or reuse it); return its finished record."""
    folder = Path(args.out) / name
    done = folder / "done.json"
    if done.exists():
        try:
            record = json.loads(done.read_text())
            trained_with = record["flags"]
        except (OSError, ValueError, KeyError, TypeError):
            raise RuntimeError(f"{done} is damaged: delete it to train {name} again") from None
        if trained_with != flags:
            print(f"{name}: reusing the finished run, trained with {trained_with!r}", file=sys.stderr)
        return {**record, "name": name}  # the folder's name, should it have been renamed
    folder.mkdir(parents=True, exist_ok=True)
    fd = claim(folder)
    try:
        argv = [sys.executable, str(ROOT / "train.py"), "--data-dir", args.data_dir, "--precision", args.precision,
                "--num-threads", str(threads), *shlex.split(flags), "--save-dir", str(folder)]  # fmt: skip
        if (folder / "last.pth").exists():
            argv.append("--resume")
        else:  # the folder is this run's own: a best_model.pth from a start killed early is replaced
            argv.append("--overwrite")
        print(f"{name}: {shlex.join(argv[1:])}", file=sys.stderr)
        timer = folder / "seconds.json"  # training time over every call that trained this run
        spent = json.loads(timer.read_text()) if timer.exists() else 0.0
        started = time.perf_counter()
        with open(folder / "train.log", "a") as log:
            code, out_of_time = run_within(argv, log, fd, args.minutes * 60 - spent if args.minutes else None)
        seconds = spent + time.perf_counter() - started
        write_text_atomic(timer, json.dumps(seconds) + "\n")
        if out_of_time and not (folder / "last.pth").exists():
            raise RuntimeError(
                f"run {name} ran out of time before it started training; give it more --minutes"
            )
        if code != 0 and not (out_of_time and code == 130):
            raise RuntimeError(f"run {name} failed (exit {code}); see {folder}/train.log")
        record = {"name": name, "flags": flags, "seconds": seconds, "out_of_time": out_of_time}
        write_text_atomic(done, json.dumps(record) + "\n")
        return record
    finally:
        os.close(fd)


def run_within(argv: list[str], log, fd: int, seconds: float | None) -> tuple[int, bool]:
    """Run train.py; past `seconds`, stop it as Ctrl-C would (it saves, then exits 130). Return its
    exit code and whether time ran out. Ctrl-C here reaches train.py too: wait for it to save."""
    process = subprocess.Popen(argv, stdout=log, stderr=log, cwd=ROOT, pass_fds=(fd,))
    try:
        return process.wait(timeout=max(seconds, 0.0) if seconds is not None else None), False
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        return process.wait(), True
    except KeyboardInterrupt:
        process.wait()
        raise


def score_run(record: dict, args) -> dict:
    """Curves from the run's checkpoint, and evaluate.py's figures for its best model on the test
    file of the data/ it trained on (runs on builds with different context share their pairs)."""
    folder = Path(args.out) / record["name"]
    checkpoint = load_checkpoint(folder / "last.pth")
    test_data = ROOT / saved_flags(checkpoint)["data_dir"] / "test.txt"  # train.py ran in ROOT
    eval_args = evaluation.make_parser().parse_args(
        [
            "--model-path",
            str(folder / "best_model.pth"),
            "--test-data",
            str(test_data),
            "--samples",
            str(args.samples),
        ]
    )
    return {
        **record,
        "args": saved_flags(checkpoint),
        "history": checkpoint["history"],
        "clock": run_clock(checkpoint, record["seconds"]),
        "best_val_loss": checkpoint["best_val_loss"],
        "best_iteration": checkpoint["best_iteration"],
        "iterations": checkpoint["iteration"],
        "test": evaluation.evaluate(eval_args),
    }


def run_clock(checkpoint: dict, seconds: float) -> dict:
    """Minutes of training at each validation: from the checkpoint's clock, or, for a run trained
    before train.py kept one, spread evenly over the run's measured time (marked estimated)."""
    if checkpoint.get("clock"):
        return {"estimated": False, "minutes": [[it, t / 60] for it, t in checkpoint["clock"]]}
    rate = seconds / 60 / max(1, checkpoint["iteration"])
    return {"estimated": True, "minutes": [[it, it * rate] for it, _ in checkpoint["history"]["val"]]}


def best_by_minute(result: dict, minute: float) -> float | None:
    """The best validation perplexity a run had reached after `minute` minutes of training."""
    losses = dict(map(tuple, result["history"]["val"]))
    seen = [losses[it] for it, at in result["clock"]["minutes"] if at <= minute and it in losses]
    return perplexity(min(seen)) if seen else None


def time_table(results: list[dict], step: float) -> str:
    """Rows of training minutes, a column per run: the best validation perplexity by then."""
    last = max(r["clock"]["minutes"][-1][1] for r in results if r["clock"]["minutes"])
    marks = [step * k for k in range(1, int(last // step) + 2)]
    names = [r["name"] + (" (estimated minutes)" if r["clock"]["estimated"] else "") for r in results]
    lines = ["| minutes | " + " | ".join(names) + " |", "|" + " --- |" * (1 + len(results))]
    for minute in marks:
        cells = [best_by_minute(r, minute) for r in results]
        lines.append(f"| {minute:g} | " + " | ".join(f"{c:.2f}" if c else "" for c in cells) + " |")
    return "\n".join(lines)


def plot_time(results: list[dict], path: str) -> None:
    fig, ax = pyplot().subplots(figsize=(8, 4.5))
    for i, r in enumerate(results):
        losses = dict(map(tuple, r["history"]["val"]))
        points = [(at, perplexity(losses[it])) for it, at in r["clock"]["minutes"] if it in losses]
        label = r["name"] + (" (minutes estimated)" if r["clock"]["estimated"] else "")
        ax.plot(*zip(*points), "o-", ms=3, color=f"C{i % 10}", label=label)
    ax.set_xlabel("minutes of training (validations and saves included)")
    ax.set_ylabel("validation perplexity")
    ax.set_yscale("log")
    ax.set_title("validation perplexity against training time; every run validated on the same pairs")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def curve_table(results: list[dict], every: int) -> str:
    """Rows of iterations, a train and a validation column per run (the issue's table, transposed)."""
    last = max(r["iterations"] for r in results)
    header = "| iteration | " + " | ".join(f"{r['name']} train | {r['name']} val" for r in results) + " |"
    lines = [header, "|" + " --- |" * (1 + 2 * len(results))]
    rows = sorted(set(range(every, last + 1, every)) | {r["best_iteration"] for r in results})
    for previous, it in zip([0, *rows], rows):
        cells = []
        for r in results:
            train = [loss for i, loss in r["history"]["train"] if previous < i <= it]
            val = dict(map(tuple, r["history"]["val"])).get(it)
            cells.append(f"{sum(train) / len(train):.2f}" if train else "")
            bold = "**" if it == r["best_iteration"] else ""
            cells.append(f"{bold}{val:.2f}{bold}" if val is not None else "")
        lines.append(f"| {it:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(results: list[dict]) -> str:
    rows = [
        ("earlier turns read", lambda r: str(r["args"].get("context_turns", 0))),
        ("best validation perplexity", lambda r: f"{perplexity(r['best_val_loss']):.2f}"),
        ("at iteration", lambda r: f"{r['best_iteration']:,} of {r['iterations']:,}"),
        ("test perplexity", lambda r: f"{r['test']['perplexity']:.2f}"),
        ("test token accuracy", lambda r: f"{r['test']['token_accuracy']:.2%}"),
        ("BLEU (greedy)", lambda r: f"{r['test']['bleu']:.2f}"),
        ("distinct-1", lambda r: f"{r['test']['distinct_1']:.4f}"),
        ("distinct-2", lambda r: f"{r['test']['distinct_2']:.4f}"),
        ("top-10 replies' share", lambda r: f"{r['test']['top10_reply_share']:.1%}"),
        ("average reply length", lambda r: f"{r['test']['avg_reply_length']:.2f}"),
        (
            "training time",
            lambda r: f"{r['seconds'] / 60:.0f} min" + (" (limit)" if r.get("out_of_time") else ""),
        ),
    ]
    lines = ["| | " + " | ".join(r["name"] for r in results) + " |", "|" + " --- |" * (1 + len(results))]
    lines += [f"| {label} | " + " | ".join(cell(r) for r in results) + " |" for label, cell in rows]
    return "\n".join(lines)


def plot_curves(results: list[dict], path: str) -> None:
    fig, ax = pyplot().subplots(figsize=(8, 4.5))
    for i, r in enumerate(results):
        color = f"C{i % 10}"
        train, window = r["history"]["train"], 250
        xs = list(range(window, len(train) + 1, window))
        ax.plot(xs, [sum(v for _, v in train[x - window : x]) / window for x in xs], ":", color=color,
                label=f"{r['name']} train")  # fmt: skip
        val = r["history"]["val"]
        ax.plot(
            [i for i, _ in val], [v for _, v in val], "o-", ms=3, color=color, label=f"{r['name']} validation"
        )
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy per token")
    ax.set_title("training (dotted) and validation loss; every run validated on the same pairs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main() -> None:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", metavar='NAME="FLAGS"',
                   help="a run: its name and train.py flags (default: the tutorial and tuned recipes)")  # fmt: skip
    p.add_argument("--data-dir", default="data", help="built data/ every run trains and is scored on")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="training precision of every run (auto: as train.py chooses)")  # fmt: skip
    p.add_argument("--jobs", type=positive_int, default=1, help="runs trained at once")
    p.add_argument("--threads", type=positive_int, help="torch threads per run (default: cores / jobs)")
    p.add_argument("--minutes", type=positive_float,
                   help="training time per run (its calls together), after which it stops and counts as finished")  # fmt: skip
    p.add_argument("--out", default="checkpoints/quality", help="folder of the runs")
    p.add_argument(
        "--every", type=positive_int, default=500, help="iterations between the curve table's rows"
    )
    p.add_argument("--samples", type=positive_int, default=8, help="test exchanges shown per run")
    p.add_argument("--plot", help=f"where to draw the curves (default: {CURVES} in --out)")
    p.add_argument("--time-plot",
                   help=f"where to draw validation perplexity against training time (default: {TIMES} in --out)")  # fmt: skip
    p.add_argument("--minute-step", type=positive_float, default=5.0,
                   help="minutes between the rows of the time-to-quality table")  # fmt: skip
    args = p.parse_args()
    try:
        runs = dict(parse_run(text) for text in args.run) if args.run else RECIPE_RUNS
    except ValueError as error:
        fail(str(error))
    if not (Path(args.data_dir) / "stats.json").exists():
        fail(f"{args.data_dir}/ is not built: run download_data.py first")
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    try:
        with ThreadPoolExecutor(args.jobs) as pool:
            records = list(pool.map(lambda item: train_run(*item, args, threads), runs.items()))
        results = [score_run(record, args) for record in records]
    except (RuntimeError, CheckpointError) as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail("interrupted: runs resume from their last.pth on the next call", 130)
    write_text_atomic(Path(args.out) / "results.json", json.dumps(results, indent=1) + "\n")
    curves, times = args.plot or str(Path(args.out) / CURVES), args.time_plot or str(Path(args.out) / TIMES)
    plot_curves(results, curves)
    plot_time(results, times)
    print("validation loss (training loss is the mean since the previous row; ** marks the best)")
    print(curve_table(results, args.every))
    print("\nbest validation perplexity reached by each minute of training")
    print(time_table(results, args.minute_step))
    print("\nbest checkpoints on the test file")
    print(summary_table(results))
    for i in range(args.samples):
        sample = results[0]["test"]["samples"][i] if i < len(results[0]["test"]["samples"]) else None
        if sample is None:
            break
        source = max((r["test"]["samples"][i]["query"] for r in results), key=len)  # with the most context
        print(f"\n> {source}\n  reference: {sample['reference']}")
        for r in results:
            print(f"  {r['name']}: {r['test']['samples'][i]['reply']}")
    print(f"\ncurves: {curves} and {times}; every figure: {args.out}/results.json")


if __name__ == "__main__":
    main()
