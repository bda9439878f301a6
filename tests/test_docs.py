"""The docs stay honest: in README.md and docs/**/*.md, every relative link and #anchor resolves, and
every command in a shell block names a script that exists, with flags that script's --help lists.

Docs drift silently as scripts gain, lose and rename flags; a reader who pastes a stale command gets
an error, and one who follows a stale link gets nothing. The checker reads whatever Markdown exists
(docs/ may be half-written), and its self-tests below run it on made-up text so it cannot pass
everything by parsing nothing.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.helpers import ENV, ROOT

# Scripts that exist only once a command writes them, by the repository file each is a verbatim copy
# of, then the files the copy sits beside (seq2seq.onnx_export.write_onnx_bot: chat.py imports
# bot.py, which imports vocab.py), so that their --help is asked of the same code.
GENERATED_SCRIPTS = {
    "checkpoints/onnx/chat.py": (
        "seq2seq/onnx_runtime/chat.py",
        "seq2seq/onnx_runtime/bot.py",
        "seq2seq/vocab.py",
    ),
}
# Scripts that pass the flags they do not know to another script, which must know them.
PASSES_ON = {"sweep.py": "train.py"}  # every trial's train.py
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
HELP_TIMEOUT = 60  # seconds; a script's --help imports torch (~2 s), slower beside a training run

FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([^`\s]*)")
ATX_HEADING = re.compile(r"^ {0,3}#{1,6}(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
SETEXT_UNDERLINE = re.compile(r"^ {0,3}(?:=+|-+)[ \t]*$")
NOT_A_PARAGRAPH = re.compile(r"^\s*(?:$|[-*+>|#]|\d+[.)])")  # blank, list item, quote, table, heading
CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)")
HTML_ANCHOR = re.compile(r"<[A-Za-z][^>]*?\s(?:id|name)\s*=\s*[\"']([^\"']+)[\"']")
INLINE_LINK = re.compile(
    r"\]\(\s*(?:<([^>\n]*)>|((?:[^\s()\\]|\\.|\([^\s()]*\))*))(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)"
)
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]^][^\]]*\]:\s*(?:<([^>]*)>|(\S+))")
HTML_LINK = re.compile(r"<(?:a|img|source)\b[^>]*?\s(?:href|src)\s*=\s*[\"']([^\"']*)[\"']", re.IGNORECASE)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:|^//")  # http:, https:, mailto:, ...: not a file here

OPERATOR = re.compile(r"&&|\|\||;;|\|&|&>>|&>|>>|>&|<&|<<<|<<|[();|&<>]")
REDIRECTIONS = {">", ">>", "<", ">&", "<&", "&>", "&>>", "<<", "<<<"}
DOUBLE_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
ASSIGNMENT = re.compile(r"[A-Za-z_]\w*=")
PYTHON = re.compile(r"python[\d.]*")
WRAPPERS = {"time", "nohup", "exec", "env"}
TORCHRUN_MODULES = {"torch.distributed.run", "torch.distributed.launch"}
FLAG = re.compile(r"(--[A-Za-z0-9][\w.-]*)(?:=.*)?", re.DOTALL)
HELP_OPTION_LINE = re.compile(r"^ {2}(-\S.*?)(?: {2,}|$)", re.MULTILINE)


# --- Markdown ---------------------------------------------------------------------------------------


@dataclass
class Block:
    """A fenced code block: its language (the info string's first word) and its numbered lines."""

    language: str
    lines: list[tuple[int, str]] = field(default_factory=list)


def split_markdown(text: str) -> tuple[list[tuple[int, str]], list[Block]]:
    """The prose lines and the fenced blocks, numbered from 1, so that code is never read as links
    or headings and prose never as commands."""
    prose: list[tuple[int, str]] = []
    blocks: list[Block] = []
    closing: re.Pattern[str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if closing is None:
            opening = FENCE.match(line)
            if opening:
                fence = opening.group(1)
                closing = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
                blocks.append(Block(opening.group(2).lower()))
            else:
                prose.append((number, line))
        elif closing.match(line):
            closing = None
        else:
            blocks[-1].lines.append((number, line))
    return prose, blocks


def heading_text(raw: str) -> str:
    """What a heading renders as, the text GitHub slugs: code spans' contents verbatim, links' and
    images' text, no tags, emphasis markers or backslash escapes."""
    spans: list[str] = []

    def hide(match: re.Match[str]) -> str:
        content = match.group(2)
        if content.startswith(" ") and content.endswith(" ") and content.strip():
            content = content[1:-1]
        spans.append(content)
        return f"\x00{len(spans) - 1}\x00"

    text = CODE_SPAN.sub(hide, raw)
    text = re.sub(r"!?\[([^\]]*)\](?:\([^)]*\)|\[[^\]]*\])", r"\1", text)
    text = re.sub(r"<[^>\x00]+>", "", text)
    text = re.sub(r"(?<![\w\\])_+|(?<!\\)_+(?!\w)", "", text)  # _emphasis_, __strong__; not snake_case
    text = html.unescape(re.sub(r"\\(?=[!-/:-@\[-`{-~])", "", text))
    return re.sub(r"\x00(\d+)\x00", lambda match: spans[int(match.group(1))], text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercased, characters other than letters, digits, `_`, `-`
    and spaces dropped, each space a hyphen (the uniqueness suffix is added by `anchors`)."""
    return re.sub(r"[^\w\- ]", "", heading_text(heading).strip().lower()).replace(" ", "-")


def headings(prose: list[tuple[int, str]]) -> Iterator[str]:
    """The raw text of each ATX (`## x`) and setext (`x` over `---`) heading, in order."""
    previous: tuple[int, str] = (0, "")
    for number, line in prose:
        atx = ATX_HEADING.match(line)
        if atx:
            yield atx.group(1) or ""
        elif (
            SETEXT_UNDERLINE.match(line)
            and previous[0] == number - 1
            and not NOT_A_PARAGRAPH.match(previous[1])
        ):
            yield previous[1].strip()
        previous = (number, "" if atx else line)


@cache
def anchors(path: Path) -> frozenset[str]:
    """The #fragments a rendered Markdown file answers to: its headings' slugs (a repeated one gets
    -1, -2, ...) and explicit `<a id=...>` / `<a name=...>` anchors."""
    prose, _ = split_markdown(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in headings(prose):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(f"{base}-{count}" if count else base)
    found.update(match.group(1) for _, line in prose for match in HTML_ANCHOR.finditer(line))
    return frozenset(found)


def links(prose: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """(line, destination) of each inline link or image, reference definition and HTML href/src;
    code spans are skipped, as GitHub renders them as text."""
    for number, line in prose:
        text = CODE_SPAN.sub(" ", line)
        for match in INLINE_LINK.finditer(text):
            yield number, match.group(1) if match.group(1) is not None else match.group(2)
        for pattern in (REFERENCE_DEFINITION, HTML_LINK):
            for match in pattern.finditer(text):
                yield number, next(group for group in match.groups() if group is not None)


@cache
def git_ignored(path: Path) -> bool:
    """Whether git ignores `path` (data/, checkpoints/...): a link there works only on this machine.
    Outside a git repository nothing is."""
    done = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=path.parent, capture_output=True)
    return done.returncode == 0


def link_problem(doc: Path, root: Path, destination: str) -> str | None:
    """Why a link from `doc` leads nowhere (None if it resolves): paths are relative to the
    document's folder (or, starting with `/`, to the repository), anchors must be among the target
    Markdown's anchors."""
    if SCHEME.match(destination):
        return None
    path, _, anchor = (unquote(part) for part in destination.partition("#"))
    if not path and not anchor and "#" not in destination:
        return "an empty link"
    target = (
        Path(os.path.normpath((root if path.startswith("/") else doc.parent) / path.lstrip("/")))
        if path
        else doc
    )
    if not target.is_relative_to(root):
        return "points outside the repository"
    where = target.relative_to(root).as_posix()
    if not target.exists():
        return f"no such file or folder {where}"
    if git_ignored(target):
        return f"{where} is ignored by git: it exists on this machine only"
    if anchor and target.suffix.lower() in (".md", ".markdown") and anchor not in anchors(target):
        return f"{where} has no heading or anchor #{anchor}"
    return None


def link_problems(doc: Path, root: Path) -> list[str]:
    """Every link of `doc` that leads nowhere, as `file:line: (destination): why`."""
    prose, _ = split_markdown(doc.read_text(encoding="utf-8"))
    name = doc.relative_to(root).as_posix()
    problems = []
    for number, destination in links(prose):
        problem = link_problem(doc, root, destination)
        if problem:
            problems.append(f"{name}:{number}: ({destination}): {problem}")
    return problems


# --- Shell ------------------------------------------------------------------------------------------


class Operator(str):
    """A control or redirection operator, told apart from a quoted word that reads the same (`';'`)."""


def shell_words(line: str) -> list[str]:
    """Bash's words and operators of one logical line, quotes removed; ValueError on an unclosed quote.
    As much of bash as docs need: no expansions, and `#` starts a comment only at a word's start."""
    tokens: list[str] = []
    word: list[str] | None = None
    i = 0
    while i < len(line):
        char = line[i]
        operator = OPERATOR.match(line, i)
        if char in " \t\n" or operator:
            if word is not None:
                tokens.append("".join(word))
                word = None
            if operator:
                tokens.append(Operator(operator.group()))
                i = operator.end()
                continue
        elif char == "#" and word is None:
            break
        else:
            word = [] if word is None else word
            if char == "\\":
                word.append(line[i + 1 : i + 2])
                i += 1
            elif char == "'":
                end = line.find("'", i + 1)
                if end < 0:
                    raise ValueError("unclosed '")
                word.append(line[i + 1 : end])
                i = end
            elif char == '"':
                quoted = DOUBLE_QUOTED.match(line, i)
                if not quoted:
                    raise ValueError('unclosed "')
                word.append(re.sub(r'\\([$`"\\])', r"\1", quoted.group(1)))
                i = quoted.end() - 1
            else:
                word.append(char)
        i += 1
    if word is not None:
        tokens.append("".join(word))
    return tokens


def shell_commands(block: Block) -> Iterator[tuple[int, str, list[str] | None]]:
    """(first line, text, words) of each logical command line of a shell block: backslash
    continuations joined, a quote left open carried to the next line (words None if it never
    closes), a `$ ` prompt dropped; in a console block only prompted lines are commands."""
    pending: tuple[int, str] | None = None
    for number, line in block.lines:
        if pending is None:
            prompted = line.lstrip().startswith("$ ")
            if block.language == "console" and not prompted:
                continue  # the output of the command above
            start, text = number, line.lstrip()[2:] if prompted else line
        else:
            start, text = pending[0], f"{pending[1]}\n{line}"
        if (len(text) - len(text.rstrip("\\"))) % 2:
            pending = (start, text[:-1])
            continue
        try:
            words: list[str] | None = shell_words(text)
        except ValueError:
            pending = (start, text)
            continue
        pending = None
        yield start, text, words
    if pending is not None:
        yield pending[0], pending[1], None


@dataclass(frozen=True)
class Script:
    """How to ask a script for its --help: Python's arguments, run in `cwd` (both relative to the
    repository); a generated script's source is first copied beside the files in `beside`.
    `snake_case`: it also takes `--snake_case` for each `--kebab-case` flag, as the repository's
    scripts do (seq2seq.cli.ArgumentParser) and a generated one, run without the repository, does not."""

    argv: tuple[str, ...]
    cwd: str = "."
    beside: tuple[str, ...] = ()
    snake_case: bool = True


@dataclass(frozen=True)
class Invocation:
    """A Python script a shell block runs: its line, the command, the script as written, and either
    what to ask for --help with the `--flags` given, or why it cannot run (`error`)."""

    line: int
    command: str
    written: str
    script: Script | None = None
    flags: tuple[str, ...] = ()
    error: str | None = None


def python_target(words: list[str]) -> tuple[str, str, list[str]] | None:
    """("file" or "module", what, its arguments) if a simple command runs Python on a script or module
    (`python X.py`, `.venv/bin/python -u X.py`, `python -m a.b`, `torchrun [options] X.py`)."""
    program = Path(words[0]).name
    if program == "torchrun":
        scripts = [
            i for i, word in enumerate(words) if i and word.endswith(".py") and not word.startswith("-")
        ]
        return ("file", words[scripts[0]], words[scripts[0] + 1 :]) if scripts else None
    if not PYTHON.fullmatch(program):
        return None
    i = 1
    while i < len(words) and words[i].startswith("-") and words[i] != "-":
        if words[i] == "-c" or (words[i] == "-m" and i + 1 == len(words)):
            return None
        if words[i] == "-m":
            if words[i + 1] in TORCHRUN_MODULES:
                return python_target(["torchrun", *words[i + 2 :]])
            return "module", words[i + 1], words[i + 2 :]
        i += 2 if words[i] in ("-W", "-X") else 1
    return ("file", words[i], words[i + 1 :]) if i < len(words) else None


def resolve(kind: str, written: str, cwd: Path, root: Path) -> Script | str | None:
    """The Script to ask for --help, why there is none (a string), or None when the target is not
    this repository's to check: a module not in it (pytest, http.server, venv), a path known only at
    run time (`$SCRIPT`), or a file outside it (another checkout)."""
    if kind == "module":
        top = cwd / written.split(".")[0]
        if not cwd.is_relative_to(root) or not (top.is_dir() or top.with_suffix(".py").is_file()):
            return None
        module = cwd.joinpath(*written.split("."))
        if not (module.with_suffix(".py").is_file() or (module / "__main__.py").is_file()):
            return f"no such module {written} (no {module.relative_to(root).as_posix()}.py)"
        return Script(("-m", written), cwd.relative_to(root).as_posix())
    if re.search(r"[$`*?]", written) or written.startswith("~") or not written.endswith(".py"):
        return None
    path = Path(os.path.normpath(cwd / written))
    if not path.is_relative_to(root):
        return None
    where = path.relative_to(root).as_posix()
    if where in GENERATED_SCRIPTS:
        source, *beside = GENERATED_SCRIPTS[where]
        return Script((source,), beside=tuple(beside), snake_case=False)
    return Script((where,)) if path.is_file() else f"no such script {where}"


def simple_commands(words: list[str], root: Path) -> Iterator[tuple[list[str], Path | None]]:
    """Each simple command of a line (split at `&&`, `||`, `;`, `|`, `&` and subshell parentheses),
    redirections, leading `VAR=value`s and wrappers (`time`, `env`) removed, with the folder it runs
    in: `cd X` moves the rest of the line (a subshell's only until its `)`); None when unknown."""
    cwd: Path | None = root
    saved: list[Path | None] = []
    command: list[str] = []
    for token in [*words, Operator(";")]:
        if not isinstance(token, Operator) or token in REDIRECTIONS:
            command.append(token)
            continue
        plain = [word for i, word in enumerate(command) if not _redirected(command, i)]
        while plain and (ASSIGNMENT.match(plain[0]) or plain[0] in WRAPPERS):
            plain.pop(0)
        if plain and plain[0] == "cd":
            known = cwd is not None and len(plain) == 2 and not re.search(r"[$`~*?]", plain[1])
            cwd = Path(os.path.normpath(cwd / plain[1])) if known and cwd is not None else None
        elif plain:
            yield plain, cwd
        if token == "(":
            saved.append(cwd)
        elif token == ")" and saved:
            cwd = saved.pop()
        command = []


def _redirected(command: list[str], i: int) -> bool:
    """Whether command[i] is a redirection operator or its target, neither an argument."""
    return isinstance(command[i], Operator) or (i > 0 and isinstance(command[i - 1], Operator))


def invocations(doc: Path, root: Path) -> Iterator[Invocation]:
    """Every Python script the shell blocks of `doc` run, in order."""
    _, blocks = split_markdown(doc.read_text(encoding="utf-8"))
    for block in blocks:
        if block.language not in SHELL_LANGUAGES:
            continue
        for number, text, words in shell_commands(block):
            command = " ".join(text.split())
            if words is None:
                yield Invocation(number, command, "", error="a quote is never closed")
                continue
            for plain, cwd in simple_commands(words, root):
                target = python_target(plain)
                if target is None or cwd is None:
                    continue
                kind, written, arguments = target
                script = resolve(kind, written, cwd, root)
                if isinstance(script, str):
                    yield Invocation(number, command, written, error=script)
                elif script is not None:
                    given = []
                    for argument in arguments:
                        if argument == "--":
                            break
                        flag = FLAG.fullmatch(argument)
                        if flag:
                            given.append(flag.group(1))
                    yield Invocation(number, command, written, script, tuple(given))


def help_options(text: str) -> frozenset[str]:
    """The --options an argparse help lists: the long flags on its option lines (indented two
    spaces), not ones its descriptions mention (chat.py's help names convert's --quantize)."""
    return frozenset(
        flag
        for line in HELP_OPTION_LINE.finditer(text)
        for flag in re.findall(r"(?<![\w-])--\w[\w-]*", line.group(1))
    )


@cache
def script_options(script: Script, root: Path) -> frozenset[str] | str:
    """The --options `python ARGV --help` lists (with those of the script it passes others on
    to), or why it listed none (it failed or hung). Cached for the session: each run imports torch."""
    argv = list(script.argv)
    with tempfile.TemporaryDirectory() as folder:
        if script.beside:  # the generated folder, as the command that writes it lays it out
            for name in (argv[0], *script.beside):
                shutil.copy(root / name, folder)
            argv[0] = str(Path(folder) / Path(argv[0]).name)
        shown = " ".join(["python", *script.argv, "--help"])
        try:
            done = subprocess.run([sys.executable, *argv, "--help"], cwd=root / script.cwd, env=ENV,
                                  capture_output=True, text=True, timeout=HELP_TIMEOUT)  # fmt: skip
        except subprocess.TimeoutExpired:
            return f"`{shown}` ran over {HELP_TIMEOUT} s"
    if done.returncode:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        return f"`{shown}` failed (exit {done.returncode}): {last}"
    passed = PASSES_ON.get(script.argv[0])
    other = script_options(Script((passed,)), root) if passed else frozenset()
    return other if isinstance(other, str) else help_options(done.stdout) | other


def command_problems(doc: Path, root: Path) -> list[str]:
    """Every command of `doc` that names a missing script or a flag its script does not list, as
    `file:line: command: what is wrong`; a script whose --help fails is reported once."""
    name = doc.relative_to(root).as_posix()
    problems = []
    failed: set[Script] = set()
    for call in invocations(doc, root):
        where = f"{name}:{call.line}: `{call.command}`"
        if call.script is None:
            problems.append(f"{where}: {call.error}")
            continue
        options = script_options(call.script, root)
        if isinstance(options, str):
            if call.script not in failed:
                problems.append(f"{where}: {options}")
                failed.add(call.script)
            continue
        for flag in call.flags:
            if flag not in options and not (call.script.snake_case and flag.replace("_", "-") in options):
                passed = PASSES_ON.get(call.script.argv[0])
                also = f" (nor has {passed}, which gets the flags it does not know)" if passed else ""
                problems.append(f"{where}: {call.written} has no option {flag}{also}")
    return problems


def markdown_files(root: Path) -> list[Path]:
    """README.md and every docs/**/*.md that exists now: the docs are written beside this test."""
    return [path for path in [root / "README.md", *sorted((root / "docs").rglob("*.md"))] if path.is_file()]


# --- The repository's docs --------------------------------------------------------------------------

DOCS = markdown_files(ROOT)


def _name(doc: Path) -> str:
    """A test id that says which document failed."""
    return doc.relative_to(ROOT).as_posix()


@pytest.fixture(scope="module")
def helps() -> None:
    """Every script the docs run asked for --help up front, two at a time (the machine has two
    cores), so that each test reads the cache."""
    scripts = {call.script for doc in DOCS for call in invocations(doc, ROOT) if call.script is not None}
    with ThreadPoolExecutor(max_workers=2) as pool:
        # Those that pass flags on last, so that the script they pass to is asked once, first.
        ordered = sorted(scripts, key=lambda script: script.argv[0] in PASSES_ON)
        list(pool.map(lambda script: script_options(script, ROOT), ordered))


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_links_resolve(doc: Path) -> None:
    problems = link_problems(doc, ROOT)
    assert not problems, f"{len(problems)} broken link(s):\n" + "\n".join(problems)


@pytest.mark.usefixtures("helps")
@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_commands_name_real_scripts_and_flags(doc: Path) -> None:
    problems = command_problems(doc, ROOT)
    assert not problems, f"{len(problems)} command(s) that would fail:\n" + "\n".join(problems)


# --- The checker itself -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("Replies worth reading: MMI reranking", "replies-worth-reading-mmi-reranking"),
        ("One GPU, several GPUs, several machines", "one-gpu-several-gpus-several-machines"),
        ("The `--max_length` flag (v2.0)", "the---max_length-flag-v20"),
        ("[Serving](docs/serving.md): a *web* page", "serving-a-web-page"),
        ("__Strong__ and snake_case", "strong-and-snake_case"),
        ("Café & crème", "café--crème"),
        ("Tests <sup>new</sup>", "tests-new"),
    ],
)
def test_slug_follows_github(heading: str, expected: str) -> None:
    assert slug(heading) == expected


