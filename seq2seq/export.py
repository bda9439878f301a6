"""A bot that ships alone: the model, its vocabulary and the normalisation in one TorchScript file.

`Bot` is written in the subset of Python that TorchScript compiles. Its tensor entry point,
`forward(ids)`, answers one encoded query with the greedy reply's ids; `reply(text)` does the
whole job on a string, so `torch.jit.load(path).reply("hi")` works in a process that never
imported this package (and the same file serves a C++ libtorch program).

The network is split into two parts, `EncoderPart` and `DecoderStep`, which are either traced
(`torch.jit.trace`, recording one run's operations) or scripted (`torch.jit.script`, compiling
the code); the search loop around them is always scripted, since tracing cannot record control
flow. A batch of one needs no padding, so no packed sequences are involved. Replies follow
seq2seq.decoding's greedy search exactly: PAD, SOS and UNK are never produced, EOS not first.

TorchScript is deprecated in PyTorch 2.x in favour of torch.export; `export_parts` writes the two
parts as torch.export programs (.pt2) instead, for runtimes that take those, or compiled ahead of
time with AOTInductor. onnx_export.py writes them as ONNX graphs, for a
bot without PyTorch.
"""

import importlib
import os
import shutil
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Dict, List  # noqa: UP035 (TorchScript, see Bot.__init__)

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cli import first_line
from .model import Seq2Seq
from .vocab import EOS, NO_CONTEXT, PAD, SOS, UNK, Context, Vocabulary


def _plain_gru(gru: nn.GRU) -> nn.GRU:
    """A stock nn.GRU with `gru`'s weights (our subclass's autocast hook is not scriptable)."""
    plain = nn.GRU(
        gru.input_size, gru.hidden_size, gru.num_layers, batch_first=True, bidirectional=gru.bidirectional
    )
    plain.load_state_dict(gru.state_dict())
    return plain


def _plain_linear(linear: nn.Linear) -> nn.Linear:
    """A stock nn.Linear holding `linear`'s own parameters (a tied matrix stays tied); the
    model's output layer also computes losses, which is not scriptable."""
    plain = nn.Linear(linear.in_features, linear.out_features)
    plain.weight, plain.bias = linear.weight, linear.bias
    return plain


class EncoderPart(nn.Module):
    """ids (1, S) -> attention keys (1, S, H), values (1, S, H), decoder state (L_dec, 1, H)."""

    def __init__(self, model: Seq2Seq):
        super().__init__()
        config, attention = model.config, model.decoder.attention
        self.embedding = model.embedding
        self.gru = _plain_gru(model.encoder.gru)
        self.layers, self.decoder_layers, self.hidden_size = (
            config.encoder_layers,
            config.decoder_layers,
            config.hidden_size,
        )
        # keys as Attention.keys computes them: W v + b (general), W_k v (concat), v itself (dot)
        self.project_keys = attention.method != "dot"
        h = config.hidden_size
        weight, bias = torch.zeros(h, h), torch.zeros(h)
        if attention.method == "general":
            weight, bias = attention.W.weight.detach().clone(), attention.W.bias.detach().clone()
        elif attention.method == "concat":
            weight = attention.W.weight[:, h:].detach().clone()
        self.register_buffer("key_weight", weight)
        self.register_buffer("key_bias", bias)

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        outputs, hidden = self.gru(self.embedding(ids))
        h = self.hidden_size
        values = outputs[:, :, :h] + outputs[:, :, h:]
        states = hidden.view(self.layers, 2, 1, h).sum(1)  # Seq2Seq.bridge, for a batch of one
        if self.decoder_layers <= self.layers:
            states = states[self.layers - self.decoder_layers :]
        else:
            states = torch.cat([states[:1].expand(self.decoder_layers - self.layers, 1, h), states])
        keys = F.linear(values, self.key_weight, self.key_bias) if self.project_keys else values
        return keys, values, states.contiguous()


