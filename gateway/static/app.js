// SightScan webcam client: camera frames -> /ws/detect websocket -> boxes and sight names over the video.
// Plain browser JavaScript, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const MAX_FPS = 10;          // frames sent per second at most
const MAX_UNANSWERED = 2;    // frames on the wire before waiting for an answer (the server keeps only the newest)
const SEND_WIDTH = 480;      // frames are downscaled before JPEG encoding: the model input is smaller anyway

const MAX_KEPT_FRAMES = 8;    // frames sent and not yet answered, kept so an answer can be paired with its frame

// frames: number -> the JPEG sent as that frame; shown: the last answered frame, as drawn ({frame, blob, width,
// height, model_version, detections}); paused: the shown frame is frozen on screen (corrections.js acts on it).
const state = { city: "", ws: null, stream: null, timer: null, sent: 0, answered: 0, lastSend: 0,
                detections: [], seen: new Map(), statusTimer: null, sights: [], frames: new Map(), shown: null,
                paused: false };

function setText(el, text) { el.textContent = text; }

// Cities and pipeline status -------------------------------------------------------------------------------

async function loadCities(selected) {
  const res = await fetch("/api/cities");
  const body = await res.json();
  const select = $("city");
  const keep = selected || select.value;
  select.replaceChildren(new Option("— pick a city —", ""));
  for (const c of body.cities) {
    const label = c.model ? `${c.name} (model v${c.model.version})` : `${c.name} (${c.status})`;
    select.add(new Option(label, c.name));
  }
  if (keep) {
    if (![...select.options].some((o) => o.value === keep)) select.add(new Option(keep, keep));
    select.value = keep;
  }
}

async function refreshStatus() {
  if (!state.city) return;
  const city = state.city;
  try {
    const res = await fetch(`/api/cities/${encodeURIComponent(city)}`);
    const dl = $("status");
    if (!res.ok) { dl.replaceChildren(); setText($("error"), `status: ${res.status}`); return; }
    const c = await res.json();
    const rows = [["City", c.name], ["Status", c.status], ["Sights", c.sights], ["Images", c.images],
                  ["Labelled", c.labelled_images],
                  ["Model", c.model ? `v${c.model.version}` : "none yet"],
                  ["Serving", c.serving_version ? `v${c.serving_version}` : "—"]];
    dl.replaceChildren(...rows.flatMap(([k, v]) => {
      const dt = document.createElement("dt"); dt.textContent = k;
      const dd = document.createElement("dd"); dd.textContent = String(v);
      dd.dataset.field = k.toLowerCase();
      return [dt, dd];
    }));
    showFigures(c.model ? c.model.figures || [] : []);
    if (city === state.city) state.sights = c.model ? c.model.classes : [];  // the "this is X" chooser
  } catch (e) { setText($("error"), `status: ${e}`); }
}

// The model's figures as the server names them (sightscan/model_metrics.py): name, value as text, and what it
// was measured on; how well it does first, then the confusion matrix as a small table, then how it was trained.
function figureList(list, title, figures) {
  list.replaceChildren(...figures.flatMap((f) => {
    const dt = document.createElement("dt"); dt.textContent = f.name;
    const dd = document.createElement("dd"); dd.textContent = f.display;
    dd.dataset.figure = f.key;
    if (f.basis) {
      const basis = document.createElement("small"); basis.textContent = f.basis;
      dd.append(document.createElement("br"), basis);
    }
    return [dt, dd];
  }));
  title.hidden = figures.length === 0;
}

