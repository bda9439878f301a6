"""Scripts run with their default paths write under checkpoints/ (gitignored), never into images/
(the README's figures, regenerated only when a path there is given) nor beside the code. Each
runs in an empty folder that stands for the repository root."""

from pathlib import Path

from tests.helpers import TINY_FLAGS, run_script


def written(root: Path) -> set[str]:
    """Every file under `root`, as a path relative to it."""
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}


def test_the_profile_chart_and_the_training_plot_go_under_checkpoints(trained_checkpoint, pair_dir, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    profiled = run_script("profile.py", "--model-path", str(trained_checkpoint), "--data", str(pair_dir / "train.txt"),
                          "--mode", "inference", "--steps", "1", "--batch-size", "4", "--device", "cpu", cwd=root)  # fmt: skip
    assert profiled.returncode == 0, profiled.stderr[-2000:]
    trained = run_script(
        "train.py", *TINY_FLAGS, "--iterations", "2", "--data-dir", str(pair_dir), "--plot", cwd=root
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    files = written(root)
    assert {"checkpoints/profile/profile_breakdown.png", "checkpoints/training_loss.png"} <= files
    assert all(name.startswith("checkpoints/") for name in files), files
