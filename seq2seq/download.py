"""Getting the corpus onto disk and turning it into `data/`: download, verify, extract, cut pairs.

Each step is skipped when its result is already there (unless forced), and each result is
written under a temporary name and renamed into place, so an interrupted run never leaves a
half-written file that a later run would trust.
"""

from __future__ import annotations

import errno
import json
import shutil
import sys
import time
import zipfile
import zlib
from collections import Counter
from pathlib import Path

import requests
from tqdm import tqdm

from .cornell import SPLITS, CorpusError, PairSettings, find_corpus, make_pairs, read_corpus, write_pairs
from .files import write_text_atomic
from .vocab import SPECIAL_TOKENS

CORPUS_URL = "https://www.cs.cornell.edu/~cristian/data/cornell_movie_dialogs_corpus.zip"
DATA_DIR = "data"  # where data/ is built unless --data-dir says otherwise
ZIP_NAME = "cornell_movie_dialogs_corpus.zip"
RAW_DIR = "raw"
CORNELL_MEMBERS = ("movie_lines.txt", "movie_conversations.txt")
CONVOKIT_MEMBERS = ("utterances.jsonl",)
BUILT_FILES = ("train.txt", "val.txt", "test.txt", "vocab.json", "stats.json")
MAX_ZIP_BYTES = 2**30  # a corpus zip unpacks to at most this (Cornell's: about 40 MiB)
MAX_RATIO = 50  # nor more than this times its compressed size (Cornell's: about 4)
RETRYABLE = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class DataError(Exception):
    """A problem the user can fix; the message is one line saying what happened and what to do."""

    code = 1  # the exit status a script reports it with


class BuildInterrupted(DataError):
    code = 130


def _range_start(response: requests.Response) -> int | None:
    """The first byte a 206 answer carries ("Content-Range: bytes START-END/TOTAL"), or None."""
    value = response.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def fetch(url: str, dest: Path, retries: int = 5, backoff: float = 1.0, timeout: float = 30.0) -> None:
    """Download `url` to `dest`, resuming a partial `dest.part` with an HTTP Range request.

    A dropped connection or a server error is retried with exponential back-off, each retry
    continuing from the bytes already on disk. A server that ignores the Range header, or answers
    from another offset, gets the download restarted from zero. The file appears under its final
    name only once the server says the transfer is complete.
    """
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
                if response.status_code == 416:  # nothing left to send: fine if the part is whole
                    if response.headers.get("Content-Range") == f"bytes */{have}":
                        break
                    part.unlink()
                    raise requests.ConnectionError("the partial download does not match the file; restarting")
                if response.status_code >= 500:
                    raise requests.ConnectionError(f"server error {response.status_code}")
                if response.status_code not in (200, 206):
                    raise DataError(f"{url} answered HTTP {response.status_code}: check the address (--url)")
                if response.status_code == 206 and _range_start(response) != have:
                    part.unlink()
                    raise requests.ConnectionError("the server sent another byte range; restarting")
                if response.status_code == 200:
                    have = 0  # the server ignored our Range and sends the whole file
                length = response.headers.get("Content-Length")
                total = have + int(length) if length else None
                with (
                    open(part, "ab" if have else "wb") as f,
                    tqdm(
                        total=total,
                        initial=have,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=f"downloading {dest.name}",
                    ) as bar,
                ):
                    for chunk in response.iter_content(chunk_size=1 << 16):
                        f.write(chunk)
                        bar.update(len(chunk))
                if total is not None and part.stat().st_size < total:
                    raise requests.exceptions.ChunkedEncodingError("transfer ended early")
            break
        except RETRYABLE as error:
            if attempt == retries:
                raise DataError(
                    f"could not download {url} ({type(error).__name__}); check your connection, "
                    "or fetch the zip another way and pass --source PATH"
                ) from None
            wait = backoff * 2**attempt
            reason = str(error) if len(str(error)) < 80 else type(error).__name__  # no urllib3 essays
            print(f"download interrupted ({reason}); retrying in {wait:.0f}s", file=sys.stderr, flush=True)
            time.sleep(wait)
        except requests.RequestException as error:  # a malformed address, too many redirects, ...
            raise DataError(f"cannot download {url}: {error} (check --url)") from None
    part.replace(dest)


