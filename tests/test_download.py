"""The download path against a real HTTP server on 127.0.0.1 serving a zip the test made."""

import json
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from seq2seq import download
from seq2seq.cornell import PairSettings
from seq2seq.download import DataError, prepare_data, read_stats
from tests.helpers import make_zip, run_script


class CorpusServer(ThreadingHTTPServer):
    """Serves `payload` at any path, honouring Range; can cut the first transfer short, or answer
    a Range request from another offset than the one asked for."""

    def __init__(self, payload: bytes, cut_first_after: int | None = None, range_offset: int = 0):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.payload = payload
        self.cut_first_after = cut_first_after
        self.range_offset = range_offset
        self.ranges: list[str | None] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/corpus.zip"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        server: CorpusServer = self.server
        header = self.headers.get("Range")
        server.ranges.append(header)
        start = int(header.split("=")[1].rstrip("-")) + server.range_offset if header else 0
        if start >= len(server.payload):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(server.payload)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = server.payload[start:]
        self.send_response(206 if header else 200)
        self.send_header("Content-Length", str(len(body)))
        if header:
            self.send_header(
                "Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}"
            )
        self.end_headers()
        if server.cut_first_after is not None:
            body, server.cut_first_after = body[: server.cut_first_after], None
            self.wfile.write(body)
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # the peer sees a transfer cut mid-way
            return
        self.wfile.write(body)


@pytest.fixture
def corpus_zip(corpus, tmp_path):
    """The corpus zip, padded with 1 MB of incompressible bytes so a transfer spans many chunks."""
    import random
    import zipfile

    folder, _ = corpus
    path = make_zip(folder, tmp_path / "corpus.zip")
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("cornell movie-dialogs corpus/padding.bin", random.Random(0).randbytes(1 << 20))
    return path


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(download.time, "sleep", lambda seconds: None)


SETTINGS = PairSettings(min_count=1, val_fraction=0.1, test_fraction=0.1)


def data_files(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.glob("*.txt")) + sorted(p.name for p in data_dir.glob("*.json"))


def test_normal_download_builds_data(corpus_zip, tmp_path):
    server = CorpusServer(corpus_zip.read_bytes())
    stats = prepare_data(tmp_path / "data", SETTINGS, url=server.url)
    assert data_files(tmp_path / "data") == ["test.txt", "train.txt", "val.txt", "stats.json", "vocab.json"]
    assert (tmp_path / "data" / download.ZIP_NAME).read_bytes() == corpus_zip.read_bytes()
    assert stats["skipped"]["missing_line_id"] == 2
    assert json.loads((tmp_path / "data" / "stats.json").read_text())["pairs"] == stats["pairs"]
    server.shutdown()


