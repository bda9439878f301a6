"""Recipes, flags and how a run is resolved (seq2seq/config.py)."""

from dataclasses import FrozenInstanceError

import pytest

from seq2seq import config
from seq2seq.cornell import PairSettings
from seq2seq.run import read_flags
from tests.helpers import tiny_run


def test_recipes_set_defaults_and_explicit_flags_win():
    tuned, _ = read_flags([])
    tutorial, _ = read_flags(["--recipe", "tutorial"])
    assert all(tutorial[k] == v for k, v in config.TUTORIAL.items())
    assert all(tuned[k] == v for k, v in config.RECIPES["tuned"].items())
    assert tuned["recipe"] == "tuned" and tuned["tie_embeddings"] and not tutorial["tie_embeddings"]
    mixed, _ = read_flags(["--recipe", "tutorial", "--dropout", "0.25", "--tie_embeddings=True"])
    assert mixed["dropout"] == 0.25 and mixed["tie_embeddings"] is True and mixed["learning_rate"] == 1e-4
    assert read_flags(["--tie-embeddings=false"])[0]["tie_embeddings"] is False
    assert read_flags(["--rec", "tutorial"])[0]["recipe"] == "tutorial"  # argparse's abbreviations work


def test_every_flag_is_a_recipe_value_or_an_invocation_default_or_a_pair_flag():
    flags = {a.dest for a in config.make_parser()._actions if a.dest != "help"}
    for recipe in config.RECIPES.values():
        assert flags == set(recipe) | set(config.INVOCATION) | set(config.PAIR_FLAGS)
        assert not set(recipe) & set(config.INVOCATION)


def test_resolution_fills_unset_pair_flags_from_the_build_and_counts_epochs(pair_dir):
    flags = config.layer({"data_dir": str(pair_dir), "min_count": 2, "epochs": 3})
    pairs = config.pair_settings(flags)
    assert pairs == PairSettings(
        min_count=2, val_fraction=0.2, test_fraction=0.1
    )  # the rest as pair_dir was built
    cfg = config.resolve(flags, pairs, "fp32", vocab_size=40, batches_per_epoch=7)
    assert cfg.loop.iterations == 21 and cfg.machine.precision == "fp32" and cfg.model.vocab_size == 40
    assert cfg.optimizer.learning_rate == config.RECIPES["tuned"]["learning_rate"]
    assert config.nest(cfg.flags(), cfg.model.to_dict()) == cfg.to_dict()  # flags and back
    with pytest.raises(FrozenInstanceError):
        cfg.loop.iterations = 5  # type: ignore[misc]


def test_bad_boolean_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit):
        read_flags(["--tie-embeddings=maybe"])
    assert "expected true or false, got 'maybe'" in capsys.readouterr().err


def test_recipe_help_shows_that_recipes_defaults(capsys):
    with pytest.raises(SystemExit):
        read_flags(["--recipe", "tutorial", "--help"])
    assert "0.0001)" in capsys.readouterr().out.replace("\n", " ").replace(" ", "")
    with pytest.raises(SystemExit):
        read_flags(["--help"])
    assert "(default:0.001)" in capsys.readouterr().out.replace("\n", "").replace(" ", "")


def test_help_on_resume_shows_the_runs_own_values(pair_dir, tmp_path, capsys):
    tiny_run(pair_dir, tmp_path, "--iterations", "2", "--recipe", "tutorial")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        read_flags(["--resume", str(tmp_path / "last.pth"), "--help"])
    out = capsys.readouterr().out.replace("\n", " ").replace(" ", "")
    assert exit_info.value.code == 0
    assert "embeddingandGRUsize(default:16)" in out and "(default:tutorial)" in out
