"""Context turns: extraction from conversations, the pair files, encoding, checkpoints, and the
conversation kept by chat.py, evaluate.py and the exported bot."""

from __future__ import annotations

import json

import pytest
import torch

from seq2seq.batching import encode_pairs
from seq2seq.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from seq2seq.checkpoint import context as checkpoint_context
from seq2seq.cornell import CorpusError, PairSettings, conversation_pairs, make_pairs, read_pairs, write_pairs
from seq2seq.decoding import Conversation, DecodeSettings, last_turns, reply_batch
from seq2seq.download import prepare_data
from seq2seq.vocab import EOS, NO_CONTEXT, PAD, Context, Vocabulary, detokenize, join_turns
from tests.helpers import CONTEXT, CONTEXT_PAIRS, HOSTILE, run_script, tiny_run, write_corpus

TALK = ["a", "b c", "d e f", None, "g", "h i", "j"]  # a conversation; None is an unusable line


def test_context_keeps_the_last_turns_within_the_budget_cut_from_the_left():
    turns = ["a b c", "d e", "f"]
    assert Context(0, 20).cut(turns) == []
    assert Context(1, 20).cut(turns) == ["f"]
    assert Context(5, 20).cut(turns) == turns
    assert Context(3, 4).cut(turns) == ["e", "f"]  # "f" and EOS leave 2: "e" and its EOS
    assert Context(3, 6).cut(turns) == ["d e", "f"]  # 1 left: no room for a word and its EOS
    assert Context(3, 7).cut(turns) == ["c", "d e", "f"]
    assert Context(3, 8).cut(turns) == ["b c", "d e", "f"]
    assert Context(3, 1).cut(turns) == []  # no room for a word and its EOS
    assert Context(3, 20).cut(["a", "", "b"]) == ["b"]  # an empty turn ends the context


def test_pairs_carry_the_earlier_turns_of_their_conversation_only():
    assert conversation_pairs(TALK) == [("a", "b c"), ("b c", "d e f"), ("g", "h i"), ("h i", "j")]
    assert conversation_pairs(TALK, Context(2, 20)) == [
        ("a", "b c"),
        ("a\tb c", "d e f"),
        ("g", "h i"),  # nothing reaches back past the unusable line
        ("g\th i", "j"),
    ]
    assert conversation_pairs(["a b c d", "e", "f"], Context(2, 4)) == [("a b c d", "e"), ("b c d\te", "f")]
    assert conversation_pairs(["a", "b c d", "e", "f"], Context(2, 6))[2] == ("a\tb c d\te", "f")
    assert conversation_pairs(["a", "b c d", "e", "f"], Context(2, 5))[2] == ("b c d\te", "f")


@pytest.mark.parametrize("turns", [1, 2])
def test_context_builds_hold_the_same_pairs_and_vocabulary_as_without(tmp_path, turns):
    write_corpus(tmp_path / "corpus", n_conversations=60)
    from seq2seq.cornell import read_corpus

    conversations, _ = read_corpus(tmp_path / "corpus")
    plain = make_pairs(conversations, PairSettings(min_count=1))
    withcontext = make_pairs(conversations, PairSettings(min_count=1, context_turns=turns, context_length=8))
    assert withcontext.vocab.index_to_word == plain.vocab.index_to_word
    for split, pairs in plain.splits.items():
        sources = [source for source, _ in withcontext.splits[split]]
        assert [(s.split("\t")[-1], r) for s, r in withcontext.splits[split]] == pairs
        assert all(s.count("\t") <= turns for s in sources)
        context = withcontext.stats["splits"][split]["context"]
        assert context["turns"] == sum(s.count("\t") for s in sources)
        assert context["pairs_with_context"] == sum("\t" in s for s in sources)
    assert any("\t" in s for s, _ in withcontext.splits["train"])


