// The exported bot in a browser tab, with no server: ONNX Runtime Web (WebAssembly) runs
// encoder.onnx and step.onnx; reading text, the conversation's context and greedy search are
// here, ports of seq2seq/vocab.py (normalize, read_message, Context) and of decoding.py's greedy
// search. Chromium tests hold them to the Python bot's replies, hostile input included.
"use strict";

class Bot {
  static async load() {
    const response = await fetch("bot.json");
    if (!response.ok) throw new Error(`bot.json: ${response.status} ${response.statusText}`);
    const config = await response.json();
    ort.env.wasm.wasmPaths = new URL(".", location.href).href; // the WebAssembly files beside this page
    // threads need a cross-origin isolated page (COOP and COEP headers), which a plain static host lacks
    ort.env.wasm.numThreads = self.crossOriginIsolated ? 0 : 1;
    const options = { executionProviders: ["wasm"] };
    const suffix = config.web_graphs; // ".onnx", or ".int8.onnx"
    const [encoder, step] = await Promise.all([
      ort.InferenceSession.create(`encoder${suffix}`, options), ort.InferenceSession.create(`step${suffix}`, options),
    ]);
    return new Bot(config, encoder, step);
  }

  constructor(config, encoder, step) {
    const special = config.special; // vocab.py's ids, by name
    this.words = [...Object.keys(special).sort((a, b) => special[a] - special[b]), ...config.vocab.words];
    this.index = new Map(this.words.map((word, i) => [word, i]));
    [this.pad, this.eos, this.sos, this.unk] = [special["<pad>"], special["<eos>"], special["<sos>"], special["<unk>"]];
    this.never = new Set(config.never_generated);
    this.minLength = config.min_length;
    this.queryWords = config.query_words; // vocab.words_within(max_length)
    this.maxLength = config.max_length;
    this.maxInputChars = config.max_input_chars;
    this.contextTurns = config.context_turns;
    this.contextTokens = config.context_tokens;
    this.characters = config.characters; // what vocab.normalize makes of each non-ASCII character
    // the int8 encoder is unrolled over the longest source: ids are padded to it
    this.sourceLength = config.web_graphs.includes("int8") ? config.int8_source_length : 0;
    this.encoder = encoder;
    this.step = step;
    this.history = [];
    this.epoch = 0; // bumped by reset(): a reply on its way then leaves the new conversation alone
  }

  // vocab.normalize
  normalize(text) {
    let mapped = "";
    for (const ch of text) mapped += ch.codePointAt(0) < 128 ? ch : (this.characters[ch] ?? " ");
    let out = "";
    for (const ch of mapped.toLowerCase()) {
      if ((ch >= "a" && ch <= "z") || ch === "'") out += ch;
      else if (ch === "." || ch === "!" || ch === "?") out += ` ${ch} `;
      else out += " ";
    }
    if (out.includes("'")) out = out.replace(/(?<![a-z])'|'(?![a-z])/g, " ");
    return out.split(" ").filter(Boolean).join(" ");
  }

  // vocab.read_message: the query the model reads, and notes for whoever wrote it
  read(text) {
    const notes = [];
    let chars = Array.from(text);
    if (chars.length > this.maxInputChars) {
      notes.push(`your message was cut to its first ${this.maxInputChars} characters`);
      chars = chars.slice(0, this.maxInputChars);
    }
    let words = this.normalize(chars.join("")).split(" ").filter(Boolean);
    if (words.length === 0) return { query: "", notes: [...notes, "nothing to answer: I only read English words and . ! ?"] };
    const keep = this.queryWords;
    if (words.length > keep) {
      notes.push(`I only read the first ${keep} words`);
      words = words.slice(0, keep);
    }
    const unknown = [...new Set(words.filter((w) => !this.index.has(w)))];
    if (unknown.length) notes.push(`words I don't know: ${unknown.join(", ").slice(0, 200)}`);
    return { query: words.join(" "), notes };
  }

  // vocab.Context.cut: the last turns that fit the budget, the oldest cut from the left
  cut(turns) {
    const recent = this.contextTurns ? turns.slice(Math.max(0, turns.length - this.contextTurns)) : [];
    const kept = [];
    let room = this.contextTokens;
    for (const turn of recent.reverse()) {
      let words = turn.split(" ").filter(Boolean);
      if (room < 2 || words.length === 0) break;
      words = words.slice(-(room - 1));
      kept.push(words.join(" "));
      room -= words.length + 1;
    }
    return kept.reverse();
  }

