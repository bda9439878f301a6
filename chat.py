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

import argparse
import sys
from dataclasses import asdict, replace
from pathlib import Path

from seq2seq.chatbot import Chatbot, describe
from seq2seq.checkpoint import CheckpointError
from seq2seq.cli import (
    BACKWARD_MODEL,
    ArgumentParser,
    add_decoding_arguments,
    decode_settings,
    fail,
    positive_int,
    temperature,
)
from seq2seq.decoding import Conversation, DecodingError, seeded
from seq2seq.devices import DeviceError
from seq2seq.vocab import detokenize

HISTORY_FILE = Path.home() / ".chatbot_seq2seq_history"
HELP = """commands:
  /greedy      most likely word at each step
  /beam N      beam search with N beams
  /mmi         rerank beam search's replies with the backward model, with the start-up
               MMI settings (/mmi off: stop reranking)
  /nbest N     hypotheses the beam keeps at least (MMI reranks all of them)
  /sample T    sampling at temperature T (with the --top-k / --top-p filters)
  /context     show the earlier turns the model reads with your next line
  /reset       forget the conversation: start a new one
  /settings    show the decoding settings
  /help        this text
  /quit        leave (also quit, q, Ctrl-D)"""


def make_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-path", default="checkpoints/best_model.pth", help="checkpoint to talk to")
    add_decoding_arguments(p, rerank="auto")
    p.add_argument("--no-context", action="store_true",
                   help="answer every line alone, even with a model trained to read earlier turns")  # fmt: skip
    return p


class Chat(Chatbot):
    """A Chatbot in one conversation, with a random generator seeded once for the session (so
    sampled replies to different lines differ, and the whole session repeats with its seed);
    turns one line of text into a reply and notes."""

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.conversation = Conversation(self.context)
        self.generator = seeded(args.seed)

    def respond(self, line: str) -> tuple[str, list[str]]:
        """The reply (empty if there is nothing to answer) and notes for the user."""
        query, notes = self.read(line)
        if not query:
            return "", notes
        reply = self.conversation.reply(
            self.model, self.vocab, query, self.settings, self.backward, self.generator
        )
        return detokenize(reply), notes

    def show_context(self) -> str:
        """The earlier turns the next reply reads, as the model reads them (`Context.cut`)."""
        if not self.context.turns:
            why = "--no-context" if self.trained_context.turns else "it was trained with --context-turns 0"
            return f"the model reads no earlier turns ({why})"
        turns = self.context.cut(self.conversation.history)
        if not turns:
            return "no earlier turns yet: your next line starts the conversation"
        last = len(turns) - 1  # turns alternate, and the last one is the bot's
        return "\n".join(
            f"  {'bot' if (last - i) % 2 == 0 else 'you'}: {detokenize(turn.split())}"
            for i, turn in enumerate(turns)
        )

    def command(self, line: str) -> str | None:
        """Handle a /command; return what to show, or None to quit."""
        name, _, value = line[1:].strip().partition(" ")
        s = self.settings
        try:
            if name == "quit":
                return None
            if name == "greedy":
                s = replace(s, method="greedy", rerank="none")
            elif name == "beam":
                # a beam of N: MMI, if on, reranks all N (the n-best list shown is one reply)
                s = replace(
                    s, method="beam", beam_size=positive_int(value) if value else s.beam_size, n_best=1
                )
            elif name == "sample":
                s = replace(s, method="sample", rerank="none",
                            temperature=temperature(value) if value else s.temperature)  # fmt: skip
            elif name == "mmi" and value == "off":
                s = replace(s, rerank="none")
            elif name == "mmi" and value:
                return f"/mmi: expected nothing or off, got {value!r}"
            elif name == "mmi":
                if self.args.rerank == "none":
                    return "/mmi: chat.py was started with --rerank none; start it without to rerank"
                if self.backward is None:
                    return (f"/mmi: no backward model (give --backward-model PATH, or train one into "
                            f"{BACKWARD_MODEL}: python train.py --reverse --save-dir checkpoints/backward)")  # fmt: skip
                beam = argparse.Namespace(**{**vars(self.args), "decoding": "beam"})
                s = decode_settings(beam, self.max_length, rerank=True)
            elif name == "nbest":
                s = replace(s, n_best=positive_int(value))
            elif name == "context":
                return self.show_context()
            elif name == "reset":
                self.conversation.reset()
                return "new conversation: earlier turns forgotten"
            elif name == "settings":
                return ", ".join(f"{k}={v}" for k, v in asdict(s).items())
            elif name != "help":
                return f"unknown command /{name}\n{HELP}"
            else:
                return HELP
        except (argparse.ArgumentTypeError, DecodingError) as error:
            return f"/{name}: {error}"
        self.settings = s
        return f"decoding: {describe(s)}" + (", reranked by MMI" if s.rerank == "mmi" else "")


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
    args = make_parser().parse_args()
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
