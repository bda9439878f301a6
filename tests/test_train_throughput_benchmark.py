"""benchmarks/train_throughput.py: every path's row, the matrix-product floors, the breakdown."""

from tests.helpers import run_script


def test_train_throughput_prints_paths_floors_and_the_breakdown(pair_dir):
    result = run_script("benchmarks/train_throughput.py", "--data-dir", str(pair_dir), "--recipe", "tutorial",
                        "--hidden-size", "8", "--batch-size", "4", "--skip-tutorial", "--warmup", "1", "--iterations", "2", "--rounds", "1",
                        "--breakdown", timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {
        line.split(" | ")[0].lstrip("| ")[:3]: line
        for line in result.stdout.splitlines()
        if line.startswith("| (")
    }
    assert sorted(rows) == ["(b)", "(c)", "(d)", "(e)", "(f)", "(g)", "(h)"]
    assert "| 1.00x |" in rows["(g)"] and "| 1.00x |" in rows["(h)"]  # a floor against itself
    assert "GFLOP" in result.stdout.split("\n| path")[0]
    breakdown = result.stdout.split("Where a step of row (e) goes")[1]
    recurrence = next(
        line for line in breakdown.splitlines() if line.startswith("| kernels._Recurrence.backward |")
    )
    assert float(recurrence.split(" | ")[1]) > 0  # the backward's products are recorded under the mode
    assert "| autograd: backward of built-in ops |" in breakdown
