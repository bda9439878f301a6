"""Download the Cornell Movie-Dialogs Corpus and build data/{train,val,test}.txt and stats.json.

python download_data.py                                   # from Cornell's site
python download_data.py --source ../shared/data/cornell   # from a zip or folder you have
"""

from seq2seq.cli import ArgumentParser, fail, fraction, non_negative_int, positive_int
from seq2seq.cornell import RARE_WORD_POLICIES, PairSettings
from seq2seq.download import CORPUS_URL, DataError, format_stats, prepare_data


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


def pair_settings(args) -> PairSettings:
    return PairSettings(
        args.max_length,
        args.min_count,
        args.rare_words,
        args.val_fraction,
        args.test_fraction,
        args.split_seed,
    )


def build_data(args, force: bool = False) -> dict:
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


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    parser.add_argument(
        "--force", action="store_true", help="redo finished steps (download, extraction, pairs)"
    )
    args = parser.parse_args()
    build_data(args, force=args.force)


if __name__ == "__main__":
    main()
