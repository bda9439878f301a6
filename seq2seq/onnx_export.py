"""The model as two ONNX graphs built from its weights: the encoder, and one decoder step. ONNX
Runtime runs them without PyTorch (the exported folder's bot.py), and onnxruntime-web in a
browser tab.

The graphs are written node by node with onnx.helper from the state dict, not traced: torch's
TorchScript-based exporter is deprecated, and its dynamo exporter has emitted GRUs without
`linear_before_reset=1`, silently wrong by about 0.1 (microsoft/onnxscript #2852). Built here,
every choice is explicit and the parity tests hold them to the eager model:

- encoder: ids (B, S) and lengths (B,) -> keys, values (B, S, H), the attention bias (B, S):
  0 at real positions, -inf at padding, and the decoder's first state (L_dec, B, H). Each layer
  is ONNX's GRU op, bidirectional, `linear_before_reset=1` (PyTorch's GRU), with
  `sequence_lens`, so a batch of queries of different lengths reads no padding;
- step: token (B,), state, keys, values, bias -> logits (B, V) and the new state. Its GRU is
  written as cells (two matrix products and the gates a layer): one time step needs no
  recurrence op, and ONNX Runtime's dynamic int8 quantisation, which leaves the GRU op alone
  (microsoft/onnxruntime #9796), then reaches the recurrent weights too.
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .decoding import NEVER_GENERATED, DecodeSettings
from .files import atomic_folder
from .model import Seq2Seq
from .vocab import (
    EOS,
    MAX_INPUT_CHARS,
    PAD,
    SOS,
    SPECIAL_TOKENS,
    UNK,
    Context,
    Vocabulary,
    character_table,
    words_within,
)

OPSET = 17
# PyTorch stacks a GRU's gate weights as (r, z, n); ONNX's GRU op as (z, r, h).
TORCH_TO_ONNX_GATES = (1, 0, 2)


class Graph:
    """Nodes, weights and names for one onnx.GraphProto."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def weight(self, hint: str, array) -> str:
        name = self.name(hint)
        self.weights.append(numpy_helper.from_array(np.array(array, order="C"), name))  # 0-d stays 0-d
        return name

    def op(self, kind: str, *inputs: str, outputs: int = 1, hint: str | None = None, **attributes):
        names = [self.name(hint or kind.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(kind, list(inputs), names, **attributes))
        return names[0] if outputs == 1 else names

    def linear(self, x: str, weight, bias=None, hint: str = "linear") -> str:
        """x @ weight.T (+ bias): a MatMul on a weight of (in, out), which int8 quantisation takes."""
        out = self.op("MatMul", x, self.weight(f"{hint}_weight", weight.T), hint=hint)
        return out if bias is None else self.op("Add", out, self.weight(f"{hint}_bias", bias), hint=hint)

    def gru_cell(self, gi: str, previous: str, weight: str, bias: str, h: int) -> str:
        """PyTorch's GRU cell, given the input's gate pre-activations `gi` (B, 3H), the state
        `previous` (B, H) and the names of the recurrent weight's transpose (H, 3H) and bias: the
        recurrent product is a MatMul, which int8 quantisation takes."""
        gh = self.op("Add", self.op("MatMul", previous, weight, hint="gh"), bias)
        split = self.weight("split", np.array([h] * 3))
        i_r, i_z, i_n = self.op("Split", gi, split, outputs=3, axis=1)
        h_r, h_z, h_n = self.op("Split", gh, split, outputs=3, axis=1)
        reset = self.op("Sigmoid", self.op("Add", i_r, h_r))
        update = self.op("Sigmoid", self.op("Add", i_z, h_z))
        candidate = self.op("Tanh", self.op("Add", i_n, self.op("Mul", reset, h_n)))
        # h' = (1 - z) n + z h = n + z (h - n)
        return self.op("Add", candidate, self.op("Mul", update, self.op("Sub", previous, candidate)))

    def model(self, inputs: list, outputs: list, name: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.weights)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="chatbot-seq2seq")  # fmt: skip
        model.ir_version = 8  # what ONNX Runtime 1.14 and later read
        onnx.checker.check_model(model)
        return model


