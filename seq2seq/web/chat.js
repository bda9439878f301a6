// The chat page of serve.py: the conversation lives here, in the page (and sessionStorage, so a
// reload keeps it), and is sent whole with each request; the server keeps none.
"use strict";

const STORE = "chatbot-seq2seq/conversation";
const KEY_STORE = "chatbot-seq2seq/api-key";
const MODE_STORE = "chatbot-seq2seq/mode";
const SENT = 40; // the most recent messages sent with each request: more than any model reads
const VARIED_TEMPERATURE = 0.8;

const { $, input, addTurn, addNotes, showTyping, showError, clearErrors } = view; // conversation.js
const sendButton = $("send"), mode = $("mode"), keyRow = $("keyrow"), keyInput = $("key"), status = $("status");

let model = null;
let maxMessages = SENT; // the server's --max-messages, from /health
let busy = false;
let conversation = load();

function load() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(STORE) || "[]");
    const valid = (m) => m && (m.role === "user" || m.role === "assistant") && typeof m.content === "string";
    return Array.isArray(saved) ? saved.filter(valid) : [];
  } catch {
    return [];
  }
}

function save() {
  try {
    sessionStorage.setItem(STORE, JSON.stringify(conversation));
  } catch {
    // storage full or disabled: the conversation still lives in the page
  }
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function checkHealth() {
  try {
    const response = await fetch("/health", { cache: "no-store" });
    const body = await response.json();
    model = body.model;
    if (Number.isInteger(body.max_messages) && body.max_messages > 0) maxMessages = body.max_messages;
    status.className = response.ok ? "status ok" : "status down";
    status.title = response.ok ? `serving ${model}` : `the server says: ${body.status}`;
  } catch {
    status.className = "status down";
    status.title = "the server cannot be reached";
  }
}

class RequestError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

async function ask(messages) {
  if (!model) await checkHealth();
  const body = { model: model || "", messages };
  if (mode.value === "varied") body.temperature = VARIED_TEMPERATURE;
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), 60000);
  let response;
  try {
    response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
  } catch {
    throw new RequestError("The server cannot be reached: is serve.py still running?", 0);
  } finally {
    clearTimeout(timer);
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    // not JSON: said below by the status
  }
  if (!response.ok) {
    const message = data && data.error && data.error.message;
    throw new RequestError(message || `The server answered ${response.status} ${response.statusText}.`, response.status);
  }
  return data;
}

async function send(text) {
  if (busy || !text.trim()) return;
  busy = true;
  sendButton.disabled = true;
  clearErrors();
  const turn = addTurn("user", text);
  const typing = showTyping();
  const messages = [...conversation, { role: "user", content: text }].slice(-Math.min(SENT, maxMessages));
  try {
    const data = await ask(messages);
    const reply = data.choices[0].message.content;
    addNotes(turn, data.notes || []);
    conversation.push({ role: "user", content: text }, { role: "assistant", content: reply });
    save();
    typing.remove();
    addTurn("assistant", reply);
  } catch (error) {
    typing.remove();
    turn.classList.add("failed");
    if (error.status === 401) {
      keyRow.hidden = false;
      keyInput.focus();
    }
    const retry = error.status === 400 ? null : () => { turn.remove(); send(text); };
    showError(error.message, retry);
    if (error.status === 0) checkHealth();
  } finally {
    busy = false;
    sendButton.disabled = false;
    if (keyRow.hidden) input.focus();
  }
}

function newConversation() {
  conversation = [];
  save();
  view.clear();
  input.focus();
}

view.onMessage(send, () => busy);
keyInput.addEventListener("change", () => {
  sessionStorage.setItem(KEY_STORE, keyInput.value.trim());
  input.focus();
});
$("new").addEventListener("click", newConversation);
mode.value = localStorage.getItem(MODE_STORE) === "varied" ? "varied" : "best";
mode.addEventListener("change", () => localStorage.setItem(MODE_STORE, mode.value));

for (const message of conversation) addTurn(message.role, message.content);
checkHealth();
input.focus();
