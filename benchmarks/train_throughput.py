"""Training throughput of the default recipe on real batches from data/train.txt, path by path.

    python benchmarks/train_throughput.py                      # CPU, the tuned recipe, batches of 256
    python benchmarks/train_throughput.py --recipe tutorial
    python benchmarks/train_throughput.py --device cuda
    python benchmarks/train_throughput.py --parity-iterations 1000   # then fp32 against auto's choice
    python benchmarks/train_throughput.py --skip-tutorial --skip-padded --breakdown   # where (e) goes
    python benchmarks/train_throughput.py --skip-tutorial --skip-padded --hidden-size 1000

Rows (the recipe's model, optimizer and batches; each row starts from the same weights):
  (a) a loop written like the PyTorch chatbot tutorial's, fp32: one decoder step per Python
      iteration, softmax then the log of the gathered probability, a masked mean per step, two
      optimizers clipped separately: the yardstick;
  (b, c) the padded path, fp32 and bf16: Seq2Seq.forward and sequence_loss, autograd through
      nn.GRU, the output layer and the loss over the whole padded (B, T) grid (the training step
      before the packed path);
  (d, e) the packed path train.py runs (TrainStep, Seq2Seq.token_losses), fp32 and bf16;
  (f) the packed path in bf16 on length-bucketed batches (--bucket-pool), other batches of the
      same data;
  (g, h) the floor of (d) and (e): only the matrix products their iterations run, with the same
      shapes and dtypes, as plain torch.mm calls on contiguous operands into preallocated
      outputs (recorded from real steps on the same batches). "vs its floor" is how far a path
      is from doing nothing but its products.
With --breakdown it then times (e)'s step op by op and prints, for each function of seq2seq/
(and autograd's own backward of built-in ops), its matrix products and its other ops in ms.
Rows run in interleaved rounds on the same batches, so a slow spell of a shared machine hits
them all; each round first runs a few untimed iterations. Medians of the rounds are shown.
oneDNN compiles a kernel for each new bf16 matrix shape, so bf16 rows are slower for the first
hundred or so iterations of a run, and the later rounds show the rate a long run settles at.

With --parity-iterations N it then trains the recipe N iterations in fp32 and in the precision
`--precision auto` chooses here (same seed, same batches) and compares their validation losses.
"""

import collections
import json
import os
import statistics
import sys
import time
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path

# oneDNN keeps 1,024 compiled kernels by default, enough for one training run's bf16 shapes, but
# the bf16 rows here side by side need more: with the default, rows evicted each other's kernels
# and row (e) measured 0.88 s an iteration instead of 0.57 (README, Benchmarks).
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8192")

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from seq2seq import config
from seq2seq.batching import Batch, BatchSchedule, collate, encode_pairs, iterate_batches
from seq2seq.cli import ArgumentParser, fail, non_negative_int, positive_int
from seq2seq.cornell import read_pairs
from seq2seq.devices import autocast, huge_pages_for_tensors, resolve_device, resolve_precision
from seq2seq.download import built_settings, read_stats
from seq2seq.model import Seq2Seq, sequence_loss
from seq2seq.training import TrainStep, make_optimizer, perplexity, teacher_forced_scores
from seq2seq.vocab import PAD, SOS, Vocabulary


