"""Generation throughput for evaluation: 512 prompts one at a time versus batched, in one run.

    python benchmarks/eval_throughput.py               # hidden 500, 2+2 layers, vocabulary 8,000
    python benchmarks/eval_throughput.py --device cuda

The same randomly initialised model answers the same prompts (a random model rarely says EOS, so
every reply runs `max_length` steps). Goal (issue 5): batched at least 20x faster.
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from seq2seq import config
from seq2seq.cli import ArgumentParser, positive_int
from seq2seq.decoding import DecodeSettings, reply_batch
from seq2seq.model import Seq2Seq
from seq2seq.vocab import Vocabulary


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--prompts", type=positive_int, default=512)
    parser.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[64, 512])
    parser.add_argument("--vocab-size", type=positive_int, default=8000)
    parser.add_argument("--max-length", type=positive_int, default=10)
    parser.add_argument("--method", choices=("greedy", "beam"), default="greedy")
    args = parser.parse_args()
    device = torch.device(args.device)
    vocab = Vocabulary([f"w{i}" for i in range(args.vocab_size - 4)])
    torch.manual_seed(0)
    model = Seq2Seq(config.model_config(config.RECIPES["tutorial"], len(vocab))).to(device).eval()
    generator = torch.Generator().manual_seed(1)
    prompts = [
        " ".join(f"w{int(i)}" for i in torch.randint(0, args.vocab_size - 4, (int(n),), generator=generator))
        for n in torch.randint(2, args.max_length, (args.prompts,), generator=generator)
    ]
    settings = DecodeSettings(method=args.method, max_length=args.max_length, min_length=args.max_length)

    def timed(batch_size: int) -> tuple[float, list]:
        reply_batch(model, vocab, prompts[:batch_size], settings)  # warm-up
        start = time.perf_counter()
        replies = []
        for i in range(0, len(prompts), batch_size):
            replies += reply_batch(model, vocab, prompts[i : i + batch_size], settings)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, replies

    one_seconds, one_replies = timed(1)
    print(
        f"device {device}, {args.prompts} prompts, {args.method}, {args.max_length} steps, threads {torch.get_num_threads()}"
    )
    print(f"{'batch size':<12}{'seconds':>9}{'replies/s':>11}{'speed-up':>10}{'same replies':>14}")
    print(f"{1:<12}{one_seconds:>9.2f}{args.prompts / one_seconds:>11.1f}{1:>9.1f}x{'-':>14}")
    for batch_size in args.batch_sizes:
        seconds, replies = timed(batch_size)
        same = sum(a == b for a, b in zip(replies, one_replies)) / len(replies)
        print(
            f"{batch_size:<12}{seconds:>9.2f}{args.prompts / seconds:>11.1f}{one_seconds / seconds:>9.1f}x{same:>14.1%}"
        )


if __name__ == "__main__":
    main()
