// The labelling page. Model text is untrusted: it is only ever put in the page with textContent.
"use strict";

const FLAGS = ["", "unsafe", "nonsense", "other"];
const state = { task: null, ranks: {}, flags: {}, current: 0, mode: "rank", busy: false };
const $ = (id) => document.getElementById(id);

function credentials() {
  const params = new URLSearchParams(location.search);
  for (const key of ["token", "rater"]) {
    if (params.has(key)) localStorage.setItem("textgym-" + key, params.get(key));
  }
  return { token: localStorage.getItem("textgym-token") || "", rater: localStorage.getItem("textgym-rater") || "" };
}

async function api(method, path, body) {
  const { token, rater } = credentials();
  const response = await fetch(path, {
    method,
    headers: { "Content-Type": "application/json", "X-Token": token, "X-Rater": rater },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const payload = await response.json();
  if (!response.ok) {
    const error = new Error(payload.error || response.statusText);
    error.status = response.status;
    throw error;
  }
  return payload;
}

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function showProgress(done, total) {
  $("progress").textContent = `${done} of ${total}`;
}

function render(task, previous) {
  state.task = task;
  state.ranks = {};
  state.flags = {};
  state.current = 0;
  $("comment").value = "";
  $("task").hidden = !task;
  $("done").hidden = !!task;
  if (!task) return;
  if (previous) {
    previous.ranking.forEach((group, rank) => group.forEach((i) => (state.ranks[i] = rank + 1)));
    state.flags = { ...previous.flags };
    $("comment").value = previous.comment || "";
  }
  const k = task.completions.length;
  $("instructions").textContent =
    k === 2 && state.mode === "pairs"
      ? "Which completion is better? Give the better one rank 1 (the same rank to both for a tie)."
      : `Rank the ${k} completions from best (1) to worst; equal ranks are a tie.`;
  $("prompt").textContent = task.prompt;
  const list = $("completions");
  list.replaceChildren();
  task.completions.forEach((completion, position) => {
    const card = document.createElement("li");
    card.className = "card";
    card.dataset.index = completion.index;
    const text = document.createElement("pre");
    text.className = "text";
    text.textContent = completion.text; // as text, never parsed as HTML: a <script> here must show as text
    const controls = document.createElement("div");
    controls.className = "controls";
    const ranks = document.createElement("div");
    ranks.className = "ranks";
    for (let r = 1; r <= k; r++) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = r;
      button.dataset.rank = r;
      button.title = `rank ${r}`;
      button.addEventListener("click", () => setRank(position, r));
      ranks.append(button);
    }
    const flag = document.createElement("button");
    flag.type = "button";
    flag.className = "flag";
    flag.addEventListener("click", () => cycleFlag(position));
    controls.append(ranks, flag);
    card.append(text, controls);
    card.addEventListener("click", () => { state.current = position; paint(); });
    list.append(card);
  });
  paint();
}

function paint() {
  document.querySelectorAll(".card").forEach((card, position) => {
    const index = Number(card.dataset.index);
    const rank = state.ranks[index];
    card.classList.toggle("current", position === state.current);
    card.classList.toggle("ranked", rank !== undefined);
    card.querySelectorAll(".ranks button").forEach((b) => b.classList.toggle("on", Number(b.dataset.rank) === rank));
    const flag = card.querySelector(".flag");
    flag.textContent = state.flags[index] ? `flagged: ${state.flags[index]}` : "flag";
    flag.classList.toggle("on", !!state.flags[index]);
  });
}

function indexAt(position) {
  return state.task.completions[position].index;
}

function setRank(position, rank) {
  state.ranks[indexAt(position)] = rank;
  state.current = Math.min(position + 1, state.task.completions.length - 1);
  paint();
}

function cycleFlag(position) {
  const index = indexAt(position);
  const next = FLAGS[(FLAGS.indexOf(state.flags[index] || "") + 1) % FLAGS.length];
  if (next) state.flags[index] = next;
  else delete state.flags[index];
  state.current = position;
  paint();
}

function ranking() {
  const indices = state.task.completions.map((c) => c.index);
  if (indices.some((i) => state.ranks[i] === undefined)) return null;
  const byRank = new Map();
  for (const i of indices) {
    if (!byRank.has(state.ranks[i])) byRank.set(state.ranks[i], []);
    byRank.get(state.ranks[i]).push(i);
  }
  return [...byRank.keys()].sort((a, b) => a - b).map((r) => byRank.get(r));
}

async function guarded(action) {
  if (state.busy) return;
  state.busy = true;
  try {
    await action();
  } catch (error) {
    if (error.status === 401 || error.status === 403) showLogin();
    status(error.message, true);
  } finally {
    state.busy = false;
  }
}

async function next() {
  const payload = await api("GET", "/api/next");
  state.mode = payload.mode;
  $("who").textContent = `rater: ${payload.rater}`;
  $("login").hidden = true;
  showProgress(payload.done, payload.total);
  render(payload.task);
}

function submit() {
  return guarded(async () => {
    if (!state.task) return;
    const order = ranking();
    if (!order) {
      status("Give every completion a rank first.", true);
      return;
    }
    const flags = {};
    for (const [i, reason] of Object.entries(state.flags)) flags[String(i)] = reason;
    const answer = { item: state.task.item, ranking: order, flags, comment: $("comment").value };
    const saved = await api("POST", "/api/label", answer); // the reply comes once the label is on disk
    status(`Saved item ${saved.saved.item}.`);
    showProgress(saved.done, saved.total);
    render(saved.task);
  });
}

function undo() {
  return guarded(async () => {
    const payload = await api("POST", "/api/undo");
    status(`Undid your answer to item ${payload.undone.item}.`);
    const progress = await api("GET", "/api/next");
    showProgress(progress.done, progress.total);
    render(payload.task, payload.undone);
  });
}

function showLogin() {
  $("login").hidden = false;
  $("task").hidden = true;
}

function onKey(event) {
  if (event.target.tagName === "TEXTAREA" || event.target.tagName === "INPUT") {
    if (event.key === "Escape") event.target.blur();
    if (event.key === "Enter" && event.target.tagName === "TEXTAREA" && (event.ctrlKey || event.metaKey)) submit();
    return;
  }
  if (!state.task || event.ctrlKey || event.metaKey || event.altKey) return;
  const k = state.task.completions.length;
  if (/^[1-9]$/.test(event.key) && Number(event.key) <= k) setRank(state.current, Number(event.key));
  else if (event.key === "ArrowDown" || event.key === "j") { state.current = Math.min(state.current + 1, k - 1); paint(); }
  else if (event.key === "ArrowUp" || event.key === "k") { state.current = Math.max(state.current - 1, 0); paint(); }
  else if (event.key === "f") cycleFlag(state.current);
  else if (event.key === "c") { $("comment").focus(); }
  else if (event.key === "Enter") submit();
  else if (event.key === "u") undo();
  else return;
  event.preventDefault();
}

document.addEventListener("DOMContentLoaded", () => {
  $("submit").addEventListener("click", submit);
  $("undo").addEventListener("click", undo);
  document.addEventListener("keydown", onKey);
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem("textgym-rater", $("login-name").value.trim());
    localStorage.setItem("textgym-token", $("login-token").value);
    guarded(next);
  });
  const { token, rater } = credentials();
  if (!token && !rater) showLogin();
  else guarded(next);
});