def _array(tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def _gates(weight: np.ndarray) -> np.ndarray:
    """A PyTorch gate stack (3H, ...) reordered to ONNX's (z, r, h)."""
    return np.concatenate([np.split(weight, 3)[i] for i in TORCH_TO_ONNX_GATES])


def _gru_op_layers(g: Graph, x: str, state: dict, layers: int, h: int, _) -> tuple[str, list[str]]:
    """Each layer ONNX's GRU op, bidirectional, linear_before_reset=1 (PyTorch's GRU), with
    sequence_lens: the last layer's outputs, directions summed, and every layer's final states."""
    sequence_lens = g.op("Cast", "lengths", to=TensorProto.INT32)
    finals = []
    for layer in range(layers):
        directions = ("", "_reverse")
        w = np.stack([_gates(state[f"encoder.gru.weight_ih_l{layer}{d}"]) for d in directions])
        r = np.stack([_gates(state[f"encoder.gru.weight_hh_l{layer}{d}"]) for d in directions])
        b = np.stack([np.concatenate([_gates(state[f"encoder.gru.bias_ih_l{layer}{d}"]),
                                      _gates(state[f"encoder.gru.bias_hh_l{layer}{d}"])]) for d in directions])  # fmt: skip
        y, y_h = g.op("GRU", x, g.weight("w", w), g.weight("r", r), g.weight("b", b), sequence_lens,
                      outputs=2, hint=f"gru{layer}", direction="bidirectional", hidden_size=h,
                      linear_before_reset=1)  # fmt: skip
        # y (S, 2, B, H) -> the next layer's input (S, B, 2H); y_h (2, B, H): the final states
        x = g.op("Reshape", g.op("Transpose", y, perm=[0, 2, 1, 3]), g.weight("shape", np.array([0, 0, -1])))
        finals.append(g.op("ReduceSum", y_h, g.weight("axis", np.array([0])), keepdims=1))  # (1, B, H)
    return g.op("ReduceSum", y, g.weight("axis", np.array([1])), keepdims=0), finals


def _unrolled_layers(
    g: Graph, x: str, state: dict, layers: int, h: int, length: int
) -> tuple[str, list[str]]:
    """`_gru_op_layers` as GRU cells over `length` positions, masked past each source's length."""
    real = g.op("Less", g.weight("positions", np.arange(length).reshape(length, 1)),
                g.op("Unsqueeze", "lengths", g.weight("axis", np.array([0]))))  # fmt: skip
    mask = g.op(
        "Unsqueeze", g.op("Cast", real, to=TensorProto.FLOAT), g.weight("axis", np.array([2]))
    )  # (S, B, 1)

    def steps(tensor: str) -> list[str]:
        """(S, B, ...) as S tensors (B, ...)."""
        parts = g.op(
            "Split", tensor, g.weight("ones", np.ones(length, dtype=np.int64)), outputs=length, axis=0
        )
        parts = [parts] if length == 1 else parts
        return [g.op("Squeeze", part, g.weight("axis", np.array([0]))) for part in parts]

    masks, finals = steps(mask), []
    for layer in range(layers):
        outputs, last = [], []
        for direction in ("", "_reverse"):
            gis = steps(g.linear(x, state[f"encoder.gru.weight_ih_l{layer}{direction}"],
                                 state[f"encoder.gru.bias_ih_l{layer}{direction}"], "gi"))  # fmt: skip
            zero = g.weight("zero", np.array(0.0, np.float32))
            current = g.op("Mul", g.op("Slice", gis[0], g.weight("start", np.array([0])), g.weight("end", np.array([h])),
                                       g.weight("axis", np.array([1]))), zero)  # fmt: skip
            ys: list[str] = [""] * length
            recurrent = g.weight("w_hh", state[f"encoder.gru.weight_hh_l{layer}{direction}"].T)  # one copy
            bias = g.weight("b_hh", state[f"encoder.gru.bias_hh_l{layer}{direction}"])
            for t in range(length) if not direction else reversed(range(length)):
                new = g.gru_cell(gis[t], current, recurrent, bias, h)
                ys[t] = g.op("Mul", new, masks[t])  # zeros past the length
                current = g.op("Add", current, g.op("Mul", masks[t], g.op("Sub", new, current)))  # kept there
            axis = g.weight("axis", np.array([0]))
            outputs.append(g.op("Concat", *[g.op("Unsqueeze", y, axis) for y in ys], axis=0))  # (S, B, H)
            last.append(current)
        x = g.op("Concat", *outputs, axis=2)
        finals.append(g.op("Unsqueeze", g.op("Add", *last), g.weight("axis", np.array([0]))))
    return g.op("Add", *outputs), finals


def encoder_graph(model: Seq2Seq, unrolled: int | None = None) -> onnx.ModelProto:
    """The encoder: ONNX's GRU op, or with `unrolled` = S, GRU cells over S positions (the ids
    padded to S; past its length a source's state is kept and its outputs are zeros, as packing
    gives), whose matrix products int8 quantisation reaches: the int8 encoder."""
    config, state = model.config, {k: _array(v) for k, v in model.state_dict().items()}
    h, g = config.hidden_size, Graph()
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", unrolled or "length"])
    lengths = helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"])
    embedded = g.op("Gather", g.weight("embedding", state["embedding.weight"]), "ids")  # (B, S, H)
    x = g.op("Transpose", embedded, perm=[1, 0, 2])  # (S, B, H): time-major
    layer_outputs = _unrolled_layers if unrolled else _gru_op_layers
    values, finals = layer_outputs(g, x, state, config.encoder_layers, h, unrolled)  # (S, B, H), [(1, B, H)]
    values = g.op("Transpose", values, perm=[1, 0, 2], hint="values_bsh")  # (B, S, H)
    method = config.attn_model
    if method == "general":
        keys = g.linear(
            values, state["decoder.attention.W.weight"], state["decoder.attention.W.bias"], "keys"
        )
    elif method == "concat":
        keys = g.linear(values, state["decoder.attention.W.weight"][:, h:], hint="keys")
    else:
        keys = values
    # Seq2Seq.bridge: decoder layers from the encoder's top ones; extra ones from its bottom one
    n_enc, n_dec = config.encoder_layers, config.decoder_layers
    layers = finals[n_enc - n_dec :] if n_dec <= n_enc else [finals[0]] * (n_dec - n_enc) + finals
    first_state = g.op("Concat", *layers, axis=0) if len(layers) > 1 else g.op("Identity", layers[0])
    positions = g.op("Range", g.weight("zero", np.array(0)), g.op("Squeeze", g.op("Slice", g.op("Shape", "ids"),
                     g.weight("one", np.array([1])), g.weight("two", np.array([2])))), g.weight("step", np.array(1)))  # fmt: skip
    real = g.op("Less", g.op("Unsqueeze", positions, g.weight("axis", np.array([0]))),
                g.op("Unsqueeze", "lengths", g.weight("axis", np.array([1]))))  # fmt: skip
    bias = g.op("Where", real, g.weight("zero", np.array(0.0, np.float32)),
                g.weight("minus_inf", np.array(-np.inf, np.float32)))  # fmt: skip
    outputs = {"keys": keys, "values": values, "attention_bias": bias, "state": first_state}
    for public, internal in outputs.items():
        g.nodes.append(helper.make_node("Identity", [internal], [public]))
    length = unrolled or "length"
    shapes = {"keys": ["batch", length, h], "values": ["batch", length, h],
              "attention_bias": ["batch", length], "state": [n_dec, "batch", h]}  # fmt: skip
    return g.model([ids, lengths], [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in shapes.items()],
                   "encoder")  # fmt: skip


def step_graph(model: Seq2Seq) -> onnx.ModelProto:
    config, state = model.config, {k: _array(v) for k, v in model.state_dict().items()}
    h, g = config.hidden_size, Graph()
    inputs = [
        helper.make_tensor_value_info("token", TensorProto.INT64, ["batch"]),
        helper.make_tensor_value_info("state", TensorProto.FLOAT, [config.decoder_layers, "batch", h]),
        helper.make_tensor_value_info("keys", TensorProto.FLOAT, ["batch", "length", h]),
        helper.make_tensor_value_info("values", TensorProto.FLOAT, ["batch", "length", h]),
        helper.make_tensor_value_info("attention_bias", TensorProto.FLOAT, ["batch", "length"]),
    ]
    x = g.op("Gather", g.weight("embedding", state["embedding.weight"]), "token")  # (B, H)
    new_states = []
    for layer in range(config.decoder_layers):
        previous = g.op("Gather", "state", g.weight("layer", np.array(layer)), axis=0)  # (B, H)
        gi = g.linear(
            x, state[f"decoder.gru.weight_ih_l{layer}"], state[f"decoder.gru.bias_ih_l{layer}"], "gi"
        )
        recurrent = g.weight("w_hh", state[f"decoder.gru.weight_hh_l{layer}"].T)
        x = g.gru_cell(gi, previous, recurrent, g.weight("b_hh", state[f"decoder.gru.bias_hh_l{layer}"]), h)
        new_states.append(g.op("Unsqueeze", x, g.weight("axis", np.array([0]))))
    query = x
    if config.attn_model == "concat":
        w = state["decoder.attention.W.weight"]
        projected = g.linear(query, w[:, :h], state["decoder.attention.W.bias"], "query")  # (B, H)
        joined = g.op(
            "Tanh", g.op("Add", g.op("Unsqueeze", projected, g.weight("axis", np.array([1]))), "keys")
        )
        scores = g.op("MatMul", joined, g.weight("v", state["decoder.attention.v"]))  # (B, S)
    else:  # dot and general: the keys already hold what depends on the encoder alone
        column = g.op("Unsqueeze", query, g.weight("axis", np.array([2])))  # (B, H, 1)
        scores = g.op("Squeeze", g.op("MatMul", "keys", column), g.weight("axis", np.array([2])))
    weights = g.op("Softmax", g.op("Add", scores, "attention_bias"), axis=-1)  # (B, S)
    row = g.op("Unsqueeze", weights, g.weight("axis", np.array([1])))  # (B, 1, S)
    context = g.op("Squeeze", g.op("MatMul", row, "values"), g.weight("axis", np.array([1])))  # (B, H)
    joined = g.op("Concat", query, context, axis=1)
    combined = g.op(
        "Tanh", g.linear(joined, state["decoder.concat.weight"], state["decoder.concat.bias"], "concat")
    )
    logits = g.linear(combined, state["decoder.out.weight"], state["decoder.out.bias"], "out")
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    new_state = g.op("Concat", *new_states, axis=0) if len(new_states) > 1 else new_states[0]
    g.nodes.append(helper.make_node("Identity", [new_state], ["new_state"]))
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", config.vocab_size]),
        helper.make_tensor_value_info("new_state", TensorProto.FLOAT, [config.decoder_layers, "batch", h]),
    ]
    return g.model(inputs, outputs, "step")


