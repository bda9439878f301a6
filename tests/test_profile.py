"""profile.py on a tiny checkpoint, and the harmlessness of its name."""

import json
import re
import subprocess
import sys

from tests.helpers import ENV, ROOT, run_script


def test_report_trace_and_chart(trained_checkpoint, pair_dir, tmp_path):
    result = run_script("profile.py", "--model-path", str(trained_checkpoint), "--data", str(pair_dir / "train.txt"),
                        "--steps", "2", "--batch-size", "8", "--device", "cpu", "--trace-path", str(tmp_path / "trace.json"),
                        "--report", str(tmp_path / "report.md"), "--plot", str(tmp_path / "breakdown.png"), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = (tmp_path / "report.md").read_text()
    assert report.strip() == result.stdout.strip()
    for mode, parts in [("train", ["loss", "backward", "optimizer step"]), ("inference", [])]:
        section = report.split(f"## {mode} (")[1].split("\n## ")[0]
        for part in ["embedding", "encoder GRU", "decoder GRU", "attention", "concat layer", "output projection",
                     "other", *parts]:  # fmt: skip
            assert f"| {part} |" in section, (mode, part)
        rows = dict(re.findall(r"\| ([a-zA-Z ]+) \| [\d.]+ \| ([\d.]+)% \|", section))
        total = float(rows.pop("total"))
        assert total == 100.0 and abs(sum(map(float, rows.values())) - 100) < 1.0, rows
        assert "Top operators by self CPU time" in section and "Top operators by memory" in section
        assert "process max RSS" in section
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    assert any(e.get("name") == "decoder GRU" for e in events)
    assert (tmp_path / "breakdown.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_checkpoint_is_one_line(tmp_path):
    result = run_script("profile.py", "--model-path", str(tmp_path / "none.pth"), cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0 and "train one" in result.stderr


def test_import_profile_from_the_repository_root_gives_the_standard_library():
    code = "import cProfile, profile; print(hasattr(profile, 'run'), cProfile.run.__doc__ is not None)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=ENV)
    assert result.stdout.strip() == "True True", result.stderr


def test_train_with_compile_works_beside_profile_py(pair_dir, tmp_path):
    """torch.compile imports cProfile, which imports `profile`: with the repository root first on
    sys.path that is our profile.py, which must hand back the standard library's module."""
    result = run_script("train.py", "--data-dir", str(pair_dir), "--save-dir", str(tmp_path), "--hidden-size", "8",
                        "--encoder-layers", "1", "--decoder-layers", "1", "--batch-size", "4", "--iterations", "2",
                        "--device", "cpu", "--compile")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "done at iteration 2" in result.stdout
