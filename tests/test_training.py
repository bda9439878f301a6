import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seq2seq import config
from seq2seq.batching import BatchSchedule, collate, encode_pairs
from seq2seq.checkpoint import (
    CheckpointError,
    build_model,
    load_checkpoint,
    save_checkpoint,
    saved_flags,
    trained_max_length,
)
from seq2seq.config import LoopSettings
from seq2seq.cornell import PairSettings, read_pairs
from seq2seq.download import prepare_data
from seq2seq.model import Seq2Seq
from seq2seq.training import Trainer, TrainingError, TrainStep, make_optimizer, teacher_forced_scores
from seq2seq.vocab import Vocabulary
from tests.helpers import (
    ENV,
    PAIRS,
    ROOT,
    TINY_FLAGS,
    overfit_tiny_model,
    run_script,
    tiny_config,
    tiny_run,
    write_pair_corpus,
)


def test_overfits_twenty_pairs():
    model, _, batch, loss = overfit_tiny_model()
    assert loss < 0.05
    assert teacher_forced_scores(model, [batch])[0] < 0.05
    replies = model.eval()(batch.src, batch.lengths, batch.tgt, teacher_forcing=False).argmax(-1)
    assert torch.equal(replies[batch.tgt != 0], batch.tgt[batch.tgt != 0])  # free-running, word for word


def test_batch_schedule_is_a_pure_function_of_the_iteration():
    a, b = BatchSchedule(10, 3, seed=1), BatchSchedule(10, 3, seed=1)
    first_epoch = [a.indices(i) for i in range(3)]
    assert len({i for batch in first_epoch for i in batch}) == 9  # no repeats within an epoch
    assert b.indices(4) == a.indices(4) and b.indices(1) == first_epoch[1]  # any order, same answer
    assert a.indices(3) != a.indices(0)  # a new epoch, a new permutation


def test_length_bucketed_schedule_sorts_within_pools_and_shuffles_batches():
    lengths = [(i % 5 + 1, (7 * i) % 11 + 1) for i in range(40)]  # (source, target)
    a, b = (
        BatchSchedule(40, 4, seed=2, lengths=lengths, pool=3),
        BatchSchedule(40, 4, seed=2, lengths=lengths, pool=3),
    )
    epoch = [a.indices(i) for i in range(a.batches_per_epoch)]
    assert len({i for batch in epoch for i in batch}) == 40  # each example once an epoch
    assert b.indices(7) == epoch[7] and b.indices(12) == a.indices(12)  # a pure function of the iteration
    spread = [max(lengths[i][1] for i in batch) - min(lengths[i][1] for i in batch) for batch in epoch]
    unsorted = BatchSchedule(40, 4, seed=2)
    random_spread = [
        max(lengths[i][1] for i in batch) - min(lengths[i][1] for i in batch)
        for batch in (unsorted.indices(i) for i in range(10))
    ]
    assert sum(spread) < sum(random_spread) / 2  # similar target lengths share a batch
    assert epoch != sorted(epoch, key=lambda batch: lengths[batch[0]][1])  # batches are shuffled
    assert a.indices(10) != epoch[0]  # a new epoch, a new order


@pytest.mark.parametrize("bucketing", [[], ["--bucket-pool", "2"]])
def test_resume_continues_exactly(pair_dir, tmp_path, bucketing):
    flags = [
        "--dropout",
        "0.2",
        "--teacher-forcing-ratio",
        "0.5",
        "--seed",
        "3",
        "--patience",
        "2",
        *bucketing,
    ]
    tiny_run(pair_dir, tmp_path / "straight", "--iterations", "9", *flags)
    tiny_run(pair_dir, tmp_path / "split", "--iterations", "5", *flags)
    tiny_run(pair_dir, tmp_path / "split", "--resume", "--iterations", "9")
    a = load_checkpoint(tmp_path / "straight" / "last.pth")
    b = load_checkpoint(tmp_path / "split" / "last.pth")
    assert a["iteration"] == b["iteration"] == 9
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["history"] == b["history"]  # the same validations, not one more at the split
    assert [it for it, _ in b["clock"]] == [it for it, _ in a["clock"]] == [3, 6, 9]
    times = [t for _, t in b["clock"]]
    assert times == sorted(times) and b["seconds"] >= times[-1]  # the clock runs on across the resume
    assert saved_flags(b)["dropout"] == 0.2  # saved flags carried over without repeating them


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--hidden-size", "32"], "architecture cannot change"),
        (["--dropout", "0.5"], "architecture cannot change"),
        (["--optimizer", "sgd"], "optimizer cannot change"),
    ],
)
def test_resume_refuses_a_different_model_or_optimizer(pair_dir, tmp_path, capsys, flags, message):
    tiny_run(pair_dir, tmp_path, "--iterations", "2")
    with pytest.raises(SystemExit) as exit_info:
        tiny_run(pair_dir, tmp_path, "--resume", *flags)
    assert exit_info.value.code == 1
    assert message in capsys.readouterr().err


