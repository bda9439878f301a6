import pytest

from seq2seq.cornell import (
    CorpusError,
    PairSettings,
    conversation_pairs,
    make_pairs,
    read_convokit,
    read_corpus,
    read_pairs,
    split_conversations,
    write_pairs,
)
from tests.helpers import write_convokit


def test_reads_official_layout_and_counts_defects(corpus):
    folder, expected = corpus
    conversations, skipped = read_corpus(folder)
    assert len(conversations) == expected["conversations"]
    assert dict(skipped) == expected["skipped"]
    texts = [t for _, t in expected["special"].values()]
    assert texts in conversations  # accents stripped, cp1252 dash dropped, apostrophe kept


def test_broken_items_break_pairs_not_the_run(corpus):
    folder, expected = corpus
    conversations, _ = read_corpus(folder)
    broken = conversations[-1]
    assert broken[:3] == [None, None, None] and broken[3] == "i don't know ."
    assert conversation_pairs(broken) == []
    assert conversation_pairs(["a", "b", None, "c", "d"]) == [("a", "b"), ("c", "d")]


def test_convokit_layout_gives_the_same_conversations(corpus, tmp_path):
    folder, _ = corpus
    write_convokit(folder, tmp_path / "convokit" / "movie-corpus")
    from_cornell, _ = read_corpus(folder)
    from_convokit, skipped = read_corpus(tmp_path / "convokit")  # found one level down
    clean = [c for c in from_cornell if None not in c]
    assert sorted(from_convokit) == sorted(clean)
    assert not skipped


def test_convokit_skips_malformed_json(tmp_path):
    (tmp_path / "utterances.jsonl").write_text(
        '{"id": "L1", "conversation_id": "L1", "text": "Hi."}\nnot json\n'
    )
    conversations, skipped = read_convokit(tmp_path)
    assert conversations == [["hi ."]] and skipped["malformed_line"] == 1


def test_missing_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(CorpusError, match="no Cornell corpus"):
        read_corpus(tmp_path)


def test_split_is_by_conversation_and_deterministic():
    assignment = split_conversations(1000, 0.05, 0.05, seed=3)
    assert assignment == split_conversations(1000, 0.05, 0.05, seed=3)
    assert assignment != split_conversations(1000, 0.05, 0.05, seed=4)
    assert assignment.count("val") == 50 and assignment.count("test") == 50


def test_no_conversation_leaks_across_splits():
    # every utterance names its conversation, so a pair tells where it came from
    conversations = [[f"c{c} t{t}" for t in range(4)] for c in range(200)]
    paired = make_pairs(conversations, PairSettings(min_count=1, val_fraction=0.1, test_fraction=0.1))
    owners = {s: {q.split()[0] for q, _ in pairs} for s, pairs in paired.splits.items()}
    assert owners["train"] and owners["val"] and owners["test"]
    assert not owners["train"] & owners["val"] and not owners["train"] & owners["test"]
    assert not owners["val"] & owners["test"]
    assert paired.stats["splits"]["val"]["conversations"] == 20


def test_length_filter_counts_eos():
    long_side = " ".join(["w"] * 9)
    too_long = " ".join(["w"] * 10)
    conversations = [["a", long_side, "b"], ["a", too_long, "b"]]
    paired = make_pairs(
        conversations,
        PairSettings(max_length=10, train_max_length=0, min_count=1, val_fraction=0, test_fraction=0),
    )
    assert sorted(paired.splits["train"]) == sorted([("a", long_side), (long_side, "b")])
    assert paired.stats["pairs"] == {"raw": 4, "after_length_filter": 2, "after_trimming": 2}


def test_rare_words_drop_or_unk():
    conversations = [["common word", "common word"]] * 3 + [["common", "rare"]]
    settings = dict(min_count=2, val_fraction=0, test_fraction=0)
    dropped = make_pairs(conversations, PairSettings(rare_words="drop", **settings))
    kept = make_pairs(conversations, PairSettings(rare_words="unk", **settings))
    assert ("common", "rare") not in dropped.splits["train"]
    assert ("common", "rare") in kept.splits["train"]
    assert kept.stats["splits"]["train"]["unk_tokens"] == 1
    assert dropped.stats["vocabulary"] == {"train_words": 3, "kept_words": 2}


def test_pair_file_round_trip_and_errors(tmp_path):
    pairs = [("hi .", "hello ."), ("how are you ?", "i'm fine .")]
    write_pairs(tmp_path / "p.txt", pairs)
    assert read_pairs(tmp_path / "p.txt") == pairs
    (tmp_path / "bad.txt").write_text("hi\thello\nno tab here\n")
    with pytest.raises(CorpusError, match=r"bad\.txt:2:"):
        read_pairs(tmp_path / "bad.txt")
    with pytest.raises(CorpusError, match="download_data.py"):
        read_pairs(tmp_path / "missing.txt")


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
