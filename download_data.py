"""Build data/{train,val,test}.txt and stats.json from the Cornell Movie-Dialogs Corpus or a corpus you have.

python download_data.py                                   # from Cornell's site
python download_data.py --source ../shared/data/cornell   # from a zip or folder you have
python download_data.py --source movie-corpus             # a ConvoKit corpus (utterances.jsonl), any one
python download_data.py --source my_chats.txt             # a dialogue file: one turn a line ("Ann: hi"
                                                          # or "hi"), a blank line between conversations
"""

from seq2seq.cli import PAIR_FLAGS, ArgumentParser, add_data_arguments, fail
from seq2seq.cornell import PairSettings
from seq2seq.download import DataError, build_data


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    parser.add_argument(
        "--force", action="store_true", help="redo finished steps (download, extraction, pairs)"
    )
    args = parser.parse_args()
    settings = PairSettings(**{field: getattr(args, flag) for flag, field in PAIR_FLAGS.items()})
    try:
        build_data(args.data_dir, settings, args.source, args.url, args.force)
    except DataError as error:
        fail(str(error), error.code)


if __name__ == "__main__":
    main()
