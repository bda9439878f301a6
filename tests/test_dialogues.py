"""Corpora besides Cornell's: plain dialogue files and ConvoKit corpora with reply trees."""

import json
import zipfile
from pathlib import Path

import pytest

from seq2seq.cornell import (
    CorpusError,
    PairSettings,
    conversation_pairs,
    read_convokit,
    read_corpus,
    read_dialogues,
)
from seq2seq.download import DataError, prepare_data, read_stats
from seq2seq.vocab import Context, join_turns
from tests.helpers import ROOT, run_script, write_convokit

EXAMPLE = ROOT / "tests" / "data" / "dialogues.txt"  # the README's example
SETTINGS = PairSettings(min_count=1, val_fraction=0, test_fraction=0)


def dialogue_file(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "chats.txt"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def write_utterances(folder: Path, utterances: list[dict]) -> Path:
    """utterances.jsonl from (id, conversation_id, reply_to, text) dicts, speaker and timestamp added."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"speaker": "u0", "timestamp": None, **u}) for u in utterances]
    (folder / "utterances.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def utterance(uid: str, reply_to: str | None, text: str, conversation: str = "c1") -> dict:
    return {"id": uid, "conversation_id": conversation, "reply_to": reply_to, "text": text}


def test_blank_lines_separate_conversations_and_labels_are_stripped(tmp_path):
    path = dialogue_file(
        tmp_path,
        "Ann: Hi, Bob!\nBob:   Hello.\nDr. Who: Who are you?\n\n\n  \t \nHow are you?\nFine.\n\nNo:\nReply\n",
    )
    conversations, skipped = read_corpus(path)
    assert conversations == [
        ["hi bob !", "hello .", "who are you ?"],
        ["how are you ?", "fine ."],
        ["no", "reply"],  # one turn has no label, so nothing is stripped
    ]
    assert not skipped


@pytest.mark.parametrize(
    "turns, kept",
    [
        (["Note: the shop closes at six.", "Thanks."], ["note the shop closes at six .", "thanks ."]),
        (["Meet me at 12:30.", "Ann: ok"], ["meet me at .", "ann ok"]),  # "12:30" is no label
        (["See http://x.org", "Ann: ok"], ["see http x . org", "ann ok"]),
        (["My old friend Bob: hi", "Ann: ok"], ["my old friend bob hi", "ann ok"]),  # four words
        (["A: ", "B: fine.", "A: good."], [None, "fine .", "good ."]),  # a label alone is an empty turn
    ],
)
def test_a_label_is_stripped_only_when_every_turn_has_one(tmp_path, turns, kept):
    conversations, _ = read_dialogues(dialogue_file(tmp_path, "\n".join(turns) + "\n"))
    assert conversations == [kept]


def test_crlf_bom_and_windows_1252_read_like_utf8(tmp_path):
    lf = read_dialogues(dialogue_file(tmp_path, "Ann: Café?\nBob: Oui.\n\nHi.\nHo.\n"))
    crlf = read_dialogues(dialogue_file(tmp_path, "\ufeffAnn: Café?\r\nBob: Oui.\r\n\r\nHi.\r\nHo.\r\n"))
    cp1252 = read_dialogues(dialogue_file(tmp_path, b"Ann: Caf\xe9?\r\nBob: Oui.\r\n\r\nHi.\r\nHo.\r\n"))
    assert lf == crlf == cp1252 == ([["cafe ?", "oui ."], ["hi .", "ho ."]], {})
    # a byte with no Windows-1252 character reads as a space: its line stays a turn
    assert read_dialogues(dialogue_file(tmp_path, b"bad \x81 byte\ncaf\xe9\n"))[0] == [["bad byte", "cafe"]]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "holds no text: put each turn on its own line"),
        (b"\n \r\n\t\n", "holds no text"),
        (b"Hello.\n\nHi there.\n\n", "every conversation has a single turn; put each turn on its own line"),
        (b"x " * 500_000, "every conversation has a single turn"),  # one huge line
        ("\U0001f600\n---\n\u4f60\u597d\n".encode(), "no two turns in a row both hold words"),
        (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0", "holds NUL bytes"),
        ("Hi.\nHello.\n".encode("utf-16"), "UTF-16: save it as UTF-8"),
    ],
)
def test_a_file_that_gives_no_pairs_is_one_clear_error(tmp_path, content, message):
    path = dialogue_file(tmp_path, content)
    with pytest.raises(DataError, match=message) as error:
        prepare_data(tmp_path / "data", SETTINGS, source=str(path))
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "data" / "train.txt").exists()


def test_settings_that_leave_no_pairs_say_so(tmp_path):
    path = dialogue_file(tmp_path, "Hi.\nHello.\n")
    with pytest.raises(DataError, match="no word seen --min-count times .* --max-length, --min-count"):
        prepare_data(tmp_path / "data", PairSettings(min_count=5), source=str(path))


def test_a_zip_named_file_is_never_read_as_dialogue(tmp_path):
    path = tmp_path / "corpus.zip"
    path.write_text("Hi.\nHello.\n")
    with pytest.raises(DataError, match="not a valid corpus zip"):
        prepare_data(tmp_path / "data", SETTINGS, source=str(path))


# A thread: r is answered by a and b; a by c and d; b by e; d by f. File order is not spoken order.
THREAD = [
    utterance("t1_f", "t1_d", "Thanks."),
    utterance("t3_r", None, "How are you?"),
    utterance("t1_a", "t3_r", "Fine."),
    utterance("t1_b", "t3_r", "Bad."),
    utterance("t1_c", "t1_a", "Good to hear."),
    utterance("t1_d", "t1_a", "Me too."),
    utterance("t1_e", "t1_b", "Sorry."),
    utterance("x1", None, "Other thread.", conversation="c0"),
    utterance("x2", "x1", "Yes.", conversation="c0"),
]
TEXT = {u["id"]: " ".join(u["text"].lower().replace(".", " .").replace("?", " ?").split()) for u in THREAD}
EDGES = {(TEXT[u["reply_to"]], TEXT[u["id"]]) for u in THREAD if u["reply_to"]}


def test_a_reply_tree_gives_every_reply_exactly_one_pair(tmp_path):
    conversations, skipped = read_convokit(write_utterances(tmp_path, THREAD))
    assert not skipped
    assert len(conversations) == 2  # one per thread, so a thread never straddles two splits
    r, a, b, c, d, f, e = (TEXT[f"t{n}"] for n in ("3_r", "1_a", "1_b", "1_c", "1_d", "1_f", "1_e"))
    # the first reply continues a chain, a later one starts a new chain at its parent
    assert conversations[0] == [r, a, c, None, a, d, f, None, r, b, e]
    assert conversations[1] == ["other thread .", "yes ."]
    pairs = [pair for conversation in conversations for pair in conversation_pairs(conversation)]
    assert sorted(pairs) == sorted(EDGES) and len(pairs) == len(set(pairs))
    # a branch carries context from its parent on
    with_context = conversation_pairs(conversations[0], Context(turns=3))
    assert (join_turns([a, d]), f) in with_context and (d, f) not in with_context
    paired = prepare_data(tmp_path / "data", SETTINGS, source=str(tmp_path))
    assert paired["conversations"] == 2 and paired["pairs"]["raw"] == len(EDGES)


def test_a_convokit_zip_of_any_corpus_is_read(tmp_path):
    write_utterances(tmp_path / "thread", THREAD)
    with zipfile.ZipFile(tmp_path / "reddit.zip", "w") as archive:
        archive.write(tmp_path / "thread" / "utterances.jsonl", "reddit-corpus/utterances.jsonl")
        for name in ("conversations.json", "speakers.json", "corpus.json", "index.json"):
            archive.writestr(f"reddit-corpus/{name}", "{}")
    stats = prepare_data(tmp_path / "data", SETTINGS, source=str(tmp_path / "reddit.zip"))
    assert stats["pairs"]["raw"] == len(EDGES)
    # the utterances file itself may be given, too
    assert read_corpus(tmp_path / "thread" / "utterances.jsonl") == read_corpus(tmp_path / "data" / "raw")


def test_cycles_and_missing_parents_are_cut_and_counted(tmp_path):
    folder = write_utterances(
        tmp_path,
        [
            utterance("x", None, "x"),
            utterance("y", "x", "y"),
            utterance("p", "gone", "p"),  # answers nothing in the corpus: starts a chain
            utterance("q", "p", "q"),
            utterance("u", "w", "u"),  # u and w answer each other; v answers u
            utterance("w", "u", "w"),
            utterance("v", "u", "v"),
            utterance("s", "s", "s"),  # answers itself
        ],
    )
    with open(folder / "utterances.jsonl", "a") as f:
        f.write('{"id": "bad"}\nnot json\n')
    conversations, skipped = read_convokit(folder)
    assert conversations == [["x", "y", None, "p", "q", None, "u", "w", None, "u", "v", None, "s"]]
    assert dict(skipped) == {"missing_reply_to": 1, "reply_cycle": 2, "malformed_line": 2}


def test_a_deep_thread_needs_no_recursion(tmp_path):
    def word(i: int) -> str:  # normalisation drops digits: 123 -> "bcd"
        return "".join(chr(ord("a") + int(digit)) for digit in str(i))

    n = 30_000
    chain = [utterance(f"u{i}", f"u{i - 1}" if i else None, word(i)) for i in range(n)]
    conversations, _ = read_convokit(write_utterances(tmp_path, chain[::-1]))
    assert conversations == [[word(i) for i in range(n)]]


def test_without_replies_a_conversation_is_ordered_by_line_number_else_file_order(tmp_path):
    folder = write_utterances(
        tmp_path,
        [utterance("L10", None, "third"), utterance("L2", None, "first"), utterance("L3", None, "second")]
        + [utterance(i, None, i, conversation="c2") for i in ("b", "a", "c")],
    )
    assert read_convokit(folder)[0] == [["first", "second", "third"], ["b", "a", "c"]]


def test_movie_corpus_reads_the_same_with_reply_to_as_by_line_number(corpus, tmp_path):
    folder, _ = corpus
    write_convokit(folder, tmp_path / "plain")
    plain = [json.loads(line) for line in (tmp_path / "plain" / "utterances.jsonl").read_text().splitlines()]
    by_conversation: dict[str, list[dict]] = {}
    for item in plain:
        by_conversation.setdefault(item["conversation_id"], []).append(item)
    previous = {}
    for items in by_conversation.values():
        ids = sorted((item["id"] for item in items), key=lambda i: int(i[1:]))
        previous.update(zip(ids, [None, *ids]))
    write_utterances(tmp_path / "replies", [{**item, "reply_to": previous[item["id"]]} for item in plain])
    with_replies, skipped = read_convokit(tmp_path / "replies")
    assert with_replies == read_convokit(tmp_path / "plain")[0] and not skipped
    from_cornell, _ = read_corpus(folder)
    assert with_replies == [c for c in from_cornell if None not in c]  # same conversations, same order


def test_script_builds_data_from_the_example_file(tmp_path):
    result = run_script("download_data.py", "--source", str(EXAMPLE), "--data-dir", str(tmp_path / "d"),
                        cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "conversations" in result.stdout
    stats = read_stats(tmp_path / "d" / "stats.json")
    assert stats["source"] == str(EXAMPLE) and stats["corpus"] == str(EXAMPLE.resolve())
    assert all(stats["splits"][s]["pairs"] > 0 for s in ("train", "val", "test"))
    pairs = "".join((tmp_path / "d" / f"{s}.txt").read_text() for s in ("train", "val", "test"))
    assert "hi how are you ?\ti am fine thanks . and you ?\n" in pairs  # "Ann:" and "Bob:" are gone
    assert "note the shop closes at six ." in pairs  # an unlabelled conversation keeps its "Note:"
    assert not (tmp_path / "d" / "raw").exists()  # read where it is, nothing extracted


def test_script_refuses_a_binary_file_in_one_line(tmp_path):
    path = dialogue_file(tmp_path, bytes(range(256)) * 4)
    result = run_script(
        "download_data.py", "--source", str(path), "--data-dir", str(tmp_path / "d"), cwd=tmp_path
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "not a dialogue file" in result.stderr


def test_a_corpus_error_names_every_layout(tmp_path):
    with pytest.raises(CorpusError, match="utterances.jsonl .a ConvoKit corpus.; give a dialogue file"):
        read_corpus(tmp_path)
