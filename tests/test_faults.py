"""Faults around training: a busy or unwritable folder, a full disk, a killed writer's leftovers."""

import errno
import fcntl
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from seq2seq.checkpoint import load_checkpoint
from tests.helpers import ENV, ROOT, tiny_run


def failed_run(capsys, *args) -> str:
    """The one error line of a tiny run that must fail."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        tiny_run(*args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and err[-1].startswith("error: "), err
    return err[-1]


def test_a_second_run_on_a_folder_in_use_is_refused_before_any_work(pair_dir, tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    with open(folder / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a run in another process holds it
        line = failed_run(capsys, pair_dir, folder, "--iterations", "2")
    assert "is in use by another training run" in line and not (folder / "last.pth").exists()
    tiny_run(pair_dir, folder, "--iterations", "2")  # the lock went with its holder
    tiny_run(pair_dir, folder, "--resume", "--iterations", "3")  # and a run releases its own


def test_a_fresh_run_refuses_a_folder_holding_another_runs_checkpoints(pair_dir, tmp_path, capsys):
    tiny_run(pair_dir, tmp_path, "--iterations", "2")
    kept = {name: (tmp_path / name).read_bytes() for name in ("last.pth", "best_model.pth")}
    line = failed_run(capsys, pair_dir, tmp_path, "--iterations", "2", "--seed", "1")
    assert line == (
        f"error: {tmp_path}/ holds another run's checkpoints (last.pth, best_model.pth): continue that run "
        "with --resume, train into another --save-dir, or replace them with --overwrite"
    )
    assert {name: (tmp_path / name).read_bytes() for name in kept} == kept  # nothing replaced
    tiny_run(pair_dir, tmp_path, "--resume", "--iterations", "3")  # continuing it is not refused
    (tmp_path / "last.pth").unlink()
    assert "(best_model.pth)" in failed_run(capsys, pair_dir, tmp_path, "--iterations", "2")
    tiny_run(pair_dir, tmp_path, "--iterations", "2", "--seed", "1", "--overwrite")
    assert load_checkpoint(tmp_path / "last.pth")["iteration"] == 2


def test_an_unwritable_save_dir_is_one_line_before_the_data_is_read(pair_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    line = failed_run(capsys, pair_dir, tmp_path / "file" / "run", "--iterations", "2")
    assert line.startswith(f"error: cannot write to {tmp_path / 'file' / 'run'}/")


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_last_checkpoint(
    pair_dir, tmp_path, capsys, monkeypatch
):
    tiny_run(pair_dir, tmp_path, "--iterations", "2")
    before = (tmp_path / "last.pth").read_bytes()

    def full_disk(obj, f):
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as error:
            raise RuntimeError("PytorchStreamWriter failed writing file data/0") from error

    monkeypatch.setattr(torch, "save", full_disk)
    line = failed_run(capsys, pair_dir, tmp_path, "--resume", "--iterations", "4")
    assert (
        "cannot write" in line and "No space left on device" in line and "written before are intact" in line
    )
    assert (tmp_path / "last.pth").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_temporaries_of_killed_writers_are_removed_and_live_ones_kept(pair_dir, tmp_path):
    dead = tmp_path / ".last.pth.4194000.tmp"  # beyond any pid this machine hands out
    live = tmp_path / f".other.pth.{os.getpid()}.tmp"  # this process is alive
    other = tmp_path / ".notes.tmp"
    for path in (dead, live, other):
        path.write_bytes(b"partial")
    tiny_run(pair_dir, tmp_path, "--iterations", "2")
    assert not dead.exists() and live.exists() and other.exists()


def test_a_plot_that_cannot_be_written_is_a_note_and_the_run_succeeds(pair_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    tiny_run(pair_dir, tmp_path / "run", "--iterations", "2", "--plot", str(tmp_path / "file" / "loss.png"))
    assert "note: cannot write the plot" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "run" / "last.pth")["iteration"] == 2


@pytest.mark.parametrize(
    "script", ["train.py", "convert_to_torchscript.py", "sweep.py", "evaluate.py", "serve.py"]
)
def test_ctrl_c_while_a_script_starts_is_one_line(script, tmp_path):
    process = subprocess.Popen([sys.executable, str(ROOT / script), "--help"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=ENV)  # fmt: skip
    time.sleep(0.4)  # the interpreter is up, torch (a second or more) still importing
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.skip("the script had already finished starting")
    assert process.returncode in (130, -signal.SIGINT) and "Traceback" not in stderr, stderr[-1000:]
    assert stderr.strip().splitlines() == ["error: interrupted; files already written are intact"]


def ctrl_c_while_a_pool_works(tmp_path, then: str) -> tuple[int, float, str]:
    """Exit status, seconds from SIGINT to exit, and stderr of a script that imports seq2seq,
    sets a ThreadPoolExecutor to sleep for a minute, says ready and runs `then`."""
    script = tmp_path / "busy.py"
    script.write_text(
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import time, seq2seq\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "work = ThreadPoolExecutor(1).submit(time.sleep, 60)\n"
        "print('ready', flush=True)\n" + then
    )  # fmt: skip
    process = subprocess.Popen([sys.executable, str(script), str(ROOT)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=ENV)  # fmt: skip
    try:
        assert process.stdout.readline() == "ready\n"
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        return process.returncode, time.monotonic() - started, stderr
    finally:
        process.kill()


def test_ctrl_c_while_another_thread_works_is_one_line_at_once(tmp_path):
    # serve.py's case: the model loads in the thread that decodes
    code, seconds, stderr = ctrl_c_while_a_pool_works(
        tmp_path, "try:\n    work.result()\nexcept KeyboardInterrupt:\n    seq2seq.exit_interrupted()\n"
    )
    assert code == 130 and seconds < 10  # not after the sleep
    assert stderr.strip().splitlines() == ["error: interrupted; files already written are intact"]


def test_ctrl_c_that_escapes_every_handler_does_not_wait_for_working_threads(tmp_path):
    code, seconds, stderr = ctrl_c_while_a_pool_works(tmp_path, "time.sleep(60)\n")  # lands before any try
    assert code == 130 and seconds < 10  # not after the sleep
    assert stderr.strip().splitlines() == ["error: interrupted; files already written are intact"]


def test_an_error_is_told_in_its_first_line_or_by_its_type():
    from seq2seq.cli import first_line

    assert first_line(RuntimeError("  disk on fire\nstack details\n")) == "disk on fire"
    assert first_line(ValueError("")) == "ValueError" and first_line(KeyError()) == "KeyError"
    assert first_line(OSError("x" * 500), limit=10) == "x" * 10
