// The conversation on the page, which serve.py's chat page (chat.js) and the exported web bot
// (bot.js) share: turns with their notes, the typing dots, errors, and the composer (Enter
// sends, Shift+Enter breaks the line, a message typed while a reply is on its way stays).
"use strict";

const view = (() => {
  const $ = (id) => document.getElementById(id);
  const log = $("log"), empty = $("empty"), form = $("form"), input = $("input");

  function scrollDown() {
    log.scrollTop = log.scrollHeight;
  }

  // The model writes lower case ("i'm fine. where is he?"): shown with capitals where a reader
  // expects them; the conversation keeps the words as they came.
  function pretty(text) {
    return text
      .replace(/\bi\b/g, "I")
      .replace(/(^|[.!?]\s+)([a-z])/g, (_, before, letter) => before + letter.toUpperCase());
  }

  function addNotes(turn, notes) {
    for (const note of notes) {
      const line = document.createElement("div");
      line.className = "note";
      line.textContent = note;
      turn.append(line);
    }
  }

  function addTurn(role, text, notes = []) {
    empty.hidden = true;
    const turn = document.createElement("div");
    turn.className = `turn ${role}`;
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    bubble.textContent = (role === "assistant" ? pretty(text) : text) || "…";
    turn.append(bubble);
    addNotes(turn, notes);
    log.append(turn);
    scrollDown();
    return turn;
  }

  function showTyping() {
    const turn = document.createElement("div");
    turn.className = "turn assistant typing";
    turn.setAttribute("aria-label", "the bot is typing");
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    for (let i = 0; i < 3; i++) {
      const dot = document.createElement("span");
      dot.className = "dot";
      bubble.append(dot);
    }
    turn.append(bubble);
    log.append(turn);
    scrollDown();
    return turn;
  }

  function showError(message, retry = null) {
    const box = document.createElement("div");
    box.className = "error";
    box.setAttribute("role", "alert");
    const text = document.createElement("span");
    text.textContent = message;
    box.append(text);
    if (retry) {
      const again = document.createElement("button");
      again.type = "button";
      again.textContent = "Retry";
      again.addEventListener("click", () => {
        box.remove();
        retry();
      });
      box.append(again);
    }
    log.append(box);
    scrollDown();
  }

  function clearErrors() {
    for (const box of log.querySelectorAll(".error")) box.remove();
  }

  function clear() {
    for (const node of [...log.children]) if (node !== empty) node.remove();
    empty.hidden = false;
  }

  function grow() {
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
  }

  // send(text) for each message, typed or a suggestion; busy() while a reply is on its way
  function onMessage(send, busy) {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (busy()) return; // the text stays in the box until the reply is in
      const text = input.value;
      input.value = "";
      grow();
      send(text);
    });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
    input.addEventListener("input", grow);
    for (const button of $("suggestions").querySelectorAll("button")) {
      button.addEventListener("click", () => send(button.textContent));
    }
  }

  return { $, input, addTurn, addNotes, showTyping, showError, clearErrors, clear, onMessage };
})();