def test_the_default_build_is_unchanged_by_the_context_flags(tmp_path, corpus):
    folder, _ = corpus
    prepare_data(tmp_path / "plain", PairSettings(min_count=1), source=str(folder))
    prepare_data(tmp_path / "zero", PairSettings(min_count=1, context_length=30), source=str(folder))
    for name in ("train.txt", "val.txt", "test.txt", "vocab.json"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "zero" / name).read_bytes()
    assert "context" not in json.loads((tmp_path / "plain" / "stats.json").read_text())["splits"]["train"]


def test_pair_files_with_context_round_trip_and_refuse_empty_fields(tmp_path):
    pairs = [("hello .\thow are you ?", "fine ."), ("why ?", "because .")]
    write_pairs(tmp_path / "p.txt", pairs)
    assert (tmp_path / "p.txt").read_text() == "hello .\thow are you ?\tfine .\nwhy ?\tbecause .\n"
    assert read_pairs(tmp_path / "p.txt") == pairs
    for line in ("hello\t\tfine", "only one field", "\tquery\treply", "a\tb\t"):
        (tmp_path / "bad.txt").write_text(f"{line}\n")
        with pytest.raises(CorpusError, match=r"bad.txt:1: expected"):
            read_pairs(tmp_path / "bad.txt")


def test_sources_encode_each_turn_closed_by_eos():
    vocab = Vocabulary("a b c d".split())
    a, b, c, d = (vocab.word_to_index[w] for w in "abcd")
    assert NO_CONTEXT.source_ids(vocab, "a b\tc d") == [c, d, EOS]  # a model without context: the query
    assert Context(1, 20).source_ids(vocab, "a b\tc d") == [a, b, EOS, c, d, EOS]
    assert Context(1, 20).source_ids(vocab, "c d") == NO_CONTEXT.source_ids(vocab, "c d")
    # pairs are filtered by their query and reply, the context has its own budget
    examples = encode_pairs(
        [("a b c d a b\tc", "d"), ("a\tb c d", "a")], vocab, max_length=3, context=Context(1, 3)
    )
    assert examples == [([a, b, EOS, c, EOS], [d, EOS])]


def test_the_backward_model_reads_the_last_turn_of_each_source():
    src = torch.tensor([[4, EOS, 5, 6, EOS], [7, 8, EOS, PAD, PAD], [9, EOS, EOS, 10, EOS]])
    query, lengths = last_turns(src, torch.tensor([5, 3, 5]))
    assert query.tolist() == [[5, 6, EOS], [7, 8, EOS], [10, EOS, PAD]]
    assert lengths.tolist() == [3, 3, 2]
    plain = torch.tensor([[4, 5, EOS], [6, EOS, PAD]])
    assert last_turns(plain, torch.tensor([3, 2]))[0] is plain


@pytest.fixture(scope="module")
def context_model(context_checkpoint):
    from seq2seq.checkpoint import build_model

    checkpoint = load_checkpoint(context_checkpoint)
    model, vocab = build_model(checkpoint)
    return model.eval(), vocab, checkpoint_context(checkpoint)


def test_a_conversation_feeds_the_earlier_turns_to_the_reply(context_model):
    model, vocab, context = context_model
    assert context == Context(CONTEXT["context_turns"], CONTEXT["context_length"])
    settings = DecodeSettings()
    talk = Conversation(context)
    first = talk.reply(model, vocab, "i am sad .", settings)
    assert talk.history == ["i am sad .", " ".join(first)]
    second = talk.reply(model, vocab, "why ?", settings)
    assert second == reply_batch(model, vocab, [join_turns(["i am sad .", " ".join(first), "why ?"])], settings,
                                 context=context)[0]  # fmt: skip
    assert talk.history == ["why ?", " ".join(second)]  # two turns kept
    talk.reset()
    assert talk.history == [] and talk.reply(model, vocab, "why ?", settings) == ["because", "."]
    # the tiny model learnt what the earlier turn changes
    happy = Conversation(context)
    happy.reply(model, vocab, "i am happy .", settings)
    assert second == ["i", "lost", "my", "dog", "."]
    assert happy.reply(model, vocab, "why ?", settings) == ["i", "won", "the", "game", "."]


