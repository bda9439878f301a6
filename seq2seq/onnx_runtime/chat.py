"""Talk to the exported bot, with ONNX Runtime and NumPy only (no PyTorch, no repository):

    python chat.py                  # a prompt; /reset starts a new conversation, /quit leaves
    printf 'hello\nhow are you?\n' | python chat.py      # exactly one reply line per input line
    python chat.py --int8 --beam-size 5

Piped, the lines are one conversation (for a model trained with context) and a blank line starts
a new one; notes (what was cut, unknown words) go to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from bot import Bot
except ImportError as missing:  # onnxruntime or numpy: all the bot needs
    print(f"error: {missing.name} is not installed here: pip install onnxruntime numpy", file=sys.stderr)
    raise SystemExit(1) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--int8", action="store_true", help="the int8 graphs (exported with --quantize int8)")
    parser.add_argument("--beam-size", type=int, default=1, help="1: greedy; more: beam search")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime's threads (0: every core)")
    args = parser.parse_args()
    if args.beam_size < 1 or args.threads < 0:
        parser.error("--beam-size must be at least 1 and --threads at least 0")
    try:
        bot = Bot(Path(__file__).resolve().parent, args.int8, args.beam_size, args.threads)
    except Exception as error:  # a damaged or missing file: one line, not a traceback
        fail(f"cannot load the bot: {first_line(error)}")
    try:
        if sys.stdin.isatty():
            print("Talk to the bot. /reset starts a new conversation, /quit leaves.", file=sys.stderr)
            while True:
                try:
                    line = input("you> ")
                except EOFError:
                    break
                command = line.strip().lower()
                if command in ("/quit", "/q", "quit", "q", "exit"):
                    break
                if command == "/reset":
                    bot.reset()
                    print("new conversation: earlier turns forgotten")
                    continue
                if command.startswith("/"):
                    print("commands: /reset (a new conversation), /quit")
                    continue
                reply, notes = bot.respond(line)
                for note in notes:
                    print(f"  ({note})")
                if reply:
                    print(f"bot> {reply}")
        else:
            sys.stdin.reconfigure(errors="replace")
            for number, line in enumerate(sys.stdin, start=1):
                if not line.strip():
                    bot.reset()
                reply, notes = bot.respond(line.rstrip("\n"))
                for note in notes:
                    print(f"line {number}: {note}", file=sys.stderr)
                print(reply, flush=True)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:
        sys.stderr.close()
    except Exception as error:  # ONNX Runtime failing on graphs that load but do not fit together
        fail(f"the bot failed: {first_line(error)}")


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)


if __name__ == "__main__":
    main()
