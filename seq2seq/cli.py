"""Command-line plumbing shared by the root scripts: flag spellings, value checks, one-line errors."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from .cornell import RARE_WORD_POLICIES, PairSettings
from .decoding import METHODS, MMI_DEFAULTS, RERANKERS, DecodeSettings
from .devices import DEVICES
from .download import CORPUS_URL, DATA_DIR


def _kebab(arg: str) -> str:
    """`--learning_rate=3e-4` -> `--learning-rate=3e-4`; anything else is left alone."""
    if not arg.startswith("--"):
        return arg
    name, eq, value = arg.partition("=")
    return name.replace("_", "-") + eq + value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a flag's default in its help, unless there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse that also takes each `--kebab-case` flag as `--snake_case` (a W&B agent's spelling)
    and reports a mistake in one line rather than usage plus message."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
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
non_negative_float = _checked(float, lambda v: 0 <= v < float("inf"), "a number >= 0")
probability = _checked(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
dropout_rate = _checked(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")
fraction = _checked(float, lambda v: 0.0 <= v < 0.5, "a fraction in [0, 0.5)")
decay_factor = _checked(float, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]")
# Below these, float32 scores underflow and sampling has no token left to draw.
nucleus = _checked(float, lambda v: 1e-6 <= v <= 1.0, "a number in [0.000001, 1]")
temperature = _checked(float, lambda v: 1e-3 <= v <= 1e3, "a positive number in [0.001, 1000]")
finite = _checked(float, math.isfinite, "a finite number")


def boolean(text: str) -> bool:
    """`true`/`false` and the like, as a W&B agent writes a boolean (`--tie_embeddings=True`)."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def first_line(error: BaseException, limit: int = 200) -> str:
    """What an exception says, made one line: its first line (cut to `limit` characters), or its
    type when it says nothing."""
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else type(error).__name__