function showFigures(figures) {
  const table = $("confusion");
  const scalar = figures.filter((f) => f.key !== "confusion");
  figureList($("figures"), $("figures-title"), scalar.filter((f) => f.group !== "training"));
  figureList($("training"), $("training-title"), scalar.filter((f) => f.group === "training"));
  const confusion = figures.find((f) => f.key === "confusion");
  table.hidden = !confusion;
  if (!confusion) { table.replaceChildren(); return; }
  const { classes, matrix } = confusion.value;
  const cell = (tag, text, cls) => {
    const el = document.createElement(tag); el.textContent = String(text);
    if (cls) el.className = cls;
    return el;
  };
  const caption = cell("caption", `${confusion.name} · ${confusion.display}`);
  const head = document.createElement("tr");
  head.append(cell("th", "true ↓ predicted →"), ...classes.map((c) => cell("th", c)));
  const body = matrix.map((row, i) => {
    const tr = document.createElement("tr");
    tr.append(cell("th", classes[i]), ...row.map((n, j) => cell("td", n, i === j ? "hit" : n ? "miss" : "")));
    return tr;
  });
  table.replaceChildren(caption, head, ...body);
}

// Websocket --------------------------------------------------------------------------------------------

// GATEWAY_WS_TOKEN, when the gateway has one: open the page as /#token=TOKEN (a fragment never reaches a server
// or its logs); it is kept for this tab only. It travels as a websocket subprotocol, the one thing a page may set.
function wsToken() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    sessionStorage.setItem("sightscan.wsToken", fromHash);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("sightscan.wsToken") || "";
}

function connect() {
  if (state.ws) state.ws.close();
  if (!state.city) return;
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const token = wsToken();
  const ws = new WebSocket(`${proto}://${location.host}/ws/detect?city=${encodeURIComponent(state.city)}`,
                           token ? ["sightscan", `sightscan.token.${token}`] : []);
  ws.binaryType = "arraybuffer";
  state.ws = ws; state.sent = 0; state.answered = 0; state.frames.clear();
  ws.onopen = () => setText($("conn"), `connected to ${state.city}`);
  ws.onclose = (ev) => {
    if (state.ws !== ws) return;
    setText($("conn"), `closed (${ev.code}${ev.reason ? " " + ev.reason : ""})`);
    state.ws = null;
    // Reconnect while the camera runs (e.g. after idle close); a paused page reconnects when it resumes.
    if (state.stream && !state.paused) setTimeout(connect, 1000);
  };
  ws.onmessage = (ev) => onMessage(JSON.parse(ev.data));
}

function onMessage(msg) {
  if (msg.frame && !msg.local) state.answered = Math.max(state.answered, msg.frame);
  if (msg.type === "hello") {
    if (msg.model) state.sights = msg.model.classes;
    Local.model(state.city, msg.model);  // the local path loads it (local.js)
    setText($("model-info"), msg.model ? `model v${msg.model.model_version}: ${msg.model.classes.length} sights`
                                       : "this city has no model yet");
  } else if (msg.type === "model") {
    if (msg.classes) state.sights = msg.classes;
    Local.model(state.city, msg.model_version ? msg : null);
    setText($("model-info"), msg.model_version ? `model updated to v${msg.model_version}` : "model withdrawn");
    refreshStatus();
  } else if (msg.type === "detections") {
    if (state.paused) return;  // the frozen frame stays as it was shown
    // The frame this answer is about, exactly as sent: a correction sends it with the detections drawn on it. An
    // answer from this device (local.js) gets its frame as a JPEG just after, and Pause with it.
    const sent = msg.local || state.frames.get(msg.frame);
    for (const n of state.frames.keys()) if (n <= msg.frame) state.frames.delete(n);
    state.shown = { frame: msg.frame, blob: sent ? sent.blob : null, width: msg.width, height: msg.height,
                    model_version: msg.model_version, detections: msg.detections,
                    path: msg.local ? "device" : "server" };
    $("pause").disabled = !(sent && sent.blob);
    state.detections = msg.detections;
    setText($("error"), "");
    setText($("conn"), `connected to ${state.city} · model v${msg.model_version} · ${msg.latency_ms} ms`);
    Local.served(msg, sent);  // the path and its time per frame
    const list = $("current");
    list.replaceChildren(...msg.detections.map((d) => {
      const li = document.createElement("li");
      li.textContent = `${d.sight} (${Math.round(d.score * 100)}%)`;
      li.dataset.sight = d.sight;
      return li;
    }));
    if (msg.detections.length === 0) {  // the model's "no sight" answer: the page goes quiet, and says so
      const li = document.createElement("li");
      li.textContent = "no sight in view";
      li.className = "quiet";
      li.dataset.none = "1";
      list.replaceChildren(li);
    }
    for (const d of msg.detections) state.seen.set(d.sight, new Date());
    $("seen").replaceChildren(...[...state.seen.entries()].sort((a, b) => b[1] - a[1]).slice(0, 10).map(([s, t]) => {
      const li = document.createElement("li");
      li.textContent = `${s} · ${t.toLocaleTimeString()}`;
      li.dataset.sight = s;
      return li;
    }));
    draw();
  } else if (msg.type === "error") {
    setText($("error"), `${msg.code}: ${msg.message}`);
  }
}