class DecoderStep(nn.Module):
    """token (1, 1), state, keys, values -> next-token logits (1, V), new state."""

    def __init__(self, model: Seq2Seq):
        super().__init__()
        decoder, h = model.decoder, model.config.hidden_size
        attention = decoder.attention
        self.embedding = model.embedding
        self.gru = _plain_gru(decoder.gru)
        self.concat_score = attention.method == "concat"
        weight, bias, v = torch.zeros(h, h), torch.zeros(h), torch.zeros(h)
        if self.concat_score:
            weight, bias = attention.W.weight[:, :h].detach().clone(), attention.W.bias.detach().clone()
            v = attention.v.detach().clone()
        self.register_buffer("query_weight", weight)
        self.register_buffer("query_bias", bias)
        self.register_buffer("v", v)
        self.concat, self.out = decoder.concat, _plain_linear(decoder.out)

    def forward(self, token: Tensor, state: Tensor, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        output, state = self.gru(self.embedding(token), state)
        if self.concat_score:
            query = F.linear(output, self.query_weight, self.query_bias)
            scores = torch.tanh(query.unsqueeze(2) + keys.unsqueeze(1)) @ self.v
        else:
            scores = output @ keys.transpose(1, 2)
        context = torch.softmax(scores, dim=-1) @ values
        combined = torch.tanh(self.concat(torch.cat([output, context], dim=-1)))
        return self.out(combined)[:, -1], state


class ExportError(Exception):
    """A part of the model that torch.export cannot capture; the message says which and why."""


def _character_table() -> dict[str, str]:
    """What normalize() turns non-ASCII characters into, for the scripted normaliser.

    Covers the blocks where NFKD and case folding lead to ASCII: Latin letters with accents,
    separate combining accents (to nothing), typographic punctuation, letter-like symbols and
    number forms, ligatures and full-width forms. Other characters are dropped, as by normalize().
    """
    table: dict[str, str] = {"\u2019": "'", "\u2018": "'", "\u02bc": "'"}
    blocks = [
        (0xA0, 0x250),
        (0x300, 0x370),
        (0x1E00, 0x1F00),
        (0x2000, 0x2200),
        (0xFB00, 0xFB07),
        (0xFF00, 0xFFF0),
    ]
    for char in (chr(code) for start, end in blocks for code in range(start, end)):
        if char in table:
            continue
        base = "".join(
            c for c in unicodedata.normalize("NFKD", char.casefold()) if not unicodedata.combining(c)
        )
        if base.isascii() and base != char:
            table[char] = base
    return table


class Bot(nn.Module):
    """Greedy replies from text or ids, with the vocabulary and the normalisation built in. A bot
    of a model trained with context keeps the conversation: `reply` reads the last turns, as
    chat.py does, and `reset()` forgets them."""

    # an empty list's type, said where TorchScript reads it (hence no `from __future__ import
    # annotations` in this module: TorchScript cannot read a class annotation left as a string)
    history: List[str]  # noqa: UP006

    def __init__(
        self,
        encoder: nn.Module,
        step: nn.Module,
        vocab: Vocabulary,
        max_length: int,
        context: Context = NO_CONTEXT,
    ):
        super().__init__()
        self.encoder, self.step = encoder, step
        # typing's spelling: TorchScript's attribute checker takes any `self.x: list[...]` or
        # `dict[...]` here for an empty container and warns every user (torch/jit/_check.py)
        self.words: List[str] = list(vocab.index_to_word)  # noqa: UP006
        self.index: Dict[str, int] = dict(vocab.word_to_index)  # noqa: UP006
        self.characters: Dict[str, str] = _character_table()  # noqa: UP006
        self.max_length = max_length
        self.context_turns, self.context_tokens = context.turns, context.tokens
        self.history = []  # the last context_turns turns, normalised, oldest first
        self.pad, self.sos, self.eos, self.unk = PAD, SOS, EOS, UNK  # TorchScript reads no globals

    def forward(self, ids: Tensor) -> Tensor:
        """Encoded query (1, S) ending in EOS -> reply ids (up to max_length, EOS last if reached)."""
        return torch.tensor(self.generate(ids), dtype=torch.long)

    @torch.jit.export
    def generate(self, ids: Tensor) -> list[int]:
        """forward's work as a list. reply() calls this: calling `self.forward(...).tolist()`
        there made TorchScript run the whole search twice per reply (twice the GRU calls under
        torch.profiler, twice the time)."""
        keys, values, state = self.encoder(ids)
        token = torch.full([1, 1], self.sos, dtype=torch.long)
        reply: list[int] = []
        for t in range(self.max_length):
            logits, state = self.step(token, state, keys, values)
            scores = logits[0].clone()
            scores[self.pad] = float("-inf")
            scores[self.sos] = float("-inf")
            scores[self.unk] = float("-inf")
            if t == 0:
                scores[self.eos] = float("-inf")
            choice = int(scores.argmax())
            reply.append(choice)
            if choice == self.eos:
                break
            token = torch.full([1, 1], choice, dtype=torch.long)
        return reply

    @torch.jit.export
    def normalize(self, text: str) -> str:
        """seq2seq.vocab.normalize for ASCII and Latin letters (TorchScript strings are bytes)."""
        for char, replacement in self.characters.items():
            if char in text:
                text = text.replace(char, replacement)
        text = text.lower()
        pieces: list[str] = []
        for i in range(len(text)):  # characters outside ASCII come as bytes >= 0x80: dropped
            byte = text[i]
            if byte == "." or byte == "!" or byte == "?":
                pieces.append(" " + byte + " ")
            elif "a" <= byte <= "z":
                pieces.append(byte)
            elif (
                byte == "'"
                and 0 < i < len(text) - 1
                and "a" <= text[i - 1] <= "z"
                and "a" <= text[i + 1] <= "z"
            ):
                pieces.append(byte)  # an apostrophe survives only inside a word
            else:
                pieces.append(" ")
        return " ".join("".join(pieces).split())

    @torch.jit.export
    def reset(self) -> None:
        """Forget the conversation: the next reply reads no earlier turn."""
        self.history.clear()

    def _context_ids(self) -> list[int]:
        """The history's ids as vocab.Context.source_ids reads them: the last turns within the
        token budget, the oldest cut from the left, each closed by EOS (Context.cut, which
        TorchScript cannot call; the parity tests guard the copy)."""
        turns: list[list[str]] = []
        room = self.context_tokens
        i = len(self.history) - 1
        while i >= max(0, len(self.history) - self.context_turns):
            words = self.history[i].split()
            if room < 2 or len(words) == 0:
                break
            words = words[max(0, len(words) - (room - 1)) :]
            turns.append(words)
            room -= len(words) + 1
            i -= 1
        ids: list[int] = []
        for j in range(len(turns) - 1, -1, -1):
            for word in turns[j]:
                ids.append(self.index.get(word, self.unk))
            ids.append(self.eos)
        return ids

    @torch.jit.export
    def reply(self, text: str) -> str:
        words = self.normalize(text).split()
        if len(words) == 0:
            return ""
        words = words[: self.max_length - 1]  # vocab.words_within, which TorchScript cannot call
        index, vocabulary = self.index, self.words  # read the big attributes once
        ids = self._context_ids()
        for word in words:
            ids.append(index.get(word, self.unk))
        ids.append(self.eos)
        out: str = ""
        said: list[str] = []
        for i in self.generate(torch.tensor([ids], dtype=torch.long)):
            if i == self.eos:
                break
            word = vocabulary[i]
            if out != "" and word != "." and word != "!" and word != "?":
                out += " "
            out += word
            said.append(word)
        if self.context_turns > 0:  # decoding.Conversation.reply
            history = self.history + [" ".join(words), " ".join(said)]
            self.history = history[max(0, len(history) - self.context_turns) :]
        return out


def _parts(model: Seq2Seq, int8: bool) -> tuple[nn.Module, nn.Module]:
    """The encoder and decoder-step modules; with `int8`, their GRU and linear layers get int8
    weights (dynamic quantisation: activations are quantised on the fly)."""
    parts = EncoderPart(model.eval()).eval(), DecoderStep(model).eval()
    if int8:
        quantize = torch.ao.quantization.quantize_dynamic
        parts = tuple(quantize(part, {nn.GRU, nn.Linear}, dtype=torch.qint8) for part in parts)
    return parts


def _examples(vocab_size: int) -> tuple[Tensor, tuple[Tensor, ...]]:
    ids = torch.tensor([[4, 5, 6, EOS]], dtype=torch.long) % vocab_size
    return ids, (torch.full((1, 1), SOS, dtype=torch.long),)


def build_bot(
    model: Seq2Seq,
    vocab: Vocabulary,
    max_length: int,
    method: str,
    int8: bool = False,
    context: Context = NO_CONTEXT,
):
    """The TorchScript bot: parts traced (method "trace") or scripted ("script"), loop scripted."""
    encoder, step = _parts(model, int8)
    if method == "trace":
        ids, (token,) = _examples(len(vocab))
        with torch.no_grad():
            keys, values, state = encoder(ids)
            encoder = torch.jit.trace(encoder, (ids,), check_trace=False)
            step = torch.jit.trace(step, (token, state, keys, values), check_trace=False)
    elif method == "script":
        encoder, step = torch.jit.script(encoder), torch.jit.script(step)
    else:
        raise ValueError(f"method must be trace or script, got {method!r}")
    return torch.jit.script(Bot(encoder, step, vocab, max_length, context).eval())


def _programs(model: Seq2Seq, vocab: Vocabulary, max_length: int, context: Context) -> dict:
    """torch.export programs of the encoder and the decoder step, the source length a dynamic
    dimension (2 tokens to the longest source, `Context.longest_source`), so no padding, mask or
    packed sequence is needed for a batch of one. Plain torch.export specialises nn.GRU's length
    to the example's; torch 2.13's `register_gru_while_loop_decomposition` (a private API, hence
    the check) writes the recurrence as a while_loop instead, which keeps it dynamic."""
    try:
        gru_loop = importlib.import_module("torch.export._patches").register_gru_while_loop_decomposition
    except (ImportError, AttributeError):
        gru_loop = None
    if gru_loop is None:
        raise ExportError(f"torch.export keeps a GRU's length dynamic from torch 2.13 on "
                          f"(torch.export._patches.register_gru_while_loop_decomposition); this is {torch.__version__}")  # fmt: skip
    encoder, step = _parts(model, int8=False)
    ids, (token,) = _examples(len(vocab))
    length = torch.export.Dim("length", min=2, max=max(2, context.longest_source(max_length)))
    with torch.no_grad():
        keys, values, state = encoder(ids)
    attempts = {
        "encoder": (encoder, (ids,), ({1: length},)),
        "step": (step, (token, state, keys, values), (None, None, {1: length}, {1: length})),
    }
    programs, failures = {}, []
    for name, (module, inputs, shapes) in attempts.items():
        try:
            with torch.no_grad(), gru_loop():
                programs[name] = torch.export.export(module, inputs, dynamic_shapes=shapes)
        except Exception as error:  # report every part that cannot be exported, and why
            failures.append(f"{name}: {first_line(error, limit=1000)}")
    if failures:
        exported = [name for name in attempts if name in programs]
        raise ExportError(
            "; ".join(failures) + (f" ({', '.join(exported)} exported fine)" if exported else "")
        )
    return programs


def export_parts(
    model: Seq2Seq,
    vocab: Vocabulary,
    max_length: int,
    output: Path,
    context: Context = NO_CONTEXT,
    check: Callable[[Bot], None] | None = None,
    compiled: bool = False,
) -> Bot:
    """torch.export programs of the encoder and the decoder step (`_programs`), saved beside
    `output` as NAME.encoder.pt2 and NAME.step.pt2; with `compiled`, AOTInductor's packages of
    them instead (shared libraries: a C++ compiler is needed to export, torch to load them).
    Returns a (Python) Bot running what was written. Both files are written and loaded in a
    folder beside `output` and moved into place only once `check` passes on that Bot, so a
    failed or refused export leaves what was there."""
    compiler = os.environ.get("CXX") or "g++"
    if compiled and shutil.which(compiler) is None:
        raise ExportError(
            f"AOTInductor compiles C++, and there is no {compiler} here: install g++ (or set CXX)"
        )
    programs = _programs(model, vocab, max_length, context)
    staging = output.parent / f".{output.name}.{os.getpid()}.tmp"  # files.remove_stale_temporaries' kind
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        loaded = {}
        for name, program in programs.items():
            path = (
                staging / f"{name}.pt2"
            )  # AOTInductor wants a name ending .pt2; torch.export warns otherwise
            if compiled:
                torch._inductor.aoti_compile_and_package(program, package_path=str(path))
                loaded[name] = torch._inductor.aoti_load_package(str(path))
            else:
                with open(path, "wb") as file:
                    torch.export.save(program, file)
                loaded[name] = torch.export.load(str(path)).module()
        bot = Bot(loaded["encoder"], loaded["step"], vocab, max_length, context)
        if check is not None:
            check(bot)
        for name in programs:
            with open(staging / f"{name}.pt2", "rb+") as file:
                os.fsync(file.fileno())
            os.replace(staging / f"{name}.pt2", output.with_suffix(f".{name}.pt2"))
        return bot
    finally:
        shutil.rmtree(staging, ignore_errors=True)
