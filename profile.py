"""Profile a checkpoint with torch.profiler: each part's share of a training step or a reply.

    python profile.py                                  # best_model.pth, training and inference
    python profile.py --mode train --steps 10 --trace-path checkpoints/profile/train.json \\
        --report checkpoints/profile/report.md

This file shares its name with the standard library's `profile` module. Scripts run with the
repository root first on sys.path, so `import profile` anywhere (cProfile does it, and
`torch.compile` imports cProfile) would load this file instead. When imported rather than run,
it therefore replaces itself with the standard library's module and does nothing else.
"""

import sys
from pathlib import Path

if __name__ != "__main__":
    import importlib.util
    import sysconfig

    _spec = importlib.util.spec_from_file_location(
        "profile", Path(sysconfig.get_paths()["stdlib"]) / "profile.py"
    )
    _stdlib_profile = importlib.util.module_from_spec(_spec)
    sys.modules["profile"] = _stdlib_profile  # what the importer receives
    _spec.loader.exec_module(_stdlib_profile)


def train_work(model, batch):
    """One teacher-forced training step with the default recipe's optimizer settings, in fp32
    (the weights change in memory only)."""
    from seq2seq.config import DEFAULT_RECIPE, RECIPES
    from seq2seq.training import TrainStep, make_optimizer

    recipe = RECIPES[DEFAULT_RECIPE]
    optimizer = make_optimizer(
        model, recipe["optimizer"], recipe["learning_rate"], recipe["decoder_learning_ratio"]
    )
    step = TrainStep(model.train(), optimizer, recipe["clip"], label_smoothing=recipe["label_smoothing"])
    return lambda: step(batch, teacher_forcing=True)


def inference_work(model, batch, checkpoint):
    """Greedy replies to the whole batch, as evaluate.py generates them."""
    from seq2seq.checkpoint import trained_max_length
    from seq2seq.decoding import DecodeSettings, decode

    settings = DecodeSettings(max_length=trained_max_length(checkpoint))
    device = next(model.parameters()).device
    return lambda: decode(model, batch.src.to(device), batch.lengths, settings)


def main() -> None:

    from seq2seq.batching import encode_pairs, iterate_batches
    from seq2seq.checkpoint import CheckpointError, context, load_for_inference
    from seq2seq.cli import ArgumentParser, fail, positive_int
    from seq2seq.cornell import CorpusError, read_pairs
    from seq2seq.devices import DeviceError, huge_pages_for_tensors
    from seq2seq.files import write_text_atomic
    from seq2seq.profiling import format_report, plot_breakdown, run_profile
    from seq2seq.vocab import random_sentences

    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-path", default="checkpoints/best_model.pth", help="checkpoint to profile")
    p.add_argument("--mode", choices=("inference", "train", "both"), default="both", help="what to profile")
    p.add_argument(
        "--steps", type=positive_int, default=5, help="profiled steps (after a skipped and a warm-up step)"
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=64, help="pairs in a training batch or a reply batch"
    )
    p.add_argument(
        "--data",
        default="data/val.txt",
        help="pairs to feed, with their earlier turns for a context model (random ones when the file is missing)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto", help="where to run")
    p.add_argument("--trace-path",
                   help="write a Chrome/Perfetto trace (JSON) of the last mode profiled here (default: none)")  # fmt: skip
    p.add_argument("--report", help="also write the markdown report here (default: printed only)")
    p.add_argument("--with-stack", action="store_true", help="record Python stacks (slower; for the trace)")
    p.add_argument(
        "--plot", default="checkpoints/profile/profile_breakdown.png", help="bar chart of the shares"
    )
    args = p.parse_args()
    huge_pages_for_tensors()  # the step train.py runs, with its allocator
    try:
        model, vocab, checkpoint = load_for_inference(args.model_path, args.device, "fp32")
        if Path(args.data).exists():
            pairs = read_pairs(args.data)
        else:
            print(f"{args.data} not found: profiling on random sentences", file=sys.stderr)
            queries = random_sentences(vocab.index_to_word[4:], 2 * args.batch_size)
            pairs = list(zip(queries[::2], queries[1::2]))
        if not pairs:
            fail(f"{args.data} holds no pairs")
        reads = context(checkpoint)  # sources as the model was trained on them
        examples = encode_pairs(pairs[: args.batch_size], vocab, context=reads)
        batch = iterate_batches(examples, args.batch_size)[0]
        profiles = []
        modes = ["train", "inference"] if args.mode == "both" else [args.mode]
        for mode in modes:
            trace = args.trace_path if mode == modes[-1] else None
            work = train_work(model, batch) if mode == "train" else inference_work(model, batch, checkpoint)
            profiles.append(run_profile(mode, work, model, args.steps, trace, args.with_stack))
        title = f"{args.model_path}, batch {batch.src.size(0)}"
        if reads.turns:
            title += f", up to {reads.turns} earlier turns (sources of up to {batch.src.size(1)} tokens)"
        report = format_report(profiles, title)
        if args.report:
            write_text_atomic(args.report, report + "\n")
        plot_breakdown(profiles, args.plot)
    except (CheckpointError, CorpusError, DeviceError) as error:
        fail(str(error))
    except OSError as error:
        fail(f"cannot write: {error}")
    print(report)
    print(
        f"\nchart: {args.plot}" + (f", trace: {args.trace_path}" if args.trace_path else ""), file=sys.stderr
    )


if __name__ == "__main__":
    main()
