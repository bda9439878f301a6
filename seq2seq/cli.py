"""Command-line plumbing shared by the root scripts: flag spellings, value checks, one-line errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .cornell import RARE_WORD_POLICIES, PairSettings
from .download import CORPUS_URL, DataError, format_stats, prepare_data


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


def add_data_arguments(parser: ArgumentParser) -> None:
    """The flags that say where the corpus comes from and how pairs are cut (shared with train.py)."""
    parser.add_argument("--data-dir", default="data", help="folder for train/val/test.txt and stats.json")
    parser.add_argument("--source", help="an already downloaded corpus zip or extracted folder (offline use)")
    parser.add_argument("--url", default=CORPUS_URL, help="address of the corpus zip")
    parser.add_argument(
        "--max-length",
        type=positive_int,
        default=10,
        help="keep pairs whose sides are shorter than this many tokens (room for EOS)",
    )
    parser.add_argument(
        "--min-count",
        type=positive_int,
        default=3,
        help="words seen fewer times in the training split are rare",
    )
    parser.add_argument(
        "--rare-words",
        choices=RARE_WORD_POLICIES,
        default="unk",
        help="unk: keep pairs, rare words become <unk>; drop: drop pairs with rare words (tutorial)",
    )
    parser.add_argument(
        "--val-fraction", type=fraction, default=0.05, help="share of conversations for validation"
    )
    parser.add_argument(
        "--test-fraction", type=fraction, default=0.05, help="share of conversations for test"
    )
    parser.add_argument(
        "--split-seed", type=non_negative_int, default=0, help="seed of the conversation split"
    )


def pair_settings(args: argparse.Namespace) -> PairSettings:
    return PairSettings(
        args.max_length,
        args.min_count,
        args.rare_words,
        args.val_fraction,
        args.test_fraction,
        args.split_seed,
    )


def build_data(args: argparse.Namespace, force: bool = False) -> dict:
    """Build (or reuse) the data folder, print its summary, exit with one line on failure."""
    try:
        stats = prepare_data(args.data_dir, pair_settings(args), args.source, args.url, force)
    except DataError as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail("interrupted; finished files are kept and a rerun continues from them", 130)
    if stats.get("skipped_build"):
        print(f"{args.data_dir}/ is already built with these settings (use --force to rebuild)")
    print(format_stats(stats))
    return stats
