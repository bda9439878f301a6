"""Batch-1 reply latency: a tutorial-style fixed-length greedy loop versus this project's decoders.

    python benchmarks/reply_latency.py                # hidden 500, 2+2 layers, vocabulary 8,000, CPU
    python benchmarks/reply_latency.py --device cuda

Every row answers the same random queries with the same randomly initialised model, so every
reply runs to the full length (a random model rarely says EOS): the comparison is per step.
  plain loop   written like the PyTorch chatbot tutorial's GreedySearchDecoder: always
               `max_length` steps, softmax over the vocabulary, max, no stop at EOS
  greedy / beam 5 / sample   seq2seq.decoding, batched code run at batch size 1, with fp32
               weights and with bf16 weights (chat.py --precision bf16)
  beam N + MMI   chat.py with a backward model: N hypotheses, each scored by a second model
               of the same size (one teacher-forced pass over all N); also with the beam in
               diverse groups
  greedy, int8 TorchScript   the exported bot's forward (convert_to_torchscript.py --quantize
               int8): the same greedy search, int8 GRU and linear weights
"""

import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from seq2seq import config
from seq2seq.cli import ArgumentParser, positive_int
from seq2seq.decoding import DecodeSettings, decode
from seq2seq.export import build_bot
from seq2seq.model import Seq2Seq
from seq2seq.vocab import EOS, SOS, Vocabulary


@torch.no_grad()
def plain_greedy(model: Seq2Seq, src: torch.Tensor, lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """The tutorial's searcher: encoder, then a fixed number of decoder steps on softmax output."""
    outputs, hidden = model.encoder(src, lengths)
    dec = model.decoder
    hidden = hidden[-dec.gru.num_layers :].contiguous()
    token = torch.ones(1, 1, dtype=torch.long, device=src.device) * SOS
    tokens, scores = [], []
    for _ in range(max_length):
        rnn_out, hidden = dec.gru(dec.embedding(token), hidden)
        weights = F.softmax(torch.sum(rnn_out * outputs, dim=2), dim=1).unsqueeze(1)
        context = weights.bmm(outputs)
        concat = torch.tanh(dec.concat(torch.cat([rnn_out, context], dim=2)))
        probs = F.softmax(dec.out(concat.squeeze(1)), dim=1)
        score, token = torch.max(probs, dim=1)
        tokens.append(token)
        scores.append(score)
        token = token.unsqueeze(0)
    return torch.cat(tokens)


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--hidden-size", type=positive_int, default=500)
    parser.add_argument("--vocab-size", type=positive_int, default=8000)
    parser.add_argument("--max-length", type=positive_int, default=10, help="reply length in tokens")
    parser.add_argument("--replies", type=positive_int, default=200, help="timed replies per row")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = (
        Seq2Seq(
            config.model_config(
                {**config.RECIPES["tutorial"], "hidden_size": args.hidden_size}, args.vocab_size
            )
        )
        .to(device)
        .eval()
    )
    half = copy.deepcopy(model).to(torch.bfloat16)
    backward = copy.deepcopy(model)  # the same architecture; its weights do not change the cost
    backward_half = copy.deepcopy(half)
    generator = torch.Generator().manual_seed(1)
    queries = []
    for _ in range(args.replies + 20):
        n = int(torch.randint(2, args.max_length, (), generator=generator))
        ids = torch.randint(4, args.vocab_size, (n,), generator=generator).tolist() + [EOS]
        queries.append((torch.tensor([ids], device=device), torch.tensor([len(ids)])))

    def settings(**kw):
        return DecodeSettings(max_length=args.max_length, min_length=args.max_length, **kw)

    searches = {
        "greedy": settings(method="greedy"),
        "beam 5": settings(method="beam", beam_size=5),
        "sample (top-p 0.9)": settings(method="sample", top_p=0.9),
        **{f"beam {n} + MMI": settings(method="beam", n_best=n, rerank="mmi") for n in (10, 20, 40)},
        "beam 20, 4 groups + MMI": settings(method="beam", n_best=20, beam_groups=4, rerank="mmi"),
    }
    rows = {"plain loop (tutorial-style), fp32": lambda s, n: plain_greedy(model, s, n, args.max_length)}
    for name, search in searches.items():
        rows[f"{name}, fp32"] = lambda s, n, search=search: decode(model, s, n, search, backward)
        rows[f"{name}, bf16"] = lambda s, n, search=search: decode(half, s, n, search, backward_half)
    if device.type == "cpu":  # the exported bot runs on the CPU
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation warnings
            vocab = Vocabulary(f"w{i}" for i in range(args.vocab_size - 4))
            bot = build_bot(model, vocab, args.max_length, "trace", int8=True)
        rows["greedy, int8 TorchScript"] = lambda s, n: bot.forward(s)
    results = {}
    for name, reply in rows.items():
        times = []
        for i, (src, lengths) in enumerate(queries):
            start = time.perf_counter()
            reply(src, lengths)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 20:  # the first replies warm caches and allocators
                times.append((time.perf_counter() - start) * 1000)
        times.sort()
        results[name] = (statistics.median(times), times[int(0.95 * (len(times) - 1))])

    print(
        f"device {device}, hidden {args.hidden_size}, 2+2 layers, vocabulary {args.vocab_size}, "
        f"{args.max_length} steps a reply, {args.replies} replies a row, threads {torch.get_num_threads()}"
    )
    base = results["plain loop (tutorial-style), fp32"][0]
    print(f"{'decoder':<36}{'p50 ms':>9}{'p95 ms':>9}{'p50 speed-up':>14}")
    for name, (p50, p95) in results.items():
        print(f"{name:<36}{p50:>9.2f}{p95:>9.2f}{base / p50:>13.2f}x")


if __name__ == "__main__":
    main()
