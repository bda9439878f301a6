"""Time the data pipeline (read -> pairs -> vocabulary) on a corpus folder and print lines/s.

    python benchmarks/data_pipeline.py --corpus ../shared/data/cornell-approx

Goal (issue 2): the full corpus, 304,713 lines, in at most 3 s on a 2-core CPU.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from seq2seq.cli import ArgumentParser, positive_int
from seq2seq.cornell import PairSettings, make_pairs, read_corpus

FULL_CORPUS_LINES = 304_713


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="../shared/data/cornell-approx", help="corpus folder")
    parser.add_argument("--repeats", type=positive_int, default=3, help="runs; the fastest is reported")
    args = parser.parse_args()

    best: dict[str, float] = {}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        conversations, _ = read_corpus(args.corpus)
        t1 = time.perf_counter()
        paired = make_pairs(conversations, PairSettings())  # split, cut, count, trim
        t2 = time.perf_counter()
        for stage, seconds in [
            ("read + normalise", t1 - t0),
            ("pairs + vocabulary", t2 - t1),
            ("total", t2 - t0),
        ]:
            best[stage] = min(best.get(stage, float("inf")), seconds)

    lines = sum(len(c) for c in conversations)
    print(
        f"corpus {args.corpus}: {lines:,} lines, {len(conversations):,} conversations, "
        f"{paired.stats['pairs']['after_trimming']:,} pairs, {len(paired.vocab):,} words "
        f"(best of {args.repeats})"
    )
    print(f"{'stage':<20}{'seconds':>9}{'lines/s':>12}")
    for stage, seconds in best.items():
        print(f"{stage:<20}{seconds:>9.3f}{lines / seconds:>12,.0f}")
    projected = FULL_CORPUS_LINES / (lines / best["total"])
    verdict = "meets" if projected <= 3 else "misses"
    print(f"full corpus ({FULL_CORPUS_LINES:,} lines) projected: {projected:.2f} s ({verdict} the 3 s goal)")


if __name__ == "__main__":
    main()
