"""Export a checkpoint as a bot that runs without this repository: ONNX (no PyTorch needed, down
to a browser tab), TorchScript, or torch.export.

    python convert_to_torchscript.py --method onnx                 # checkpoints/onnx/: python checkpoints/onnx/chat.py
    python convert_to_torchscript.py --method onnx --quantize int8 # ... with int8 graphs beside the fp32 ones
    python convert_to_torchscript.py --method web                  # checkpoints/web/: a static page, no server
    python convert_to_torchscript.py                               # traced TorchScript: checkpoints/model_traced.pt
    python convert_to_torchscript.py --method script --benchmark   # scripted, with eager-vs-TorchScript latency
    python convert_to_torchscript.py --method export               # torch.export programs (.pt2)
    python convert_to_torchscript.py --method aoti                 # ... compiled by AOTInductor (a C++ compiler)

The ONNX folder holds the encoder and the decoder step as ONNX graphs, bot.json (vocabulary,
max_length, context) and a runtime that needs only `pip install onnxruntime numpy`: copied
anywhere, `python FOLDER/chat.py` talks as chat.py does, and `from bot import Bot` answers in
Python. The web folder is the same plus a page that runs the graphs with onnxruntime-web (from
its npm package: `npm ci`): `python -m http.server` in it, or any static host, serves a bot that
answers in the tab. A TorchScript file holds the model, the vocabulary and the normalisation:
torch.jit.load(path).reply("hi") answers in any process (or from C++ libtorch); TorchScript is
deprecated in PyTorch 2.x, and every torch.jit call warns so. --method export writes the encoder
and the decoder step as torch.export programs (the search loop and the text handling stay in
Python there); --method aoti compiles them with AOTInductor. Every bot keeps the conversation of a model trained with context, as chat.py
does. Every export is checked: its replies must equal the eager model's greedy replies on
--prompts prompts (for a context model, said as conversations of CONVERSATION turns each);
int8 reports the share that stays the same.
"""

import seq2seq  # noqa: F401, I001  (first: from here on Ctrl-C is one line, see its __init__)
import statistics
import warnings
from pathlib import Path

import torch

from seq2seq.checkpoint import CheckpointError, load_for_inference, trained_max_length
from seq2seq.checkpoint import context as checkpoint_context
from seq2seq.cli import ArgumentParser, fail, first_line, positive_int
from seq2seq.cornell import CorpusError, read_pairs
from seq2seq.decoding import Conversation, DecodeSettings
from seq2seq.export import build_bot, export_parts
from seq2seq.files import FolderError, atomic_path, check_replaceable, ensure_space, remove_stale_temporaries
from seq2seq.onnx_export import (
    ORT_WEB,
    WebBotError,
    is_bot_folder,
    load_runtime,
    onnxruntime_web,
    write_onnx_bot,
)
from seq2seq.profiling import reply_times
from seq2seq.vocab import detokenize, last_turn, normalize, random_sentences

METHODS = ("onnx", "web", "export", "aoti", "trace", "script")
DEFAULT_OUTPUT = {"onnx": "checkpoints/onnx", "web": "checkpoints/web", "trace": "checkpoints/model_traced.pt",
                  "script": "checkpoints/model_scripted.pt", "export": "checkpoints/model_exported.pt2",
                  "aoti": "checkpoints/model_aoti.pt2"}  # fmt: skip
LABELS = {"onnx": "ONNX Runtime", "web": "ONNX Runtime", "trace": "TorchScript (traced)",
          "script": "TorchScript (scripted)", "export": "torch.export", "aoti": "AOTInductor"}  # fmt: skip


CONVERSATION = 5  # turns of each conversation the parity check holds with a context model


def prompts_for(path: str, count: int, vocab) -> list[str]:
    """Queries from the test file when there is one, topped up with random sentences."""
    queries = [last_turn(query) for query, _ in read_pairs(path)][:count] if Path(path).exists() else []
    return queries + random_sentences(vocab.index_to_word[4:], count - len(queries))


def median_ms(reply, prompts: list[str]) -> float:
    return statistics.median(reply_times(reply, prompts))


class ParityError(Exception):
    """An fp32 export whose replies differ from the eager model's: refused, nothing written."""