def test_anchors_number_repeats_and_skip_code(tmp_path: Path) -> None:
    doc = tmp_path / "a.md"
    doc.write_text(
        "# Setup\n## Setup\ntext\n### Setup ##\n```bash\n# not a heading\n```\n"
        'Setext title\n---\n<a id="custom"></a>\n- item\n---\n',
        encoding="utf-8",
    )
    assert anchors(doc) == {"setup", "setup-1", "setup-2", "setext-title", "custom"}


def test_shell_words() -> None:
    words = shell_words(
        """A=1 python a.py --x "b c" 'd;e'#f --url http://h/#frag | tee o 2>&1 && (cd x; y) # note"""
    )
    assert words == ["A=1", "python", "a.py", "--x", "b c", "d;e#f", "--url", "http://h/#frag", "|", "tee", "o",
                     "2", ">&", "1", "&&", "(", "cd", "x", ";", "y", ")"]  # fmt: skip
    assert [isinstance(word, Operator) for word in words].count(True) == 6
    with pytest.raises(ValueError):
        shell_words("echo 'open")


# The toy repository's scripts: one taking --snake_case spellings as seq2seq.cli's parser does, one
# passing unknown flags on, and an exported chat.py that runs only beside its bot.py and vocab.py.
TOOL = """import argparse, sys
parser = argparse.ArgumentParser(description="a tool; see also --quantize")
parser.add_argument("--alpha", type=int)
parser.add_argument("--beta-gamma", action="store_true", help="long help that mentions --delta")
parser.parse_args([arg.replace("_", "-") if arg.startswith("--") else arg for arg in sys.argv[1:]])
"""
SWEEP = """import argparse
parser = argparse.ArgumentParser(epilog="Other flags go to train.py.")
parser.add_argument("--trials", type=int)
parser.parse_known_args()
"""
EXPORTED_CHAT = """import argparse
import bot
parser = argparse.ArgumentParser()
parser.add_argument("--beam-size", type=int)
parser.parse_args()
"""
GOOD = """# Usage

See [usage](#usage), [the guide](docs/guide.md#a-guide), [a site](https://example.com/x#y),
[mail](mailto:a@b.c) and ![a picture](images/p.png). `[not a link](nowhere.md)`

```bash
python tool.py --alpha 1 --beta-gamma && .venv/bin/python tool.py --beta_gamma  # snake spelling works
printf 'hi\\n' | python3 tool.py --alpha=2 2>&1 | grep --count x
python tool.py --alpha "--not-a-flag here" -- --after-double-dash
(cd sub && python ../tool.py --alpha 3) ; python -m pytest --no-such-pytest-flag
pip install --upgrade thing; $SCRIPT --anything; python -m http.server --bind 1
python sweep.py --trials 2 --beta-gamma
python checkpoints/onnx/chat.py --beam-size 2
python tool.py \\
    --beta-gamma
```

```text
python tool.py --not-shell
[broken](in-a-text-block.md)
```

```console
$ python tool.py --alpha 1
output --not-a-command
```
"""
BAD = """# Usage

[no file](missing.md), [no anchor](#nowhere), [no anchor there](docs/guide.md#b-guide),
![no picture](images/none.png)

```sh
python tool.py --alpha 1 --delta --quantize
cd sub && python tool.py --beta-gamma
torchrun --nproc_per_node=2 tool.py --gamma=3
python sweep.py --trials 2 --omega
python checkpoints/onnx/chat.py --beam_size 2
python -m sub.absent --x
python tool.py --alpha 'never closed
```
"""


