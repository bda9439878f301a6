"""Export a checkpoint as a bot that runs without this repository: TorchScript or torch.export.

    python convert_to_torchscript.py                               # traced: checkpoints/model_traced.pt
    python convert_to_torchscript.py --method script --benchmark   # scripted, with eager-vs-TorchScript latency
    python convert_to_torchscript.py --quantize int8               # int8 GRU and linear weights
    python convert_to_torchscript.py --method export               # torch.export programs (.pt2)

A TorchScript file holds the model, the vocabulary and the normalisation:
torch.jit.load(path).reply("hi") answers in any process (or from C++ libtorch), and
.forward(ids) maps an encoded query to the reply's ids. The bot of a model trained with context
keeps the conversation as chat.py does (reply() reads the last turns; .reset() forgets them). Note: TorchScript is deprecated in
PyTorch 2.x in favour of torch.export, and every torch.jit call warns so; --method export writes
the encoder and the decoder step as torch.export programs instead (the search loop and the text
handling stay in Python there). Every export is checked: its replies must equal the eager
model's greedy replies on --prompts prompts (for a context model, said as conversations of
CONVERSATION turns each).
"""

import seq2seq  # noqa: F401, I001  (first: from here on Ctrl-C is one line, see its __init__)
import time
import warnings
from pathlib import Path

import torch

from seq2seq.checkpoint import CheckpointError, load_for_inference, trained_max_length
from seq2seq.checkpoint import context as checkpoint_context
from seq2seq.cli import ArgumentParser, fail, first_line, positive_int
from seq2seq.cornell import CorpusError, read_pairs
from seq2seq.decoding import Conversation, DecodeSettings
from seq2seq.export import build_bot, export_parts
from seq2seq.files import FolderError, atomic_path, ensure_space, remove_stale_temporaries
from seq2seq.vocab import detokenize, last_turn, normalize, random_sentences

DEFAULT_OUTPUT = {"trace": "checkpoints/model_traced.pt", "script": "checkpoints/model_scripted.pt",
                  "export": "checkpoints/model_exported.pt2"}  # fmt: skip


CONVERSATION = 5  # turns of each conversation the parity check holds with a context model


def prompts_for(path: str, count: int, vocab) -> list[str]:
    """Queries from the test file when there is one, topped up with random sentences."""
    queries = [last_turn(query) for query, _ in read_pairs(path)][:count] if Path(path).exists() else []
    return queries + random_sentences(vocab.index_to_word[4:], count - len(queries))


def median_ms(reply, prompts: list[str], warmup: int = 5) -> float:
    for prompt in prompts[:warmup]:
        reply(prompt)
    times = []
    for prompt in prompts:
        start = time.perf_counter()
        reply(prompt)
        times.append((time.perf_counter() - start) * 1000)
    return sorted(times)[len(times) // 2]


def main() -> None:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-path", default="checkpoints/best_model.pth", help="checkpoint to export")
    p.add_argument("--method", choices=("trace", "script", "export"), default="trace",
                   help="trace or script the network (the search loop is always scripted), or torch.export it")  # fmt: skip
    p.add_argument(
        "--output-path", help="default: checkpoints/model_traced.pt, _scripted.pt or _exported.pt2"
    )
    p.add_argument("--quantize", choices=("none", "int8"), default="none",
                   help="int8: dynamic quantisation of the GRU and linear layers before export")  # fmt: skip
    p.add_argument(
        "--prompts", type=positive_int, default=200, help="prompts for the parity check and timing"
    )
    p.add_argument(
        "--test-data", default="data/test.txt", help="where prompts come from (random ones if missing)"
    )
    p.add_argument("--benchmark", action="store_true", help="time eager against exported replies")
    args = p.parse_args()
    int8 = args.quantize == "int8"
    if int8 and args.method == "export":
        fail("--quantize int8 goes with --method trace or script")
    warnings.filterwarnings("ignore", message=".*TorchScript.*deprecated.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # torch.export notices nn.GRU re-listing its own weights (_flat_weights): not the user's to fix
    warnings.filterwarnings("ignore", message=r".*_flat_weights.*were assigned during export.*")
    try:
        # the exported bot runs on the CPU, in fp32
        model, vocab, checkpoint = load_for_inference(args.model_path, "cpu", "fp32")
        prompts = prompts_for(args.test_data, args.prompts, vocab)
    except (CheckpointError, CorpusError) as error:
        fail(str(error))
    max_length, context = trained_max_length(checkpoint), checkpoint_context(checkpoint)
    output = Path(args.output_path or DEFAULT_OUTPUT[args.method])
    settings = DecodeSettings(max_length=max_length)
    said = Conversation(context)

    def eager(prompt: str) -> str:
        return detokenize(said.reply(model, vocab, normalize(prompt), settings))

    def conversation(reply, reset) -> list[str]:
        """Replies to the prompts, said in conversations of CONVERSATION turns."""
        replies = []
        for i, prompt in enumerate(prompts):
            if i % CONVERSATION == 0:
                reset()
            replies.append(reply(prompt))
        return replies

    def check(bot) -> int:
        """Replies identical to eager; an fp32 export that differs is refused before it is kept."""
        replies = conversation(bot.reply, bot.reset)
        same = sum(got == expected for got, expected in zip(replies, reference))
        print(f"parity: {same}/{len(prompts)} replies identical to the eager fp32 model")
        if not int8 and same != len(prompts):
            fail(f"the export differs from the eager model on {len(prompts) - same} prompts; nothing written")
        return same

    reference = conversation(eager, said.reset)
    try:
        remove_stale_temporaries(output.parent)
        weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        ensure_space(output.parent, 2 * weights + 2**20)  # the file, and the temporary beside it
        if args.method == "export":
            bot = export_parts(model, vocab, max_length, output, context)
            check(bot)
            written = f"{output.with_suffix('.encoder.pt2')} and {output.with_suffix('.step.pt2')}"
        else:
            with atomic_path(output) as tmp:
                build_bot(model, vocab, max_length, args.method, int8, context).save(str(tmp))
                bot = torch.jit.load(str(tmp))  # check the file, not the object in memory
                check(bot)
            written = str(output) + (" (GRU and linear layers quantised to int8)" if int8 else "")
    except FolderError as error:
        fail(str(error))
    except OSError as error:
        fail(f"cannot write {output}: {error.strerror or error}")
    except Exception as error:  # an exporter's own limitation: say exactly what failed
        fail(f"{args.method} failed ({type(error).__name__}): {first_line(error, limit=300)}")
    print(f"wrote {written}")
    if args.benchmark:
        eager_ms, exported_ms = median_ms(eager, prompts), median_ms(bot.reply, prompts)
        label = {
            "trace": "TorchScript (traced)",
            "script": "TorchScript (scripted)",
            "export": "torch.export",
        }
        name = label[args.method] + (" int8" if int8 else "")
        print(f"\n| device | eager ms | {name} ms | speed-up |\n| --- | --- | --- | --- |")
        print(f"| cpu | {eager_ms:.2f} | {exported_ms:.2f} | {eager_ms / exported_ms:.2f}x |")
        print(
            "(median over the prompts, batch 1, greedy, after warm-up; CUDA is not covered: the bot runs on the CPU)"
        )


if __name__ == "__main__":
    main()
