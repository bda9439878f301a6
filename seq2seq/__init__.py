"""A Luong-attention GRU sequence-to-sequence chatbot trained on the Cornell Movie-Dialogs Corpus.

Importing the package makes Ctrl-C that nothing else handles (while torch is imported, or in the
middle of an export or a profile) end a script with one line rather than a traceback, exiting
as SIGINT does (status 130 in a shell); files are written atomically (files.atomic_path), so
nothing half-written stays.
"""

import os
import signal
import sys
import threading

_interrupted = False


def _note_ctrl_c(signum, frame) -> None:
    """Python's own Ctrl-C handler, which also remembers that it ran: a Ctrl-C in the middle of
    an extension module's import can surface as another error (numpy: "cannot load module more
    than once per process"), and that error is the interruption too. In the middle of an import
    it leaves at once instead: raised inside the C++ that runs torch's imports, the interruption
    aborted the process ("terminate called after throwing ... KeyboardInterrupt", 1 start in 8
    to 30), and an import writes nothing."""
    global _interrupted
    _interrupted = True
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            exit_interrupted()
        frame = frame.f_back
    raise KeyboardInterrupt


INTERRUPTED = "error: interrupted; files already written are intact"


def exit_interrupted() -> None:
    """Say the interruption in its line and leave at once, as SIGINT would (status 130), even
    while other threads work (a model loading in serve.py's decoding thread)."""
    print(f"\n{INTERRUPTED}", file=sys.stderr, flush=True)
    try:
        sys.stdout.flush()  # os._exit skips the flush that replies already printed rely on
    except (OSError, ValueError):
        pass
    os._exit(130)


def _threads_hold_exit() -> bool:
    """A normal exit joins every non-daemon thread (a ThreadPoolExecutor's too), so an
    interruption that escapes the main thread's handlers would wait for their work to end."""
    main = threading.main_thread()
    return any(t is not main and t.is_alive() and not t.daemon for t in threading.enumerate())


def _interrupted_in_one_line(kind, value, traceback) -> None:
    if issubclass(kind, KeyboardInterrupt) or _interrupted:
        if not issubclass(kind, KeyboardInterrupt) or _threads_hold_exit():
            exit_interrupted()
        print(f"\n{INTERRUPTED}", file=sys.stderr)
        return  # Python then exits as SIGINT would (status 130 in a shell)
    sys.__excepthook__(kind, value, traceback)


if sys.excepthook is sys.__excepthook__:  # not if someone (an IDE, a test runner) installed their own
    sys.excepthook = _interrupted_in_one_line
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _note_ctrl_c)
