"""torchrun with the gloo backend on the CPU: 2 processes, a tiny model."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seq2seq.checkpoint import build_model, load_checkpoint
from seq2seq.run import main as train_main
from tests.helpers import ENV, ROOT

TORCHRUN = Path(sys.executable).parent / "torchrun"
FLAGS = ["--hidden-size", "8", "--encoder-layers", "1", "--decoder-layers", "2", "--dropout", "0",
         "--input-dropout", "0", "--output-dropout", "0", "--device", "cpu", "--precision", "fp32", "--optimizer", "sgd",
         "--learning-rate", "0.5", "--eval-every", "1"]  # fmt: skip


def torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)


def test_two_ranks_step_like_one_process_with_their_combined_batch(pair_dir, tmp_path):
    two = torchrun(*FLAGS, "--data-dir", str(pair_dir), "--batch-size", "4", "--iterations", "1",
                   "--save-dir", str(tmp_path / "two"))  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert "on 2 ranks, batch 4 each" in two.stderr
    train_main([*FLAGS, "--data-dir", str(pair_dir), "--batch-size", "8", "--iterations", "1",
                "--save-dir", str(tmp_path / "one")])  # fmt: skip
    a, b = load_checkpoint(tmp_path / "two" / "last.pth"), load_checkpoint(tmp_path / "one" / "last.pth")
    assert a["history"]["train"][0][1] == pytest.approx(
        b["history"]["train"][0][1], rel=1e-6
    )  # global mean loss
    for name, tensor in a["model"].items():
        assert torch.allclose(tensor, b["model"][name], atol=1e-6), name


def test_a_two_rank_checkpoint_loads_and_resumes_in_one_process(pair_dir, tmp_path):
    save = tmp_path / "checkpoints"
    run = torchrun(*FLAGS, "--data-dir", str(pair_dir), "--batch-size", "2", "--iterations", "3",
                   "--save-dir", str(save))  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in save.iterdir()) == [
        ".lock",
        "best_model.pth",
        "last.pth",
    ]  # rank 0 alone wrote
    checkpoint = load_checkpoint(save / "last.pth")
    assert checkpoint["iteration"] == 3
    model, vocab = build_model(checkpoint)  # no DistributedDataParallel prefixes in the weights
    assert len(vocab) == model.config.vocab_size
    train_main(
        [
            "--resume",
            str(save / "last.pth"),
            "--iterations",
            "5",
            "--save-dir",
            str(save),
            "--data-dir",
            str(pair_dir),
        ]
    )
    assert load_checkpoint(save / "last.pth")["iteration"] == 5
