// Recognition on this device (issue 22): the city's model runs in a web worker (local_worker.js, onnxruntime-web's
// WebAssembly backend) and no frame leaves the browser; the gateway's websocket stays open as a control channel
// (hello and model events, no frames) and is the fallback path. Loaded before app.js; it uses app.js's `state`,
// `onMessage` and `$` at run time only.
//
// The path: "auto" (the default) runs here when it can and falls back to the server when this browser has no
// WebAssembly, the gateway has no browser runtime installed, the model does not load, or a frame takes longer than
// the gateway's frame budget (median of 20 frames, or of the warm-up runs); "device" and "server" are the user's
// choice (the Run selector, kept in localStorage; ?path= overrides it). A new model is loaded by a new worker in the
// background while the old one answers, and replaces it between two frames.
"use strict";

const Local = (() => {
  const el = (id) => document.getElementById(id);
  const CHOICES = ["auto", "device", "server"];
  const MAX_FPS = 30;          // frames analysed per second at most (and never more than the camera delivers)
  const WINDOW = 20;           // frames the budget and the time shown are judged over
  const KEPT = 2000;           // timings kept for the benchmark (bench/browser/run.py reads them)
  const JPEG_WIDTH = 480, JPEG_QUALITY = 0.75;  // a frame paused on, as the server path sends frames (app.js)

  const params = new URLSearchParams(location.search);
  let choice = CHOICES.includes(params.get("path")) ? params.get("path")
    : CHOICES.includes(localStorage.getItem("sightscan-path")) ? localStorage.getItem("sightscan-path") : "auto";
  // WebAssembly threads: half the cores, at most 4, as onnxruntime-web's own default (the page, the camera and the
  // browser need the rest; on 2 loaded cores one thread beat two: bench/browser/RESULTS.md); ?threads=N overrides.
  const threadsWanted = Number(params.get("threads")) ||
    Math.min(4, Math.ceil((navigator.hardwareConcurrency || 1) / 2));

  let runtime = null;          // GET /api/local-inference, once known
  let city = "";               // the city the engines are for
  let wanted = null;           // the live model as the websocket describes it ({model_id, model_version, ...})
  let engine = null;           // the worker answering frames, once loaded
  let next = null;             // a worker loading a newer model, or the first one
  let failure = "";            // why this device cannot run the city's model (model load), "" if it can
  let slow = "";               // why the device path lost on time (auto only), "" if it did not
  let busy = false, fresh = true, lastGrab = 0, frame = 0, waiting = null;
  let encoding = null;         // the answer whose frame is becoming a JPEG
  const timings = { local: [], worker: [], pre: [], run: [], server: [], warm: [] };
  const stats = { local_frames: 0, server_frames: 0, swaps: 0, loads: 0 };
  const grab = document.createElement("canvas");

  // Engines: one worker, one model version --------------------------------------------------------------

  class Engine {
    constructor(model) {
      this.model = model;
      this.info = null;
      this.calls = new Map();
      this.ids = 0;
      this.worker = new Worker("/static/local_worker.js");
      this.worker.onmessage = (ev) => this.receive(ev.data);
      this.worker.onerror = (ev) => this.fail(`the worker failed: ${ev.message || "error"}`);
      this.loaded = new Promise((resolve, reject) => { this.resolveLoad = resolve; this.rejectLoad = reject; });
    }

    load(url) {
      this.worker.postMessage({ type: "load", script: runtime.script, wasmPaths: runtime.wasm_paths,
                                threads: threadsWanted, url, threshold: runtime.score_threshold });
      return this.loaded;
    }

    receive(msg) {
      if (msg.type === "loaded") { this.info = msg; this.resolveLoad(msg); return; }
      if (msg.type === "failed" && msg.id === undefined) { this.fail(msg.message, msg.stage); return; }
      const call = this.calls.get(msg.id);
      if (!call) return;
      this.calls.delete(msg.id);
      if (msg.type === "failed" || msg.type === "error") call.reject(new Error(msg.message)); else call.resolve(msg);
    }

    fail(message, stage = "model") {
      const error = Object.assign(new Error(message), { stage });
      this.rejectLoad(error);
      for (const call of this.calls.values()) call.reject(error);
      this.calls.clear();
    }

    call(message, transfer) {
      const id = ++this.ids;
      return new Promise((resolve, reject) => {
        this.calls.set(id, { resolve, reject });
        this.worker.postMessage({ ...message, id }, transfer);
      });
    }

    detect(pixels, width, height, channels, exact = false) {
      return this.call({ type: "detect", pixels, width, height, channels, exact }, [pixels]);
    }

    tensor(pixels, width, height, channels) {
      return this.call({ type: "preprocess", pixels, width, height, channels }, [pixels]);
    }

    stop() { this.worker.terminate(); this.fail("stopped", "stopped"); }
  }

  const modelUrl = (name) => `/api/cities/${encodeURIComponent(name)}/model.onnx`;
  const same = (a, b) => a && b && a.model_id === b.model_id && a.model_version === b.model_version;
  const median = (list) => { const s = list.slice(-WINDOW).sort((a, b) => a - b); return s[s.length >> 1]; };
  const keep = (list, value) => { list.push(value); if (list.length > KEPT) list.shift(); };

  function drop() {
    if (engine) engine.stop();
    if (next) next.stop();
    engine = null; next = null; busy = false;
  }

  // "server", "loading" (this device will answer, once the runtime, the model or the worker is there: nothing is
  // sent meanwhile) or "device".
  function path() {
    if (choice === "server" || typeof WebAssembly !== "object") return "server";
    if (!runtime) return "loading";
    if (!runtime.available || failure || (choice === "auto" && slow)) return "server";
    return engine && engine.info ? "device" : "loading";
  }

  const wantsDevice = () => path() !== "server";

  // Load the live model in a new worker unless it is already there or on its way.
  function prepare() {
    if (!runtime) return;  // init() calls again once the gateway said what it has
    if (!wantsDevice() || !wanted || !city) { drop(); show(); return; }
    if (same(next && next.model, wanted) || (!next && same(engine && engine.model, wanted))) { show(); return; }
    if (next) next.stop();
    const loading = new Engine(wanted), forCity = city;
    next = loading; stats.loads += 1;
    show();
    loading.load(modelUrl(forCity)).then((info) => {
      if (next !== loading) return;
      timings.warm = info.warm_ms;
      if (choice === "auto" && median(info.warm_ms) > runtime.frame_budget_ms) {
        slow = `this device took ${Math.round(median(info.warm_ms))} ms per frame to warm up, over the ` +
               `${runtime.frame_budget_ms} ms budget`;
        drop(); show(); return;
      }
      if (!engine || !busy) swap();  // otherwise the frame in work finishes first, then the swap
      show();
      kick();
    }, (e) => {
      if (next !== loading || e.stage === "stopped") return;
      next = null; loading.stop();
      failure = e.stage === "runtime" ? `the browser runtime did not start (${e.message})`
                                      : `the model did not load on this device (${e.message})`;
      drop(); show();
    });
  }

  function swap() {
    if (!next || !next.info) return;
    if (engine) { engine.stop(); stats.swaps += 1; }
    engine = next; next = null;
  }

  // The frame loop: each new camera frame, one at a time --------------------------------------------------

  function ready() {
    return engine && engine.info && wantsDevice() && state.stream && !state.paused && state.city === city &&
      el("video").videoWidth > 0;
  }

  function kick() {
    if (busy || !fresh || !ready()) return;
    const now = performance.now();
    if (now - lastGrab < 1000 / MAX_FPS) {
      if (!waiting) waiting = setTimeout(() => { waiting = null; kick(); }, 1000 / MAX_FPS - (now - lastGrab));
      return;
    }
    const video = el("video"), width = video.videoWidth, height = video.videoHeight;
    grab.width = width; grab.height = height;
    const ctx = grab.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(video, 0, 0, width, height);
    const pixels = ctx.getImageData(0, 0, width, height).data.buffer;
    fresh = !video.requestVideoFrameCallback;  // without frame callbacks, every tick is a new frame
    lastGrab = now; busy = true;
    const used = engine;
    used.detect(pixels, width, height, 4).then((answer) => {
      busy = false;
      const ms = performance.now() - now;
      if (used !== engine) { kick(); return; }
      keep(timings.local, ms); keep(timings.worker, answer.ms.total); stats.local_frames += 1;
      keep(timings.pre, answer.ms.pre); keep(timings.run, answer.ms.run);
      swap();
      if (choice === "auto" && timings.local.length >= WINDOW && median(timings.local) > runtime.frame_budget_ms) {
        slow = `this device took ${Math.round(median(timings.local))} ms per frame, over the ` +
               `${runtime.frame_budget_ms} ms budget`;
        drop(); show(); return;
      }
      if (!state.paused && state.city === city) {
        frame += 1;
        onMessage({ type: "detections", frame, model_version: answer.model_version, detections: answer.detections,
                    latency_ms: Math.round(ms * 10) / 10, dropped: 0, width, height, local: { blob: null } });
        const shown = state.shown;
        if (shown && shown.detections === answer.detections) {
          shown.pixels = answer.pixels;
          encodeShown();
        }
      }
      show();
      kick();
    }, (e) => {
      busy = false;
      if (used === engine && e.stage !== "stopped") {
        failure = `inference failed on this device (${e.message})`;
        drop(); show();
      }
      kick();
    });
  }

  // The frame shown, as a JPEG (what Pause freezes and a correction sends): made after each answer, the newest
  // first; Pause is enabled once the frame shown has it.
  function encodeShown() {
    const shown = state.shown;
    if (encoding || !shown || shown.blob || !shown.pixels) return;
    encoding = shown;
    const { pixels, width, height } = shown;
    const full = document.createElement("canvas");
    full.width = width; full.height = height;
    full.getContext("2d").putImageData(new ImageData(new Uint8ClampedArray(pixels), width, height), 0, 0);
    const scale = Math.min(1, JPEG_WIDTH / width), out = document.createElement("canvas");
    out.width = Math.round(width * scale); out.height = Math.round(height * scale);
    out.getContext("2d").drawImage(full, 0, 0, out.width, out.height);
    out.toBlob((blob) => {
      encoding = null;
      shown.pixels = null;
      if (blob && state.shown === shown && !state.paused) {
        shown.blob = blob;
        el("pause").disabled = false;
      }
      encodeShown();  // a newer answer came meanwhile
    }, "image/jpeg", JPEG_QUALITY);
  }

  function watchFrames() {
    const video = el("video");
    if (video.requestVideoFrameCallback) {
      const onFrame = () => { fresh = true; kick(); video.requestVideoFrameCallback(onFrame); };
      video.requestVideoFrameCallback(onFrame);
    } else {
      setInterval(() => { fresh = true; kick(); }, 1000 / MAX_FPS);
    }
  }

  // What the page shows ----------------------------------------------------------------------------------

  function reason() {
    if (choice === "server") return "chosen";
    if (typeof WebAssembly !== "object") return "this browser has no WebAssembly";
    if (runtime && !runtime.available) return runtime.reason;
    if (!runtime) return "";
    return failure || (choice === "auto" ? slow : "");
  }

  function show() {
    const out = el("path");
    if (!out) return;
    const now = path(), why = reason();
    let text;
    if (now === "device") {
      const ms = median(timings.local);
      text = `on this device · model v${engine.info.version}` +
             (ms !== undefined ? ` · ${Math.round(ms)} ms per frame` : "") +
             ` · ${engine.info.threads} thread${engine.info.threads > 1 ? "s" : ""}`;
      if (next) text += ` · loading model v${next.model.model_version}…`;
    } else if (now === "loading") {
      text = !runtime ? "on this device · starting…"
        : next ? `on this device · loading model v${next.model.model_version}…` : "on this device";
    } else {
      const ms = median(timings.server);
      text = "on the server" + (ms !== undefined ? ` · ${Math.round(ms)} ms per frame` : "") +
             (why && why !== "chosen" ? ` (${why})` : "");
    }
    if (!wanted && state.city) text += " · no model yet";
    out.textContent = text;
    out.dataset.path = now;
    out.dataset.reason = why;
  }

  // Called by app.js ---------------------------------------------------------------------------------------

  // The websocket's hello or model message: the live model of the page's city (null: none).
  function model(forCity, live) {
    if (forCity !== city) { drop(); city = forCity; failure = ""; slow = ""; timings.local = []; }
    wanted = live && live.model_version ? live : null;
    prepare();
  }

  // Whether frames go to the server now (the server path), rather than to the worker or nowhere (loading).
  function sendsFrames() { return path() === "server"; }

  // An answer from the server to a frame the page sent (`sent`: its entry in state.frames).
  function served(msg, sent) {
    if (msg.local || !sent || !sent.at) return;
    keep(timings.server, performance.now() - sent.at); stats.server_frames += 1;
    show();
  }

  // The user's choice: it also forgets why the device path lost before (a retry, if the choice allows it).
  function choose(value) {
    choice = CHOICES.includes(value) ? value : "auto";
    localStorage.setItem("sightscan-path", choice);
    failure = ""; slow = "";
    prepare();
    kick();
  }

  async function init() {
    const select = el("path-choice");
    if (select) {
      select.value = choice;
      select.addEventListener("change", () => choose(select.value));
    }
    watchFrames();
    try {
      const res = await fetch("/api/local-inference");
      runtime = res.ok ? await res.json() : { available: false, reason: `the gateway answered ${res.status}` };
    } catch (e) {
      runtime = { available: false, reason: `the gateway could not be asked (${e})` };
    }
    // The websocket closes when it carries nothing for a while; on this device it carries no frames.
    setInterval(() => {
      const ws = state.ws;
      if (!sendsFrames() && ws && ws.readyState === WebSocket.OPEN && state.city) {
        ws.send(JSON.stringify({ type: "select", city: state.city }));
      }
    }, Math.max(1, runtime.keepalive_s || 30) * 1000);
    prepare();
  }

  // For tests and the benchmark ------------------------------------------------------------------------

  function report() {
    return { path: path(), reason: reason(), choice, isolated: self.crossOriginIsolated,
             runtime: runtime && runtime.version, threads: engine && engine.info ? engine.info.threads : null,
             model_version: engine && engine.info ? engine.info.version : null,
             loading: next ? next.model.model_version : null, ...stats,
             local_ms: timings.local.slice(), worker_ms: timings.worker.slice(), pre_ms: timings.pre.slice(),
             run_ms: timings.run.slice(), server_ms: timings.server.slice(),
             warm_ms: timings.warm.slice() };
  }

  function resetStats() {
    for (const key of Object.keys(timings)) if (key !== "warm") timings[key] = [];
    stats.local_frames = 0; stats.server_frames = 0;
  }

  // frames: [{width, height, rgb: base64 of width x height x 3 bytes}] through a fresh worker with the city's live
  // model: the exact detections and the input tensor (base64 of float32) of each, as the parity test compares.
  async function check(frames) {
    const checking = new Engine(wanted);
    try {
      const info = await checking.load(modelUrl(state.city));
      const results = [];
      for (const f of frames) {
        const bytes = Uint8Array.from(atob(f.rgb), (c) => c.charCodeAt(0));
        const answer = await checking.detect(bytes.slice().buffer, f.width, f.height, 3, true);
        const tensor = await checking.tensor(bytes.buffer, f.width, f.height, 3);
        const raw = new Uint8Array(tensor.tensor);
        let text = "";
        for (let i = 0; i < raw.length; i += 0x8000) text += String.fromCharCode(...raw.subarray(i, i + 0x8000));
        results.push({ detections: answer.detections, raw: answer.raw, ms: answer.ms, tensor: btoa(text) });
      }
      return { version: info.version, threads: info.threads, results };
    } finally {
      checking.stop();
    }
  }

  return { init, model, sendsFrames, served, choose, report, resetStats, check, show };
})();