def test_checkpoints_round_trip_with_weights_only(pair_dir, tmp_path):
    tiny_run(pair_dir, tmp_path, "--epochs", "2")
    best = torch.load(tmp_path / "best_model.pth", weights_only=True)
    assert best["iteration"] == best["best_iteration"] and best["format"] == "chatbot-seq2seq/2"
    last = load_checkpoint(tmp_path / "last.pth")
    train_pairs = read_pairs(pair_dir / "train.txt")
    assert last["iteration"] == 2 * (len(train_pairs) // 4)  # 2 epochs in batches of 4
    model, vocab = build_model(best)
    batch = collate(encode_pairs(read_pairs(pair_dir / "val.txt"), vocab))
    assert teacher_forced_scores(model, [batch])[0] == pytest.approx(best["best_val_loss"], rel=1e-5)
    # the optimizer state comes back on the parameters' device
    optimizer = make_optimizer(model, "adam", 1e-4, 5.0)
    optimizer.load_state_dict(last["optimizer"])
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert optimizer.state[p]["exp_avg"].device == p.device


def test_bad_checkpoints_are_refused_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="train one"):
        load_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "garbage.pth").write_bytes(b"\x00not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "garbage.pth")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="not a chatbot-seq2seq checkpoint"):
        load_checkpoint(tmp_path / "foreign.pth")
    torch.save({"format": "chatbot-seq2seq/2", "evil": Path("x")}, tmp_path / "pickled.pth")
    with pytest.raises(
        CheckpointError, match="it holds Python objects, refused"
    ):  # weights_only refuses classes
        load_checkpoint(tmp_path / "pickled.pth")


def test_truncated_or_mismatched_checkpoint(pair_dir, tmp_path):
    tiny_run(pair_dir, tmp_path, "--iterations", "2")
    data = (tmp_path / "last.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "cut.pth")
    checkpoint = load_checkpoint(tmp_path / "last.pth")
    checkpoint["vocab"]["words"].append("extra")
    checkpoint["vocab"]["counts"].append(1)
    with pytest.raises(CheckpointError, match="vocabulary has .* words but its model expects"):
        build_model(checkpoint)
    checkpoint = load_checkpoint(tmp_path / "last.pth")
    checkpoint["config"]["model"]["hidden_size"] = 8
    with pytest.raises(CheckpointError, match="size mismatch"):
        build_model(checkpoint)
    checkpoint["config"]["model"] = {
        **checkpoint["config"]["model"],
        "hidden_size": 16,
        "attn_model": "bogus",
    }
    with pytest.raises(CheckpointError, match="attention score must be one of"):
        build_model(checkpoint)
    del checkpoint["optimizer"]
    save_checkpoint(tmp_path / "weights_only.pth", {k: v for k, v in checkpoint.items() if k != "format"})
    with pytest.raises(SystemExit):
        tiny_run(pair_dir, tmp_path, "--resume", str(tmp_path / "weights_only.pth"))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "c.pth", {"model": {}})
    before = (tmp_path / "c.pth").read_bytes()

    def broken_save(obj, f):
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "c.pth", {"model": {}})
    assert (tmp_path / "c.pth").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pth"]