PACKAGE = Path(__file__).resolve().parent
RUNTIME = PACKAGE / "onnx_runtime"
FORMAT = "chatbot-seq2seq-onnx/1"
# The web bot: its page and script, the serve page's style, conversation view and icon, and from onnxruntime-web's
# npm package (package.json pins it) its WebAssembly build: the script, its loader, the binary.
WEB_FILES = (PACKAGE / "web_bot" / "index.html", PACKAGE / "web_bot" / "bot.js", PACKAGE / "web" / "chat.css",
             PACKAGE / "web" / "conversation.js", PACKAGE / "web" / "favicon.svg")  # fmt: skip
ORT_WEB = PACKAGE.parent / "node_modules" / "onnxruntime-web" / "dist"
ORT_WEB_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")


class WebBotError(Exception):
    """What the web bot needs and cannot find; one line."""


def quantize(source: Path, target: Path) -> None:
    """ONNX Runtime's dynamic int8 quantisation of the MatMul weights (activations are quantised
    on the fly); the encoder's GRU op stays fp32, as ONNX Runtime leaves it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process, logged on every call
    try:
        quantize_dynamic(source, target, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
    finally:
        logging.getLogger().setLevel(quiet)


def bot_config(vocab: Vocabulary, max_length: int, context: Context) -> dict:
    """bot.json: what the runtimes need besides the graphs, each fact from its home here."""
    greedy = DecodeSettings()
    return {"format": FORMAT, "vocab": vocab.to_dict(), "special": dict(zip(SPECIAL_TOKENS, (PAD, SOS, EOS, UNK))),
            "max_length": max_length, "query_words": words_within(max_length), "min_length": greedy.min_length,
            "length_penalty": greedy.length_penalty, "never_generated": list(NEVER_GENERATED),
            "context_turns": context.turns, "context_tokens": context.tokens,
            "int8_source_length": context.longest_source(max_length)}  # fmt: skip


def onnxruntime_web(dist: str | Path = ORT_WEB) -> Path:
    """onnxruntime-web's dist/ folder, checked for the files the page loads."""
    dist = Path(dist)
    missing = [name for name in ORT_WEB_FILES if not (dist / name).is_file()]
    if missing:
        raise WebBotError(f"onnxruntime-web's {', '.join(missing)} not found in {dist}/: run `npm ci` in the "
                          "repository (package.json pins it), or give --onnxruntime-web PATH/dist")  # fmt: skip
    return dist


