"""Measure a checkpoint on held-out pairs: loss, perplexity, token accuracy, and generated replies.

    python evaluate.py                                    # best_model.pth on data/test.txt, greedy
    python evaluate.py --decoding beam --beam-size 5 --output-json checkpoints/beam.json
    python evaluate.py --rerank mmi --backward-model checkpoints/backward/best_model.pth

What each figure means: seq2seq/evaluation.py.
"""

from __future__ import annotations

import json

from seq2seq.checkpoint import CheckpointError
from seq2seq.cli import fail
from seq2seq.cornell import CorpusError
from seq2seq.decoding import DecodingError
from seq2seq.devices import DeviceError
from seq2seq.evaluation import evaluate, format_report, make_parser
from seq2seq.files import write_text_atomic


def main() -> None:
    args = make_parser(__doc__.splitlines()[0]).parse_args()
    try:
        results = evaluate(args)
        if args.output_json:
            write_text_atomic(args.output_json, json.dumps(results, indent=2) + "\n")
    except (CheckpointError, CorpusError, DeviceError, DecodingError) as error:
        fail(str(error))
    except OSError as error:
        fail(f"cannot write {args.output_json}: {error.strerror or error}")
    except KeyboardInterrupt:
        fail("interrupted", 130)
    print(format_report(results))


if __name__ == "__main__":
    main()
