"""Download the Cornell Movie-Dialogs Corpus and build data/{train,val,test}.txt and stats.json.

python download_data.py                                   # from Cornell's site
python download_data.py --source ../shared/data/cornell   # from a zip or folder you have
"""

from seq2seq.cli import ArgumentParser, add_data_arguments, build_data


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