def tutorial_step(model: Seq2Seq, enc_opt, dec_opt, batch: Batch, clip: float) -> None:
    """One training iteration in the tutorial's style, using the same modules' weights."""
    enc_opt.zero_grad()
    dec_opt.zero_grad()
    outputs, hidden = model.encoder(batch.src, batch.lengths)
    dec = model.decoder
    hidden = hidden[-dec.gru.num_layers :].contiguous()
    token = torch.full((batch.src.size(0), 1), SOS, dtype=torch.long, device=batch.src.device)
    loss = 0.0
    for t in range(batch.tgt.size(1)):
        embedded = dec.embedding_dropout(dec.embedding(token))
        rnn_out, hidden = dec.gru(embedded, hidden)
        weights = F.softmax(torch.sum(rnn_out * outputs, dim=2), dim=1).unsqueeze(
            1
        )  # dot score, every position
        concat = torch.tanh(dec.concat(torch.cat([rnn_out, weights.bmm(outputs)], dim=2)))
        probs = F.softmax(dec.out(dec.output_dropout(concat.squeeze(1))), dim=1)
        target = batch.tgt[:, t]
        nll = -torch.log(torch.gather(probs, 1, target.unsqueeze(1)).squeeze(1))
        loss = loss + nll.masked_select(target != PAD).mean()
        token = target.unsqueeze(1)  # teacher forcing
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.encoder.parameters(), clip)
    torch.nn.utils.clip_grad_norm_(model.decoder.parameters(), clip)
    enc_opt.step()
    dec_opt.step()


def padded_step(model: Seq2Seq, optimizer, clip: float, precision: str, batch: Batch) -> None:
    """TrainStep's work done the padded way: logits for the whole (B, T) grid, then the loss."""
    device = next(model.parameters()).device
    with autocast(device, precision):
        logits = model(batch.src, batch.lengths, batch.tgt)
    loss = sequence_loss(logits, batch.tgt)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()


MATRIX_PRODUCTS = {torch.ops.aten.mm: (0, 1), torch.ops.aten.addmm: (1, 2), torch.ops.aten.addmm_: (1, 2),
                   torch.ops.aten.bmm: (0, 1), torch.ops.aten.baddbmm: (1, 2)}  # op: its two factors  # fmt: skip


class _Products(TorchDispatchMode):
    """Records the (batch, m, k, n) and dtype of every matrix product run while it is active,
    forward and backward (autograd hands its thread-local modes to the backward)."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, int, int, int, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        factors = MATRIX_PRODUCTS.get(func.overloadpacket)
        if factors is not None:
            a, b = (args[i] for i in factors)
            self.shapes.append(
                (a.shape[0] if a.dim() == 3 else 1, a.shape[-2], a.shape[-1], b.shape[-1], a.dtype)
            )
        return func(*args, **(kwargs or {}))


def product_replay(step, batches: list[Batch], device: torch.device) -> tuple[Callable[[Batch], None], float]:
    """The floor of `step`: a stand-in that runs, for each of these batches, only the matrix
    products `step` runs on it (recorded from a real step, forward and backward), with the same
    shapes and dtypes, as torch.mm / torch.bmm on contiguous operands into preallocated outputs,
    back to back; and their GFLOP per batch. Every shape's kernel is compiled before it returns.
    A step's distance from its replay is everything that is not a matrix product."""
    recorded = {}
    for batch in batches:
        with _Products() as products:
            step(batch)
        recorded[id(batch)] = products.shapes
    operands = {}
    for shape in {shape for shapes in recorded.values() for shape in shapes}:
        b, m, k, n, dtype = shape
        a, w, out = (torch.randn(b, *size, dtype=dtype, device=device) for size in ((m, k), (k, n), (m, n)))
        operands[shape] = (a, w, out) if b > 1 else (a[0], w[0], out[0])

    def replay(batch: Batch) -> None:
        for shape in recorded[id(batch)]:
            a, w, out = operands[shape]
            (torch.bmm if a.dim() == 3 else torch.mm)(a, w, out=out)

    for batch in batches:
        replay(batch)
    flops = sum(2 * b * m * k * n for shapes in recorded.values() for b, m, k, n, _ in shapes)
    return replay, flops / len(batches) / 1e9


class _OpTimes(TorchDispatchMode):
    """Wall time of every op a step runs, by the repository function that called it (autograd's
    own backward of built-in ops apart) and by whether the op is a matrix product."""

    def __init__(self):
        super().__init__()
        self.seconds: dict[tuple[str, bool], float] = collections.defaultdict(float)
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        started = time.perf_counter()
        result = func(*args, **(kwargs or {}))
        self.ops += 1
        self.seconds[_caller(sys._getframe(1)), func.overloadpacket in MATRIX_PRODUCTS] += (
            time.perf_counter() - started
        )
        return result