// Camera and drawing -----------------------------------------------------------------------------------

const grab = document.createElement("canvas");

function sendFrame() {
  const ws = state.ws, video = $("video");
  if (state.paused || !ws || ws.readyState !== WebSocket.OPEN || !video.videoWidth) return;
  if (!Local.sendsFrames()) return;  // this device answers (local.js): no frame leaves it
  const now = performance.now();
  // Flow control: do not pile frames up behind a slow server or network; after a second, send anyway.
  if (state.sent - state.answered >= MAX_UNANSWERED && now - state.lastSend < 1000) return;
  if (ws.bufferedAmount > 0) return;
  const scale = Math.min(1, SEND_WIDTH / video.videoWidth);
  grab.width = Math.round(video.videoWidth * scale);
  grab.height = Math.round(video.videoHeight * scale);
  grab.getContext("2d").drawImage(video, 0, 0, grab.width, grab.height);
  state.lastSend = now;
  grab.toBlob((blob) => {
    if (!blob || ws.readyState !== WebSocket.OPEN || state.ws !== ws) return;
    ws.send(blob);
    state.sent += 1;  // the server numbers frames in the order they arrive: this one is frame state.sent
    state.frames.set(state.sent, { blob, at: now });
    for (const n of state.frames.keys()) if (n <= state.sent - MAX_KEPT_FRAMES) state.frames.delete(n);
  }, "image/jpeg", 0.75);
}

function draw() {
  const media = state.paused ? $("still") : $("video"), overlay = $("overlay");
  overlay.width = media.clientWidth; overlay.height = media.clientHeight;
  const ctx = overlay.getContext("2d");
  ctx.clearRect(0, 0, overlay.width, overlay.height);
  ctx.lineWidth = 3; ctx.font = "16px system-ui, sans-serif";
  const detections = state.paused ? state.shown.detections : state.detections;
  for (const d of detections) {
    const [x0, y0, x1, y1] = d.box;
    const x = x0 * overlay.width, y = y0 * overlay.height;
    const w = (x1 - x0) * overlay.width, h = (y1 - y0) * overlay.height;
    ctx.strokeStyle = "#ffcc00"; ctx.strokeRect(x, y, w, h);
    const label = `${d.sight} ${Math.round(d.score * 100)}%`;
    ctx.fillStyle = "rgba(0,0,0,0.6)"; ctx.fillRect(x, Math.max(0, y - 22), ctx.measureText(label).width + 8, 22);
    ctx.fillStyle = "#fff"; ctx.fillText(label, x + 4, Math.max(16, y - 6));
  }
  if (state.paused) Corrections.decorate(ctx, overlay.width, overlay.height);
}

