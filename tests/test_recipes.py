"""Issue 10's levers and recipes: presets, tied embeddings, extra dropout, label smoothing, the
learning-rate schedule, longer training pairs, and benchmarks/quality.py."""

import fcntl
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import train
from seq2seq.checkpoint import CheckpointError, build_model, load_checkpoint, save_checkpoint
from seq2seq.cornell import PairSettings, make_pairs, read_pairs
from seq2seq.download import prepare_data, read_stats
from seq2seq.model import ModelConfig, Seq2Seq, sequence_loss
from seq2seq.training import LoopSettings, Trainer, TrainStep, make_optimizer
from seq2seq.vocab import PAD, Vocabulary
from tests.conftest import PAIRS, write_pair_corpus
from tests.test_export import assert_untrained_model_exports_exactly
from tests.test_training import tiny_run

ROOT = Path(__file__).resolve().parent.parent


def test_recipes_set_defaults_and_explicit_flags_win():
    tuned, _ = train.parse_args([])
    tutorial, _ = train.parse_args(["--recipe", "tutorial"])
    assert all(getattr(tutorial, k) == v for k, v in train.TUTORIAL.items())
    assert all(getattr(tuned, k) == v for k, v in train.RECIPES["tuned"].items())
    assert tuned.recipe == "tuned" and tuned.tie_embeddings and not tutorial.tie_embeddings
    mixed, _ = train.parse_args(["--recipe", "tutorial", "--dropout", "0.25", "--tie_embeddings=True"])
    assert mixed.dropout == 0.25 and mixed.tie_embeddings is True and mixed.learning_rate == 1e-4
    assert train.parse_args(["--tie-embeddings=false"])[0].tie_embeddings is False


def test_bad_boolean_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--tie-embeddings=maybe"])
    assert "expected true or false, got 'maybe'" in capsys.readouterr().err


def test_tied_embeddings_share_one_matrix_through_a_checkpoint(pair_dir, tmp_path):
    untied = Seq2Seq(ModelConfig(50, 8, 1, 1))
    tied = Seq2Seq(ModelConfig(50, 8, 1, 1, tie_embeddings=True))
    assert tied.decoder.out.weight is tied.embedding.weight
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(untied) - count(tied) == 50 * 8
    tiny_run(pair_dir, tmp_path, "--iterations", "4", "--tie-embeddings")
    model, _ = build_model(load_checkpoint(tmp_path / "last.pth"))
    assert model.decoder.out.weight is model.embedding.weight
    assert torch.equal(model.decoder.out.weight, model.embedding.weight)


@pytest.mark.parametrize("method", ["trace", "script"])
def test_tied_model_exports_exactly(method):
    assert_untrained_model_exports_exactly(method, 2, 2, 0.0, "general", tie_embeddings=True)


@pytest.mark.parametrize("where", ["input_dropout", "output_dropout"])
def test_extra_dropout_acts_in_training_only(where):
    torch.manual_seed(0)
    model = Seq2Seq(ModelConfig(30, 16, 1, 1, 0.0, "dot", **{where: 0.5}))
    src, lengths, tgt = torch.randint(4, 30, (3, 5)), torch.tensor([5, 4, 2]), torch.randint(4, 30, (3, 4))
    model.train()
    assert not torch.equal(model(src, lengths, tgt), model(src, lengths, tgt))
    model.eval()
    assert torch.equal(model(src, lengths, tgt), model(src, lengths, tgt))


def test_a_run_from_before_recipes_resumes_as_it_was(pair_dir, tmp_path, capsys):
    tiny_run(pair_dir, tmp_path, "--iterations", "2", "--recipe", "tutorial")
    checkpoint = load_checkpoint(tmp_path / "last.pth")
    new = ("recipe", "input_dropout", "output_dropout", "tie_embeddings", "long_pairs", "label_smoothing",
           "warmup", "lr_decay")  # fmt: skip
    for key in new:  # what a checkpoint written before these options lacks
        checkpoint["args"].pop(key)
        checkpoint["model_config"].pop(key, None)
    save_checkpoint(tmp_path / "last.pth", checkpoint)
    args, _ = train.parse_args(["--resume", str(tmp_path / "last.pth")])
    assert args.recipe == "tutorial" and not args.long_pairs and not args.tie_embeddings
    assert args.input_dropout == 0.0 and args.lr_decay == 1.0
    tiny_run(pair_dir, tmp_path, "--resume", "--iterations", "4")
    assert load_checkpoint(tmp_path / "last.pth")["iteration"] == 4
    with pytest.raises(CheckpointError, match="--recipe tuned differs from the checkpoint's tutorial"):
        train.parse_args(["--resume", str(tmp_path / "last.pth"), "--recipe", "tuned"])


