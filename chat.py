"""Talk to a trained checkpoint: an interactive prompt, or one reply per line of piped input.

    python chat.py                                  # checkpoints/best_model.pth: greedy, or
                                                    # MMI-reranked beams with a backward model
    python chat.py --decoding beam --beam-size 5
    printf 'hello\\nhow are you?\\n' | python chat.py  # exactly one reply line per input line

A backward model (train.py --reverse) given with --backward-model, or found at
checkpoints/backward/best_model.pth, reranks the beam's replies by MMI (README, "Chat").
A model trained with context (download_data.py --context-turns K) reads the last K turns of
the conversation, yours and its own: piped lines are one conversation, and a blank line starts a
new one (--no-context: every line alone).
At the prompt: /help, /greedy, /beam N, /mmi, /nbest N, /sample T, /context, /reset, /settings,
/quit.
"""

from __future__ import annotations

import sys
from pathlib import Path

from seq2seq.chatbot import Chat, make_chat_parser
from seq2seq.checkpoint import CheckpointError
from seq2seq.cli import fail
from seq2seq.decoding import DecodingError
from seq2seq.devices import DeviceError

HISTORY_FILE = Path.home() / ".chatbot_seq2seq_history"


def interactive(chat: Chat) -> None:
    try:
        import readline

        if HISTORY_FILE.exists():
            readline.read_history_file(HISTORY_FILE)
    except (ImportError, OSError):
        readline = None
    print("Talk to the bot. /help for commands, /quit to leave.", file=sys.stderr)
    try:
        while True:
            try:
                line = input("you> ")
            except EOFError:
                print(file=sys.stderr)
                break
            if line.strip().lower() in ("quit", "q", "/quit", "/q", "exit"):
                break
            if line.strip().startswith("/"):
                shown = chat.command(line.strip())
                if shown is None:
                    break
                print(shown)
                continue
            reply, notes = chat.respond(line)
            for note in notes:
                print(f"  ({note})")
            if reply:
                print(f"bot> {reply}")
    except KeyboardInterrupt:
        print(file=sys.stderr)
    finally:
        if readline is not None:
            try:
                readline.set_history_length(1000)
                readline.write_history_file(HISTORY_FILE)
            except OSError:
                pass


def piped(chat: Chat) -> None:
    """One reply line on stdout for every input line; notes go to stderr."""
    sys.stdin.reconfigure(errors="replace")
    for number, line in enumerate(sys.stdin, start=1):
        if not line.strip():
            chat.conversation.reset()  # a blank line starts a new conversation (and is still answered with a line)
        reply, notes = chat.respond(line.rstrip("\n"))
        for note in notes:
            print(f"line {number}: {note}", file=sys.stderr)
        print(reply, flush=True)


def main() -> None:
    args = make_chat_parser(__doc__.splitlines()[0]).parse_args()
    try:
        chat = Chat(args)
    except (CheckpointError, DeviceError, DecodingError) as error:
        fail(str(error))
    for line in chat.startup(commands=True):
        print(line, file=sys.stderr)
    try:
        (interactive if sys.stdin.isatty() else piped)(chat)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away: stop quietly


if __name__ == "__main__":
    main()
