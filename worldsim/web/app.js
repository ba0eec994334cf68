// The worldsim page: frames in over a WebSocket, keys and prompts out. No libraries, nothing fetched.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const withToken = (path, extra = {}) => {
  const query = new URLSearchParams({ ...extra, ...(token ? { token } : {}) }).toString();
  return query ? `${path}?${query}` : path;
};
const $ = (id) => document.getElementById(id);
const screen = $("screen");
const draw = screen.getContext("2d");

// pygame key names, as the scenario's keymap writes them
const KEY_NAMES = { ArrowUp: "up", ArrowDown: "down", ArrowLeft: "left", ArrowRight: "right", " ": "space",
  Escape: "escape", Enter: "return", Tab: "tab", Backspace: "backspace" };
const keyName = (event) => KEY_NAMES[event.key] || (event.key.length === 1 ? event.key.toLowerCase() : event.key.toLowerCase());

let socket = null;
let info = null;
let status = {};
const shown = [];               // times frames were drawn, for the shown fps
const pendingInputs = new Map(); // server input counter -> time the input was sent
const sentAt = [];               // times of inputs sent and not yet acknowledged
const latencies = [];

function showError(message) {
  $("error").textContent = message;
  clearTimeout(showError.timer);
  showError.timer = setTimeout(() => { $("error").textContent = ""; }, 6000);
}

function send(message) {
  if (socket && socket.readyState === WebSocket.OPEN) {
    if (["keydown", "keyup", "prompt", "action"].includes(message.type)) sentAt.push(performance.now());
    socket.send(JSON.stringify(message));
  }
}