def _caller(frame) -> str:
    while frame is not None:
        if frame.f_code.co_name == "_engine_run_backward":
            return "autograd: backward of built-in ops"
        if (path := Path(frame.f_code.co_filename)).parent.name == "seq2seq":
            return f"{path.stem}.{frame.f_code.co_qualname}"
        frame = frame.f_back
    return "elsewhere"


def breakdown(step, batches: list[Batch], warmup: int) -> None:
    """Where a step's time goes: each repository function's matrix products and other ops."""
    for batch in batches[:warmup]:
        step(batch)
    timed = batches[warmup:]
    started = time.perf_counter()
    for batch in timed:
        step(batch)
    plain = (time.perf_counter() - started) / len(timed)
    with _OpTimes() as times:
        for batch in timed:
            step(batch)
    parts: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for (part, product), seconds in times.seconds.items():
        parts[part][0 if product else 1] += seconds * 1000 / len(timed)
    ops = sum(map(sum, parts.values()))
    count = times.ops / len(timed)
    print(
        f"\nWhere a step of row (e) goes, ms an iteration, over {len(timed)} iterations: {count:,.0f} ops "
        f"an iteration, each timed under a dispatch mode, which adds its own cost to every op (the step ran "
        f"{plain * 1000:.0f} ms an iteration without the mode, and its ops sum to {ops:.0f} ms with it):"
    )
    print("| part | matrix products | other ops | total |")
    print("| --- | --- | --- | --- |")
    for part, (product, other) in sorted(parts.items(), key=lambda kv: -sum(kv[1])):
        print(f"| {part} | {product:.1f} | {other:.1f} | {product + other:.1f} |")
    products = sum(p for p, _ in parts.values())
    print(f"| all ops | {products:.1f} | {ops - products:.1f} | {ops:.1f} |")


def recipe_setup(data_dir: Path, recipe: str) -> tuple[Namespace, Vocabulary, list, list]:
    """train.py's values for `recipe`, the vocabulary, and its training and validation pairs."""
    args = Namespace(**config.layer({"recipe": recipe, "data_dir": str(data_dir)}))
    if built_settings(read_stats(data_dir / "stats.json")) is None:
        fail(f"{data_dir}/ is not built: run download_data.py first")
    pairs = config.pair_settings(vars(args))
    vocab = Vocabulary.from_dict(json.loads((data_dir / "vocab.json").read_text(encoding="utf-8")))
    longest = max(pairs.train_max_length, pairs.max_length) if args.long_pairs else pairs.max_length
    examples = encode_pairs(read_pairs(data_dir / "train.txt"), vocab, longest)
    val = encode_pairs(read_pairs(data_dir / "val.txt"), vocab, pairs.max_length)
    return args, vocab, examples, val


def fresh_model(args: Namespace, vocab: Vocabulary, device: torch.device) -> Seq2Seq:
    torch.manual_seed(args.seed)
    return Seq2Seq(config.model_config(vars(args), len(vocab))).to(device).train()