def test_recipe_help_shows_that_recipes_defaults(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--recipe", "tutorial", "--help"])
    assert "0.0001)" in capsys.readouterr().out.replace("\n", " ").replace(" ", "")
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    assert "(default:0.001)" in capsys.readouterr().out.replace("\n", "").replace(" ", "")


def test_a_checkpoint_from_before_these_options_still_loads():
    model = Seq2Seq(ModelConfig(20, 8, 1, 1))
    config = {k: v for k, v in model.config.to_dict().items()
              if k not in ("input_dropout", "output_dropout", "tie_embeddings")}  # fmt: skip
    vocab = Vocabulary([f"w{i}" for i in range(16)])
    loaded, _ = build_model({"model_config": config, "model": model.state_dict(), "vocab": vocab.to_dict()})
    assert loaded.config.tie_embeddings is False and loaded.config.input_dropout == 0.0


def test_label_smoothing_matches_a_hand_computation():
    logits = torch.tensor([[[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 0.4]]])
    target = torch.tensor([[1, PAD]])  # the PAD position does not count
    eps = 0.1
    logp = F.log_softmax(logits[0, 0], dim=-1)
    expected = (1 - eps) * -logp[1] - eps * logp.mean()
    assert sequence_loss(logits, target, label_smoothing=eps).item() == pytest.approx(
        expected.item(), abs=1e-6
    )
    assert sequence_loss(logits, target).item() == pytest.approx(-logp[1].item(), abs=1e-6)


def _trainer(history: list, warmup: int, decay: float) -> Trainer:
    model = Seq2Seq(ModelConfig(10, 4, 1, 1))
    step = TrainStep(model, make_optimizer(model, "adam", 1.0, 2.0), clip=1.0)
    vocab = Vocabulary([f"w{i}" for i in range(6)])
    loop = LoopSettings(100, 2, warmup=warmup, lr_decay=decay)
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
    assert groups[1]["lr"] == pytest.approx(0.01 * a["args"]["decoder_learning_ratio"] * 0.5**plateaus)


def test_longer_training_pairs_leave_held_out_files_and_vocabulary_alone(tmp_path):
    long_side = " ".join(["long"] * 12)
    conversations = [["hi there .", long_side, "ok ."], ["hi .", "yo ."]] * 5
    settings = dict(min_count=1, val_fraction=0.2, test_fraction=0.2, seed=3)
    short = make_pairs(conversations, PairSettings(train_max_length=0, **settings))
    longer = make_pairs(conversations, PairSettings(train_max_length=16, **settings))
    assert longer.splits["val"] == short.splits["val"] and longer.splits["test"] == short.splits["test"]
    assert longer.vocab.index_to_word == short.vocab.index_to_word  # "long" is not counted
    assert set(longer.splits["train"]) - set(short.splits["train"]) == {("hi there .", long_side),
                                                                         (long_side, "ok .")}  # fmt: skip


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


def test_a_build_from_before_train_max_length_is_not_rebuilt(pair_dir):
    stats_path = pair_dir / "stats.json"
    stats = read_stats(stats_path)
    del stats["settings"]["train_max_length"]
    stats_path.write_text(json.dumps(stats))
    settings = PairSettings(min_count=1, val_fraction=0.2, test_fraction=0.1, train_max_length=0)
    assert prepare_data(pair_dir, settings).get("skipped_build")  # such a build had no longer pairs


def test_quality_benchmark_trains_compares_and_reuses_runs(pair_dir, tmp_path):
    tiny = (
        "--hidden-size 8 --encoder-layers 1 --decoder-layers 1 --batch-size 4 --iterations 6 --eval-every 3"
    )
    command = [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--data-dir", str(pair_dir),
               "--out", str(tmp_path / "runs"), "--precision", "fp32", "--jobs", "2", "--every", "3",
               "--samples", "2", "--plot", str(tmp_path / "curves.png"), "--time-plot", str(tmp_path / "time.png"),
               "--run", f"base=--recipe tutorial {tiny}", "--run", f"tied=--recipe tuned {tiny} --patience 0"]  # fmt: skip
    first = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
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
    again = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0 and "train.py" not in again.stderr  # nothing retrained
    assert again.stdout.split("curves:")[0] == first.stdout.split("curves:")[0]


def test_quality_benchmark_refuses_a_malformed_run(pair_dir, tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--data-dir", str(pair_dir),
               "--run", "no-equals-sign"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "expected NAME=" in result.stderr


def test_quality_benchmark_will_not_train_a_run_another_process_trains(pair_dir, tmp_path):
    folder = tmp_path / "runs" / "base"
    folder.mkdir(parents=True)
    command = [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--data-dir", str(pair_dir),
               "--out", str(tmp_path / "runs"), "--run", "base=--iterations 1"]  # fmt: skip
    with open(folder / "running.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a training in progress holds it
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 1 and "being trained by another process" in result.stderr
    assert not (folder / "last.pth").exists()
    (folder / "done.json").write_text("{not json")
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 1 and "done.json is damaged" in result.stderr


def test_quality_benchmark_stops_a_run_at_its_time_limit_and_scores_it(pair_dir, tmp_path):
    endless = "--hidden-size 8 --encoder-layers 1 --decoder-layers 1 --batch-size 4 --iterations 1000000 " \
        "--eval-every 5 --patience 0"  # fmt: skip
    command = [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--data-dir", str(pair_dir),
               "--out", str(tmp_path / "runs"), "--precision", "fp32", "--plot", str(tmp_path / "curves.png"),
               "--time-plot", str(tmp_path / "time.png"), "--minutes", "0.2",
               "--run", f"endless=--recipe tutorial {endless}"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(limit)" in result.stdout  # the summary says the run was cut by its budget
    [run] = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert run["out_of_time"] and run["seconds"] >= 12
    assert 0 < run["best_iteration"] <= run["iterations"] < 1000000
    assert run["test"]["perplexity"] > 0  # its best checkpoint was scored

    command[command.index("0.2")] = "0.001"  # stopped before train.py even starts
    command[command.index(str(tmp_path / "runs"))] = str(tmp_path / "other")
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 1 and result.stderr.count("\n") == 2  # the run's command line, then the error
    assert "ran out of time before it started training" in result.stderr
    assert not (tmp_path / "other" / "endless" / "done.json").exists()