// Pause freezes the last answered frame on screen, exactly the frame its detections are about, and stops sending.
function pause() {
  if (state.paused || !state.shown || !state.shown.blob) return;
  const video = $("video"), still = $("still");
  state.paused = true;
  if (video.videoWidth && !state.shown.review) {
    still.style.width = `${video.clientWidth}px`; still.style.height = `${video.clientHeight}px`;
  } else {  // a frame of the review queue, or no camera: the frame's own shape
    const w = Math.min(640, state.shown.width || 640);
    const h = Math.round(w * (state.shown.height || 3) / (state.shown.width || 4));
    still.style.width = `${w}px`; still.style.height = `${h}px`;
  }
  still.src = URL.createObjectURL(state.shown.blob);
  still.hidden = false; video.hidden = true;
  const button = $("pause");
  button.textContent = "Resume"; button.setAttribute("aria-pressed", "true");
  still.decode().catch(() => {}).then(draw);
  Corrections.open(state.shown);
}

// Pause on a frame other than the live one (a frame of the review queue, review.js): the same panel, on it.
function pauseOn(shown) {
  if (state.paused) resume();
  state.shown = shown;
  $("pause").disabled = false;
  pause();
}

function resume() {
  if (!state.paused) return;
  state.paused = false;
  Corrections.close();
  const still = $("still");
  URL.revokeObjectURL(still.src);
  still.removeAttribute("src"); still.hidden = true; $("video").hidden = false;
  const button = $("pause");
  button.textContent = "Pause"; button.setAttribute("aria-pressed", "false");
  state.detections = []; draw();
  if (state.stream && !state.ws) connect();
}

async function start() {
  if (!state.city) { setText($("error"), "pick a city first"); return; }
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (e) { setText($("error"), `camera: ${e.name}: ${e.message}`); return; }
  const video = $("video");
  video.srcObject = state.stream;
  await video.play();
  connect();
  state.timer = setInterval(sendFrame, 1000 / MAX_FPS);
  $("start").disabled = true; $("stop").disabled = false;
}

function stop() {
  clearInterval(state.timer); state.timer = null;
  if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
  state.stream = null;
  if (state.ws) { const ws = state.ws; state.ws = null; ws.close(); }
  resume();
  state.detections = []; state.shown = null; draw();
  $("start").disabled = false; $("stop").disabled = true; $("pause").disabled = true;
  setText($("conn"), "not connected");
}

function selectCity(name) {
  resume();
  state.shown = null; $("pause").disabled = true; state.sights = [];
  state.city = name; state.seen.clear(); state.detections = [];
  $("current").replaceChildren(); $("seen").replaceChildren();
  const url = new URL(location.href);
  if (name) url.searchParams.set("city", name); else url.searchParams.delete("city");
  history.replaceState(null, "", url);
  refreshStatus();
  Review.setCity(name);
  if (state.stream) connect();
}

// Wiring -----------------------------------------------------------------------------------------------

$("city").addEventListener("change", (e) => selectCity(e.target.value));
$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
$("pause").addEventListener("click", () => (state.paused ? resume() : pause()));
// The write token lives in this browser's localStorage, never in a URL; every write sends it as a header.
$("token").value = localStorage.getItem("sightscan-token") || "";
$("token").addEventListener("change", () => localStorage.setItem("sightscan-token", $("token").value.trim()));
Corrections.init();
Review.init();
Local.init();
$("request").addEventListener("submit", async (e) => {
  e.preventDefault();
  const name = $("new-city").value.trim(), token = $("token").value.trim();
  const res = await fetch("/api/cities", { method: "POST", body: JSON.stringify({ name }),
    headers: { "Content-Type": "application/json", "Authorization": `Bearer ${token}` } });
  const body = await res.json();
  if (!res.ok) { setText($("request-result"), `${body.error}: ${body.message}`); return; }
  setText($("request-result"), body.created ? `requested ${body.name}` : `${body.name} is already known`);
  await loadCities(body.name);
  selectCity(body.name);
});

(async () => {
  await loadCities(params.get("city") || "");
  selectCity(params.get("city") || "");
  state.statusTimer = setInterval(refreshStatus, 2000);
  if (params.get("autostart") === "1" && state.city) start();
})();