def precision_parity(args, vocab, examples, val, iterations: int, device: torch.device, auto: str) -> None:
    """Train in fp32 and in auto's choice side by side on the same batches; compare validation."""
    schedule = BatchSchedule(len(examples), args.batch_size, args.seed)
    val_batches = iterate_batches(val, args.batch_size)
    results = {}
    for precision in ("fp32", auto):
        model = fresh_model(args, vocab, device)
        optimizer = make_optimizer(model, args.optimizer, args.learning_rate, args.decoder_learning_ratio)
        step = TrainStep(model, optimizer, args.clip, precision, args.label_smoothing)
        started = time.perf_counter()
        for i in range(iterations):
            step(collate([examples[j] for j in schedule.indices(i)]), teacher_forcing=True)
        seconds = time.perf_counter() - started
        own = teacher_forced_scores(model, val_batches, precision)[0]
        results[precision] = (teacher_forced_scores(model, val_batches, "fp32")[0], own, seconds)
    print(
        f"\n{iterations} iterations of the {args.recipe} recipe, same seed and batches ({len(val):,} validation pairs):"
    )
    print(
        f"{'precision':<10}{'val loss (fp32)':>16}{'perplexity':>12}{'val loss (own)':>16}{'train time':>12}"
    )
    for precision, (loss, own, seconds) in results.items():
        print(f"{precision:<10}{loss:>16.4f}{perplexity(loss):>12.2f}{own:>16.4f}{seconds:>11.0f}s")
    if auto != "fp32":
        gap = abs(results[auto][0] - results["fp32"][0]) / results["fp32"][0]
        print(
            f"{auto} differs from fp32 by {gap:.2%} in validation loss ({'within' if gap <= 0.01 else 'outside'} 1%)"
        )


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--recipe",
        choices=config.RECIPES,
        default=config.DEFAULT_RECIPE,
        help="train.py recipe whose defaults to run",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="built data/ to draw batches from"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--warmup", type=non_negative_int, default=3, help="untimed iterations per row and round"
    )
    parser.add_argument(
        "--iterations", type=positive_int, default=10, help="timed iterations per row and round"
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=3, help="interleaved rounds; medians are shown"
    )
    parser.add_argument("--bucket-pool", type=positive_int, default=100, help="pool of batches for row (f)")
    parser.add_argument("--skip-tutorial", action="store_true", help="leave out row (a), the slowest")
    parser.add_argument("--skip-padded", action="store_true", help="leave out rows (b) and (c)")
    parser.add_argument("--hidden-size", type=positive_int, help="the model's width (default: the recipe's)")
    parser.add_argument("--batch-size", type=positive_int, help="pairs a batch (default: the recipe's)")
    parser.add_argument(
        "--breakdown", action="store_true", help="then time row (e)'s step part by part, op by op"
    )
    parser.add_argument(
        "--threads", type=positive_int, help="torch.set_num_threads (default: torch's choice)"
    )
    parser.add_argument(
        "--parity-iterations", type=positive_int, help="then train fp32 and auto's choice this long"
    )
    options = parser.parse_args()
    huge_pages_for_tensors()  # as train.py runs
    if options.threads:
        torch.set_num_threads(options.threads)
    device = resolve_device(options.device)
    auto, why = resolve_precision("auto", device)
    args, vocab, examples, val = recipe_setup(options.data_dir, options.recipe)
    args.hidden_size = options.hidden_size or args.hidden_size
    args.batch_size = options.batch_size or args.batch_size
    if len(examples) < args.batch_size:
        fail(
            f"{options.data_dir}/train.txt holds {len(examples):,} pairs, fewer than a batch of {args.batch_size}"
        )
    n = options.warmup + options.iterations
    schedule = BatchSchedule(len(examples), args.batch_size, args.seed)
    lengths = [(len(s), len(t)) for s, t in examples]
    bucketed = BatchSchedule(
        len(examples), args.batch_size, args.seed, lengths=lengths, pool=options.bucket_pool
    )
    plain = [collate([examples[j] for j in schedule.indices(i)]).to(device) for i in range(n)]
    pooled = [collate([examples[j] for j in bucketed.indices(i)]).to(device) for i in range(n)]

    def packed_step(precision: str) -> Callable[[Batch], object]:
        model = fresh_model(args, vocab, device)
        step = TrainStep(model, make_optimizer(model, args.optimizer, args.learning_rate, args.decoder_learning_ratio),
                         args.clip, precision, args.label_smoothing)  # fmt: skip
        return lambda batch: step(batch, teacher_forcing=True)

    floors = {
        precision: product_replay(packed_step(precision), plain, device) for precision in ("fp32", "bf16")
    }

    def padded(precision: str):
        model = fresh_model(args, vocab, device)
        optimizer = make_optimizer(model, args.optimizer, args.learning_rate, args.decoder_learning_ratio)
        return lambda batch: padded_step(model, optimizer, args.clip, precision, batch)

    def tutorial():
        model = fresh_model(args, vocab, device)
        rate = args.learning_rate
        enc_opt = torch.optim.Adam(model.encoder.parameters(), lr=rate)
        dec_opt = torch.optim.Adam(model.decoder.parameters(), lr=rate * args.decoder_learning_ratio)
        return lambda batch: tutorial_step(model, enc_opt, dec_opt, batch, args.clip)

    rows = {} if options.skip_tutorial else {"(a) tutorial-style loop, fp32": (tutorial(), plain)}
    if not options.skip_padded:
        rows |= {
            "(b) padded path, fp32": (padded("fp32"), plain),
            "(c) padded path, bf16": (padded("bf16"), plain),
        }
    rows |= {
        "(d) packed path, fp32": (packed_step("fp32"), plain),
        "(e) packed path, bf16": (packed_step("bf16"), plain),
        f"(f) packed, bf16, --bucket-pool {options.bucket_pool}": (packed_step("bf16"), pooled),
        "(g) (d)'s matrix products alone, fp32: its floor": (floors["fp32"][0], plain),
        "(h) (e)'s matrix products alone, bf16: its floor": (floors["bf16"][0], plain),
    }
    floor_of = {"(d)": "(g)", "(e)": "(h)", "(g)": "(g)", "(h)": "(h)"}

    def measure(work, batches: list[Batch]) -> tuple[float, float]:
        """Seconds per iteration and target tokens per second over the timed iterations."""
        for batch in batches[: options.warmup]:
            work(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for batch in batches[options.warmup :]:
            work(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        return seconds / options.iterations, sum(b.n_tokens for b in batches[options.warmup :]) / seconds

    timings: dict[str, list[tuple[float, float]]] = {label: [] for label in rows}
    for round_ in range(options.rounds):
        for label, (work, batches) in rows.items():
            timings[label].append(measure(work, batches))
            print(
                f"round {round_ + 1}: {label}: {timings[label][-1][0]:.3f} s/it", file=sys.stderr, flush=True
            )

    tokens = sum(b.n_tokens for b in plain[options.warmup :]) / options.iterations
    grid = sum(b.tgt.numel() for b in plain[options.warmup :]) / options.iterations
    print(
        f"{options.recipe} recipe on {options.data_dir}/: batch {args.batch_size}, {len(examples):,} training pairs, "
        f"hidden {args.hidden_size}, {args.encoder_layers}+{args.decoder_layers} layers, {len(vocab):,} words; "
        f"{tokens:,.0f} target tokens a batch ({tokens / grid:.0%} of the padded grid); device {device}, "
        f"{torch.get_num_threads()} threads; --precision auto picks {auto} ({why.removeprefix('auto: ')}); "
        f"median of {options.rounds} rounds of {options.iterations} iterations; the matrix products of an "
        f"iteration: {floors['bf16'][1]:.0f} GFLOP"
    )
    base = statistics.median(t for _, t in timings[next(iter(timings))])
    seconds = {label: statistics.median(s for s, _ in values) for label, values in timings.items()}
    floor = {label[:3]: s for label, s in seconds.items()}
    print(
        f"| path | s/iteration | target tokens/s | vs {next(iter(timings))[:3]} | vs its floor | rounds (s/iteration) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for label, values in timings.items():
        rate = statistics.median(t for _, t in values)
        rounds = " ".join(f"{s:.3f}" for s, _ in values)
        above = f"{seconds[label] / floor[floor_of[label[:3]]]:.2f}x" if label[:3] in floor_of else ""
        print(f"| {label} | {seconds[label]:.3f} | {rate:,.0f} | {rate / base:.2f}x | {above} | {rounds} |")
    if options.breakdown:
        breakdown(packed_step(auto), plain, options.warmup)
    if options.parity_iterations:
        precision_parity(args, vocab, examples, val, options.parity_iterations, device, auto)


if __name__ == "__main__":
    main()