def write_onnx_bot(model: Seq2Seq, vocab: Vocabulary, max_length: int, context: Context, folder: Path,
                   int8: bool = False, check: Callable[[Path], None] | None = None,
                   web: Path | None = None) -> None:  # fmt: skip
    """The self-contained folder: the graphs (and their int8 versions), bot.json, and the runtime
    (bot.py, chat.py, and vocab.py copied verbatim); with `web` (onnxruntime-web's dist/), also
    the web bot's page, which loads the int8 graphs if there are some. Written beside `folder` and
    renamed into place once `check` (of the written folder) passes, so a failed or refused export
    leaves the old folder, or none, and never half of one."""
    with atomic_folder(folder, is_bot_folder) as tmp:
        onnx.save(encoder_graph(model), tmp / "encoder.onnx")
        onnx.save(step_graph(model), tmp / "step.onnx")
        config = bot_config(vocab, max_length, context)
        if int8:  # the encoder as cells over the longest source, so that its recurrence is int8 too
            onnx.save(encoder_graph(model, config["int8_source_length"]), tmp / "encoder.cells.onnx")
            quantize(tmp / "encoder.cells.onnx", tmp / "encoder.int8.onnx")
            (tmp / "encoder.cells.onnx").unlink()
            quantize(tmp / "step.onnx", tmp / "step.int8.onnx")
        if web is not None:
            config.update(characters=character_table(), max_input_chars=MAX_INPUT_CHARS,
                          web_graphs=".int8.onnx" if int8 else ".onnx")  # fmt: skip
            for path in [*WEB_FILES, *(web / name for name in ORT_WEB_FILES)]:
                shutil.copyfile(path, tmp / path.name)
        (tmp / "bot.json").write_text(json.dumps(config), encoding="utf-8")
        for name in ("bot.py", "chat.py"):
            shutil.copyfile(RUNTIME / name, tmp / name)
        shutil.copyfile(PACKAGE / "vocab.py", tmp / "vocab.py")
        if check is not None:
            check(tmp)


def is_bot_folder(folder: Path) -> bool:
    """Whether `folder` holds a bot this module wrote (so an export may replace it)."""
    try:
        return json.loads((folder / "bot.json").read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def load_runtime(folder: Path):
    """The folder's bot module, imported as a Python in that folder would import it (its own
    vocab.py beside it), without leaving either name in sys.modules."""
    saved = {name: sys.modules.pop(name) for name in ("bot", "vocab") if name in sys.modules}
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module("bot")
    finally:
        sys.path.remove(str(folder))
        for name in ("bot", "vocab"):
            sys.modules.pop(name, None)
        sys.modules.update(saved)
