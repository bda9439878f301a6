import pytest

from seq2seq.vocab import EOS, PAD, SOS, SPECIAL_TOKENS, UNK, Vocabulary, detokenize, normalize


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Hello, World!", "hello world !"),
        ("I don't know... REALLY?!", "i don't know . . . really ? !"),
        ("Café crème brûlée", "cafe creme brulee"),
        ("'cause we're goin' home", "cause we're goin home"),
        ("It’s fine", "it's fine"),  # typographic apostrophe
        ("  tabs\tand\nnewlines  ", "tabs and newlines"),
        ("I have 2 cats & 1 dog.", "i have cats dog ."),
        ("日本語 emoji 😀 only", "emoji only"),
        ("ctrl\x00\x07chars", "ctrl chars"),
        ("--", ""),
        ("rock'n'roll", "rock'n'roll"),
        ("end.", "end ."),
        ("Wait\u2026 what", "wait . . . what"),  # NFKD turns the ellipsis into dots
        ("Stra\u00dfe", "strasse"),  # case folding
        ("\ufb01ne", "fine"),  # ligature
        ("It\u2018s", "it's"),
    ],
)
def test_normalize(raw, expected):
    assert normalize(raw) == expected


def test_normalize_is_idempotent():
    text = "Well, I'm... not SURE?! Café."
    assert normalize(normalize(text)) == normalize(text)


def test_special_token_ids():
    assert (PAD, SOS, EOS, UNK) == (0, 1, 2, 3)
    vocab = Vocabulary()
    assert [vocab.word_to_index[t] for t in SPECIAL_TOKENS] == [PAD, SOS, EOS, UNK]


def test_build_trims_and_orders_deterministically():
    sentences = ["b a a", "c a b", "rare"]
    vocab = Vocabulary.build(sentences, min_count=2)
    assert vocab.index_to_word[4:] == ["a", "b"]  # by count, then alphabetically
    assert Vocabulary.build(reversed(sentences), min_count=2).index_to_word == vocab.index_to_word
    assert "rare" not in vocab and "c" not in vocab


def test_encode_decode_unknown_and_eos():
    vocab = Vocabulary(["hello", "there"])
    ids = vocab.encode("hello stranger there")
    assert ids == [4, UNK, 5]
    assert vocab.unknown_words("hello stranger there") == ["stranger"]
    assert vocab.decode([SOS, 4, PAD, 5, EOS, 4]) == ["hello", "there"]


def test_dict_round_trip_is_plain_data():
    vocab = Vocabulary.build(["a b b c", "c c"], min_count=1)
    data = vocab.to_dict()
    assert set(data) == {"words", "counts"}
    assert all(isinstance(w, str) for w in data["words"]) and all(isinstance(c, int) for c in data["counts"])
    again = Vocabulary.from_dict(data)
    assert again.index_to_word == vocab.index_to_word
    assert again.counts == vocab.counts


def test_from_dict_rejects_inconsistent_data():
    with pytest.raises(ValueError):
        Vocabulary.from_dict({"words": ["a", "a"], "counts": [1, 1]})


def test_detokenize():
    assert detokenize("i'm fine . and you ?".split()) == "i'm fine. and you?"
    assert detokenize([]) == ""
