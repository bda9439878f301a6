"""A Luong-attention GRU sequence-to-sequence chatbot trained on the Cornell Movie-Dialogs Corpus.

Importing the package makes Ctrl-C that nothing else handles (while torch is imported, or in the
middle of an export or a profile) end a script with one line rather than a traceback, exiting
as SIGINT does (status 130 in a shell); files are written atomically (files.atomic_path), so
nothing half-written stays.
"""

import sys


def _interrupted_in_one_line(kind, value, traceback) -> None:
    if issubclass(kind, KeyboardInterrupt):
        print("\nerror: interrupted; files already written are intact", file=sys.stderr)
        return  # Python then exits as SIGINT would (status 130 in a shell)
    sys.__excepthook__(kind, value, traceback)


if sys.excepthook is sys.__excepthook__:  # not if someone (an IDE, a test runner) installed their own
    sys.excepthook = _interrupted_in_one_line
