"""MMI reranking tuned on validation, then every decoder side by side on test, once.

    python benchmarks/reply_quality.py --model-path checkpoints/best_model.pth \\
        --backward-model checkpoints/backward/best_model.pth

1. On --val-data: greedy replies give the model's ten most frequent greedy replies. For each
   (N, G) of the grid, a beam of N (in G diverse groups) is searched once for every query and
   each hypothesis is scored once under the backward model; every (lambda, gamma) is then only
   arithmetic on those scores (decoding.mmi_score), so the whole grid costs one search per (N, G).
2. The rule: among the settings whose top-10 share is at most 25% and whose distinct-2 is at
   least 0.15 (the goals; --max-top10, --min-distinct-2), or failing any, those with at most
   half of greedy's top-10 share, the highest BLEU (ties: the higher distinct-2). The best
   plain-beam (G = 1) and the best diverse (G > 1) setting are both kept.
3. On --test-data, once: greedy, beam 5, sampling, and the two chosen MMI settings through
   evaluate.py's own code (reply_batch), with BLEU, distinct-1/2, average length, top-10 share
   and the share of greedy's own top-10 replies; then the replies of each to a few prompts.
Teacher-forced figures do not depend on the decoder: evaluate.py prints them.
"""

import itertools
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from seq2seq.checkpoint import CheckpointError, load_backward, load_for_inference, trained_max_length  # noqa: E402
from seq2seq.cli import ArgumentParser, fail, positive_int, probability  # noqa: E402
from seq2seq.cornell import CorpusError, read_pairs  # noqa: E402
from seq2seq.decoding import (  # noqa: E402
    DecodeSettings,
    backward_log_prob,
    beam_hypotheses,
    best,
    encode_queries,
    mmi_score,
)
from seq2seq.devices import DEVICES, DeviceError  # noqa: E402
from seq2seq.evaluation import cut_queries, generate  # noqa: E402
from seq2seq.files import write_text_atomic  # noqa: E402
from seq2seq.metrics import generation_scores, most_frequent  # noqa: E402
from seq2seq.vocab import detokenize, normalize, words_within  # noqa: E402

# (N, G, delta): beam width, groups, diversity strength
SEARCHES = [(10, 1, 0.0), (10, 5, 1.0), (20, 1, 0.0), (20, 4, 1.0), (40, 1, 0.0), (40, 8, 1.0)]
WEIGHTS = (0.0, 0.5, 0.75, 0.85, 0.9, 0.95, 1.0)
BONUSES = (0.0, 0.1, 0.25, 0.5)
PROMPTS = ["hello", "how are you?", "what is your name?", "where are you going?", "do you love me?",
           "are you a robot?", "what time is it?", "let us get out of here!", "who killed him?"]  # fmt: skip


def load_split(path: str, words: int) -> tuple[list[str], list[str]]:
    pairs, _ = cut_queries(read_pairs(path), words)
    if not pairs:
        raise CorpusError(f"{path} holds no pairs")
    return [q for q, _ in pairs], [detokenize(r.split()) for _, r in pairs]


def scored_hypotheses(model, backward, vocab, queries, settings, batch_size):
    """Every query's hypotheses with log p(T|S) and log p(S|T), concatenated over batches."""
    device = next(model.parameters()).device
    parts = []
    for start in range(0, len(queries), batch_size):
        src, lengths = encode_queries(vocab, queries[start : start + batch_size], settings.max_length, device)
        hyps = beam_hypotheses(model, src, lengths, settings)
        parts.append((hyps, backward_log_prob(backward, src, lengths, hyps.tokens)))
    return parts


def reranked(parts, vocab, weight, bonus) -> list[list[str]]:
    replies = []
    for hyps, query_given_reply in parts:
        top = best(hyps.tokens, mmi_score(hyps, query_given_reply, weight, bonus), 1)
        replies += [vocab.decode(row[0].tolist()) for row in top.tokens]
    return replies


def table(rows: dict[str, dict]) -> str:
    lines = [
        f"{'decoding':<62}{'BLEU':>7}{'dist-1':>8}{'dist-2':>8}{'length':>8}{'top-10':>8}{'greedy10':>9}"
    ]
    for name, r in rows.items():
        lines.append(f"{name:<62}{r['bleu']:>7.2f}{r['distinct_1']:>8.4f}{r['distinct_2']:>8.4f}"
                     f"{r['avg_reply_length']:>8.2f}{r['top10_reply_share']:>8.1%}{r['greedy_top10_share']:>9.1%}")  # fmt: skip
    return "\n".join(lines)


def name_of(s: DecodeSettings) -> str:
    if s.method != "beam":
        return s.method + (f", T {s.temperature}, top-p {s.top_p}" if s.method == "sample" else "")
    groups = f", {s.beam_groups} groups, delta {s.diversity_strength}" if s.beam_groups > 1 else ""
    mmi = f" + MMI, lambda {s.mmi_weight}, gamma {s.length_bonus}" if s.rerank == "mmi" else ""
    return f"beam {s.width}{groups}{mmi}"


