// Corrections from the page (docs/corrections.md): on a paused frame the user confirms a detection, says which
// sight it really is, says there is no sight, draws or adjusts a box, or keeps the frame as a photo of the city.
// Each correction is POSTed with the frame exactly as shown and the answer drawn on it; the "Sent" list shows
// what went and undoes it. Loaded before app.js; it uses app.js's `state`, `draw` and `pause` at run time only.
"use strict";

const Corrections = (() => {
  const el = (id) => document.getElementById(id);
  const MIN_BOX = 0.02;  // a drawn box narrower or lower than this (of the frame) is a slip, not a box
  const STEP = 0.01;     // one arrow key press moves or resizes the box by this much of the frame
  const GRAB_PX = 12;    // a press this close to a corner of the box drags that corner

  let frame = null;      // the frozen answer (app.js state.shown) plus imageId and uses once stored
  let draft = null;      // the box being drawn: {sight, box: [x0, y0, x1, y1] | null, drag}
  let wrong = null;      // the detection said to be the wrong sight
  let queue = Promise.resolve();  // writes go one at a time: the first stores the frame, the next reuse it

  const clamp = (v) => Math.min(1, Math.max(0, v));
  const pct = (v) => `${Math.round(v * 100)}%`;
  const boxText = (b) => `x ${pct(b[0])}–${pct(b[2])}, y ${pct(b[1])}–${pct(b[3])}`;
  const token = () => el("token").value.trim();

  function button(text, onClick, label) {
    const b = document.createElement("button");
    b.type = "button"; b.textContent = text;
    if (label) b.setAttribute("aria-label", label);
    b.addEventListener("click", onClick);
    return b;
  }

  function options(select, names, selected) {
    select.replaceChildren(...names.map((n) => new Option(n, n, false, n === selected)));
  }

  // The paused frame --------------------------------------------------------------------------------------

  function open(shown) {
    frame = Object.assign(shown, { imageId: shown.imageId || null, uses: shown.uses || 0 });
    draft = null; wrong = null;
    el("correct-hint").hidden = true;
    el("correct-frame").hidden = false;
    el("wrong-form").hidden = true; el("box-form").hidden = true;
    const n = frame.detections.length;
    el("frame-info").textContent = `${frame.label || `Frame ${frame.frame}`} · model v${frame.model_version} · ` +
      (n ? `${n} detection${n > 1 ? "s" : ""}` : "the model saw no sight");
    el("shown").replaceChildren(...frame.detections.map((d) => {
      const li = document.createElement("li");
      li.dataset.sight = d.sight;
      const what = `${d.sight} (${pct(d.score)})`;
      const name = document.createElement("span"); name.textContent = what;
      li.append(name, " ",
        button("Confirm", () => send("confirm", { sight: d.sight, box: d.box }, d), `Confirm ${what}`), " ",
        button("Wrong sight…", () => askWrong(d), `${what} is the wrong sight`), " ",
        button("Adjust box", () => startDraw(d.sight, d.box.slice()), `Adjust the box of ${what}`));
      return li;
    }));
  }

  function close() {
    frame = null; draft = null; wrong = null;
    el("correct-hint").hidden = false;
    el("correct-frame").hidden = true;
    drawing(false);
  }

  function askWrong(d) {
    stopDraw();
    const others = state.sights.filter((s) => s !== d.sight);
    if (others.length === 0) { failed("this city's model knows no other sight"); return; }
    wrong = d;
    el("wrong-what").textContent = `${d.sight} (${pct(d.score)})`;
    options(el("wrong-sight"), others);
    el("wrong-form").hidden = false;
    el("wrong-sight").focus();
    draw();
  }

  function stopWrong() { wrong = null; el("wrong-form").hidden = true; }

  // Drawing a box: pointer (mouse, pen, touch) on the overlay, or the keyboard with the overlay focused.

  function startDraw(sight, box) {
    stopWrong();
    if (state.sights.length === 0) { failed("this city's model knows no sights yet"); return; }
    draft = { sight: state.sights.includes(sight) ? sight : state.sights[0], box, drag: null };
    options(el("box-sight"), state.sights, draft.sight);
    el("box-form").hidden = false;
    drawing(true);
    showDraft();
    el("overlay").focus();
  }

  function stopDraw() { draft = null; el("box-form").hidden = true; drawing(false); draw(); }

  function drawing(on) {
    const overlay = el("overlay");
    overlay.classList.toggle("drawing", on);
    if (on) {
      overlay.tabIndex = 0;
      overlay.setAttribute("role", "application");
      overlay.setAttribute("aria-roledescription", "box drawing area");
    } else {
      for (const a of ["tabindex", "role", "aria-roledescription"]) overlay.removeAttribute(a);
    }
  }

  function valid(b) { return b && b[2] - b[0] >= MIN_BOX && b[3] - b[1] >= MIN_BOX; }

  function showDraft() {
    el("box-value").textContent = draft.box ? boxText(draft.box) : "no box yet";
    el("box-send").disabled = !valid(draft.box);
    draw();
  }

  function point(ev) {
    const r = el("overlay").getBoundingClientRect();
    return [clamp((ev.clientX - r.left) / r.width), clamp((ev.clientY - r.top) / r.height), r];
  }

  function onPointerDown(ev) {
    if (!draft || ev.button !== 0) return;
    ev.preventDefault();
    const overlay = el("overlay");
    overlay.focus();
    overlay.setPointerCapture(ev.pointerId);
    const [x, y, r] = point(ev);
    const b = draft.box;
    if (b) {
      const corners = [[0, 1], [2, 1], [0, 3], [2, 3]];
      const near = corners.find(([i, j]) => Math.abs(b[i] - x) * r.width <= GRAB_PX &&
                                            Math.abs(b[j] - y) * r.height <= GRAB_PX);
      if (near) {  // the opposite corner stays put
        draft.drag = { anchor: [b[2 - near[0]], b[4 - near[1]]] };
        return;
      }
      if (x > b[0] && x < b[2] && y > b[1] && y < b[3]) {
        draft.drag = { move: [x, y], from: b.slice() };
        return;
      }
    }
    draft.drag = { anchor: [x, y] };
    draft.box = [x, y, x, y];
    showDraft();
  }

  function onPointerMove(ev) {
    if (!draft || !draft.drag) return;
    const [x, y] = point(ev);
    const d = draft.drag;
    if (d.anchor) {
      draft.box = [Math.min(d.anchor[0], x), Math.min(d.anchor[1], y), Math.max(d.anchor[0], x),
                   Math.max(d.anchor[1], y)];
    } else {
      const [x0, y0, x1, y1] = d.from;
      const dx = Math.min(1 - x1, Math.max(-x0, x - d.move[0]));
      const dy = Math.min(1 - y1, Math.max(-y0, y - d.move[1]));
      draft.box = [x0 + dx, y0 + dy, x1 + dx, y1 + dy];
    }
    showDraft();
  }

  function onPointerUp(ev) {
    if (!draft || !draft.drag) return;
    onPointerMove(ev);
    draft.drag = null;
  }

  function onKey(ev) {
    if (!draft) return;
    if (ev.key === "Escape") { ev.preventDefault(); stopDraw(); el("draw-box").focus(); return; }
    if (ev.key === "Enter") { ev.preventDefault(); el("box-form").requestSubmit(); return; }
    const dirs = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    const dir = dirs[ev.key];
    if (!dir) return;
    ev.preventDefault();
    if (!draft.box) draft.box = [0.3, 0.3, 0.7, 0.7];
    let [x0, y0, x1, y1] = draft.box;
    const dx = dir[0] * STEP, dy = dir[1] * STEP;
    if (ev.shiftKey) {  // resize: the right and bottom edges
      x1 = Math.max(x0 + MIN_BOX, clamp(x1 + dx)); y1 = Math.max(y0 + MIN_BOX, clamp(y1 + dy));
    } else {
      const mx = Math.min(1 - x1, Math.max(-x0, dx)), my = Math.min(1 - y1, Math.max(-y0, dy));
      x0 += mx; x1 += mx; y0 += my; y1 += my;
    }
    draft.box = [x0, y0, x1, y1];
    showDraft();
  }

  // What app.js draws over the paused frame after the detections: the box being drawn, the detection in question.
  function decorate(ctx, w, h) {
    const rect = (b) => [b[0] * w, b[1] * h, (b[2] - b[0]) * w, (b[3] - b[1]) * h];
    if (wrong) {
      ctx.save(); ctx.strokeStyle = "#e63946"; ctx.lineWidth = 4; ctx.setLineDash([8, 6]);
      ctx.strokeRect(...rect(wrong.box)); ctx.restore();
    }
    if (draft && draft.box) {
      ctx.save();
      ctx.fillStyle = "rgba(0, 200, 255, 0.15)"; ctx.fillRect(...rect(draft.box));
      ctx.strokeStyle = "#00c8ff"; ctx.lineWidth = 3; ctx.setLineDash([6, 4]); ctx.strokeRect(...rect(draft.box));
      ctx.setLineDash([]); ctx.fillStyle = "#00c8ff";
      for (const [i, j] of [[0, 1], [2, 1], [0, 3], [2, 3]]) {  // the corners a drag can grab
        ctx.fillRect(draft.box[i] * w - 4, draft.box[j] * h - 4, 8, 8);
      }
      ctx.font = "bold 15px system-ui, sans-serif";
      ctx.fillText(draft.sight, draft.box[0] * w + 4, Math.min(h - 4, draft.box[3] * h + 16));
      ctx.restore();
    }
  }

  // Writing -----------------------------------------------------------------------------------------------

  function failed(text) { el("correct-result").textContent = ""; el("correct-error").textContent = text; }
  function succeeded(text) { el("correct-error").textContent = ""; el("correct-result").textContent = text; }

  // The server's own words for a refused write (docs/corrections.md: 401/403 token, 429 rate, 4xx the request).
  async function refusal(res, what) {
    let body = {};
    try { body = await res.json(); } catch (e) { /* not JSON: the status says enough */ }
    const said = [body.error, body.message].filter(Boolean).join(": ") || res.statusText;
    if (res.status === 401 || res.status === 403) {
      return `${what} refused (${res.status} ${said}): check the write token at the top of the page.`;
    }
    if (res.status === 429) {
      const after = res.headers.get("Retry-After");
      return `${what} refused (429 ${said}): corrections are limited per token; send it again ` +
        (after ? `in ${after} s.` : "in a minute.");
    }
    return `${what} refused (${res.status} ${said}).`;
  }

  const DONE = { "confirm": (c) => `Confirmed ${c.sight}`, "wrong-sight": (c) => `Wrong sight: this is ${c.sight}`,
                 "box": (c) => `Box for ${c.sight}`, "no-sight": () => "No sight here",
                 "keep": (c) => `Kept as a photo of ${c.city}` };

  function send(action, fields, about) { return sendOn(frame, action, fields, about); }

  // A correction of `f`, a frame as app.js's state.shown holds it: the paused one, or a frame of the review queue
  // (review.js), which hears of each correction stored through `f.onSent`.
  function sendOn(f, action, fields, about) {
    if (!f) return Promise.resolve();
    if (!token()) {
      failed("Enter your write token (at the top of the page) to send corrections.");
      el("token").focus();
      return Promise.resolve();
    }
    const city = state.city;
    queue = queue.then(() => post(f, city, action, fields, about)).catch((e) => failed(`Not sent: ${e}`));
    return queue;
  }

  async function post(f, city, action, fields, about) {
    const correction = { action, model_version: f.model_version,
                         shown: f.detections.slice(0, 50).map((d) => ({ sight: d.sight, score: d.score, box: d.box })),
                         ...fields };
    const form = new FormData();
    form.append("correction", JSON.stringify(correction));
    // The frame exactly as shown: the JPEG sent to the model; once stored, the next corrections name it.
    if (f.imageId) form.append("image_id", String(f.imageId));
    else form.append("frame", f.blob, `frame-${f.frame}.jpg`);
    el("correct-error").textContent = "";
    el("correct-result").textContent = "sending…";
    const res = await fetch(`/api/cities/${encodeURIComponent(city)}/corrections`, {
      method: "POST", body: form, headers: { "Authorization": `Bearer ${token()}` } });
    if (!res.ok) { failed(await refusal(res, "Not sent: the correction was")); return; }
    const c = await res.json();
    f.imageId = c.image_id; f.uses += 1;
    const text = DONE[action]({ ...c, city: c.city || city }) +
      (action === "wrong-sight" && about ? ` (the model said ${about.sight})` : "");
    succeeded(`Sent: ${text}.`);
    listSent(f, c, text, city);
    if (f.onSent) f.onSent(c);
  }

  function listSent(f, c, text, city) {
    const li = document.createElement("li");
    li.dataset.id = c.id; li.dataset.action = c.action; li.dataset.state = "sent";
    if (c.sight) li.dataset.sight = c.sight;
    const thumb = document.createElement("canvas");
    thumb.width = 96; thumb.height = Math.round(96 * (f.height || 3) / (f.width || 4));
    thumb.setAttribute("aria-hidden", "true");
    thumbnail(thumb, f, c.box);
    const what = document.createElement("span");
    what.textContent = text;
    const detail = document.createElement("small");
    detail.textContent = [c.box ? boxText(c.box) : "", f.label || `frame ${f.frame}`,
                          f.model_version ? `model v${f.model_version}` : "", `#${c.id}`,
                          new Date().toLocaleTimeString()].filter(Boolean).join(" · ");
    const undoButton = button("Undo", () => undo(li, f, c, city, text), `Undo: ${text}`);
    li.append(thumb, what, document.createElement("br"), detail, " ", undoButton);
    el("sent").prepend(li);
    el("sent-title").hidden = false;
  }

  async function thumbnail(canvas, f, box) {
    try {
      if (!f.bitmap) f.bitmap = await createImageBitmap(f.blob);
      const ctx = canvas.getContext("2d");
      ctx.drawImage(f.bitmap, 0, 0, canvas.width, canvas.height);
      if (box) {
        ctx.strokeStyle = "#00c8ff"; ctx.lineWidth = 2;
        ctx.strokeRect(box[0] * canvas.width, box[1] * canvas.height, (box[2] - box[0]) * canvas.width,
                       (box[3] - box[1]) * canvas.height);
      }
    } catch (e) { /* a thumbnail is a nicety */ }
  }

  function undo(li, f, c, city, text) {
    if (!token()) { failed("Enter your write token (at the top of the page) to undo."); el("token").focus(); return; }
    queue = queue.then(async () => {
      const res = await fetch(`/api/cities/${encodeURIComponent(city)}/corrections/${encodeURIComponent(c.id)}`, {
        method: "DELETE", headers: { "Authorization": `Bearer ${token()}` } });
      if (!res.ok && res.status !== 404) { failed(await refusal(res, "Not undone: the undo was")); return; }
      // The frame is deleted with its last correction: a later correction of it uploads it again.
      f.uses = Math.max(0, f.uses - 1);
      if (f.uses === 0) f.imageId = null;
      li.dataset.state = "undone";
      li.classList.add("undone");
      li.querySelector("button").remove();
      const note = document.createElement("strong"); note.textContent = " undone";
      li.append(note);
      succeeded(`Undone: ${text}.`);
    }).catch((e) => failed(`Not undone: ${e}`));
  }

  function init() {
    const overlay = el("overlay");
    overlay.addEventListener("pointerdown", onPointerDown);
    overlay.addEventListener("pointermove", onPointerMove);
    overlay.addEventListener("pointerup", onPointerUp);
    overlay.addEventListener("pointercancel", onPointerUp);
    overlay.addEventListener("keydown", onKey);
    el("no-sight").addEventListener("click", () => { stopWrong(); stopDraw(); send("no-sight", {}); });
    el("keep").addEventListener("click", () => { stopWrong(); stopDraw(); send("keep", {}); });
    el("draw-box").addEventListener("click", () => startDraw(null, null));
    el("box-cancel").addEventListener("click", () => { stopDraw(); el("draw-box").focus(); });
    el("box-sight").addEventListener("change", (e) => { if (draft) { draft.sight = e.target.value; draw(); } });
    el("box-form").addEventListener("submit", (e) => {
      e.preventDefault();
      if (!draft || !valid(draft.box)) {
        failed(`Draw a box first (at least ${pct(MIN_BOX)} of the frame each way).`);
        return;
      }
      const box = draft.box.map((v) => Math.round(v * 10000) / 10000);
      const sight = draft.sight;
      stopDraw();
      send("box", { sight, box });
    });
    el("wrong-cancel").addEventListener("click", () => { stopWrong(); draw(); });
    el("wrong-form").addEventListener("submit", (e) => {
      e.preventDefault();
      if (!wrong) return;
      const d = wrong;
      stopWrong(); draw();
      send("wrong-sight", { sight: el("wrong-sight").value, box: d.box }, d);
    });
  }

  return { init, open, close, decorate, sendOn, refusal };
})();