def _corpus_members(archive: zipfile.ZipFile) -> dict[str, str]:
    """Map each needed file name to its member path in the zip (skipping macOS metadata)."""
    found = {}
    for name in archive.namelist():
        if name.startswith("__MACOSX/") or name.endswith("/"):
            continue
        base = name.rsplit("/", 1)[-1]
        if base in CORNELL_MEMBERS + CONVOKIT_MEMBERS:
            found.setdefault(base, name)
    if all(m in found for m in CORNELL_MEMBERS):
        return {m: found[m] for m in CORNELL_MEMBERS}
    if all(m in found for m in CONVOKIT_MEMBERS):
        return {m: found[m] for m in CONVOKIT_MEMBERS}
    raise DataError(
        "the zip holds no Cornell corpus (movie_lines.txt and movie_conversations.txt) "
        "nor a ConvoKit one (utterances.jsonl)"
    )


def verify_zip(path: Path) -> dict[str, str]:
    """Check that `path` is an intact zip holding the corpus; return its corpus members."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = _corpus_members(archive)
            infos = [info for info in archive.infolist() if not info.is_dir()]
            size, packed = sum(i.file_size for i in infos), sum(i.compress_size for i in infos)
            if size > MAX_ZIP_BYTES or size > MAX_RATIO * max(packed, 1):  # zipfile unpacks no more than that
                raise DataError(
                    f"it would unpack to {size / 2**20:,.0f} MiB from {packed / 2**20:,.1f} MiB, as no corpus "
                    f"does (the Cornell corpus: about 40 MiB from 10)"
                )
            broken = archive.testzip()  # reads every member and checks its CRC
            if broken is not None:
                raise zipfile.BadZipFile(f"member {broken!r} is damaged")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, DataError) as error:
        raise DataError(f"{path} is not a valid corpus zip ({error}); delete it and try again") from None
    return members


def extract(zip_path: Path, dest: Path) -> None:
    """Extract the corpus files of a verified zip into `dest`, flat; `dest` appears only when whole."""
    members = verify_zip(zip_path)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with zipfile.ZipFile(zip_path) as archive:
        for base, member in members.items():
            with archive.open(member) as src, open(tmp / base, "wb") as out:
                shutil.copyfileobj(src, out)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)


def locate_corpus(data_dir: Path, source: str | None, url: str, force: bool) -> Path:
    """Return the raw corpus, downloading or extracting only what is missing: a folder, or a
    dialogue file (any file that is not a zip), which is read where it is."""
    if source is not None:
        source_path = Path(source).expanduser()
        if source_path.is_dir():
            try:
                return find_corpus(source_path)[1]
            except CorpusError as error:
                raise DataError(str(error)) from None
        if not source_path.is_file():
            raise DataError(
                f"--source {source} does not exist: give the corpus zip, its extracted folder "
                "or a dialogue file"
            )
        if source_path.suffix.lower() != ".zip" and not zipfile.is_zipfile(source_path):
            return source_path
        zip_path = source_path
    else:
        zip_path = data_dir / ZIP_NAME
        if force:
            zip_path.with_name(zip_path.name + ".part").unlink(missing_ok=True)
        if force or not zip_path.exists():
            fetch(url, zip_path)
    raw = data_dir / RAW_DIR
    if force or not raw.is_dir():
        try:
            extract(zip_path, raw)
        except DataError:
            if source is None:  # our own download is damaged: remove it so a rerun fetches it anew
                zip_path.unlink(missing_ok=True)
                raise DataError(f"the downloaded {ZIP_NAME} is damaged and was removed; run again") from None
            raise
    return raw


def prepare_data(
    data_dir: str | Path,
    settings: PairSettings,
    source: str | None = None,
    url: str = CORPUS_URL,
    force: bool = False,
) -> dict:
    """Build `data_dir`/{train,val,test}.txt and stats.json; return the statistics.

    stats.json is written last and marks a finished build: when it exists the build is skipped
    (unless `force`) and its statistics are returned.
    """
    data_dir = Path(data_dir)
    stats_path = data_dir / "stats.json"
    try:
        previous = read_stats(stats_path)
        complete = all((data_dir / name).exists() for name in BUILT_FILES)
        if built_settings(previous) == vars(settings) and complete and not force:
            return previous | {"skipped_build": True}
        stats_path.unlink(missing_ok=True)  # the old build stops counting as finished from here on
        corpus_before = (previous or {}).get("corpus")
        if source is None and isinstance(corpus_before, str) and Path(corpus_before).exists():
            source = corpus_before  # rebuild from the corpus the last build read
        corpus = locate_corpus(data_dir, source, url, force)
        start = time.perf_counter()
        conversations, skipped = read_corpus(corpus)
        if not conversations:
            raise DataError(f"no conversations could be read from {corpus}")
        paired = make_pairs(conversations, settings)
        if not paired.splits["train"] or len(paired.vocab) == len(SPECIAL_TOKENS):
            found = "no training pairs" if not paired.splits["train"] else "no word seen --min-count times"
            hint = (
                "is it the Cornell corpus, its lines and conversations from the same release?"
                if (Path(corpus) / "movie_lines.txt").is_file()
                else "do --max-length, --min-count and the split fractions leave any?"
            )
            raise DataError(
                f"{corpus} gives {found} ({len(conversations):,} conversations read, skipped: "
                f"{dict(skipped) or 'nothing'}): {hint}"
            )
        for split in SPLITS:
            write_pairs(data_dir / f"{split}.txt", paired.splits[split])
        write_text_atomic(data_dir / "vocab.json", json.dumps(paired.vocab.to_dict()) + "\n")
        stats = {
            "source": str(source if source is not None else url),
            "corpus": str(Path(corpus).resolve()),
            "settings": vars(settings),
            "utterances": sum(len(c) for c in conversations),
            **paired.stats,
            "skipped": dict(sorted(Counter(skipped).items())),
            "seconds": round(time.perf_counter() - start, 2),
        }
        write_text_atomic(stats_path, json.dumps(stats, indent=2) + "\n")
    except CorpusError as error:
        raise DataError(str(error)) from None
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise DataError(f"disk full while writing {data_dir}: free some space and run again") from None
        raise DataError(
            f"cannot build {data_dir}: {error.strerror or error} ({error.filename or ''})"
        ) from None
    return stats


def built_settings(stats: dict | None) -> dict | None:
    """The pair settings a finished build used (builds from before `train_max_length` and the
    context had none: 0, and no context); None unless they are PairSettings' fields, each of its
    type."""
    settings = (stats or {}).get("settings")
    if not isinstance(settings, dict):
        return None
    settings = {"train_max_length": 0, "context_turns": 0, "context_length": PairSettings.context_length,
                **settings}  # fmt: skip
    kinds = {name: type(value) for name, value in vars(PairSettings()).items()}
    fits = {
        k: type(settings.get(k)) is kind or (kind is float and type(settings.get(k)) is int)
        for k, kind in kinds.items()
    }
    if set(settings) != set(kinds) or not all(fits.values()):
        return None
    return settings


def read_stats(path: Path) -> dict | None:
    """The statistics of a finished build, or None if there is none (or it is unreadable)."""
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return stats if isinstance(stats, dict) else None


def format_stats(stats: dict) -> str:
    """A short human summary of stats.json (of a damaged one, a line that says so)."""
    try:
        return _summary(stats)
    except (KeyError, TypeError, ValueError, AttributeError):
        return "(stats.json holds no readable summary)"


def _summary(stats: dict) -> str:
    pairs, vocab = stats["pairs"], stats["vocabulary"]
    lines = [
        f"utterances {stats['utterances']:,} in {stats['conversations']:,} conversations",
        f"pairs: {pairs['raw']:,} raw -> {pairs['after_length_filter']:,} after length filter"
        f" -> {pairs['after_trimming']:,} after trimming ({stats['settings']['rare_words']})",
        "splits: "
        + ", ".join(
            f"{s} {v['pairs']:,} pairs / {v['conversations']:,} conv." for s, v in stats["splits"].items()
        ),
        f"vocabulary: {vocab['kept_words']:,} words seen >= {stats['settings']['min_count']} times"
        f" of {vocab['train_words']:,} in train",
    ]
    settings, train = stats["settings"], stats["splits"]["train"]
    if settings.get("context_turns"):
        context = train["context"]
        lines.append(
            f"context: up to {settings['context_turns']} earlier turns within {settings['context_length']} tokens; "
            f"{context['pairs_with_context']:,} of {train['pairs']:,} training pairs carry some "
            f"({context['turns']:,} turns, {context['tokens']:,} tokens)"
        )
    if stats["skipped"]:
        lines.append("skipped: " + ", ".join(f"{k} {v}" for k, v in stats["skipped"].items()))
    return "\n".join(lines)


def build_data(data_dir: str | Path, settings: PairSettings, source: str | None = None, url: str = CORPUS_URL,
               force: bool = False) -> dict:  # fmt: skip
    """prepare_data, with its summary on the terminal (on stderr when data/ was already built);
    Ctrl-C becomes a BuildInterrupted, whose message says what is kept."""
    try:
        stats = prepare_data(data_dir, settings, source, url, force)
    except KeyboardInterrupt:
        raise BuildInterrupted(
            "interrupted; finished files are kept and a rerun continues from them"
        ) from None
    if stats.get("skipped_build"):
        print(f"{data_dir}/ is already built with these settings (use --force to rebuild)", file=sys.stderr)
    print(format_stats(stats), file=sys.stderr if stats.get("skipped_build") else sys.stdout)
    return stats