def main() -> None:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-path", default="checkpoints/best_model.pth", help="the forward model")
    p.add_argument(
        "--backward-model", default="checkpoints/backward/best_model.pth", help="train.py --reverse's"
    )
    p.add_argument("--val-data", default="data/val.txt", help="the split the settings are chosen on")
    p.add_argument("--test-data", default="data/test.txt", help="the split they are reported on, once")
    p.add_argument("--batch-size", type=positive_int, default=128, help="queries searched at once")
    p.add_argument("--limit", type=positive_int, help="use only the first N pairs of each split")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="as evaluate.py's default")
    p.add_argument("--device", choices=DEVICES, default="auto", help="where to run")
    p.add_argument(
        "--max-top10", type=probability, default=0.25, help="the rule: the largest top-10 share allowed"
    )
    p.add_argument(
        "--min-distinct-2", type=probability, default=0.15, help="the rule: the least distinct-2 allowed"
    )
    p.add_argument(
        "--output-json",
        metavar="PATH",
        help="also write the grid, the choice and the test table (default: printed only)",
    )
    args = p.parse_args()
    try:
        model, vocab, checkpoint = load_for_inference(args.model_path, args.device, args.precision)
        backward = load_backward(args.backward_model, vocab, args.device, args.precision)
        max_length = trained_max_length(checkpoint)
        words = words_within(max_length)
        val_queries, val_refs = load_split(args.val_data, words)
        test_queries, test_refs = load_split(args.test_data, words)
    except (CheckpointError, CorpusError, DeviceError) as error:
        fail(str(error))
    val_queries, val_refs = val_queries[: args.limit], val_refs[: args.limit]
    test_queries, test_refs = test_queries[: args.limit], test_refs[: args.limit]
    torch.set_grad_enabled(False)
    plain = DecodeSettings(max_length=max_length)

    greedy_val = generate(model, vocab, val_queries, plain, args.batch_size)
    greedy_top = most_frequent([detokenize(r) for r in greedy_val])
    greedy_scores = generation_scores(greedy_val, val_refs, greedy_top)
    grid = []
    for n, groups, delta in SEARCHES:
        search = replace(plain, method="beam", n_best=n, beam_groups=groups, diversity_strength=delta)
        start = time.perf_counter()
        parts = scored_hypotheses(model, backward, vocab, val_queries, search, args.batch_size)
        seconds = time.perf_counter() - start
        print(
            f"beam {n}, {groups} groups, delta {delta}: searched and scored in {seconds:.0f} s",
            file=sys.stderr,
        )
        for weight, bonus in itertools.product(WEIGHTS, BONUSES):
            settings = replace(search, rerank="mmi", mmi_weight=weight, length_bonus=bonus)
            scores = generation_scores(reranked(parts, vocab, weight, bonus), val_refs, greedy_top)
            grid.append((settings, scores))
    print(f"\nvalidation ({len(val_queries):,} pairs), the grid:\n" + table({"greedy": greedy_scores} | {
        name_of(s): r for s, r in grid}))  # fmt: skip

    goals = [
        (s, r)
        for s, r in grid
        if r["top10_reply_share"] <= args.max_top10 and r["distinct_2"] >= args.min_distinct_2
    ]
    rule = f"top-10 share at most {args.max_top10:.0%} and distinct-2 at least {args.min_distinct_2}"
    allowed = goals or [
        (s, r) for s, r in grid if r["top10_reply_share"] <= greedy_scores["top10_reply_share"] / 2
    ]
    if not goals:
        rule = f"no setting had {rule}; top-10 share at most half of greedy's"
    if not allowed:
        fail(
            f"no setting halves greedy's top-10 share of {greedy_scores['top10_reply_share']:.1%} on validation"
        )
    chosen = {}
    for label, keep in (("beam + MMI", lambda s: s.beam_groups == 1), ("diverse beam + MMI", lambda s: s.beam_groups > 1)):  # fmt: skip
        candidates = [(s, r) for s, r in allowed if keep(s)]
        if candidates:
            chosen[label] = max(candidates, key=lambda c: (c[1]["bleu"], c[1]["distinct_2"]))[0]
    print(f"\nchosen on validation ({rule}, then the highest BLEU):")
    for label, s in chosen.items():
        print(f"  {label}: {name_of(s)}")

    decoders = [plain, replace(plain, method="beam"), replace(plain, method="sample", temperature=0.8, top_p=0.9),
                *chosen.values()]  # fmt: skip
    greedy_test = generate(model, vocab, test_queries, plain, args.batch_size)
    test_top = most_frequent([detokenize(r) for r in greedy_test])
    prompts = [normalize(text) for text in PROMPTS]
    report, samples = {}, {}
    for settings in decoders:  # the backward model is used by the reranked ones only
        replies = (
            greedy_test
            if settings == plain
            else generate(model, vocab, test_queries, settings, args.batch_size, backward, seed=0)
        )
        report[name_of(settings)] = generation_scores(replies, test_refs, test_top)
        samples[name_of(settings)] = [
            detokenize(r) for r in generate(model, vocab, prompts, settings, 16, backward, seed=0)
        ]
    print(f"\ntest ({len(test_queries):,} pairs), once:\n" + table(report))
    print("\nreplies:")
    for i, prompt in enumerate(PROMPTS):
        print(
            f"  > {prompt}\n" + "\n".join(f"      {name}: {replies[i]}" for name, replies in samples.items())
        )
    if args.output_json:
        result = {
            "model": args.model_path, "backward_model": args.backward_model, "greedy_top10_val": greedy_top,
            "validation": [{"decoding": asdict(s), **r} for s, r in grid], "validation_greedy": greedy_scores,
            "chosen": {label: asdict(s) for label, s in chosen.items()},
            "test": [{"decoding": asdict(s), "name": name_of(s), **report[name_of(s)]} for s in decoders],
            "samples": {"prompts": PROMPTS, **samples},
        }  # fmt: skip
        try:
            write_text_atomic(args.output_json, json.dumps(result, indent=2) + "\n")
        except OSError as error:
            fail(f"cannot write {args.output_json}: {error.strerror or error}")


if __name__ == "__main__":
    main()