async function start() {
  const response = await fetch(withToken("scenario"));
  if (!response.ok) { $("banner").textContent = `cannot open the session: ${response.status} ${await response.text()}`; return; }
  info = await response.json();
  $("model").textContent = info.name;
  screen.width = info.width; screen.height = info.height;
  screen.style.setProperty("--aspect", info.width / info.height);
  $("prompt-text").maxLength = info.max_prompt;
  const keys = $("keys");
  for (const action of info.actions) {
    if (!action.keys.length) continue;
    const row = keys.insertRow();
    row.dataset.action = action.name;
    row.insertCell().textContent = action.keys.join(", ");
    row.insertCell().textContent = action.name + (info.held.includes(action.name) ? "  (hold)" : "");
  }
  for (const [key, what] of Object.entries(info.window_keys)) {
    const row = keys.insertRow();
    row.insertCell().textContent = key;
    row.insertCell().textContent = what === "pause" ? "pause / resume" : "record on / off";
  }
  for (const action of info.actions.filter((a) => a.kind === "cut")) {
    const button = document.createElement("button");
    button.textContent = `cut: ${action.name}`;
    button.addEventListener("click", () => send({ type: "action", name: action.name }));
    $("cuts").appendChild(button);
  }
  connect();
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}${location.pathname.replace(/[^/]*$/, "")}${withToken("ws")}`);
  socket.binaryType = "arraybuffer";
  socket.addEventListener("open", () => { $("banner").textContent = "click the picture, then use the keys"; screen.focus(); });
  socket.addEventListener("close", () => { $("banner").textContent = "disconnected (reload to join again)"; });
  socket.addEventListener("message", (event) => {
    if (typeof event.data === "string") onMessage(JSON.parse(event.data));
    else onFrame(event.data);
  });
}

function onMessage(message) {
  if (message.type === "error") showError(message.message);
  else if (message.type === "ack") { const t = sentAt.shift(); if (t !== undefined) pendingInputs.set(message.inputs, t); }
  else if (message.type === "status") { status = message; updateHud(); }
}

async function onFrame(buffer) {
  const length = new DataView(buffer).getUint32(0);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, length)));
  const bitmap = await createImageBitmap(new Blob([new Uint8Array(buffer, 4 + length)], { type: "image/jpeg" }));
  draw.imageSmoothingEnabled = false;
  draw.drawImage(bitmap, 0, 0, screen.width, screen.height);
  const now = performance.now();
  shown.push(now);
  while (shown.length > 32) shown.shift();
  for (const [inputs, t] of pendingInputs) {
    if (header.inputs >= inputs) {
      latencies.push(now - t);
      while (latencies.length > 20) latencies.shift();
      pendingInputs.delete(inputs);
    }
  }
  screen.dataset.block = header.block;
  screen.dataset.frames = Number(screen.dataset.frames || 0) + 1;
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function updateHud() {
  $("action").textContent = status.action || "-";
  $("prompt").textContent = status.prompt || "-";
  $("block").textContent = status.block >= 0 ? status.block : "-";
  $("cache").textContent = status.cache_frames;
  const fps = shown.length > 1 ? (shown.length - 1) / ((shown[shown.length - 1] - shown[0]) / 1000) : 0;
  $("shown").textContent = fps.toFixed(1);
  $("generated").textContent = (status.generated_fps || 0).toFixed(1);
  $("latency").textContent = latencies.length
    ? `${latencies[latencies.length - 1].toFixed(0)} ms (median ${median(latencies).toFixed(0)} ms)` : "-";
  $("flush").textContent = status.last_flush == null ? "-" : `block ${status.last_flush}`;
  $("cut").textContent = status.last_cut == null ? "-" : `block ${status.last_cut}`;
  $("dropped").textContent = status.dropped;
  const state = [status.paused ? "PAUSED" : "running", status.recording ? `REC ${status.recording}` : "not recording"];
  if (status.failure) state.push(status.failure);
  $("state").textContent = state.join(", ");
  const controlling = status.controller === status.you;
  $("control").textContent = controlling ? `you control (viewer ${status.you})`
    : status.controller == null ? "nobody controls: take control" : `watching: viewer ${status.controller} controls`;
  $("take").disabled = status.controller != null;
  const others = (status.viewers || []).filter((v) => v !== status.you);
  const select = $("viewers");
  if (select.dataset.list !== others.join(",")) {
    select.replaceChildren(...others.map((v) => new Option(`viewer ${v}`, v)));
    select.dataset.list = others.join(",");
  }
  $("give").disabled = !controlling || !others.length;
  for (const row of $("keys").rows) row.classList.toggle("now", row.dataset.action === status.action);
}

const typing = (event) => ["INPUT", "SELECT", "TEXTAREA"].includes(event.target.tagName);
document.addEventListener("keydown", (event) => {
  if (typing(event) || event.ctrlKey || event.metaKey || event.altKey) return;
  event.preventDefault();
  if (!event.repeat) send({ type: "keydown", key: keyName(event) });
});
document.addEventListener("keyup", (event) => {
  if (typing(event)) return;
  send({ type: "keyup", key: keyName(event) });
});
window.addEventListener("blur", () => send({ type: "blur" }));

$("prompt-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("prompt-text").value.trim();
  if (text) send({ type: "prompt", text, cut: false });
});
$("send-cut").addEventListener("click", () => {
  const text = $("prompt-text").value.trim();
  if (text) send({ type: "prompt", text, cut: true });
});
$("restart").addEventListener("click", () => send({ type: "restart", seed: Number($("seed").value) || 0 }));
$("image").addEventListener("change", () => {
  const file = $("image").files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => send({ type: "image", data: reader.result });
  reader.readAsDataURL(file);
});
$("take").addEventListener("click", () => send({ type: "take_control" }));
$("give").addEventListener("click", () => send({ type: "give_control", to: Number($("viewers").value) }));
$("download-replay").href = withToken("recording.jsonl");
const clipLink = () => { $("download-clip").href = withToken("clip.mp4", { seconds: $("clip-seconds").value }); };
$("clip-seconds").addEventListener("input", clipLink);
clipLink();
setInterval(updateHud, 500);
start();