def test_checkpoints_record_the_context_and_refuse_another_separator(tmp_path, context_checkpoint):
    checkpoint = load_checkpoint(context_checkpoint)
    assert checkpoint_context(checkpoint) == Context(**{"turns": 2, "tokens": 12})
    old = {k: v for k, v in checkpoint.items() if k != "format"}
    old["config"] = {**old["config"], "pairs": {"max_length": 10}}
    save_checkpoint(tmp_path / "old.pth", old)  # from before context: none
    assert checkpoint_context(load_checkpoint(tmp_path / "old.pth")) == NO_CONTEXT
    save_checkpoint(tmp_path / "sep.pth", {**old, "turn_separator": "<sep>"})
    with pytest.raises(CheckpointError, match="separates the turns of its sources with '<sep>'"):
        load_checkpoint(tmp_path / "sep.pth")
    bad = {**old, "config": {**old["config"], "pairs": {"max_length": 10, "context_turns": -1}}}
    save_checkpoint(tmp_path / "bad.pth", bad)
    with pytest.raises(CheckpointError, match="--context-turns -1"):
        load_checkpoint(tmp_path / "bad.pth")


def test_training_on_a_context_build_records_it(tmp_path, corpus):
    folder, _ = corpus
    data = tmp_path / "data"
    prepare_data(data, PairSettings(min_count=1, context_turns=1, context_length=9), source=str(folder))
    tiny_run(data, tmp_path / "run", "--iterations", "4")
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pth")
    assert checkpoint_context(checkpoint) == Context(1, 9)
    assert checkpoint["turn_separator"] == "<eos>"


def chat(checkpoint, *flags, lines: str, cwd):
    return run_script(
        "chat.py", "--model-path", str(checkpoint), "--rerank", "none", *flags, input=lines, cwd=cwd
    )


