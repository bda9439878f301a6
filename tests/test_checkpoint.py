"""The checkpoint format: what resuming needs, and checkpoints of format 1 upgraded on load."""

import pytest
import torch

from seq2seq.checkpoint import (
    FORMAT_1,
    CheckpointError,
    build_model,
    load_checkpoint,
    save_checkpoint,
    saved_flags,
    trained_max_length,
)
from seq2seq.model import Seq2Seq
from seq2seq.run import read_flags
from seq2seq.vocab import Vocabulary
from tests.helpers import tiny_config, tiny_run


def as_format_1(checkpoint: dict) -> dict:
    """A checkpoint as the format-1 code wrote it: flat flags, the architecture beside them."""
    flags = {**saved_flags(checkpoint), "epochs": None}
    rest = {k: v for k, v in checkpoint.items() if k not in ("format", "config", "seconds", "clock")}
    return {**rest, "format": FORMAT_1, "args": flags, "model_config": checkpoint["config"]["model"]}


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda c: c.pop("evals_without_improvement"),
            "lacks the training state (evals_without_improvement)",
        ),
        (lambda c: c.pop("optimizer"), "lacks the training state (optimizer)"),
        (lambda c: c.update(iteration="3"), "its iteration is not what a run saves"),
        (lambda c: c.update(history={"train": []}), "its history is not what a run saves"),
        (lambda c: c["history"]["val"].append([9, "low"]), "its history is not what a run saves"),
        (lambda c: c.update(clock=[[3]]), "its clock is not what a run saves"),
        (lambda c: c.update(iteration=-1), "its iteration is not what a run saves"),
        (lambda c: c.update(rng={"torch": [1, 2]}), "its rng is not what a run saves"),
        (lambda c: c["rng"].update(torch=torch.zeros(3)), "its rng is not what a run saves"),
        (lambda c: c["config"].pop("loop"), "lacks the training state (its flags)"),
        (
            lambda c: c["config"]["loop"].update(batch_size="4"),
            "its --batch-size '4' is not a value train.py takes",
        ),
        (
            lambda c: c["config"]["loop"].update(eval_every=0),
            "its --eval-every 0 is not a value train.py takes",
        ),
        (lambda c: c["config"]["optimizer"].update(learning_rate=-1.0), "its --learning-rate -1.0 is not"),
        (lambda c: c["config"]["optimizer"].update(optimizer="rmsprop"), "its --optimizer 'rmsprop' is not"),
        (lambda c: c["config"]["pairs"].update(val_fraction=0.9), "its --val-fraction 0.9 is not"),
        (lambda c: c["config"]["data"].update(data_dir=5), "its --data-dir 5 is not"),
        (lambda c: c["config"]["optimizer"].pop("optimizer"), "lacks the training state (its flags)"),
        (lambda c: c["config"].pop("recipe"), "lacks the training state (its flags)"),
        (lambda c: c["config"].update(pairs=[10]), "is not a chatbot-seq2seq checkpoint"),
        (lambda c: c["config"]["pairs"].update(bogus=1), "is not a chatbot-seq2seq checkpoint"),
        (lambda c: c["config"].update(recipe="secret"), "is not a chatbot-seq2seq checkpoint"),
    ],
)
def test_resuming_a_checkpoint_without_its_whole_training_state_is_one_line(
    pair_dir, tmp_path, capsys, change, message
):
    tiny_run(pair_dir, tmp_path, "--iterations", "2")
    checkpoint = load_checkpoint(tmp_path / "last.pth")
    change(checkpoint)
    save_checkpoint(tmp_path / "partial.pth", {k: v for k, v in checkpoint.items() if k != "format"})
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        tiny_run(pair_dir, tmp_path, "--resume", str(tmp_path / "partial.pth"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and message in err and err.strip().count("\n") == 0, err


def test_a_format_1_checkpoint_loads_and_resumes_as_the_same_run(pair_dir, tmp_path):
    tiny_run(pair_dir, tmp_path / "new", "--iterations", "4", "--dropout", "0.2")
    checkpoint = load_checkpoint(tmp_path / "new" / "last.pth")
    torch.save(as_format_1(checkpoint), tmp_path / "old.pth")
    upgraded = load_checkpoint(tmp_path / "old.pth")
    assert upgraded["config"] == checkpoint["config"]
    assert upgraded["seconds"] == 0.0 and upgraded["clock"] == []  # from before the training clock
    tiny_run(pair_dir, tmp_path / "new", "--resume", "--iterations", "6")
    tiny_run(pair_dir, tmp_path / "old", "--resume", str(tmp_path / "old.pth"), "--iterations", "6")
    a, b = load_checkpoint(tmp_path / "new" / "last.pth"), load_checkpoint(tmp_path / "old" / "last.pth")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert b["format"] == "chatbot-seq2seq/2" and saved_flags(b)["dropout"] == 0.2


def test_a_format_1_checkpoint_from_before_recipes_and_newer_options_still_loads(tmp_path):
    config = tiny_config(20, hidden_size=8)
    model = Seq2Seq(config)
    old_config = {k: v for k, v in config.to_dict().items()
                  if k not in ("input_dropout", "output_dropout", "tie_embeddings")}  # fmt: skip
    vocab = Vocabulary([f"w{chr(97 + i)}" for i in range(16)])
    torch.save({"format": FORMAT_1, "model_config": old_config, "model": model.state_dict(),
                "vocab": vocab.to_dict(), "args": {"max_length": 12}}, tmp_path / "old.pth")  # fmt: skip
    checkpoint = load_checkpoint(tmp_path / "old.pth")
    loaded, _ = build_model(checkpoint)
    assert loaded.config.tie_embeddings is False and loaded.config.input_dropout == 0.0
    assert checkpoint["config"]["recipe"] == "tutorial"  # what a run from before recipes trained with
    assert checkpoint["config"]["pairs"] == {"max_length": 12}
    torch.save({"format": FORMAT_1, "model_config": old_config, "model": model.state_dict(),
                "vocab": vocab.to_dict()}, tmp_path / "no-flags.pth")  # fmt: skip
    inference_only = load_checkpoint(tmp_path / "no-flags.pth")  # as inference-only ones were written
    assert build_model(inference_only)[0].config == loaded.config and trained_max_length(inference_only) == 10


def test_a_run_from_before_recipes_resumes_as_it_was(pair_dir, tmp_path, capsys):
    tiny_run(pair_dir, tmp_path, "--iterations", "2", "--recipe", "tutorial")
    checkpoint = as_format_1(load_checkpoint(tmp_path / "last.pth"))
    new = ("recipe", "input_dropout", "output_dropout", "tie_embeddings", "long_pairs", "label_smoothing",
           "warmup", "lr_decay")  # fmt: skip
    for key in new:  # what a checkpoint written before these options lacks
        checkpoint["args"].pop(key)
        checkpoint["model_config"].pop(key, None)
    torch.save(checkpoint, tmp_path / "last.pth")
    flags, _ = read_flags(["--resume", str(tmp_path / "last.pth"), "--data-dir", str(pair_dir)])
    assert flags["recipe"] == "tutorial" and not flags["long_pairs"] and not flags["tie_embeddings"]
    assert flags["input_dropout"] == 0.0 and flags["lr_decay"] == 1.0
    tiny_run(pair_dir, tmp_path, "--resume", "--iterations", "4")
    assert load_checkpoint(tmp_path / "last.pth")["iteration"] == 4
    with pytest.raises(CheckpointError, match="--recipe tuned differs from the checkpoint's tutorial"):
        read_flags(["--resume", str(tmp_path / "last.pth"), "--recipe", "tuned", "--data-dir", str(pair_dir)])


def test_a_config_that_claims_a_larger_model_than_its_weights_is_refused_before_building_it(
    trained_checkpoint, monkeypatch
):
    from seq2seq import checkpoint as format_module

    checkpoint = load_checkpoint(trained_checkpoint)
    checkpoint["config"]["model"]["hidden_size"] = 6000
    built_on = []

    def recording(config):
        built_on.append(torch.empty(0).device.type)
        return Seq2Seq(config)

    monkeypatch.setattr(format_module, "Seq2Seq", recording)
    with pytest.raises(
        CheckpointError, match=r"size mismatch for embedding.weight: the checkpoint holds \(\d+, 64\)"
    ):
        build_model(checkpoint)
    assert built_on == ["meta"]  # only its shapes were made


def test_a_resumed_checkpoint_steers_no_path_and_rebuilds_no_data(pair_dir, tmp_path, capsys):
    tiny_run(pair_dir, tmp_path / "run", "--iterations", "2")
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pth")
    elsewhere = tmp_path / "elsewhere"
    checkpoint["config"]["data"].update(data_dir=str(elsewhere / "data"), source=str(elsewhere / "corpus"))
    checkpoint["config"]["output"].update(
        save_dir=str(elsewhere / "checkpoints"), plot=str(elsewhere / "p.png")
    )
    checkpoint["config"]["pairs"].update(max_length=12, min_count=2)
    save_checkpoint(tmp_path / "hostile.pth", {k: v for k, v in checkpoint.items() if k != "format"})
    built = (pair_dir / "stats.json").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        tiny_run(pair_dir, tmp_path / "run", "--resume", str(tmp_path / "hostile.pth"), "--iterations", "4")
    err = capsys.readouterr().err
    assert (
        "is cut with --max-length 10, --min-count 1, the resumed run's pairs with --max-length 12 --min-count 2"
        in err
    )
    assert "trained on --data-dir" in err and err.count("\n") == 1
    assert (pair_dir / "stats.json").read_text() == built and not elsewhere.exists()
    checkpoint["config"]["pairs"].update(max_length=10, min_count=1)  # pairs as data/ holds them
    save_checkpoint(tmp_path / "hostile.pth", {k: v for k, v in checkpoint.items() if k != "format"})
    tiny_run(pair_dir, tmp_path / "run", "--resume", str(tmp_path / "hostile.pth"), "--iterations", "4")
    assert load_checkpoint(tmp_path / "run" / "last.pth")["iteration"] == 4 and not elsewhere.exists()


def test_a_vocabulary_word_the_normaliser_cannot_produce_is_refused(trained_checkpoint):
    for word in ["evil\x1b[2J", "two words", "line\nbreak", "Upper", ""]:
        checkpoint = load_checkpoint(trained_checkpoint)
        checkpoint["vocab"]["words"][0] = word
        with pytest.raises(CheckpointError, match="which is not a normalised word"):
            build_model(checkpoint)
