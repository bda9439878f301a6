"""chat.py driven as a user would: piped stdin, and an interactive session on a pseudo-terminal."""

import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seq2seq.chatbot import Chat, make_chat_parser
from seq2seq.checkpoint import save_checkpoint
from seq2seq.model import Seq2Seq
from seq2seq.vocab import Vocabulary
from tests.helpers import ENV, HOSTILE, ROOT, run_script, tiny_config


def run_chat(args, stdin: bytes, home: Path) -> subprocess.CompletedProcess:
    """chat.py run in `home` (so that no checkpoints/backward/ of this checkout is found)."""
    return run_script("chat.py", *args, input=stdin, text=False, cwd=home, env={**ENV, "HOME": str(home)})


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


def test_a_seed_seeds_the_session_once(trained_checkpoint, tmp_path):
    flags = [
        "--model-path",
        str(trained_checkpoint),
        "--decoding",
        "sample",
        "--temperature",
        "5",
        "--seed",
        "0",
    ]
    stdin = b"hello .\n" * 8
    first, again = (run_chat(flags, stdin, tmp_path) for _ in range(2))
    assert first.returncode == 0, first.stderr.decode()
    replies = first.stdout.decode().splitlines()
    assert len(replies) == 8 and len(set(replies)) > 1  # the same line, different draws
    assert again.stdout == first.stdout  # the session repeats with its seed
    other = run_chat([*flags[:-1], "1"], stdin, tmp_path)
    assert other.stdout != first.stdout


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
        stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True, cwd=tmp_path,
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


def test_a_backward_model_reranks_by_default_and_says_so(trained_checkpoint, backward_checkpoint, tmp_path):
    lines = ["hello .", "How are you?", "what is your name ?", *HOSTILE]
    stdin = "\n".join(lines).encode("utf-8") + b"\n"
    given = run_chat(["--model-path", str(trained_checkpoint), "--backward-model", str(backward_checkpoint)],
                     stdin, tmp_path)  # fmt: skip
    # at the documented default path it is found without a flag
    default = tmp_path / "checkpoints" / "backward" / "best_model.pth"
    default.parent.mkdir(parents=True)
    shutil.copy(backward_checkpoint, default)
    found = run_chat(["--model-path", str(trained_checkpoint), "--n-best", "8"], stdin, tmp_path)
    for result, path in ((given, backward_checkpoint), (found, "checkpoints/backward/best_model.pth")):
        err = result.stderr.decode()
        assert result.returncode == 0, err
        assert err.startswith("model ") and " on cpu in " in err.splitlines()[0]
        assert f"replies are reranked by MMI with {path}" in err.splitlines()[1]
        assert "Traceback" not in err
        replies = result.stdout.decode().split("\n")[:-1]
        assert len(replies) == len(lines)
        assert replies[:3] == ["hi there.", "i'm fine.", "my name is bob."]
    assert "8 hypotheses" in found.stderr.decode()
    plain = run_chat(["--model-path", str(trained_checkpoint), "--rerank", "none"], b"hello .\n", tmp_path)
    assert "MMI" not in plain.stderr.decode() and plain.stdout == b"hi there.\n"
    greedy = run_chat(
        ["--model-path", str(trained_checkpoint), "--decoding", "greedy"], b"hello .\n", tmp_path
    )
    assert "loaded: /mmi reranks beam search with it" in greedy.stderr.decode()


def test_without_a_backward_model_chat_says_how_to_get_one(trained_checkpoint, tmp_path):
    result = run_chat(["--model-path", str(trained_checkpoint)], b"hello .\n", tmp_path)
    assert result.returncode == 0 and result.stdout == b"hi there.\n"
    assert "no backward model at checkpoints/backward/best_model.pth" in result.stderr.decode()


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--rerank", "mmi"],
            "no backward model at checkpoints/backward/best_model.pth: train one with `python train.py --reverse --save-dir checkpoints/backward`",
        ),
        (["--backward-model", "FORWARD"], "is a forward model; give one trained with --reverse"),
        (["--backward-model", "OTHER"], "has another vocabulary than the forward model"),
        (["--rerank", "mmi", "--backward-model", "BACKWARD", "--decoding", "greedy"], "use --decoding beam"),
        (
            ["--backward-model", "BACKWARD", "--beam-groups", "3"],
            "--beam-groups 3 does not divide the beam of 20",
        ),
        (["--mmi-weight", "2"], "expected a number in [0, 1]"),
    ],
)
def test_reranking_mistakes_are_one_line(trained_checkpoint, backward_checkpoint, tmp_path, flags, message):
    vocab = Vocabulary(["some", "other", "words"])
    model = Seq2Seq(tiny_config(len(vocab)))
    other = tmp_path / "other.pth"
    config = {"model": model.config.to_dict(), "data": {"reverse": True}}
    save_checkpoint(other, {"config": config, "model": model.state_dict(), "vocab": vocab.to_dict()})
    paths = {"FORWARD": str(trained_checkpoint), "BACKWARD": str(backward_checkpoint), "OTHER": str(other)}
    flags = [paths.get(flag, flag) for flag in flags]
    result = run_chat(["--model-path", str(trained_checkpoint), *flags], b"hello .\n", tmp_path)
    err = result.stderr.decode().strip()
    assert result.returncode in (1, 2) and not result.stdout
    assert message in err and err.count("\n") == 0, err


def test_mmi_and_nbest_commands(trained_checkpoint, backward_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plain = Chat(make_chat_parser().parse_args(["--model-path", str(trained_checkpoint)]))
    assert plain.command("/mmi").startswith("/mmi: no backward model")
    args = ["--model-path", str(trained_checkpoint), "--backward-model", str(backward_checkpoint)]
    off = Chat(make_chat_parser().parse_args([*args, "--rerank", "none"]))
    assert off.backward is None and off.command("/mmi").startswith(
        "/mmi: chat.py was started with --rerank none"
    )
    sized = Chat(make_chat_parser().parse_args([*args, "--beam-size", "3", "--beam-groups", "3"]))
    assert sized.settings.width == 3 and sized.settings.rerank == "mmi"  # the beam asked for, reranked
    assert sized.command("/greedy") == "decoding: greedy"  # groups only bind beam search
    assert sized.command("/nbest 4") == "decoding: greedy"
    assert sized.command("/beam 4").startswith("/beam: --beam-groups 3 does not divide the beam of 4")
    bot = Chat(make_chat_parser().parse_args([*args, "--decoding", "greedy"]))
    assert bot.settings.rerank == "none" and bot.settings.method == "greedy"
    assert bot.command("/mmi") == "decoding: beam search, 20 beams, reranked by MMI"
    assert bot.respond("how are you ?") == ("i'm fine.", [])
    assert (
        bot.command("/nbest 4") == "decoding: beam search, 5 beams, reranked by MMI"
    )  # --beam-size 5 is wider
    assert bot.command("/nbest x").startswith("/nbest: expected a positive integer")
    assert bot.command("/mmi off") == "decoding: beam search, 5 beams"
    assert bot.command("/beam 2") == "decoding: beam search, 2 beams"  # a beam of 2, whatever /nbest said
    assert bot.command("/mmi") == "decoding: beam search, 20 beams, reranked by MMI"
    assert bot.command("/beam 3") == "decoding: beam search, 3 beams, reranked by MMI"
    assert bot.command("/mmi on").startswith("/mmi: expected nothing or off")
    assert (
        bot.command("/sample 0.5") == "decoding: sampling at temperature 0.5"
        and bot.settings.rerank == "none"
    )
    assert "rerank=none" in bot.command("/settings")