def _toy_repository(tmp_path: Path, readme: str) -> Path:
    (tmp_path / "tool.py").write_text(TOOL, encoding="utf-8")
    (tmp_path / "train.py").write_text(TOOL, encoding="utf-8")
    (tmp_path / "sweep.py").write_text(SWEEP, encoding="utf-8")
    (tmp_path / "seq2seq" / "onnx_runtime").mkdir(parents=True)
    (tmp_path / "seq2seq" / "onnx_runtime" / "chat.py").write_text(EXPORTED_CHAT, encoding="utf-8")
    (tmp_path / "seq2seq" / "onnx_runtime" / "bot.py").write_text("import vocab\n", encoding="utf-8")
    (tmp_path / "seq2seq" / "vocab.py").write_text("", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "p.png").write_bytes(b"")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text(
        "A guide\n=======\n\n[back](../README.md#usage)\n", encoding="utf-8"
    )
    (tmp_path / "README.md").write_text(readme, encoding="utf-8")
    return tmp_path


def test_checker_passes_correct_docs(tmp_path: Path) -> None:
    root = _toy_repository(tmp_path, GOOD)
    assert markdown_files(root) == [root / "README.md", root / "docs" / "guide.md"]
    for doc in markdown_files(root):
        assert link_problems(doc, root) == []
        assert command_problems(doc, root) == []
    flags = [call.flags for call in invocations(root / "README.md", root)]
    assert flags == [("--alpha", "--beta-gamma"), ("--beta_gamma",), ("--alpha",), ("--alpha",), ("--alpha",),
                     ("--trials", "--beta-gamma"), ("--beam-size",), ("--beta-gamma",), ("--alpha",)]  # fmt: skip


