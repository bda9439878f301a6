import argparse
import json
from pathlib import Path

import pytest
import torch

from seq2seq.chatbot import make_chat_parser
from seq2seq.checkpoint import save_checkpoint
from seq2seq.cornell import write_pairs
from seq2seq.evaluation import evaluate, format_report, make_parser
from seq2seq.metrics import corpus_bleu, distinct_n, top_replies_share
from seq2seq.model import Seq2Seq
from seq2seq.vocab import Vocabulary
from tests.helpers import PAIRS, run_script, tiny_config


def run(checkpoint: Path, test_file: Path, *flags: str) -> dict:
    return evaluate(make_parser().parse_args(
        ["--model-path", str(checkpoint), "--test-data", str(test_file), "--device", "cpu", *flags]
    ))  # fmt: skip


@pytest.fixture
def test_file(tmp_path) -> Path:
    write_pairs(tmp_path / "test.txt", PAIRS)
    return tmp_path / "test.txt"


def test_metrics_by_hand():
    replies = [["i", "am", "fine"], ["i", "am", "ok"], ["i", "am", "fine"]]
    assert distinct_n(replies, 1) == pytest.approx(4 / 9)
    assert distinct_n(replies, 2) == pytest.approx(3 / 6)  # (i am) (am fine) (am ok)
    assert distinct_n([[]], 2) == 0.0
    assert top_replies_share(["a", "b", "a", "c"], top=1) == 0.5
    assert corpus_bleu(["i am fine ."], ["i am fine ."]) == pytest.approx(100)
    assert corpus_bleu(["nothing alike here"], ["i am fine ."]) < 5


@pytest.mark.parametrize("decoding", ["greedy", "beam"])
def test_overfit_model_scores_near_perfect(trained_checkpoint, test_file, decoding):
    r = run(trained_checkpoint, test_file, "--decoding", decoding, "--batch-size", "7")
    assert r["pairs"] == len(PAIRS)
    assert r["perplexity"] < 1.1 and r["token_accuracy"] > 0.99
    assert r["bleu"] > 95
    assert r["top10_reply_share"] == pytest.approx(10 / 20)  # every reply distinct
    assert r["samples"][0] == {"query": "hello.", "reference": "hi there.", "reply": "hi there."}


def test_untrained_model_is_as_perplexed_as_the_vocabulary_is_large(tmp_path, test_file):
    vocab = Vocabulary.build(side for pair in PAIRS for side in pair)
    torch.manual_seed(0)
    model = Seq2Seq(tiny_config(len(vocab)))
    payload = {
        "config": {"model": model.config.to_dict()},
        "model": model.state_dict(),
        "vocab": vocab.to_dict(),
    }
    save_checkpoint(tmp_path / "untrained.pth", payload)
    r = run(tmp_path / "untrained.pth", test_file)
    assert len(vocab) / 1.5 < r["perplexity"] < len(vocab) * 1.5


def test_foreign_vocabulary_still_evaluates_and_counts_unknown_words(trained_checkpoint, tmp_path):
    write_pairs(
        tmp_path / "other.txt", [("where is the spaceship ?", "on mars ."), ("hello .", "hi there .")]
    )
    r = run(trained_checkpoint, tmp_path / "other.txt", "--limit", "2")
    assert r["unknown_words"]["query_tokens"] == 2 and r["unknown_words"]["reference_tokens"] == 2
    assert r["pairs"] == 2 and r["perplexity"] > 1


def test_script_json_round_trip_and_table(trained_checkpoint, test_file, tmp_path):
    out = tmp_path / "results" / "eval.json"
    result = run_script("evaluate.py", "--model-path", str(trained_checkpoint), "--test-data", str(test_file),
                        "--output_json", str(out), "--samples", "2", "--device", "cpu")  # fmt: skip
    assert result.returncode == 0, result.stderr
    saved = json.loads(out.read_text())
    assert f"{saved['perplexity']:.2f}" in result.stdout and f"{saved['bleu']:.2f}" in result.stdout
    assert len(saved["samples"]) == 2 and "> how are you?" in result.stdout