def main() -> None:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-path", default="checkpoints/best_model.pth", help="checkpoint to export")
    p.add_argument("--method", choices=METHODS, default="trace",
                   help="onnx: a folder that runs without PyTorch; web: the same, with a page that runs in a browser; "
                   "export: torch.export programs; aoti: the same compiled by AOTInductor; trace or script: "
                   "TorchScript, deprecated (the search loop is always scripted)")  # fmt: skip
    p.add_argument("--output-path", help="default: " + ", ".join(DEFAULT_OUTPUT.values()))
    p.add_argument("--quantize", choices=("none", "int8"), default="none",
                   help="int8: dynamic quantisation of the matrix products' weights (TorchScript: also the GRUs'; "
                   "ONNX: int8 graphs beside the fp32 ones, which the web page then loads)")  # fmt: skip
    p.add_argument(
        "--prompts", type=positive_int, default=200, help="prompts for the parity check and timing"
    )
    p.add_argument(
        "--test-data", default="data/test.txt", help="where prompts come from (random ones if missing)"
    )
    p.add_argument("--onnxruntime-web", default=ORT_WEB, metavar="PATH",
                   help="onnxruntime-web's dist/ folder, which --method web copies from (npm ci installs it)")  # fmt: skip
    p.add_argument("--benchmark", action="store_true", help="time eager against exported replies")
    args = p.parse_args()
    int8 = args.quantize == "int8"
    if int8 and args.method in ("export", "aoti"):
        fail("--quantize int8 goes with --method onnx, web, trace or script")
    warnings.filterwarnings("ignore", message=".*TorchScript.*deprecated.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # torch.export notices nn.GRU re-listing its own weights (_flat_weights): not the user's to fix
    warnings.filterwarnings("ignore", message=r".*_flat_weights.*were assigned during export.*")
    # ... and torch's GRU while_loop calling a check it plans to rename
    warnings.filterwarnings("ignore", message=r".*_check_is_size will be removed.*", category=FutureWarning)
    # ... and AOTInductor unpickling its own tree specs
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated.*", category=FutureWarning)
    try:
        # the exported bot runs on the CPU, in fp32
        model, vocab, checkpoint = load_for_inference(args.model_path, "cpu", "fp32")
        prompts = prompts_for(args.test_data, args.prompts, vocab)
        web = onnxruntime_web(args.onnxruntime_web) if args.method == "web" else None
    except (CheckpointError, CorpusError, WebBotError) as error:
        fail(str(error))
    max_length, context = trained_max_length(checkpoint), checkpoint_context(checkpoint)
    output = Path(args.output_path or DEFAULT_OUTPUT[args.method])
    if args.method in ("onnx", "web"):
        try:
            check_replaceable(output, is_bot_folder)  # before the work, not after
        except FolderError as error:
            fail(str(error))
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

    def check(bot, name: str = "", exact: bool = True) -> int:
        """Replies identical to eager; an fp32 export that differs is refused before it is kept."""
        replies = conversation(bot.reply, bot.reset)
        same = sum(got == expected for got, expected in zip(replies, reference))
        print(f"parity{name}: {same}/{len(prompts)} replies identical to the eager fp32 model")
        if exact and same != len(prompts):
            raise ParityError(
                f"the export differs from the eager model on {len(prompts) - same} prompts; nothing written"
            )
        return same

    def check_folder(folder: Path) -> None:
        runtime = load_runtime(folder)
        check(runtime.Bot(folder))
        if int8:
            check(runtime.Bot(folder, int8=True), " (int8)", exact=False)

    reference = conversation(eager, said.reset)
    try:
        remove_stale_temporaries(output.parent)
        weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        copies = 4 if args.method in ("onnx", "web") else 2  # encoder and step, fp32 and int8
        ensure_space(output.parent, copies * weights + 2**20 + (2**25 if web else 0))
        if args.method in ("onnx", "web"):
            write_onnx_bot(model, vocab, max_length, context, output, int8, check_folder, web)
            bot = load_runtime(output).Bot(output, int8=int8) if args.benchmark else None
            written = f"{output}/ (python {output}/chat.py" + (
                f"; the page: cd {output} && python -m http.server)" if web else ")"
            )
        elif args.method in ("export", "aoti"):
            bot = export_parts(
                model, vocab, max_length, output, context, check, compiled=args.method == "aoti"
            )
            written = f"{output.with_suffix('.encoder.pt2')} and {output.with_suffix('.step.pt2')}"
        else:
            with atomic_path(output) as tmp:
                build_bot(model, vocab, max_length, args.method, int8, context).save(str(tmp))
                bot = torch.jit.load(str(tmp))  # check the file, not the object in memory
                check(bot, exact=not int8)
            written = str(output) + (" (GRU and linear layers quantised to int8)" if int8 else "")
    except (FolderError, ParityError) as error:
        fail(str(error))
    except OSError as error:
        fail(f"cannot write {output}: {error.strerror or error}")
    except Exception as error:  # an exporter's own limitation: say exactly what failed
        fail(f"{args.method} failed ({type(error).__name__}): {first_line(error, limit=300)}")
    print(f"wrote {written}")
    if args.benchmark:
        eager_ms, exported_ms = median_ms(eager, prompts), median_ms(bot.reply, prompts)
        name = LABELS[args.method] + (" int8" if int8 else "")
        print(f"\n| device | eager ms | {name} ms | speed-up |\n| --- | --- | --- | --- |")
        print(f"| cpu | {eager_ms:.2f} | {exported_ms:.2f} | {eager_ms / exported_ms:.2f}x |")
        print(
            "(median over the prompts, batch 1, greedy, after warm-up; CUDA is not covered: the bot runs on the CPU)"
        )


if __name__ == "__main__":
    main()
