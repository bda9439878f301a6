"""Measure a checkpoint on held-out pairs, for evaluate.py and the benchmarks that score as it does.

Teacher-forced figures (loss, perplexity, token accuracy) score the reference replies; the
generation figures score what the bot actually says: corpus BLEU (sacrebleu), distinct-1/2,
average reply length, the share of its ten most frequent replies (how generic it is) and the
share of replies that are one of the model's ten most frequent greedy replies.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, replace

from tqdm import tqdm

from .batching import encode_pairs, iterate_batches
from .checkpoint import context as checkpoint_context
from .checkpoint import load_backward, load_for_inference, trained_max_length
from .cli import (
    ArgumentParser,
    add_decoding_arguments,
    backward_model,
    decode_settings,
    non_negative_int,
    positive_int,
    reranks,
)
from .cornell import CorpusError, read_pairs
from .decoding import DecodeSettings, reply_batch, seeded
from .metrics import generation_scores, most_frequent
from .model import Seq2Seq
from .training import perplexity, teacher_forced_scores
from .vocab import (
    NO_CONTEXT,
    TURN_SEPARATOR,
    Context,
    Vocabulary,
    detokenize,
    join_turns,
    last_turn,
    show_source,
    split_turns,
    words_within,
)


def make_parser(description: str | None = None) -> ArgumentParser:
    """evaluate.py's flags (`description`: its --help's first line)."""
    p = ArgumentParser(description=description)
    p.add_argument("--model-path", default="checkpoints/best_model.pth", help="checkpoint to evaluate")
    p.add_argument(
        "--test-data",
        default="data/test.txt",
        help="query<TAB>reply pairs, earlier turns first when built with context (download_data.py writes them)",
    )
    add_decoding_arguments(p, precision="fp32")  # scores that do not depend on the machine
    p.add_argument(
        "--batch-size", type=positive_int, default=512, help="pairs scored and replies generated at once"
    )
    p.add_argument("--limit", type=positive_int, help="use only the first N pairs")
    p.add_argument("--no-context", action="store_true",
                   help="read each query alone, without the earlier turns a context model was trained with")  # fmt: skip
    p.add_argument("--samples", type=non_negative_int, default=5, help="sample exchanges to show")
    p.add_argument(
        "--output-json",
        metavar="PATH",
        help="also write every figure and the samples as JSON (default: printed only)",
    )
    return p


# References longer than this many times the trained --max-length are left out of the
# teacher-forced figures (one 20,000-token line would take gigabytes); BLEU still reads them whole.
SCORED_LENGTH_FACTOR = 10


def cut_queries(pairs: list[tuple[str, str]], words: int) -> tuple[list[tuple[str, str]], int]:
    """Queries cut to their first `words` words, as chat.py reads them (earlier turns are cut by
    the model's context); and how many were cut."""
    out, cut = [], 0
    for source, reply in pairs:
        *context, query = split_turns(source)
        tokens = query.split()
        cut += len(tokens) > words
        out.append((join_turns([*context, " ".join(tokens[:words])]), reply))
    return out, cut


def generate(
    model: Seq2Seq, vocab: Vocabulary, queries: list[str], settings: DecodeSettings, batch_size: int,
    backward: Seq2Seq | None = None, context: Context = NO_CONTEXT, seed: int | None = None,
) -> list[list[str]]:  # fmt: skip
    """Replies (tokens) to every source, `batch_size` at a time, with a progress bar; sampling
    is seeded once with `seed`."""
    generator = seeded(seed)
    replies: list[list[str]] = []
    name = settings.method + (" + MMI" if settings.rerank == "mmi" else "")
    with tqdm(total=len(queries), unit="reply", desc=f"generating ({name})", file=sys.stderr) as bar:
        for start in range(0, len(queries), batch_size):
            replies += reply_batch(
                model, vocab, queries[start : start + batch_size], settings, backward, context, generator
            )
            bar.update(len(queries[start : start + batch_size]))
    return replies


def evaluate(args: argparse.Namespace) -> dict:
    """Every figure and the first samples for make_parser's `args`: what evaluate.py prints and saves."""
    model, vocab, checkpoint = load_for_inference(args.model_path, args.device, args.precision)
    path = backward_model(args)
    backward = load_backward(path, vocab, args.device, args.precision) if path else None
    settings = decode_settings(args, trained_max_length(checkpoint), reranks(args, backward is not None))
    pairs = read_pairs(args.test_data)[: args.limit]
    if not pairs:
        raise CorpusError(f"{args.test_data} holds no pairs")
    context = NO_CONTEXT if args.no_context else checkpoint_context(checkpoint)
    if context.turns and not any(TURN_SEPARATOR in source for source, _ in pairs):
        print(f"note: the model reads up to {context.turns} earlier turns, but {args.test_data} holds none "
              "(build it with download_data.py --context-turns)", file=sys.stderr)  # fmt: skip
    words = words_within(trained_max_length(checkpoint))
    pairs, cut_queries_count = cut_queries(pairs, words)
    scored = [pair for pair in pairs if len(pair[1].split()) <= SCORED_LENGTH_FACTOR * words]
    cut = {"queries": cut_queries_count, "references_not_scored": len(pairs) - len(scored)}
    if any(cut.values()):
        print(f"note: {cut['queries']:,} queries were cut to the {words} words the model was trained on, "
              f"{cut['references_not_scored']:,} references longer than {SCORED_LENGTH_FACTOR * words} words "
              "left out of loss and accuracy", file=sys.stderr)  # fmt: skip
    if not scored:
        raise CorpusError(
            f"every reference in {args.test_data} is longer than {SCORED_LENGTH_FACTOR * words} words"
        )
    loss, accuracy = teacher_forced_scores(
        model, iterate_batches(encode_pairs(scored, vocab, context=context), args.batch_size)
    )
    queries = [query for query, _ in pairs]
    replies = generate(model, vocab, queries, settings, args.batch_size, backward, context, args.seed)
    greedy = replies
    if settings.method != "greedy":
        greedy_settings = replace(settings, method="greedy", rerank="none")
        greedy = generate(model, vocab, queries, greedy_settings, args.batch_size, context=context)
    greedy_top = most_frequent([detokenize(tokens) for tokens in greedy])
    texts = [detokenize(tokens) for tokens in replies]
    references = [detokenize(reply.split()) for _, reply in pairs]
    return {
        "model": args.model_path,
        "backward_model": path,
        "test_data": args.test_data,
        "pairs": len(pairs),
        "cut": cut,
        "decoding": {**asdict(settings), "seed": args.seed},
        "context": asdict(context),
        "loss": loss,
        "perplexity": perplexity(loss),
        "token_accuracy": accuracy,
        **generation_scores(replies, references, greedy_top),
        "greedy_top10": greedy_top,
        "unknown_words": {
            "query_tokens": sum(len(vocab.unknown_words(last_turn(q))) for q, _ in pairs),
            "reference_tokens": sum(len(vocab.unknown_words(r)) for _, r in pairs),
            "vocabulary": len(vocab),
        },
        "samples": [
            {"query": show_source(q), "reference": ref, "reply": reply}
            for (q, _), ref, reply in list(zip(pairs, references, texts))[: args.samples]
        ],
    }


def format_report(r: dict) -> str:
    """evaluate()'s figures as evaluate.py prints them: a table, then the samples."""
    unknown = r["unknown_words"]
    rows = [
        ("pairs", f"{r['pairs']:,}"),
        ("loss (teacher-forced)", f"{r['loss']:.4f}"),
        ("perplexity", f"{r['perplexity']:.2f}"),
        ("token accuracy", f"{r['token_accuracy']:.2%}"),
        (
            f"BLEU ({r['decoding']['method']}{' + MMI' * (r['decoding']['rerank'] == 'mmi')})",
            f"{r['bleu']:.2f}",
        ),
        ("distinct-1", f"{r['distinct_1']:.4f}"),
        ("distinct-2", f"{r['distinct_2']:.4f}"),
        ("average reply length", f"{r['avg_reply_length']:.2f} tokens"),
        ("top-10 replies' share", f"{r['top10_reply_share']:.2%}"),
        ("greedy top-10's share", f"{r['greedy_top10_share']:.2%}"),
        (
            "unknown words",
            f"{unknown['query_tokens']:,} in queries, {unknown['reference_tokens']:,} in references",
        ),
    ]
    lines = [f"{name:<24}{value}" for name, value in rows]
    for sample in r["samples"]:
        lines += [
            "",
            f"  > {sample['query']}",
            f"    reference: {sample['reference']}",
            f"    bot:       {sample['reply']}",
        ]
    return "\n".join(lines)