def test_non_finite_loss_stops_before_the_update():
    vocab = Vocabulary.build(side for pair in PAIRS for side in pair)
    model = Seq2Seq(tiny_config(len(vocab), hidden_size=8))
    with torch.no_grad():
        model.decoder.out.bias.fill_(float("nan"))
    step = TrainStep(model, make_optimizer(model, "adam", 1e-3, 1.0), clip=1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TrainingError, match="loss became nan"):
        step(collate(encode_pairs(PAIRS, vocab)), teacher_forcing=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) or torch.isnan(v).all()


def test_flags_in_both_spellings():
    kebab = config.parse(
        ["--learning-rate", "0.0003", "--teacher-forcing-ratio", "0.5", "--attn-model", "concat"]
    )
    snake = config.parse(["--learning_rate=0.0003", "--teacher_forcing_ratio=0.5", "--attn_model=concat"])
    assert kebab == snake
    assert snake["learning_rate"] == 0.0003 and snake["attn_model"] == "concat"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--learning-rate", "-1"], "expected a positive number"),
        (["--dropout", "1"], "expected a number in [0, 1)"),
        (["--batch_size=0"], "expected a positive integer"),
        (["--teacher-forcing-ratio", "1.5"], "expected a number in [0, 1]"),
        (["--optimizer", "rmsprop"], "invalid choice"),
        (["--iterations", "5", "--epochs", "2"], "not allowed with"),
    ],
)
def test_impossible_values_are_refused_in_one_line(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        config.parse(flags)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.strip().count("\n") == 0


def test_fp16_on_cpu_is_refused(pair_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        tiny_run(pair_dir, tmp_path, "--precision", "fp16")
    assert "fp16 needs CUDA" in capsys.readouterr().err


def test_vocabulary_comes_from_the_data_build(pair_dir, tmp_path):
    tiny_run(pair_dir, tmp_path, "--iterations", "1")
    words = load_checkpoint(tmp_path / "last.pth")["vocab"]["words"]
    assert words == json.loads((pair_dir / "vocab.json").read_text())["words"]


def test_data_flags_rebuild_data_when_they_differ(pair_dir, tmp_path):
    before = json.loads((pair_dir / "stats.json").read_text())["settings"]
    tiny_run(pair_dir, tmp_path, "--iterations", "1")  # unset flags keep the build as it is
    assert json.loads((pair_dir / "stats.json").read_text())["settings"] == before
    tiny_run(pair_dir, tmp_path, "--iterations", "1", "--max-length", "5", "--overwrite")  # data/ rebuilt
    after = json.loads((pair_dir / "stats.json").read_text())
    assert after["settings"] == {**before, "max_length": 5}
    for split in ("val", "test"):  # (train.txt may also hold pairs up to --train-max-length)
        assert all(len(side.split()) < 5 for pair in read_pairs(pair_dir / f"{split}.txt") for side in pair)
    assert trained_max_length(load_checkpoint(tmp_path / "last.pth")) == 5


def test_script_builds_missing_data_then_trains_and_plots(corpus, tmp_path):
    folder, _ = corpus
    result = run_script("train.py", *TINY_FLAGS, "--iterations", "4", "--min-count", "1", "--source", str(folder),
                        "--val-fraction", "0.2", "--plot", "images/loss.png", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "train.txt").exists() and (tmp_path / "data" / "stats.json").exists()
    assert {"best_model.pth", "last.pth"} <= {p.name for p in (tmp_path / "checkpoints").iterdir()}
    assert (tmp_path / "images" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert "best validation loss" in result.stdout


@pytest.mark.parametrize("signals", [[signal.SIGINT], [signal.SIGTERM], [signal.SIGHUP, signal.SIGHUP]])
def test_interrupt_saves_last_checkpoint(pair_dir, tmp_path, signals):
    """Ctrl-C, SIGTERM and a closed terminal (which sends SIGHUP, often twice) all save first."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *TINY_FLAGS, "--iterations", "100000", "--data-dir", str(pair_dir),
         "--save-dir", str(tmp_path), "--save-every", "1", "--eval-every", "100000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    deadline = time.time() + 120
    while not (tmp_path / "last.pth").exists():  # written after the first iteration, inside the loop
        assert time.time() < deadline and process.poll() is None, process.communicate()[1][-500:]
        time.sleep(0.1)
    for sig in signals:
        process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-500:]
    assert "Traceback" not in stderr and "second Ctrl-C" not in stderr  # a second SIGHUP is no Ctrl-C
    if signal.SIGHUP not in signals:  # after SIGHUP the terminal is gone, and output goes nowhere
        assert "interrupted at iteration" in stdout
    last = load_checkpoint(tmp_path / "last.pth")
    assert last["iteration"] > 0 and (tmp_path / "best_model.pth").exists()


def _trainer(history: list, warmup: int, decay: float) -> Trainer:
    model = Seq2Seq(tiny_config(10, hidden_size=4))
    step = TrainStep(model, make_optimizer(model, "adam", 1.0, 2.0), clip=1.0)
    vocab = Vocabulary([f"w{chr(97 + i)}" for i in range(6)])
    loop = LoopSettings(iterations=100, batch_size=2, teacher_forcing_ratio=1.0, eval_every=250, save_every=500,
                        patience=0, seed=0, warmup=warmup, lr_decay=decay, bucket_pool=0)  # fmt: skip
    trainer = Trainer(step, vocab, [([4], [5])] * 4, [], loop, "unused", {})
    trainer.state.history["val"] = history
    return trainer


def test_learning_rate_warms_up_then_halves_at_each_plateau():
    assert [_trainer([], 4, 1.0).lr_scale(i) for i in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    # 3.0 (best), 3.1 (plateau), 2.9 (best), 2.95 and 2.9 (two plateaus: equal is no improvement)
    history = [[10, 3.0], [20, 3.1], [30, 2.9], [40, 2.95], [50, 2.9]]
    assert _trainer(history, 0, 0.5).lr_scale(60) == 0.5**3
    assert _trainer(history, 0, 1.0).lr_scale(60) == 1.0


def test_schedule_sets_both_groups_and_a_resume_continues_it(pair_dir, tmp_path):
    flags = ["--warmup", "4", "--lr-decay", "0.5", "--learning-rate", "0.01", "--decoder-learning-ratio", "3", "--label-smoothing", "0.1",
             "--input-dropout", "0.2", "--output-dropout", "0.2", "--tie-embeddings", "--seed", "2"]  # fmt: skip
    tiny_run(pair_dir, tmp_path / "straight", "--iterations", "9", *flags)
    tiny_run(pair_dir, tmp_path / "split", "--iterations", "5", *flags)
    tiny_run(pair_dir, tmp_path / "split", "--resume", "--iterations", "9")
    a = load_checkpoint(tmp_path / "straight" / "last.pth")
    b = load_checkpoint(tmp_path / "split" / "last.pth")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["history"] == b["history"]
    groups = a["optimizer"]["param_groups"]
    best, plateaus = math.inf, 0
    for iteration, loss in a["history"]["val"]:
        if iteration < 9:  # the rates of iteration 9 were set before its validation
            plateaus += loss >= best
            best = min(best, loss)
    assert groups[0]["lr"] == pytest.approx(0.01 * 0.5**plateaus)
    assert groups[1]["lr"] == pytest.approx(0.01 * saved_flags(a)["decoder_learning_ratio"] * 0.5**plateaus)


def test_train_script_reads_the_longer_pairs(tmp_path, capsys):
    pairs = PAIRS + [("tell me a long story please my friend", "once upon a time there was a very small bot")]
    corpus = write_pair_corpus(tmp_path / "corpus", pairs, copies=3)
    settings = PairSettings(min_count=1, val_fraction=0.1, test_fraction=0.1, train_max_length=14)
    prepare_data(tmp_path / "data", settings, source=str(corpus))
    train_pairs = read_pairs(tmp_path / "data" / "train.txt")
    n_long = sum(1 for q, r in train_pairs if len(r.split()) > 9)
    assert n_long > 0
    tiny_run(tmp_path / "data", tmp_path / "run", "--iterations", "1")  # the tuned recipe: --long-pairs
    assert f"training: {len(train_pairs)} pairs" in capsys.readouterr().err
    tiny_run(tmp_path / "data", tmp_path / "short", "--iterations", "1", "--recipe", "tutorial")
    assert f"training: {len(train_pairs) - n_long} pairs" in capsys.readouterr().err


def test_long_pairs_on_a_build_without_them_says_so(pair_dir, tmp_path, capsys):
    settings = json.loads((pair_dir / "stats.json").read_text())["settings"]
    assert settings["train_max_length"] == 30  # the default build
    tiny_run(pair_dir, tmp_path, "--iterations", "1", "--train-max-length", "0")
    assert "holds no training pairs longer than --max-length 10" in capsys.readouterr().err


def test_an_empty_or_misshapen_vocabulary_file_is_one_line(pair_dir, tmp_path, capsys):
    for text in ['{"words": [], "counts": []}', "[1, 2]", '{"words": ["a b"], "counts": [1]}']:
        (pair_dir / "vocab.json").write_text(text)
        capsys.readouterr()
        with pytest.raises(SystemExit):
            tiny_run(pair_dir, tmp_path, "--iterations", "1")
        assert f"cannot use {pair_dir}/vocab.json" in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_run_stopped_before_its_first_validation_resumes_exactly(pair_dir, tmp_path):
    """The validation a run makes when it ends early (for best_model.pth) is not one an unbroken
    run makes: patience, plateaus and the learning-rate decay must not see it."""
    flags = ["--dropout", "0", "--lr-decay", "0.5", "--patience", "3", "--eval-every", "3", "--seed", "1"]
    tiny_run(pair_dir, tmp_path / "straight", "--iterations", "9", *flags)
    tiny_run(pair_dir, tmp_path / "split", "--iterations", "2", *flags)
    assert [it for it, _ in load_checkpoint(tmp_path / "split" / "last.pth")["history"]["val"]] == [2]
    tiny_run(pair_dir, tmp_path / "split", "--resume", "--iterations", "9")
    a = load_checkpoint(tmp_path / "straight" / "last.pth")
    b = load_checkpoint(tmp_path / "split" / "last.pth")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["history"] == b["history"] and a["best_iteration"] == b["best_iteration"]
    assert a["evals_without_improvement"] == b["evals_without_improvement"]
    assert [it for it, _ in b["clock"]] == [3, 6, 9]


def test_resuming_with_another_eval_every_keeps_the_validations_made(pair_dir, tmp_path):
    tiny_run(pair_dir, tmp_path, "--iterations", "8", "--eval-every", "4")
    tiny_run(pair_dir, tmp_path, "--resume", "--iterations", "9", "--eval-every", "3")
    assert [it for it, _ in load_checkpoint(tmp_path / "last.pth")["history"]["val"]] == [4, 8, 9]


def test_reverse_swaps_the_sides_of_training_and_validation_pairs(pair_dir):
    from seq2seq import config, distributed
    from seq2seq.run import load_data

    forward = load_data(config.layer({"data_dir": str(pair_dir)}), None, distributed.current())
    backward = load_data(
        config.layer({"data_dir": str(pair_dir), "reverse": True}), None, distributed.current()
    )
    for f, b in ((forward[2], backward[2]), (forward[3], backward[3])):  # training and validation examples
        assert sorted(b) == sorted((reply, query) for query, reply in f)
    assert backward[4] == [reply for _, reply in read_pairs(pair_dir / "val.txt")[:5]]  # W&B's sample queries


def test_a_backward_model_is_refused_as_a_forward_one_and_its_direction_is_kept(pair_dir, tmp_path, capsys):
    tiny_run(pair_dir, tmp_path, "--iterations", "2", "--reverse")
    assert load_checkpoint(tmp_path / "last.pth")["config"]["data"]["reverse"] is True
    result = run_script("evaluate.py", "--model-path", str(tmp_path / "best_model.pth"), "--test-data",
                        str(pair_dir / "test.txt"), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0
    assert "is a backward model (train.py --reverse" in result.stderr
    capsys.readouterr()
    with pytest.raises(SystemExit):
        tiny_run(pair_dir, tmp_path, "--resume", "--reverse=false")
    assert "the direction cannot change on resume" in capsys.readouterr().err
