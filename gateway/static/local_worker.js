// The page's local path (local.js): one city model in onnxruntime-web's WebAssembly backend, in a worker so that
// inference never blocks the page. One worker holds one model version: a new model gets a new worker, loaded in
// the background, and the page switches to it between two frames.
//
// page -> worker  {type: "load", script, wasmPaths, threads, url, threshold}
//                 {type: "detect", id, pixels: ArrayBuffer, width, height, channels, exact?}   (pixels transferred)
//                 {type: "preprocess", id, pixels, width, height, channels}   the model's input tensor, for tests
// worker -> page  {type: "loaded", version, model_id, classes, input_size, threads, isolated, load_ms, warm_ms}
//                 {type: "failed", stage: "runtime" | "model", message}
//                 {type: "detections", id, detections, raw?, ms: {pre, run, post, total}, pixels}   (pixels returned)
//                 {type: "tensor", id, tensor: ArrayBuffer}
"use strict";

importScripts("/static/detector.js");

let session = null, model = null, threshold = 0;

async function load(msg) {
  const started = performance.now();
  try {
    if (typeof WebAssembly !== "object") throw new Error("this browser has no WebAssembly");
    importScripts(msg.script);
    ort.env.wasm.wasmPaths = msg.wasmPaths;
    // Threads need SharedArrayBuffer, which only a cross-origin isolated page has (the gateway's COOP/COEP).
    ort.env.wasm.numThreads = self.crossOriginIsolated ? msg.threads : 1;
    ort.env.wasm.proxy = false;  // this is the worker already
  } catch (e) {
    postMessage({ type: "failed", stage: "runtime", message: String(e && e.message || e) });
    return;
  }
  try {
    // The browser's HTTP cache holds the model; "no-cache" asks the gateway whether it is still the live one (304).
    const res = await fetch(msg.url, { cache: "no-cache" });
    if (!res.ok) throw new Error(`the model could not be fetched: HTTP ${res.status}`);
    const bytes = new Uint8Array(await res.arrayBuffer());
    model = { version: Number(res.headers.get("X-Model-Version")), model_id: Number(res.headers.get("X-Model-Id")),
              classes: JSON.parse(res.headers.get("X-Model-Classes") || "[]"),
              input_size: Number(res.headers.get("X-Model-Input-Size")) };
    threshold = msg.threshold;
    // One frame at a time, at the model's input size: fixing the free dimensions lets ONNX Runtime plan for them.
    const S = model.input_size;
    session = await ort.InferenceSession.create(bytes, {
      executionProviders: ["wasm"], graphOptimizationLevel: "all",
      freeDimensionOverrides: { batch: 1, N: 1, S } });
    if (!session.inputNames.includes("images") ||
        !["boxes", "scores", "classes"].every((n) => session.outputNames.includes(n))) {
      throw new Error(`the graph has inputs ${session.inputNames} and outputs ${session.outputNames}, not the ` +
                      "SightScan contract's");
    }
    // Warm-up: the first runs pay for lazy initialisation; the next ones are what a frame costs.
    const warm = [];
    for (let i = 0; i < 4; i++) {
      const t = performance.now();
      await infer(new Float32Array(3 * S * S));
      warm.push(performance.now() - t);
    }
    postMessage({ type: "loaded", ...model, threads: ort.env.wasm.numThreads, isolated: self.crossOriginIsolated,
                  load_ms: performance.now() - started, warm_ms: warm.slice(1) });
  } catch (e) {
    session = null;
    postMessage({ type: "failed", stage: "model", message: String(e && e.message || e) });
  }
}

async function infer(tensor) {
  const S = model.input_size;
  const out = await session.run({ images: new ort.Tensor("float32", tensor, [1, 3, S, S]) });
  return out;
}

async function detect(msg) {
  const t0 = performance.now();
  const tensor = SightDetector.preprocess(new Uint8Array(msg.pixels), msg.width, msg.height, msg.channels,
                                          model.input_size);
  const t1 = performance.now();
  const out = await infer(tensor);
  const t2 = performance.now();
  const detections = SightDetector.decode(out.boxes.data, out.scores.data, out.classes.data, model.classes,
                                          threshold, Boolean(msg.exact));
  // The graph's own outputs too, when asked (the parity test compares them with ONNX Runtime's in Python).
  const raw = msg.exact ? { boxes: Array.from(out.boxes.data), scores: Array.from(out.scores.data),
                            classes: Array.from(out.classes.data, Number) } : undefined;
  for (const name of Object.keys(out)) out[name].dispose && out[name].dispose();
  const t3 = performance.now();
  postMessage({ type: "detections", id: msg.id, model_version: model.version, detections, raw,
                ms: { pre: t1 - t0, run: t2 - t1, post: t3 - t2, total: t3 - t0 }, pixels: msg.pixels },
              [msg.pixels]);
}

// Messages are handled one at a time, in order: a frame never overlaps another or the load.
let queue = Promise.resolve();
onmessage = (ev) => {
  const msg = ev.data;
  queue = queue.then(async () => {
    try {
      if (msg.type === "load") await load(msg);
      else if (!session) postMessage({ type: "failed", stage: "model", id: msg.id, message: "no model loaded" });
      else if (msg.type === "detect") await detect(msg);
      else if (msg.type === "preprocess") {
        const t = SightDetector.preprocess(new Uint8Array(msg.pixels), msg.width, msg.height, msg.channels,
                                           model.input_size);
        postMessage({ type: "tensor", id: msg.id, tensor: t.buffer }, [t.buffer]);
      }
    } catch (e) {
      postMessage({ type: "error", id: msg.id, message: String(e && e.message || e) });
    }
  });
};
