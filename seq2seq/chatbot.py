"""A checkpoint ready to talk to people: the models and decoding settings that chat.py and serve.py
load from the same flags (cli.add_decoding_arguments), what they say about them at start-up, and
chat.py's conversation with its /commands."""

from __future__ import annotations

import argparse
from dataclasses import asdict, replace

from .checkpoint import context as checkpoint_context
from .checkpoint import load_backward, load_for_inference, trained_max_length
from .cli import (
    BACKWARD_MODEL,
    ArgumentParser,
    add_decoding_arguments,
    backward_model,
    decode_settings,
    positive_int,
    reranks,
    temperature,
)
from .decoding import Conversation, DecodingError, seeded
from .devices import resolve_device, resolve_precision
from .vocab import NO_CONTEXT, detokenize, read_message


class Chatbot:
    """The forward model, the backward model that reranks its replies (if any) and the decoding
    settings the flags ask for. Raises CheckpointError, DeviceError or DecodingError in one line."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = resolve_device(args.device)
        self.precision, self.precision_reason = resolve_precision(args.precision, self.device)
        self.model, self.vocab, checkpoint = load_for_inference(
            args.model_path, str(self.device), self.precision
        )
        self.max_length = trained_max_length(checkpoint)
        self.trained_context = checkpoint_context(checkpoint)
        self.context = NO_CONTEXT if args.no_context else self.trained_context
        self.backward_path = backward_model(args)
        self.backward = None
        if self.backward_path:
            self.backward = load_backward(self.backward_path, self.vocab, str(self.device), self.precision)
        self.settings = decode_settings(args, self.max_length, reranks(args, self.backward is not None))

    def read(self, text: str) -> tuple[str, list[str]]:
        """`read_message` under the current settings' max_length."""
        return read_message(text, self.vocab, self.settings.max_length)

    def startup(self, commands: bool = False) -> list[str]:
        """What the user should know before the first reply, a line each: the model and its
        precision, the decoding, reranking, context; `commands` adds chat.py's commands for them."""
        s = self.settings
        lines = [
            f"model {self.args.model_path} on {self.device.type} in {self.precision} ({self.precision_reason})"
        ]
        if s.rerank == "mmi":
            groups = f" in {s.beam_groups} diverse groups" if s.beam_groups > 1 else ""
            lines.append(f"replies are reranked by MMI with {self.backward_path} (lambda {s.mmi_weight}, "
                         f"gamma {s.length_bonus}, {s.width} hypotheses{groups})")  # fmt: skip
        else:
            lines.append(f"decoding: {describe(s)}")
            if self.backward is not None:
                hint = (
                    ": /mmi reranks beam search with it" if commands else f", unused by {s.method} decoding"
                )
                lines.append(f"backward model {self.backward_path} loaded{hint}")
            elif self.args.rerank == "auto":
                lines.append(f"no backward model at {BACKWARD_MODEL}, so replies are not reranked "
                             "(train one: python train.py --reverse --save-dir checkpoints/backward)")  # fmt: skip
        if self.context.turns:
            hint = " (/context shows them, /reset forgets them)" if commands else ""
            lines.append(f"the model reads the last {self.context.turns} turns of the conversation{hint}")
        elif self.trained_context.turns:
            lines.append(f"--no-context: every message is answered alone (the model was trained on "
                         f"{self.trained_context.turns} earlier turns)")  # fmt: skip
        return lines


def describe(settings) -> str:
    """A decoding in a few words: "greedy", "beam search, 5 beams", "sampling at temperature 0.8"."""
    if settings.method == "beam":
        return f"beam search, {settings.width} beams"
    if settings.method == "sample":
        filters = [f"top-k {settings.top_k}"] * bool(settings.top_k) + [f"top-p {settings.top_p}"] * (
            settings.top_p < 1
        )
        return f"sampling at temperature {settings.temperature}" + (
            f" ({', '.join(filters)})" if filters else ""
        )
    return settings.method


# What chat.py's /help shows.
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


def make_chat_parser(description: str | None = None) -> ArgumentParser:
    """chat.py's flags (`description`: its --help's first line)."""
    p = ArgumentParser(description=description)
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