def test_piped_chat_is_one_conversation_until_a_blank_line(context_checkpoint, tmp_path):
    result = chat(context_checkpoint, lines="i am sad.\nwhy?\n\nwhy?\ni am happy.\nwhy?\n", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["ok.", "i lost my dog.", "", "because.", "ok.", "i won the game."]
    assert "reads the last 2 turns" in result.stderr
    alone = chat(context_checkpoint, "--no-context", lines="i am sad.\nwhy?\n", cwd=tmp_path)
    assert alone.stdout.splitlines() == ["ok.", "because."]
    assert "--no-context: every message is answered alone" in alone.stderr


def test_hostile_lines_in_a_conversation_get_one_line_each(context_checkpoint, tmp_path):
    result = chat(context_checkpoint, lines="\n".join(["i am sad.", *HOSTILE, "why?"]) + "\n", cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert len(result.stdout.splitlines()) == len(HOSTILE) + 2


def test_the_repl_shows_and_forgets_its_context(context_checkpoint):
    import argparse

    from seq2seq.chatbot import Chat, make_chat_parser

    args = make_chat_parser().parse_args(["--model-path", str(context_checkpoint), "--rerank", "none"])
    bot = Chat(args)
    assert "no earlier turns yet" in bot.command("/context")
    assert bot.respond("I am SAD.")[0] == "ok."
    assert bot.command("/context").splitlines() == ["  you: i am sad.", "  bot: ok."]
    assert bot.respond("why?")[0] == "i lost my dog."
    assert bot.command("/context").splitlines() == ["  you: why?", "  bot: i lost my dog."]
    assert bot.command("/reset").startswith("new conversation")
    assert "no earlier turns yet" in bot.command("/context")
    assert bot.respond("why?")[0] == "because."
    assert bot.respond("")[0] == "" and bot.conversation.history == ["why ?", "because ."]  # nothing said
    off = Chat(argparse.Namespace(**{**vars(args), "no_context": True}))
    assert "--no-context" in off.command("/context")


def test_evaluate_reads_the_context_of_the_test_file(context_checkpoint, tmp_path):
    write_pairs(tmp_path / "test.txt", CONTEXT_PAIRS)
    report = tmp_path / "r.json"
    result = run_script("evaluate.py", "--model-path", str(context_checkpoint), "--test-data",
                        str(tmp_path / "test.txt"), "--output-json", str(report), "--samples", "5")  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads(report.read_text())
    assert figures["context"] == {"turns": 2, "tokens": 12}
    assert [s["reply"] for s in figures["samples"]][2:4] == ["i lost my dog.", "i won the game."]
    assert figures["samples"][2]["query"] == "i am sad. | ok. | why?"
    alone = run_script("evaluate.py", "--model-path", str(context_checkpoint), "--test-data",
                       str(tmp_path / "test.txt"), "--output-json", str(report), "--no-context")  # fmt: skip
    assert alone.returncode == 0, alone.stderr
    assert json.loads(report.read_text())["loss"] > figures["loss"]  # the replies needed the context


@pytest.mark.parametrize("method", ["trace", "script"])
def test_the_exported_bot_keeps_the_conversation_like_chat(context_model, method, tmp_path):
    import warnings

    from seq2seq.export import build_bot

    model, vocab, context = context_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notices
        build_bot(model, vocab, 10, method, context=context).save(str(tmp_path / "bot.pt"))
        bot = torch.jit.load(str(tmp_path / "bot.pt"))  # through save and load
    talk = Conversation(context)
    settings = DecodeSettings()
    for line in ["I am sad.", "why?", "i am happy.", "why?", "why?", "zzz blorft", None, "why?", "x " * 30]:
        if line is None:
            bot.reset()
            talk.reset()
            continue
        query = " ".join(bot.normalize(line).split()[:9])
        assert bot.reply(line) == detokenize(talk.reply(model, vocab, query, settings))
    bot.reset()
    assert bot.reply("i am sad.") == "ok." and bot.reply("why?") == "i lost my dog."
    bot.reset()
    assert bot.reply("why?") == "because."


def test_profile_feeds_sources_with_their_context(context_checkpoint, tmp_path):
    write_pairs(tmp_path / "val.txt", CONTEXT_PAIRS)
    result = run_script("profile.py", "--model-path", str(context_checkpoint), "--data", str(tmp_path / "val.txt"),
                        "--steps", "1", "--mode", "inference", "--device", "cpu",
                        "--plot", str(tmp_path / "p.png"), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "up to 2 earlier turns (sources of up to 11 tokens)" in result.stdout


def test_mmi_scores_the_query_alone_given_each_reply(context_model):
    from seq2seq.decoding import backward_log_prob, beam_hypotheses, best, decode, encode_queries, mmi_score

    model, vocab, context = context_model
    settings = DecodeSettings(method="beam", beam_size=4, n_best=4, rerank="mmi", mmi_weight=0.7)
    sources = [join_turns(["i am sad .", "ok .", "why ?"]), "why ?"]
    src, lengths = encode_queries(vocab, sources, 10, torch.device("cpu"), context)
    query, query_lengths = encode_queries(vocab, ["why ?", "why ?"], 10, torch.device("cpu"))
    with torch.no_grad():
        hypotheses = beam_hypotheses(model, src, lengths, settings)
        score = mmi_score(
            hypotheses, backward_log_prob(model, query, query_lengths, hypotheses.tokens), 0.7, 0.0
        )
        expected = best(hypotheses.tokens, score, 4)
    got = decode(model, src, lengths, settings, backward=model)  # any model of the vocabulary scores
    assert torch.equal(got.tokens, expected.tokens)
    assert torch.allclose(got.scores, expected.scores)
