"""A checkpoint ready to talk to people: the models and decoding settings that chat.py and serve.py
load from the same flags (cli.add_decoding_arguments), and what they say about them at start-up."""

from __future__ import annotations

import argparse

from .checkpoint import context as checkpoint_context
from .checkpoint import load_backward, load_for_inference, trained_max_length
from .cli import BACKWARD_MODEL, backward_model, decode_settings, reranks
from .devices import resolve_device, resolve_precision
from .vocab import NO_CONTEXT, read_message


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