def fail(message: str, code: int = 1) -> None:
    """Print a one-line error on stderr and exit."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


# Pair-cutting flags and their PairSettings field names.
PAIR_FLAGS = {"max_length": "max_length", "train_max_length": "train_max_length", "min_count": "min_count",
              "rare_words": "rare_words", "val_fraction": "val_fraction", "test_fraction": "test_fraction",
              "split_seed": "seed", "context_turns": "context_turns", "context_length": "context_length"}  # fmt: skip


def add_data_arguments(parser: ArgumentParser, keep_built: bool = False) -> None:
    """The flags that say where the corpus comes from and how pairs are cut.

    With `keep_built` (train.py) the flags carry no defaults (config.py layers them) and an
    unset pair-cutting flag keeps the value data/ was built with, so training never silently
    uses data cut differently from what it asked for, and asking for something else rebuilds
    data/. Otherwise (download_data.py) they default to PairSettings'.
    """
    pairs = PairSettings()

    def add(name: str, help: str, **kwargs) -> None:
        flag = name[2:].replace("-", "_")
        if flag in PAIR_FLAGS:
            value = getattr(pairs, PAIR_FLAGS[flag])
            if keep_built:
                help += f" (default: as data/ was built, else {value})"
            else:
                kwargs["default"] = value
        elif not keep_built:
            kwargs["default"] = {"data_dir": DATA_DIR, "url": CORPUS_URL}.get(flag)
        parser.add_argument(name, help=help, **kwargs)

    add("--data-dir", "folder for train/val/test.txt, vocab.json, stats.json")
    add("--source", "a corpus you have (offline use): the Cornell zip or its folder, a ConvoKit corpus "
        "(utterances.jsonl) folder or zip, or a dialogue file: one turn a line, a blank line between "
        "conversations")  # fmt: skip
    add("--url", "address of the corpus zip")
    add("--max-length", "keep pairs whose sides are shorter than this many tokens (room for EOS)",
        type=positive_int)  # fmt: skip
    add("--train-max-length", "training pairs may be this long (train.py --long-pairs uses them); "
        "validation, test and the vocabulary still follow --max-length", type=non_negative_int)  # fmt: skip
    add("--min-count", "words seen fewer times in the training split are rare", type=positive_int)
    add("--rare-words", "unk: keep pairs, rare words become <unk>; drop: drop pairs with rare words "
        "(tutorial)", choices=RARE_WORD_POLICIES)  # fmt: skip
    add("--val-fraction", "share of conversations for validation", type=fraction)
    add("--test-fraction", "share of conversations for test", type=fraction)
    add("--split-seed", "seed of the conversation split", type=non_negative_int)
    add("--context-turns", "earlier turns of the conversation each query keeps as context (0: pairs alone)",
        type=non_negative_int)  # fmt: skip
    add("--context-length", "tokens the context may take, each turn's EOS included (the oldest turn is cut "
        "from the left)", type=positive_int)  # fmt: skip


# Where `train.py --reverse --save-dir checkpoints/backward` writes the backward model that
# chat.py reranks with when it is there.
BACKWARD_MODEL = "checkpoints/backward/best_model.pth"
# The flags whose default changes with --rerank mmi (to decoding.MMI_DEFAULTS).
RERANK_FLAGS = tuple(MMI_DEFAULTS)


def add_decoding_arguments(parser: ArgumentParser, precision: str = "auto", rerank: str = "none") -> None:
    """How replies are generated (chat.py, evaluate.py, serve.py), the default --precision and --rerank
    (chat.py's "auto": MMI when a backward model is there, a choice only where it is the default).
    The defaults are DecodeSettings' own, and decoding.MMI_DEFAULTS' when reranking; --max-length
    has none (the checkpoint's is the default)."""
    d = DecodeSettings()
    parser.add_argument("--decoding", choices=METHODS,
                        help="how replies are chosen (default: beam when reranking, else greedy)")  # fmt: skip
    parser.add_argument("--beam-size", type=positive_int,
                        help=f"beams for --decoding beam (default: {d.beam_size})")  # fmt: skip
    parser.add_argument("--length-penalty", type=finite, default=d.length_penalty,
                        help="beam: Wu et al.'s alpha (0: none)")  # fmt: skip
    parser.add_argument("--beam-groups", type=positive_int, default=d.beam_groups,
                        help="diverse beam search: groups the beam is split into (1: plain beam search)")  # fmt: skip
    parser.add_argument("--diversity-strength", type=non_negative_float, default=d.diversity_strength,
                        help="diverse beam search: a word's cost for each earlier group that chose it at that step")  # fmt: skip
    rerank_help = ("mmi: reorder the beam's hypotheses by (1 - lambda) log p(reply | query) + lambda log "
                   "p(query | reply) + gamma |reply| with a backward model (train.py --reverse); none: as the search "
                   "ranks them")  # fmt: skip
    choices = RERANKERS
    if rerank == "auto":  # not evaluate.py's: it reranks only when asked
        choices = ("auto", *RERANKERS)
        rerank_help += "; auto: mmi when a backward model is given or there and the decoding is beam search"
    parser.add_argument("--rerank", choices=choices, default=rerank, help=rerank_help)
    parser.add_argument("--backward-model", metavar="PATH",
                        help=f"the backward model for --rerank mmi (default: {BACKWARD_MODEL})")  # fmt: skip
    parser.add_argument("--n-best", type=positive_int,
                        help="hypotheses the beam keeps at least (it widens to this many; MMI reranks all it holds; "
                        f"default: {d.n_best}, reranking: {MMI_DEFAULTS['n_best']} unless --beam-size is given)")  # fmt: skip
    parser.add_argument("--mmi-weight", type=probability,
                        help=f"lambda, the weight of log p(query | reply) (default: {MMI_DEFAULTS['mmi_weight']})")  # fmt: skip
    parser.add_argument("--length-bonus", type=finite,
                        help=f"gamma, added for every word of a reply (default: {MMI_DEFAULTS['length_bonus']})")  # fmt: skip
    parser.add_argument("--no-repeat-ngram", type=non_negative_int, default=d.no_repeat_ngram,
                        help="never repeat an n-gram of this size in a reply (0: off)")  # fmt: skip
    parser.add_argument("--temperature", type=temperature, default=d.temperature, help="sampling temperature")
    parser.add_argument("--top-k", type=non_negative_int, default=d.top_k,
                        help="sample from the k likeliest words (0: all)")  # fmt: skip
    parser.add_argument(
        "--top-p", type=nucleus, default=d.top_p, help="sample from this much probability mass"
    )
    parser.add_argument("--max-length", type=positive_int,
                        help="longest reply in tokens with EOS (default: the checkpoint's --max-length)")  # fmt: skip
    parser.add_argument("--min-length", type=positive_int, default=d.min_length,
                        help="tokens before a reply may end")  # fmt: skip
    parser.add_argument("--seed", type=non_negative_int,
                        help="seed sampling once, for a reproducible run (default: unseeded)")  # fmt: skip
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=precision,
                        help="weights in bf16 halve the memory each step reads: about 2x faster replies on a CPU; "
                        "auto: bf16 where the hardware runs it natively")  # fmt: skip
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where to run")


def backward_model(args: argparse.Namespace) -> str | None:
    """The backward model to load, if any: --rerank mmi wants one (given, else the default
    path); auto takes one that is given or there; none takes none."""
    if args.rerank == "none":
        return None
    if args.rerank == "mmi" or args.backward_model:
        return args.backward_model or BACKWARD_MODEL
    return BACKWARD_MODEL if Path(BACKWARD_MODEL).is_file() else None


def reranks(args: argparse.Namespace, have_backward: bool) -> bool:
    """Whether replies start out reranked: --rerank mmi, or auto with a backward model when
    the decoding is beam search (then the default)."""
    return args.rerank == "mmi" or (
        args.rerank == "auto" and have_backward and args.decoding in (None, "beam")
    )


def decode_settings(args: argparse.Namespace, max_length: int, rerank: bool = False) -> DecodeSettings:
    """The decoding flags as settings; `max_length` is the default of --max-length (the
    checkpoint's, checkpoint.trained_max_length); `rerank` whether a backward model reranks.
    Raises DecodingError for settings that cannot decode."""
    unset = {**asdict(DecodeSettings()), **(MMI_DEFAULTS if rerank else {})}
    if args.beam_size is not None:  # a beam size asked for is the beam, MMI's or not
        unset["n_best"] = 1
    tuned = {
        name: unset[name] if getattr(args, name) is None else getattr(args, name) for name in RERANK_FLAGS
    }
    return DecodeSettings(
        method=args.decoding or ("beam" if rerank else "greedy"),
        max_length=args.max_length or max_length,
        min_length=args.min_length,
        beam_size=args.beam_size or DecodeSettings.beam_size,
        length_penalty=args.length_penalty,
        beam_groups=args.beam_groups,
        diversity_strength=args.diversity_strength,
        rerank="mmi" if rerank else "none",
        no_repeat_ngram=args.no_repeat_ngram,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        **tuned,
    )