def test_checker_reports_broken_docs(tmp_path: Path) -> None:
    root = _toy_repository(tmp_path, BAD)
    assert link_problems(root / "README.md", root) == [
        "README.md:3: (missing.md): no such file or folder missing.md",
        "README.md:3: (#nowhere): README.md has no heading or anchor #nowhere",
        "README.md:3: (docs/guide.md#b-guide): docs/guide.md has no heading or anchor #b-guide",
        "README.md:4: (images/none.png): no such file or folder images/none.png",
    ]
    assert command_problems(root / "README.md", root) == [
        "README.md:7: `python tool.py --alpha 1 --delta --quantize`: tool.py has no option --delta",
        "README.md:7: `python tool.py --alpha 1 --delta --quantize`: tool.py has no option --quantize",
        "README.md:8: `cd sub && python tool.py --beta-gamma`: no such script sub/tool.py",
        "README.md:9: `torchrun --nproc_per_node=2 tool.py --gamma=3`: tool.py has no option --gamma",
        "README.md:10: `python sweep.py --trials 2 --omega`: sweep.py has no option --omega"
        " (nor has train.py, which gets the flags it does not know)",
        "README.md:11: `python checkpoints/onnx/chat.py --beam_size 2`: checkpoints/onnx/chat.py has no option"
        " --beam_size",
        "README.md:12: `python -m sub.absent --x`: no such module sub.absent (no sub/absent.py)",
        "README.md:13: `python tool.py --alpha 'never closed`: a quote is never closed",
    ]
