// The review queue (docs/corrections.md, "Review queue"): live frames of this city on which the model was unsure,
// kept by the gateway while the city's operator has it on. Each is listed with why it was kept; Accept sends what
// the model said as a correction (confirm its top detection, or no sight when it said nothing), Fix opens the
// corrections panel on the frame, Dismiss drops it. A frame leaves the queue with its first correction. Reading
// the queue needs the write token (a user's or the operator's); turning it on or off, the operator's.
// Loaded after corrections.js and before app.js; it uses app.js's `state` and `pauseOn` at run time only.
"use strict";

const Review = (() => {
  const el = (id) => document.getElementById(id);
  const REFRESH_MS = 10000;  // the queue is asked for again this often
  const LISTED = 20;         // the newest frames listed at once

  let city = "";
  let loading = null;        // the refresh in progress
  let again = false;         // asked for again meanwhile (another city, a new token): once it is done
  const frames = new Map();  // id -> {item, li, blob, url}: the frames listed
  const done = new Set();    // ids reviewed from this page: never listed again

  const token = () => el("token").value.trim();
  const auth = () => ({ "Authorization": `Bearer ${token()}` });
  const pct = (v) => `${Math.round(v * 100)}%`;
  const base = () => `/api/cities/${encodeURIComponent(city)}/review`;

  function say(text) { el("review-error").textContent = ""; el("review-status").textContent = text; }
  function failed(text) { el("review-error").textContent = text; }

  // Each sight once, by its best score: what the "close sights" rule compared.
  function bySight(shown) {
    const best = new Map();
    for (const d of shown) if (!best.has(d.sight) || best.get(d.sight) < d.score) best.set(d.sight, d.score);
    return [...best.entries()].sort((a, b) => b[1] - a[1]);
  }

  function why(item) {
    const sights = bySight(item.shown);
    if (item.reason === "near-threshold") {
      return `Near the threshold: ${sights[0][0]} ${pct(sights[0][1])} (threshold ${pct(item.threshold)})`;
    }
    return `Two close sights: ${sights.slice(0, 2).map(([s, v]) => `${s} ${pct(v)}`).join(" · ")}`;
  }

  function button(text, cls, onClick, label) {
    const b = document.createElement("button");
    b.type = "button"; b.textContent = text; b.className = cls; b.disabled = true;  // enabled once the frame is here
    b.setAttribute("aria-label", label);
    b.addEventListener("click", onClick);
    return b;
  }

  function entry(item) {
    const li = document.createElement("li");
    li.dataset.id = item.id; li.dataset.reason = item.reason;
    const img = document.createElement("img");
    img.alt = `frame ${item.id} kept for review`;
    img.width = 120; img.height = Math.round(120 * item.height / item.width);
    const what = document.createElement("span"); what.textContent = why(item);
    const detail = document.createElement("small");
    detail.textContent = [`model v${item.model_version}`, new Date(item.kept_at).toLocaleString(), `#${item.id}`]
      .join(" · ");
    const a = item.accept;
    const accepted = a.action === "confirm" ? a.sight : "no sight";
    li.append(img, what, document.createElement("br"), detail, document.createElement("br"),
      button(`Accept: ${accepted}`, "accept", () => accept(item.id), `Accept frame ${item.id}: ${accepted}`), " ",
      button("Fix…", "fix", () => fix(item.id), `Fix frame ${item.id} in the corrections panel`), " ",
      button("Dismiss", "dismiss", () => dismiss(item.id), `Dismiss frame ${item.id}`));
    return li;
  }

  // The frame as the corrections panel takes it (app.js state.shown), told when a correction of it is stored.
  function asShown(f) {
    const item = f.item;
    return { frame: item.id, label: `Review frame #${item.id}`, review: item.id, blob: f.blob, width: item.width,
             height: item.height, model_version: item.model_version, detections: item.shown.map((d) => ({ ...d })),
             onSent: () => reviewed(item.id) };
  }

  // Loading ----------------------------------------------------------------------------------------------

  function refresh() {
    if (loading) { again = true; return loading; }
    loading = load().finally(() => {
      loading = null;
      if (again) { again = false; refresh(); }
    });
    return loading;
  }

  async function load() {
    el("review").hidden = !city;
    if (!city) return;
    if (!token()) { show([]); say("Enter your write token (at the top of the page) to see the review queue."); return; }
    const asked = city;
    try {
      const res = await fetch(`${base()}?limit=${LISTED}`, { headers: auth() });
      if (asked !== city) return;
      if (!res.ok) { show([]); failed(await Corrections.refusal(res, "The review queue was")); return; }
      const body = await res.json();
      el("review-sample").checked = body.sample;
      const items = body.frames.filter((f) => !done.has(f.id));
      await show(items, asked);
      const waiting = Math.max(0, body.waiting - (body.frames.length - items.length));
      say(waiting ? `${waiting} frame${waiting > 1 ? "s" : ""} to review` +
                    (waiting > items.length ? ` (the newest ${items.length} listed)` : "")
                  : body.sample ? "Nothing to review yet: unsure frames of this city's live streams come here."
                    : "Nothing to review: this city keeps no frames (its operator can turn it on here).");
    } catch (e) { failed(`The review queue could not be read: ${e}`); }
  }

  async function show(items, asked) {
    const ids = new Set(items.map((i) => i.id));
    for (const [id, f] of frames) {
      if (!ids.has(id)) { if (f.url) URL.revokeObjectURL(f.url); frames.delete(id); }
    }
    for (const item of items) if (!frames.has(item.id)) frames.set(item.id, { item, li: entry(item) });
    el("review-list").replaceChildren(...items.map((i) => frames.get(i.id).li));
    await Promise.all(items.map((i) => fetchFrame(frames.get(i.id), asked)));
  }

  async function fetchFrame(f, asked) {
    if (f.blob) return;
    const res = await fetch(f.item.frame, { headers: auth() });
    if (!res.ok || asked !== city) return;  // reviewed elsewhere meanwhile: the next refresh drops it
    f.blob = await res.blob();
    f.url = URL.createObjectURL(f.blob);
    f.li.querySelector("img").src = f.url;
    f.li.dataset.loaded = "1";
    for (const b of f.li.querySelectorAll("button")) b.disabled = false;
  }

  // Reviewing --------------------------------------------------------------------------------------------

  function busy(f, on) { for (const b of f.li.querySelectorAll("button")) b.disabled = on; }

  async function accept(id) {
    const f = frames.get(id);
    if (!f || !f.blob) return;
    busy(f, true);  // one click, one correction
    const a = f.item.accept;
    await Corrections.sendOn(asShown(f), a.action, a.action === "confirm" ? { sight: a.sight, box: a.box } : {});
    if (!done.has(id)) busy(f, false);  // refused (the panel says why): it stays to be tried again
  }

  function fix(id) {
    const f = frames.get(id);
    if (f && f.blob) pauseOn(asShown(f));
  }

  // A correction of the frame was stored: it is out of the queue. Its bytes are dropped here (the correction
  // keeps its own copy); should that fail, the queue still leaves the frame out.
  async function reviewed(id) {
    if (done.has(id)) return;
    done.add(id);
    drop(id);
    try { await fetch(`${base()}/${encodeURIComponent(id)}`, { method: "DELETE", headers: auth() }); } catch (e) {}
    refresh();
  }

  async function dismiss(id) {
    const f = frames.get(id);
    if (!f) return;
    if (!token()) { failed("Enter your write token (at the top of the page) to dismiss."); return; }
    busy(f, true);
    const res = await fetch(`${base()}/${encodeURIComponent(id)}`, { method: "DELETE", headers: auth() });
    if (!res.ok && res.status !== 404) {
      busy(f, false);
      failed(await Corrections.refusal(res, "Not dismissed: the request was"));
      return;
    }
    done.add(id);
    drop(id);
    say(`Dismissed frame #${id}.`);
    refresh();
  }

  function drop(id) {
    const f = frames.get(id);
    if (!f) return;
    f.li.remove();
    frames.delete(id);
    // The blob's URL stays valid for a corrections panel still open on it; a page keeps few.
  }

  async function setSampling(on) {
    const res = await fetch(base(), { method: "PUT", body: JSON.stringify({ sample: on }),
      headers: { ...auth(), "Content-Type": "application/json" } });
    if (!res.ok) {
      el("review-sample").checked = !on;
      failed(await Corrections.refusal(res, "Not changed: keeping frames for review is the operator's call; it was"));
      return;
    }
    say(on ? "This city now keeps unsure live frames for review." : "This city keeps no more frames for review.");
    refresh();
  }

  function setCity(name) {
    city = name || "";
    for (const f of frames.values()) if (f.url) URL.revokeObjectURL(f.url);
    frames.clear(); done.clear();
    el("review-list").replaceChildren(); el("review-error").textContent = ""; el("review-status").textContent = "";
    refresh();
  }

  function init() {
    el("token").addEventListener("change", () => refresh());
    el("review-sample").addEventListener("change", (e) => setSampling(e.target.checked));
    el("review-refresh").addEventListener("click", () => refresh());
    setInterval(refresh, REFRESH_MS);
  }

  return { init, setCity, refresh };
})();
