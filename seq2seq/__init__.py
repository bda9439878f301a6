"""A Luong-attention GRU sequence-to-sequence chatbot trained on the Cornell Movie-Dialogs Corpus.

Importing the package makes Ctrl-C that nothing else handles (while torch is imported, or in the
middle of an export or a profile) end a script with one line and exit status 130 rather than a
traceback; files are written atomically (files.atomic_path), so nothing half-written stays.
"""

import sys

_default_hook = sys.excepthook


def _interrupted_in_one_line(kind, value, traceback) -> None:
    if issubclass(kind, KeyboardInterrupt):
        print("\nerror: interrupted; files already written are intact", file=sys.stderr)
        return  # Python then exits as SIGINT would: status 130
    _default_hook(kind, value, traceback)


sys.excepthook = _interrupted_in_one_line
