"""Command-line plumbing shared by the root scripts: flag spellings, value checks, one-line errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


def _kebab(arg: str) -> str:
    """`--learning_rate=3e-4` -> `--learning-rate=3e-4`; anything else is left alone."""
    if not arg.startswith("--"):
        return arg
    name, eq, value = arg.partition("=")
    return name.replace("_", "-") + eq + value


class ArgumentParser(argparse.ArgumentParser):
    """argparse that also takes each `--kebab-case` flag as `--snake_case` (a W&B agent's spelling)
    and reports a mistake in one line rather than usage plus message."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace=None):
        args = sys.argv[1:] if args is None else args
        return super().parse_known_args([_kebab(a) for a in args], namespace)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _checked(kind: Callable[[str], float], test: Callable[[float], bool], what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = what
    return parse


positive_int = _checked(int, lambda v: v > 0, "a positive integer")
non_negative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _checked(float, lambda v: v > 0 and v != float("inf"), "a positive number")
probability = _checked(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
dropout_rate = _checked(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")
fraction = _checked(float, lambda v: 0.0 <= v < 0.5, "a fraction in [0, 0.5)")


def fail(message: str, code: int = 1) -> None:
    """Print a one-line error on stderr and exit."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)
