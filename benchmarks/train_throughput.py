"""Training throughput: a tutorial-style step-by-step loop versus this project's path, in one run.

    python benchmarks/train_throughput.py                 # CPU, hidden 500, 2+2 layers, batch 64
    python benchmarks/train_throughput.py --device cuda

Rows (same model size, same batches, target tokens per second over timed iterations):
  (a) plain fp32 loop written like the PyTorch chatbot tutorial: one decoder step per Python
      iteration, softmax over the vocabulary then the log of the gathered probability, a masked
      mean per step, two optimizers clipped separately;
  (b) this project's training step (teacher-forced fast path, cross-entropy on logits) in fp32;
  (c) the same in bf16 autocast.

With --parity-iterations N it then trains the default model N iterations on data/ in fp32 and in
bf16 (same seed, same batches) and prints both validation losses: bf16 should land within 2%.
"""

import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from seq2seq.batching import BatchSchedule, collate, encode_pairs, iterate_batches
from seq2seq.cli import ArgumentParser, positive_int
from seq2seq.cornell import read_pairs
from seq2seq.model import ModelConfig, Seq2Seq
from seq2seq.training import TrainStep, make_optimizer, perplexity, teacher_forced_scores
from seq2seq.vocab import EOS, PAD, SOS, Vocabulary


def tutorial_step(model: Seq2Seq, enc_opt, dec_opt, batch, clip: float) -> float:
    """One training iteration in the tutorial's style, using the same modules' weights."""
    enc_opt.zero_grad()
    dec_opt.zero_grad()
    outputs, hidden = model.encoder(batch.src, batch.lengths)
    dec = model.decoder
    hidden = hidden[-dec.gru.num_layers :].contiguous()
    token = torch.full((batch.src.size(0), 1), SOS, dtype=torch.long, device=batch.src.device)
    loss, total_tokens, printed = 0.0, 0, 0.0
    for t in range(batch.tgt.size(1)):
        embedded = dec.embedding_dropout(dec.embedding(token))
        rnn_out, hidden = dec.gru(embedded, hidden)
        scores = torch.sum(rnn_out * outputs, dim=2)  # dot score against every position
        weights = F.softmax(scores, dim=1).unsqueeze(1)
        context = weights.bmm(outputs)
        concat = torch.tanh(dec.concat(torch.cat([rnn_out, context], dim=2)))
        probs = F.softmax(dec.out(concat.squeeze(1)), dim=1)
        target = batch.tgt[:, t]
        mask = target != PAD
        nll = -torch.log(torch.gather(probs, 1, target.unsqueeze(1)).squeeze(1))
        step_loss = nll.masked_select(mask).mean()
        loss = loss + step_loss
        n = int(mask.sum())
        printed += step_loss.item() * n
        total_tokens += n
        token = target.unsqueeze(1)  # teacher forcing
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.encoder.parameters(), clip)
    torch.nn.utils.clip_grad_norm_(model.decoder.parameters(), clip)
    enc_opt.step()
    dec_opt.step()
    return printed / total_tokens


def random_batches(n: int, batch_size: int, vocab_size: int, max_length: int, seed: int):
    generator = torch.Generator().manual_seed(seed)

    def sentence():
        length = int(torch.randint(1, max_length, (), generator=generator))
        return torch.randint(4, vocab_size, (length,), generator=generator).tolist() + [EOS]

    return [collate([(sentence(), sentence()) for _ in range(batch_size)]) for _ in range(n)]


