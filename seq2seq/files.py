"""Writing files so that a crash, Ctrl-C or a full disk never leaves a half-written one behind."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class FolderError(Exception):
    """A folder that cannot be written to, or that another process is writing; one line."""


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # make the bytes durable before the name points at them
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_replaceable(path: str | Path, ours: Callable[[Path], bool]) -> None:
    """Raise FolderError unless `path` is free, or a folder that `ours` recognises as one this
    writer wrote (a folder of anything else is never replaced, nor a link followed)."""
    path = Path(path)
    if path.is_symlink():
        raise FolderError(f"{path} is a symbolic link; give the folder it points to, or another path")
    if path.exists() and not path.is_dir():
        raise FolderError(f"{path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not ours(path):
        raise FolderError(f"{path}/ holds other files; give a new folder, or one this export wrote")


@contextmanager
def atomic_folder(path: str | Path, ours: Callable[[Path], bool]) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; if the block succeeds, its files are made
    durable and it replaces `path` (nothing, an empty folder, or one `ours` recognises), so a
    failed export leaves the old folder whole, or none."""
    path = Path(path)
    check_replaceable(path, ours)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    old = path.with_name(f".{path.name}.old.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        check_replaceable(path, ours)  # still ours: nothing else appeared there meanwhile
        for file in tmp.iterdir():
            with open(file, "rb+") as f:
                os.fsync(f.fileno())
        if path.is_dir():
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except OSError:
            if old.is_dir() and not path.exists():
                os.replace(old, path)  # put the old folder back
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _temporary_of_a_dead_process(path: Path) -> bool:
    """Whether `path` is one of atomic_path's or atomic_folder's temporaries (".NAME.PID.tmp")
    whose process is gone."""
    parts = path.name.split(".")
    pid = parts[-2] if len(parts) >= 4 else ""
    if parts[0] or parts[-1] != "tmp" or not (pid.isascii() and pid.isdigit()) or not 0 < int(pid) < 2**22:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, but another user's
        return False
    return False


def remove_stale_temporaries(folder: str | Path) -> None:
    """Remove what atomic_path and atomic_folder left in `folder` when their process was killed
    mid-write."""
    for path in Path(folder).glob(".*.tmp"):
        if _temporary_of_a_dead_process(path):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def ensure_space(folder: str | Path, needed: int) -> None:
    """Raise FolderError unless `folder` has about `needed` bytes free (for writers that die
    rather than fail on a full disk, as torch.jit's C++ writer does)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise FolderError(
            f"not enough space in {folder}/: about {needed / 2**20:,.0f} MiB needed, {free / 2**20:,.0f} MiB free"
        )


@contextmanager
def claimed_folder(folder: str | Path) -> Iterator[Path]:
    """Hold `folder` for this process while the block runs: it is created if need be, must be
    writable, and is refused if another process holds it (the lock goes with its process, even
    a killed one). Temporaries that killed writers left there are removed first."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as error:
        raise FolderError(f"cannot write to {folder}/: {error.strerror or error}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderError(
                f"{folder}/ is in use by another training run; wait for it or choose another --save-dir"
            ) from None
        except OSError as error:  # a file system without locks (some NFS, CIFS, Lustre mounts)
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise FolderError(f"cannot lock {folder}/: {error.strerror or error}") from None
            print(
                f"note: {folder}/ cannot be locked here, so nothing stops a second run on it", file=sys.stderr
            )
        remove_stale_temporaries(folder)
        yield folder
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed), imported only when drawing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | Path) -> None:
    """Lay out a matplotlib figure, write it as a PNG atomically, and release it."""
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    pyplot().close(figure)