  encode(sentence) {
    return sentence.split(" ").filter(Boolean).map((w) => this.index.get(w) ?? this.unk);
  }

  // decoding's greedy search: never the never-generated tokens, EOS not before min_length
  async generate(ids) {
    const int64 = (values, dims) => new ort.Tensor("int64", BigInt64Array.from(values, BigInt), dims);
    const padded = [...ids, ...Array(Math.max(0, this.sourceLength - ids.length)).fill(this.pad)];
    const memory = await this.encoder.run({ ids: int64(padded, [1, padded.length]), lengths: int64([ids.length], [1]) });
    let state = memory.state;
    let token = this.sos;
    const reply = [];
    for (let step = 0; step < this.maxLength; step++) {
      const out = await this.step.run({
        token: int64([token], [1]), state, keys: memory.keys, values: memory.values,
        attention_bias: memory.attention_bias,
      });
      state = out.new_state;
      const logits = out.logits.data;
      let best = -1, top = -Infinity;
      for (let i = 0; i < logits.length; i++) {
        if (this.never.has(i) || (step < this.minLength && i === this.eos)) continue;
        if (logits[i] > top) { top = logits[i]; best = i; }
      }
      reply.push(best);
      if (best === this.eos) break;
      token = best;
    }
    return reply;
  }

  async respond(text) {
    const { query, notes } = this.read(text);
    if (!query) return { reply: "", notes };
    const epoch = this.epoch;
    const ids = [];
    for (const turn of this.cut(this.history)) ids.push(...this.encode(turn), this.eos);
    ids.push(...this.encode(query), this.eos);
    const words = [];
    for (const id of await this.generate(ids)) {
      if (id === this.eos) break;
      words.push(this.words[id]);
    }
    if (this.contextTurns && epoch === this.epoch) {
      this.history = [...this.history, query, words.join(" ")].slice(-this.contextTurns);
    }
    let reply = ""; // vocab.detokenize
    for (const word of words) reply += (reply && !".!?".includes(word) ? " " : "") + word;
    return { reply, notes };
  }

  reset() {
    this.history = [];
    this.epoch += 1;
  }
}

// The page: a conversation kept in this tab (conversation.js shows it).
const { $, input, addTurn, addNotes, showError, clearErrors } = view;
const sendButton = $("send");
const timings = { loaded: null, replies: [] }; // ms: from navigation to a ready bot, and each reply
window.botTimings = timings;
let bot = null;
let busy = false; // one reply at a time: the next message reads the conversation this one ends
let generation = 0; // a new conversation drops a reply still on its way

async function send(text) {
  if (!bot || busy || !text.trim()) return;
  busy = true;
  const mine = generation;
  clearErrors();
  const turn = addTurn("user", text);
  sendButton.disabled = true;
  try {
    const start = performance.now();
    const { reply, notes } = await bot.respond(text);
    if (mine !== generation) return; // the conversation was reset meanwhile
    addNotes(turn, notes);
    if (reply) {
      timings.replies.push(performance.now() - start);
      addTurn("assistant", reply);
    } else {
      turn.classList.add("failed");
    }
  } catch (error) {
    showError(`The bot failed: ${error.message || error}`);
  } finally {
    busy = false;
    sendButton.disabled = false;
    input.focus();
  }
}

view.onMessage(send, () => busy || !bot); // typed before the model is in: the text waits in the box
$("new").addEventListener("click", () => {
  generation += 1;
  if (bot) bot.reset();
  view.clear();
});

Bot.load().then((loaded) => {
  bot = loaded;
  window.bot = loaded;
  timings.loaded = performance.now();
  $("status").className = "status ok";
  $("subtitle").textContent = "running in this tab: nothing you type leaves it";
  sendButton.disabled = false;
  input.focus();
}).catch((error) => {
  $("status").className = "status down";
  $("subtitle").textContent = "the model could not be loaded";
  const hint = location.protocol === "file:" ? " Serve this folder over HTTP (python -m http.server), not as a file." : "";
  showError(`The model could not be loaded: ${error.message || error}.${hint}`);
});