def test_malformed_file_names_the_line(trained_checkpoint, tmp_path):
    (tmp_path / "bad.txt").write_text("hello .\thi there .\nthis line has no tab\n")
    result = run_script(
        "evaluate.py", "--model-path", str(trained_checkpoint), "--test-data", str(tmp_path / "bad.txt")
    )
    assert result.returncode == 1
    assert "bad.txt:2:" in result.stderr and result.stderr.strip().count("\n") == 0


def test_long_queries_are_cut_and_long_references_left_out_of_the_scores_and_counted(
    trained_checkpoint, tmp_path
):
    write_pairs(
        tmp_path / "long.txt", [("hello " * 5000 + ".", "hi there ."), ("how are you ?", "i'm " * 5000 + ".")]
    )
    r = run(trained_checkpoint, tmp_path / "long.txt")
    assert r["cut"] == {"queries": 1, "references_not_scored": 1} and r["pairs"] == 2


@pytest.mark.parametrize("flags, message", [(["--top-p", "0"], "expected a number in [0.000001, 1]"),
                                            (["--temperature", "1e-300"], "expected a positive number in [0.001, 1000]"),
                                            (["--length-penalty", "nan"], "expected a finite number")])  # fmt: skip
def test_decoding_flags_that_would_break_decoding_are_refused_in_one_line(
    trained_checkpoint, tmp_path, flags, message
):
    result = run_script("evaluate.py", "--model-path", str(trained_checkpoint), *flags, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1


def test_mmi_reranking_and_the_greedy_top10_share(trained_checkpoint, backward_checkpoint, test_file):
    greedy = run(trained_checkpoint, test_file)
    assert greedy["greedy_top10_share"] == greedy["top10_reply_share"] and greedy["backward_model"] is None
    assert len(greedy["greedy_top10"]) == 10
    r = run(trained_checkpoint, test_file, "--rerank", "mmi", "--backward-model", str(backward_checkpoint),
            "--beam-groups", "2", "--n-best", "6")  # fmt: skip
    assert r["decoding"]["rerank"] == "mmi" and r["decoding"]["method"] == "beam"
    assert r["decoding"]["beam_groups"] == 2 and r["decoding"]["n_best"] == 6
    assert r["backward_model"] == str(backward_checkpoint)
    assert r["bleu"] > 95 and r["greedy_top10"] == greedy["greedy_top10"]
    assert r["greedy_top10_share"] == pytest.approx(0.5)  # the same replies as greedy's, all distinct
    assert "greedy top-10's share" in format_report(r) and "BLEU (beam + MMI)" in format_report(r)


def test_reranking_needs_beam_decoding_and_a_backward_model(trained_checkpoint, test_file, tmp_path):
    missing = run_script("evaluate.py", "--model-path", str(trained_checkpoint), "--test-data", str(test_file),
                         "--rerank", "mmi", cwd=tmp_path)  # fmt: skip
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert (
        "no backward model at checkpoints/backward/best_model.pth: train one with `python train.py --reverse --save-dir checkpoints/backward`"
        in missing.stderr
    )
    greedy = run_script("evaluate.py", "--model-path", str(trained_checkpoint), "--test-data", str(test_file),
                        "--rerank", "mmi", "--backward-model", str(trained_checkpoint), cwd=tmp_path)  # fmt: skip
    assert greedy.returncode == 1 and "is a forward model" in greedy.stderr


def test_rerank_offers_and_describes_auto_only_where_it_is_the_default():
    def rerank(parser) -> argparse.Action:
        [action] = [a for a in parser._actions if "--rerank" in a.option_strings]
        return action

    evaluation, chat = rerank(make_parser()), rerank(make_chat_parser())
    assert evaluation.choices == ("none", "mmi") and evaluation.default == "none"
    assert "auto" not in evaluation.help  # evaluate.py reranks only when asked
    assert "auto" in chat.choices and chat.default == "auto" and "auto: mmi when" in chat.help
