"""benchmarks/quality.py: runs trained side by side, reused, locked, stopped at their budget, scored."""

import fcntl
import json

from tests.helpers import run_script


def test_quality_benchmark_trains_compares_and_reuses_runs(pair_dir, tmp_path):
    tiny = (
        "--hidden-size 8 --encoder-layers 1 --decoder-layers 1 --batch-size 4 --iterations 6 --eval-every 3"
    )
    command = ["benchmarks/quality.py", "--data-dir", str(pair_dir),
               "--out", str(tmp_path / "runs"), "--precision", "fp32", "--jobs", "2", "--every", "3",
               "--samples", "2", "--run", f"base=--recipe tutorial {tiny}", "--run", f"tied=--recipe tuned {tiny} --patience 0"]  # fmt: skip
    charts = ["--plot", str(tmp_path / "curves.png"), "--time-plot", str(tmp_path / "time.png")]
    first = run_script(*command, *charts, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "| iteration | base train | base val | tied train | tied val |" in first.stdout
    assert "| 6 |" in first.stdout and "best validation perplexity" in first.stdout
    assert (tmp_path / "curves.png").stat().st_size > 0 and (tmp_path / "time.png").stat().st_size > 0
    assert "| minutes | base | tied |" in first.stdout
    results = json.loads((tmp_path / "runs" / "results.json").read_text())
    minutes = results[0]["clock"]["minutes"]
    assert not results[0]["clock"]["estimated"] and [it for it, _ in minutes] == [3, 6]
    assert 0 < minutes[0][1] < minutes[1][1]
    assert [r["name"] for r in results] == ["base", "tied"]
    assert results[1]["args"]["tie_embeddings"] and not results[0]["args"]["tie_embeddings"]
    val = dict(map(tuple, results[0]["history"]["val"]))
    assert results[0]["best_val_loss"] == min(val.values())
    for lock in (tmp_path / "runs").glob("*/running.lock"):  # claims released
        with open(lock) as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    again = run_script(*command, timeout=300)  # the charts where they go by default
    assert again.returncode == 0 and "train.py" not in again.stderr  # nothing retrained
    assert again.stdout.split("curves:")[0] == first.stdout.split("curves:")[0]
    for name in ("quality_curves.png", "time_to_quality.png"):  # beside results.json in --out
        assert (tmp_path / "runs" / name).read_bytes()[:4] == b"\x89PNG"


def test_quality_benchmark_refuses_a_malformed_run(pair_dir, tmp_path):
    command = ["benchmarks/quality.py", "--data-dir", str(pair_dir),
               "--run", "no-equals-sign"]  # fmt: skip
    result = run_script(*command, timeout=60)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "expected NAME=" in result.stderr


def test_quality_benchmark_will_not_train_a_run_another_process_trains(pair_dir, tmp_path):
    folder = tmp_path / "runs" / "base"
    folder.mkdir(parents=True)
    command = ["benchmarks/quality.py", "--data-dir", str(pair_dir),
               "--out", str(tmp_path / "runs"), "--run", "base=--iterations 1"]  # fmt: skip
    with open(folder / "running.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a training in progress holds it
        result = run_script(*command, timeout=60)
    assert result.returncode == 1 and "being trained by another process" in result.stderr
    assert not (folder / "last.pth").exists()
    (folder / "done.json").write_text("{not json")
    result = run_script(*command, timeout=60)
    assert result.returncode == 1 and "done.json is damaged" in result.stderr


def test_quality_benchmark_stops_a_run_at_its_time_limit_and_scores_it(pair_dir, tmp_path):
    endless = "--hidden-size 8 --encoder-layers 1 --decoder-layers 1 --batch-size 4 --iterations 1000000 " \
        "--eval-every 5 --patience 0"  # fmt: skip
    command = ["benchmarks/quality.py", "--data-dir", str(pair_dir),
               "--out", str(tmp_path / "runs"), "--precision", "fp32", "--plot", str(tmp_path / "curves.png"),
               "--time-plot", str(tmp_path / "time.png"), "--minutes", "0.2",
               "--run", f"endless=--recipe tutorial {endless}"]  # fmt: skip
    result = run_script(*command, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(limit)" in result.stdout  # the summary says the run was cut by its budget
    [run] = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert run["out_of_time"] and run["seconds"] >= 12
    assert 0 < run["best_iteration"] <= run["iterations"] < 1000000
    assert run["test"]["perplexity"] > 0  # its best checkpoint was scored

    command[command.index("0.2")] = "0.001"  # stopped before train.py even starts
    command[command.index(str(tmp_path / "runs"))] = str(tmp_path / "other")
    result = run_script(*command, timeout=60)
    assert result.returncode == 1 and result.stderr.count("\n") == 2  # the run's command line, then the error
    assert "ran out of time before it started training" in result.stderr
    assert not (tmp_path / "other" / "endless" / "done.json").exists()