def precision_parity(data_dir: Path, iterations: int, device: torch.device) -> None:
    """Train fp32 and bf16 side by side on the real data and compare validation losses."""
    train_pairs, val_pairs = read_pairs(data_dir / "train.txt"), read_pairs(data_dir / "val.txt")
    vocab = Vocabulary.from_dict(json.loads((data_dir / "vocab.json").read_text(encoding="utf-8")))
    train, val = encode_pairs(train_pairs, vocab, 10), iterate_batches(encode_pairs(val_pairs, vocab, 10), 64)
    schedule = BatchSchedule(len(train), 64, seed=0)
    results = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = Seq2Seq(ModelConfig(len(vocab))).to(device).train()
        step = TrainStep(model, make_optimizer(model, "adam", 1e-4, 5.0), clip=50.0, precision=precision)
        start = time.perf_counter()
        for i in range(iterations):
            step(collate([train[j] for j in schedule.indices(i)]), teacher_forcing=True)
        results[precision] = (teacher_forced_scores(model, val)[0], time.perf_counter() - start)
    print(
        f"\n{iterations} iterations on {data_dir}/ (default model, {len(vocab):,} words), validated in fp32:"
    )
    print(f"{'precision':<10}{'val loss':>10}{'perplexity':>12}{'train time':>12}")
    for precision, (loss, seconds) in results.items():
        print(f"{precision:<10}{loss:>10.4f}{perplexity(loss):>12.2f}{seconds:>11.0f}s")
    gap = abs(results["bf16"][0] - results["fp32"][0]) / results["fp32"][0]
    print(f"bf16 differs from fp32 by {gap:.2%} ({'within' if gap <= 0.02 else 'outside'} the 2% goal)")


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--hidden-size", type=positive_int, default=500)
    parser.add_argument("--vocab-size", type=positive_int, default=8000)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--max-length", type=positive_int, default=10)
    parser.add_argument("--warmup", type=positive_int, default=3, help="untimed iterations per row")
    parser.add_argument("--iterations", type=positive_int, default=10, help="timed iterations per row")
    parser.add_argument(
        "--rounds", type=positive_int, default=3, help="interleaved rounds; medians are shown"
    )
    parser.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--parity-iterations", type=positive_int, help="also train fp32 and bf16 this long on data/"
    )
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="pairs for --parity-iterations")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = ModelConfig(args.vocab_size, args.hidden_size, 2, 2, 0.1, "dot")
    batches = random_batches(
        args.warmup + args.iterations, args.batch_size, args.vocab_size, args.max_length, 0
    )
    batches = [b.to(device) for b in batches]
    tokens = sum(b.n_tokens for b in batches[args.warmup :])

    def measure(step) -> float:
        for b in batches[: args.warmup]:
            step(b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for b in batches[args.warmup :]:
            step(b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return tokens / (time.perf_counter() - start)

    def fresh_model() -> Seq2Seq:
        torch.manual_seed(0)
        return Seq2Seq(config).to(device).train()

    tutorial = fresh_model()
    enc_opt = torch.optim.Adam(tutorial.encoder.parameters(), lr=1e-4)
    dec_opt = torch.optim.Adam(tutorial.decoder.parameters(), lr=5e-4)
    paths = {"(a) tutorial-style loop, fp32": lambda b: tutorial_step(tutorial, enc_opt, dec_opt, b, 50.0)}
    for label, precision in [("(b) project path, fp32", "fp32"), ("(c) project path, bf16", "bf16")]:
        model = fresh_model()
        step = TrainStep(model, make_optimizer(model, "adam", 1e-4, 5.0), clip=50.0, precision=precision)
        paths[label] = lambda b, step=step: step(b, teacher_forcing=True)
    # rounds interleave the paths, so a slow spell of a shared machine hits them all alike
    rates: dict[str, list[float]] = {label: [] for label in paths}
    for _ in range(args.rounds):
        for label, path in paths.items():
            rates[label].append(measure(path))
    medians = {label: statistics.median(values) for label, values in rates.items()}

    print(
        f"device {device}, hidden {args.hidden_size}, 2+2 layers, batch {args.batch_size}, "
        f"vocabulary {args.vocab_size}, length < {args.max_length}, threads {torch.get_num_threads()}, "
        f"median of {args.rounds} rounds of {args.iterations} iterations"
    )
    base = medians["(a) tutorial-style loop, fp32"]
    print(f"{'path':<34}{'target tokens/s':>16}{'vs (a)':>8}   rounds")
    for label, rate in medians.items():
        print(
            f"{label:<34}{rate:>16,.0f}{rate / base:>7.2f}x   " + " ".join(f"{r:,.0f}" for r in rates[label])
        )
    if args.parity_iterations:
        precision_parity(args.data_dir, args.parity_iterations, device)


if __name__ == "__main__":
    main()