def test_cut_transfer_resumes_with_range(corpus_zip, tmp_path):
    payload = corpus_zip.read_bytes()
    server = CorpusServer(payload, cut_first_after=len(payload) // 2)
    prepare_data(tmp_path / "data", SETTINGS, url=server.url)
    assert server.ranges[0] is None
    resumed_at = int(server.ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= len(payload) // 2  # continued from the bytes already on disk
    assert (tmp_path / "data" / download.ZIP_NAME).read_bytes() == payload
    server.shutdown()


def leave_partial_download(data_dir: Path, content: bytes) -> None:
    """What an interrupted earlier run leaves behind."""
    data_dir.mkdir()
    (data_dir / (download.ZIP_NAME + ".part")).write_bytes(content)


def test_partial_file_from_an_earlier_run_is_resumed(corpus_zip, tmp_path):
    payload = corpus_zip.read_bytes()
    leave_partial_download(tmp_path / "data", payload[:100])
    server = CorpusServer(payload)
    prepare_data(tmp_path / "data", SETTINGS, url=server.url)
    assert server.ranges == ["bytes=100-"]
    server.shutdown()


def test_whole_partial_file_is_accepted_on_416(corpus_zip, tmp_path):
    payload = corpus_zip.read_bytes()
    leave_partial_download(tmp_path / "data", payload)
    server = CorpusServer(payload)
    prepare_data(tmp_path / "data", SETTINGS, url=server.url)
    assert server.ranges == [f"bytes={len(payload)}-"]
    assert (tmp_path / "data" / download.ZIP_NAME).read_bytes() == payload
    server.shutdown()


def test_wrong_range_answer_restarts_from_zero(corpus_zip, tmp_path):
    payload = corpus_zip.read_bytes()
    leave_partial_download(tmp_path / "data", payload[:100])
    server = CorpusServer(payload, range_offset=7)  # answers bytes 107- when asked for 100-
    prepare_data(tmp_path / "data", SETTINGS, url=server.url)
    assert (tmp_path / "data" / download.ZIP_NAME).read_bytes() == payload
    server.shutdown()


def test_damaged_download_is_removed(corpus_zip, tmp_path):
    payload = bytearray(corpus_zip.read_bytes())
    payload[len(payload) // 3] ^= 0xFF
    server = CorpusServer(bytes(payload))
    with pytest.raises(DataError, match="damaged and was removed"):
        prepare_data(tmp_path / "data", SETTINGS, url=server.url)
    assert not (tmp_path / "data" / download.ZIP_NAME).exists()
    server.shutdown()


def test_malformed_url_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="check --url"):
        prepare_data(tmp_path / "data", SETTINGS, url="not a url")


def test_corrupt_zip_is_rejected_and_nothing_written(corpus_zip, tmp_path):
    payload = bytearray(corpus_zip.read_bytes())
    payload[len(payload) // 3] ^= 0xFF  # flip a byte inside the compressed data
    server = CorpusServer(bytes(payload))
    zip_path = tmp_path / "given.zip"
    zip_path.write_bytes(bytes(payload))
    with pytest.raises(DataError, match="not a valid corpus zip"):
        prepare_data(tmp_path / "data", SETTINGS, source=str(zip_path))
    assert zip_path.exists()  # a zip the user gave is never deleted
    assert data_files(tmp_path / "data") == []
    assert not (tmp_path / "data" / "raw").exists()
    server.shutdown()


def test_zip_without_corpus_is_rejected(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(DataError, match="holds no Cornell corpus"):
        prepare_data(tmp_path / "data", SETTINGS, source=str(tmp_path / "other.zip"))


def test_unreachable_address_is_one_clear_error(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match="could not download .*--source"):
        prepare_data(tmp_path / "data", SETTINGS, url=f"http://127.0.0.1:{port}/corpus.zip")
    assert data_files(tmp_path / "data") == []


def test_http_error_is_not_retried(corpus_zip, tmp_path):
    server = CorpusServer(b"")
    server.RequestHandlerClass = type("NotFound", (_Handler,), {"do_GET": lambda self: self.send_error(404)})
    with pytest.raises(DataError, match="HTTP 404"):
        prepare_data(tmp_path / "data", SETTINGS, url=server.url)
    server.shutdown()


def test_an_unfinished_build_is_not_trusted(corpus, tmp_path):
    folder, _ = corpus
    prepare_data(tmp_path / "data", SETTINGS, source=str(folder))
    (tmp_path / "data" / "val.txt").unlink()  # e.g. deleted by hand, or a crash mid-build
    assert "skipped_build" not in prepare_data(tmp_path / "data", SETTINGS)  # rebuilt from the same corpus
    assert (tmp_path / "data" / "val.txt").exists()


def test_stats_count_pairs_that_recur_in_train(tmp_path):
    from tests.helpers import PAIRS, write_pair_corpus

    corpus = write_pair_corpus(tmp_path / "c", PAIRS, copies=3)
    stats = prepare_data(
        tmp_path / "data", PairSettings(min_count=1, val_fraction=0.2, test_fraction=0.2), str(corpus)
    )
    assert 0 < stats["splits"]["val"]["pairs_also_in_train"] <= stats["splits"]["val"]["pairs"]
    assert json.loads((tmp_path / "data" / "vocab.json").read_text())["words"]


def test_finished_steps_are_skipped_unless_forced(corpus, tmp_path):
    folder, _ = corpus
    first = prepare_data(tmp_path / "data", SETTINGS, source=str(folder))
    assert "skipped_build" not in first
    assert prepare_data(tmp_path / "data", SETTINGS, source=str(folder))["skipped_build"]
    assert "skipped_build" not in prepare_data(tmp_path / "data", SETTINGS, source=str(folder), force=True)
    changed = PairSettings(max_length=4, min_count=1, val_fraction=0.1, test_fraction=0.1)
    assert "skipped_build" not in prepare_data(tmp_path / "data", changed, source=str(folder))


def test_script_with_source_zip_prints_summary(corpus_zip, tmp_path):
    result = run_script("download_data.py", "--source", str(corpus_zip), "--min_count=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "after length filter" in result.stdout and "missing_line_id 2" in result.stdout
    assert data_files(tmp_path / "data") == ["test.txt", "train.txt", "val.txt", "stats.json", "vocab.json"]


def test_script_errors_are_one_line(tmp_path):
    result = run_script("download_data.py", "--source", str(tmp_path / "nowhere.zip"), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "does not exist" in result.stderr
    assert not (tmp_path / "data").exists() or data_files(tmp_path / "data") == []
    result = run_script("download_data.py", "--rare-words", "maybe", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0


def test_a_build_from_before_train_max_length_is_not_rebuilt(pair_dir):
    stats_path = pair_dir / "stats.json"
    stats = read_stats(stats_path)
    del stats["settings"]["train_max_length"]
    stats_path.write_text(json.dumps(stats))
    settings = PairSettings(min_count=1, val_fraction=0.2, test_fraction=0.1, train_max_length=0)
    assert prepare_data(pair_dir, settings).get("skipped_build")  # such a build had no longer pairs


def test_a_zip_bomb_is_refused_before_it_is_unpacked(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("c/movie_lines.txt", b"\0" * 30_000_000)  # 30 MB in about 30 KB
        archive.writestr("c/movie_conversations.txt", b"")
    with pytest.raises(DataError, match="would unpack to 29 MiB from 0.0 MiB"):
        prepare_data(tmp_path / "data", SETTINGS, source=str(bomb))
    assert not (tmp_path / "data" / "raw").exists()


@pytest.mark.parametrize("lines", [b"", b"L1 +++$+++ u0 +++$+++ m0 +++$+++ A +++$+++ hello\n"])
def test_a_corpus_that_gives_no_training_pairs_is_an_error(tmp_path, lines):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "movie_lines.txt").write_bytes(lines)
    (folder / "movie_conversations.txt").write_bytes(b"u0 +++$+++ u1 +++$+++ m0 +++$+++ ['L7', 'L8']\n")
    with pytest.raises(DataError, match="gives no training pairs .* is it the Cornell corpus"):
        prepare_data(tmp_path / "data", SETTINGS, source=str(folder))
    assert not (tmp_path / "data" / "train.txt").exists()


def test_a_build_whose_vocabulary_is_empty_is_an_error(corpus, tmp_path):
    folder, _ = corpus
    with pytest.raises(DataError, match="no word seen --min-count times"):
        prepare_data(tmp_path / "data", PairSettings(min_count=10**6), source=str(folder))


@pytest.mark.parametrize(
    "text", ["[1, 2]", "[" * 100_000 + "]" * 100_000, '{"settings": {"max_length": "ten"}}']
)
def test_a_misshapen_stats_json_counts_as_no_build(corpus, tmp_path, text):
    folder, _ = corpus
    prepare_data(tmp_path / "data", SETTINGS, source=str(folder))
    (tmp_path / "data" / "stats.json").write_text(text)
    assert (
        read_stats(tmp_path / "data" / "stats.json") is None
        or download.built_settings(read_stats(tmp_path / "data" / "stats.json")) is None
    )
    stats = prepare_data(tmp_path / "data", SETTINGS, source=str(folder))  # rebuilt, not trusted
    assert "skipped_build" not in stats and download.format_stats(stats).startswith("utterances")


def test_a_corpus_saved_as_utf8_is_read_as_utf8(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    lines = ["L1 +++$+++ u0 +++$+++ m0 +++$+++ A +++$+++ Un café crème, s'il vous plaît.",
             "L2 +++$+++ u1 +++$+++ m0 +++$+++ B +++$+++ Voilà — déjà."]  # fmt: skip
    (folder / "movie_lines.txt").write_bytes("\n".join(lines * 30).encode("utf-8"))
    (folder / "movie_conversations.txt").write_bytes(b"u0 +++$+++ u1 +++$+++ m0 +++$+++ ['L1', 'L2']\n" * 30)
    from seq2seq.cornell import read_corpus

    conversations, _ = read_corpus(folder)
    assert conversations[0] == ["un cafe creme s'il vous plait .", "voila deja ."]


def test_deeply_nested_jsonl_lines_are_skipped_and_counted(tmp_path):
    from seq2seq.cornell import read_corpus

    folder = tmp_path / "convokit"
    folder.mkdir()
    good = '{"id": "L1", "conversation_id": "L1", "text": "hello ."}'
    (folder / "utterances.jsonl").write_text(good + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    conversations, skipped = read_corpus(folder)
    assert conversations == [["hello ."]] and skipped["malformed_line"] == 1
