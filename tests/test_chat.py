"""chat.py driven as a user would: piped stdin, and an interactive session on a pseudo-terminal."""

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import ENV, HOSTILE, ROOT, run_script


def run_chat(args, stdin: bytes, home: Path) -> subprocess.CompletedProcess:
    return run_script("chat.py", *args, input=stdin, text=False, env={**ENV, "HOME": str(home)})


def test_piped_mode_answers_each_line_with_exactly_one_line(trained_checkpoint, tmp_path):
    lines = ["hello .", "How are you?", *HOSTILE]
    stdin = "\n".join(lines).encode("utf-8") + b"\n" + b"\xff\xfe\x80 binary garbage\n"
    result = run_chat(["--model-path", str(trained_checkpoint)], stdin, tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    replies = result.stdout.decode("utf-8").split("\n")[:-1]
    assert len(replies) == len(lines) + 1
    assert replies[0] == "hi there." and replies[1] == "i'm fine."  # detokenised
    assert replies[2] == "" and replies[3] == ""  # nothing to answer in a blank line
    err = result.stderr.decode()
    assert "Traceback" not in err
    assert "cut to its first 1000 characters" in err
    assert "words I don't know: zzzq, blorft" in err
    assert "nothing to answer" in err


def test_piped_mode_with_beam_and_sampling(trained_checkpoint, tmp_path):
    for flags in (
        ["--decoding", "beam", "--beam-size", "3"],
        ["--decoding", "sample", "--top-k", "1", "--seed", "1"],
    ):
        result = run_chat(
            ["--model-path", str(trained_checkpoint), *flags], b"what is your name ?\n", tmp_path
        )
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout.decode() == "my name is bob.\n"


def test_missing_checkpoint_is_one_line(tmp_path):
    result = run_chat(["--model-path", str(tmp_path / "none.pth")], b"hi\n", tmp_path)
    assert result.returncode == 1
    err = result.stderr.decode().strip()
    assert err.count("\n") == 0 and "train one with `python train.py`" in err and not result.stdout


def test_interactive_session(trained_checkpoint, tmp_path):
    master, slave = pty.openpty()
    env = {**ENV, "HOME": str(tmp_path), "TERM": "dumb"}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "chat.py"), "--model-path", str(trained_checkpoint)],
        stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True,
    )  # fmt: skip
    os.close(slave)
    output = b""

    def read_until(prompts: int, timeout: float = 30.0) -> None:
        """Read until the prompt has been shown `prompts` times (or the session ends)."""
        nonlocal output
        deadline = time.time() + timeout
        while output.count(b"you> ") < prompts and time.time() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    output += os.read(master, 4096)
                except OSError:
                    return

    read_until(1)
    lines = [b"hello .", b"/beam 3", b"how are you ?", b"/settings", b"/sample 0", b"/nonsense", b"\x07\x00"]
    for shown, line in enumerate(lines, start=2):
        os.write(master, line + b"\r")
        read_until(shown)
    os.write(master, b"\x04")  # Ctrl-D
    process.wait(timeout=30)
    read_until(len(lines) + 2, timeout=1)
    os.close(master)
    text = output.decode("utf-8", "replace")
    assert process.returncode == 0, text
    assert "bot> hi there." in text and "bot> i'm fine." in text
    assert "decoding: beam" in text and "beam_size=3" in text
    assert "expected a positive number" in text and "unknown command /nonsense" in text
    assert "Traceback" not in text
    assert (tmp_path / ".chatbot_seq2seq_history").exists()
