"""Talk to a trained checkpoint: an interactive prompt, or one reply per line of piped input.

    python chat.py                                  # checkpoints/best_model.pth, greedy
    python chat.py --decoding beam --beam-size 5
    printf 'hello\\nhow are you?\\n' | python chat.py  # exactly one reply line per input line

At the prompt: /help, /greedy, /beam N, /sample T, /settings, /quit (also quit, q, Ctrl-D).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from seq2seq.checkpoint import CheckpointError, load_for_inference, trained_max_length
from seq2seq.cli import (
    ArgumentParser,
    add_decoding_arguments,
    decode_settings,
    fail,
    positive_int,
    temperature,
)
from seq2seq.decoding import reply_batch
from seq2seq.devices import DeviceError
from seq2seq.vocab import detokenize, normalize, words_within

HISTORY_FILE = Path.home() / ".chatbot_seq2seq_history"
MAX_INPUT_CHARS = 1000
HELP = """commands:
  /greedy      most likely word at each step
  /beam N      beam search with N beams
  /sample T    sampling at temperature T (with the --top-k / --top-p filters)
  /settings    show the decoding settings
  /help        this text
  /quit        leave (also quit, q, Ctrl-D)"""


def make_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-path", default="checkpoints/best_model.pth", help="checkpoint to talk to")
    add_decoding_arguments(p)
    return p


class Chat:
    """A checkpoint plus decoding settings; turns one line of text into a reply and notes."""

    def __init__(self, args: argparse.Namespace):
        self.model, self.vocab, checkpoint = load_for_inference(args.model_path, args.device, args.precision)
        self.settings = decode_settings(args, trained_max_length(checkpoint))

    def respond(self, line: str) -> tuple[str, list[str]]:
        """The reply (empty if there is nothing to answer) and notes for the user."""
        notes = []
        if len(line) > MAX_INPUT_CHARS:
            notes.append(f"your message was cut to its first {MAX_INPUT_CHARS} characters")
            line = line[:MAX_INPUT_CHARS]
        query = normalize(line)
        if not query:
            return "", notes + ["nothing to answer: I only read English words and . ! ?"]
        words = query.split()
        keep = words_within(self.settings.max_length)
        if len(words) > keep:
            notes.append(f"I only read the first {keep} words")
            query = " ".join(words[:keep])
        unknown = self.vocab.unknown_words(query)
        if unknown:
            shown = ", ".join(dict.fromkeys(unknown))
            notes.append(f"words I don't know: {shown[:200]}")
        return detokenize(reply_batch(self.model, self.vocab, [query], self.settings)[0]), notes

    def command(self, line: str) -> str | None:
        """Handle a /command; return what to show, or None to quit."""
        name, _, value = line[1:].strip().partition(" ")
        try:
            if name == "quit":
                return None
            if name == "greedy":
                self.settings.method = "greedy"
            elif name == "beam":
                self.settings.method = "beam"
                self.settings.beam_size = positive_int(value) if value else self.settings.beam_size
            elif name == "sample":
                self.settings.method = "sample"
                self.settings.temperature = temperature(value) if value else self.settings.temperature
            elif name == "settings":
                return ", ".join(f"{k}={v}" for k, v in asdict(self.settings).items())
            elif name != "help":
                return f"unknown command /{name}\n{HELP}"
            else:
                return HELP
        except argparse.ArgumentTypeError as error:
            return f"/{name}: {error}"
        return f"decoding: {self.settings.method}"


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
        reply, notes = chat.respond(line.rstrip("\n"))
        for note in notes:
            print(f"line {number}: {note}", file=sys.stderr)
        print(reply, flush=True)


def main() -> None:
    args = make_parser().parse_args()
    try:
        chat = Chat(args)
    except (CheckpointError, DeviceError) as error:
        fail(str(error))
    try:
        (interactive if sys.stdin.isatty() else piped)(chat)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away: stop quietly


if __name__ == "__main__":
    main()
