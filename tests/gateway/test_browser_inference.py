"""Recognition in the browser (issue 22), in real headless Chromium against a real gateway.

- The model file is cached by version (ETag, 304), the page and its workers are cross-origin isolated, and the
  gateway serves onnxruntime-web's files itself (pinned in gateway/web/package-lock.json, registry only).
- Parity: a shared test vector (camera frames of the synthetic city's clip, noise and gradients at several sizes,
  as raw RGB) through the page's worker gives the Python detector's input tensor bit for bit, and its outputs and
  detections (sight, score, box corners) within 1e-3, on two models: the colour model behind a convolution
  backbone, and the trainer's own export of a sight model (trainer/export.py).
- The page recognises the fake camera's clip on this device with no frame reaching /ws/detect, a new model
  hot-swaps into it within seconds, and the user's choice of the server path sends frames again.
- With WebAssembly turned off (V8 without its JIT), the page falls back to the server and says why.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest

from gateway.model_files import WEB
from localsystem.demo.city import read_y4m
from sightscan import db
from sightscan.config import Settings
from sightscan.detector import OnnxDetector, preprocess
from tests.support.browser import Browser, awaited, browser_runtime, colour_clip, poll
from tests.support.gateway import COLOURS, Gateway, call, metric, start_gateway, stop_gateway
from tests.support.onnx_models import build_colour_model, solid_colour_model

DECOY = "Nowhere Gate"
TOLERANCE = 1e-3

# What the page says of its path, and what it has seen.
PAGE = """typeof Local !== "object" || !document.getElementById("path") ? null : JSON.stringify({
  path: document.getElementById("path").dataset.path || "",
  reason: document.getElementById("path").dataset.reason || "",
  text: document.getElementById("path").textContent, conn: document.getElementById("conn").textContent,
  seen: [...document.querySelectorAll("#seen li")].map((li) => li.dataset.sight),
  current: [...document.querySelectorAll("#current li")].map((li) => li.dataset.sight || "none"),
  error: document.getElementById("error").textContent, report: Local.report()})"""


@pytest.fixture(scope="module")
def runtime() -> Path:
    return browser_runtime()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], bytes]:
    return colour_clip(tmp_path_factory.mktemp("clip"), DECOY)


def frames_received(gateway: Gateway) -> float:
    return metric(call(gateway, "GET", "/metrics", token=None)[2].decode(), "sightscan_gateway_frames_received_total")


def wait_page(browser: Browser, until, timeout: float) -> dict[str, Any]:  # noqa: ANN001 - a predicate
    return json.loads(poll(browser, PAGE, lambda v: bool(v) and until(json.loads(v)), timeout=timeout))


def new_city(pg: Settings, prefix: str, onnx: bytes, classes: list[str], size: int) -> db.City:
    with db.transaction(pg) as cur:
        city, _ = db.request_city(cur, f"{prefix} {uuid.uuid4().hex[:8]}")
        db.insert_model(cur, city.id, onnx, classes, size, {})
    return city


@contextmanager
def page(gateway: Gateway, city: db.City, video: Path, tmp_path: Path, query: str = "&autostart=1",
         extra_args: tuple[str, ...] = ()) -> Iterator[Browser]:
    browser = Browser(f"{gateway.url}/?city={quote(city.name)}{query}", tmp_path / f"profile-{uuid.uuid4().hex[:6]}",
                      video, tmp_path / "chromium.log", extra_args=extra_args)
    try:
        yield browser
    finally:
        browser.close()


# The model file, the runtime's files, the headers ---------------------------------------------------------------


def test_the_runtime_is_pinned_with_registry_addresses_only() -> None:
    package = json.loads((WEB / "package.json").read_text())
    lock = json.loads((WEB / "package-lock.json").read_text())
    pinned = package["dependencies"]["onnxruntime-web"]
    assert pinned[0].isdigit(), f"onnxruntime-web must be pinned to one version, not {pinned!r}"
    assert lock["packages"]["node_modules/onnxruntime-web"]["version"] == pinned
    for name, entry in lock["packages"].items():
        resolved = entry.get("resolved")
        assert resolved is None or resolved.startswith("https://registry.npmjs.org/"), (name, resolved)
        assert name == "" or entry.get("integrity", "").startswith("sha512-"), name


def test_model_file_is_cached_by_version_and_the_runtime_is_served(gateway: Gateway, pg: Settings, runtime: Path,
                                                                    make_city) -> None:
    made = make_city()
    url = f"/api/cities/{quote(made.city.name)}/model.onnx"
    status, headers, body = call(gateway, "GET", url, token=None)
    tag = f'"v1-{made.model.id}"'
    assert status == 200 and body == made.model.onnx
    assert (headers["ETag"], headers["Cache-Control"], headers["X-Model-Version"]) == (tag, "no-cache", "1")
    assert json.loads(headers["X-Model-Classes"]) == made.model.classes and headers["X-Model-Input-Size"] == "64"
    assert headers["X-Model-Graph"] == "served"
    # The browser asks again with the tag it holds: 304 and no body while v1 is live; any other tag gets the bytes.
    for held in (tag, f"W/{tag}", f'"other", {tag}', "*"):
        status, headers, body = _conditional(gateway, url, held)
        assert (status, body, headers["ETag"]) == (304, b"", tag), held
    assert _conditional(gateway, url, '"v0-1"')[0] == 200
    # A new model is live within seconds (the gateway follows model events): the same question now gets v2.
    with db.transaction(pg) as cur:
        v2 = db.insert_model(cur, made.city.id, made.model.onnx, made.model.classes, 64, {})
    deadline = time.monotonic() + 60
    while (answer := _conditional(gateway, url, tag))[0] == 304 and time.monotonic() < deadline:
        time.sleep(0.5)
    status, headers, body = answer
    assert status == 200 and headers["ETag"] == f'"v2-{v2.id}"' and headers["X-Model-Version"] == "2"
    # The page and everything it loads are cross-origin isolated; the runtime's files come from the gateway itself.
    status, _, raw = call(gateway, "GET", "/api/local-inference", token=None)
    info = json.loads(raw)
    assert status == 200 and info["available"] and info["version"] == json.loads(
        (WEB / "package.json").read_text())["dependencies"]["onnxruntime-web"], info
    assert info["score_threshold"] == 0.3 and info["frame_budget_ms"] > 0 and info["keepalive_s"] == 2.0
    for path, kind in (("/", "text/html"), ("/static/local_worker.js", "javascript"), (info["script"], "javascript"),
                       (info["wasm_paths"] + "ort-wasm-simd-threaded.mjs", "javascript"),
                       (info["wasm_paths"] + "ort-wasm-simd-threaded.wasm", "application/wasm")):
        status, headers, body = call(gateway, "GET", path, token=None)
        assert status == 200 and kind in headers["Content-Type"], (path, status, headers.get("Content-Type"))
        assert headers["Cross-Origin-Opener-Policy"] == "same-origin", path
        assert headers["Cross-Origin-Embedder-Policy"] == "require-corp", path
    assert (runtime / "ort-wasm-simd-threaded.wasm").stat().st_size == len(body)
    for path in (info["wasm_paths"] + "ort.all.min.js", "/ort/0.0.1/ort.wasm.min.js", info["wasm_paths"] + "..%2Fx"):
        assert call(gateway, "GET", path, token=None)[0] == 404, path


def _conditional(gateway: Gateway, path: str, tag: str) -> tuple[int, dict[str, str], bytes]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(gateway.url + path, headers={"If-None-Match": tag})
    try:
        with urllib.request.urlopen(req, timeout=20) as res:
            return res.status, dict(res.headers), res.read()
    except urllib.error.HTTPError as err:  # urllib reports a 304 as an error
        return err.code, dict(err.headers), err.read()


# Parity: the same answers on both paths ---------------------------------------------------------------------


def sight_model(size: int = 96) -> tuple[bytes, list[str]]:
    """The trainer's serving graph (trainer/export.py: softmax, sorting, boxes and the "no sight" rule inside) of a
    seeded sight model on the tiny backbone: the real contract's operators, at a test's cost."""
    import torch

    from trainer.backbones import build, choose_backbone
    from trainer.export import export_onnx
    from trainer.model import SightModel

    torch.manual_seed(0)
    classes = ["Red Gate", "Green Tower", "Blue Hall"]
    return export_onnx(SightModel(build(choose_backbone("tiny", None)), len(classes), size).eval()), classes


def parity_frames(video: Path) -> list[np.ndarray]:
    """The shared test vector: frames as the camera delivers them (the clip, 640x480) and others that take every
    branch of the resize (shrink, grow, one axis, none, the vertical pass first)."""
    rng = np.random.default_rng(22)
    clip = list(read_y4m(video))
    frames = [clip[i] for i in (5, 20, 35)]
    frames.append(rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8))
    ramp = np.linspace(0, 255, 320, dtype=np.float32)
    frames.append(np.stack([np.tile(ramp, (240, 1)), np.tile(ramp[::-1], (240, 1)),
                            np.full((240, 320), 90, np.float32)], axis=-1).astype(np.uint8))
    frames.append(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    frames.append(rng.integers(0, 256, (36, 48, 3), dtype=np.uint8))
    frames.append(rng.integers(0, 256, (400, 90, 3), dtype=np.uint8))   # tall: Pillow shrinks the height first
    return frames


def _match(expected: list[tuple[int, float, list[float]]], got: list[tuple[int, float, list[float]]]) -> str | None:
    """Each expected (class, score, box) has its own counterpart within TOLERANCE; None, or what is wrong."""
    if len(expected) != len(got):
        return f"{len(expected)} expected, {len(got)} got"
    free = list(got)
    for cls, score, box in expected:
        for i, (c, s, b) in enumerate(free):
            corners = max(abs(x - y) for x, y in zip(b, box, strict=True))
            if c == cls and abs(s - score) <= TOLERANCE and corners <= TOLERANCE:
                del free[i]
                break
        else:
            return f"no match for class {cls} score {score:.6f} box {box}; got {free}"
    return None


def test_pages_get_the_fp32_graph_the_trainer_kept_when_the_server_runs_int8(gateway: Gateway, pg: Settings,
                                                                                make_city) -> None:
    # The trainer serves int8 where it answers like fp32, but WebAssembly runs int8 slower, so it stores the fp32
    # graph beside it for pages (sql/migrations/0008_browser_graphs.sql); /ws/detect keeps running the served one.
    made = make_city(with_model=False)
    served, classes = solid_colour_model(COLOURS)
    fp32, same_classes = solid_colour_model(COLOURS, backbone=True)
    assert served != fp32 and classes == same_classes
    with db.transaction(pg) as cur:
        model = db.insert_model(cur, made.city.id, served, classes, 64, {}, browser_onnx=fp32)
    status, headers, body = call(gateway, "GET", f"/api/cities/{quote(made.city.name)}/model.onnx", token=None)
    assert (status, body, headers["X-Model-Graph"]) == (200, fp32, "fp32")
    assert headers["ETag"] == f'"v1-{model.id}"'
    with db.transaction(pg) as cur:
        assert db.latest_model(cur, made.city.id).onnx == served
        cur.execute("DELETE FROM models WHERE id = %s", (model.id,))  # the browser's graph goes with its model
        cur.execute("SELECT count(*) FROM model_browser_graphs WHERE model_id = %s", (model.id,))
        assert cur.fetchone()[0] == 0


def test_the_page_worker_answers_as_the_python_detector(gateway: Gateway, pg: Settings, runtime: Path, clip,
                                                         tmp_path: Path) -> None:
    video, classes, colour = clip
    backbone = build_colour_model(np.array([[0.8, 0.2, 0.2], [0.2, 0.7, 0.2], [0.2, 0.2, 0.8], [0.5, 0.5, 0.5]]),
                                  np.array([[0.1, 0.1, 0.6, 0.7], [0.3, 0.2, 0.9, 0.9], [0.0, 0.5, 0.5, 1.0],
                                            [0.2, 0.2, 0.8, 0.8]]), top_k=4, temperature=0.05, backbone=True)
    sight, sight_classes = sight_model()
    frames = parity_frames(video)
    vector = [{"width": f.shape[1], "height": f.shape[0], "rgb": base64.b64encode(f.tobytes()).decode()}
              for f in frames]
    threshold = json.loads(call(gateway, "GET", "/api/local-inference", token=None)[2])["score_threshold"]
    cases = [("colour model", colour, classes, 64), ("colour model behind convolutions", backbone,
             ["Red", "Green", "Blue", "Grey"], 48), ("trainer's sight model", sight, sight_classes, 96)]
    checked = 0
    for name, onnx, names, size in cases:
        city = new_city(pg, "Parity", onnx, names, size)
        detector = OnnxDetector(onnx, names, size, threads=1)
        with page(gateway, city, video, tmp_path, query="&path=device") as browser:
            poll(browser, "typeof Local === \"object\" ? Local.report().runtime : null", bool, timeout=60)
            answer = awaited(browser, f"Local.check({json.dumps(vector)})")
        for n, (frame, got) in enumerate(zip(frames, answer["results"], strict=True)):
            where = f"{name}, frame {n} ({frame.shape[1]}x{frame.shape[0]})"
            tensor = preprocess(frame, size)
            browser_tensor = np.frombuffer(base64.b64decode(got["tensor"]), dtype=np.float32).reshape(tensor.shape)
            assert np.array_equal(browser_tensor, tensor), f"{where}: the input tensors differ in " \
                f"{int((browser_tensor != tensor).sum())} values"
            boxes, scores, labels = detector.run(tensor[None])
            raw = got["raw"]
            k = scores.shape[1]
            expected_raw = [(int(c), float(s), [float(v) for v in b]) for b, s, c in zip(boxes[0], scores[0], labels[0],
                                                                                     strict=True)]
            got_raw = [(raw["classes"][i], raw["scores"][i], raw["boxes"][4 * i:4 * i + 4]) for i in range(k)]
            assert (problem := _match(expected_raw, got_raw)) is None, f"{where}, graph outputs: {problem}"
            expected = [(d.class_index, d.score, list(d.box)) for d in detector.detect(tensor[None], threshold)[0]]
            found = [(d["class_index"], d["score"], d["box"]) for d in got["detections"]]
            assert (problem := _match(expected, found)) is None, f"{where}, detections: {problem}"
            assert all(d["sight"] == names[d["class_index"]] for d in got["detections"]), where
            checked += len(expected)
        timings = [round(r["ms"]["total"], 1) for r in answer["results"]]
        print(f"{name}: {len(frames)} frames, worker ms per frame {timings}")
    assert checked >= 10, f"the vector should carry detections to compare, it had {checked}"


# The page on this device ------------------------------------------------------------------------------------


def test_the_page_recognises_on_this_device_and_hot_swaps(gateway: Gateway, pg: Settings, runtime: Path, clip,
                                                          tmp_path: Path) -> None:
    video, classes, onnx = clip
    city = new_city(pg, "Devicetown", onnx, classes, 64)
    before = frames_received(gateway)
    with page(gateway, city, video, tmp_path) as browser:
        state = wait_page(browser, lambda s: s["path"] == "device" and s["report"]["local_frames"] >= 10 and
                          len(set(s["seen"]) & set(classes[:3])) >= 2, timeout=120)
        print("page on this device:", {k: v for k, v in state.items() if k != "report"})
        report = state["report"]
        assert report["isolated"] is True and report["threads"] >= 1 and report["model_version"] == 1, report
        assert DECOY not in state["seen"] and "on this device" in state["text"] and "model v1" in state["conn"]
        assert report["local_frames"] >= 10 and report["server_frames"] == 0
        assert frames_received(gateway) == before, "a frame reached /ws/detect while the page ran on the device"
        # A new model: the same colours under new names. The page hears of it on its websocket (which carries no
        # frames), loads it in a new worker and switches between two frames.
        renamed = [f"{name} (v2)" for name in classes]
        with db.transaction(pg) as cur:
            db.insert_model(cur, city.id, onnx, renamed, 64, {})
        live = time.monotonic()
        state = wait_page(browser, lambda s: s["report"]["model_version"] == 2 and
                          len(set(s["seen"]) & set(renamed[:3])) >= 1, timeout=60)
        swapped_in = time.monotonic() - live
        print(f"model v2 recognised on the page {swapped_in:.1f} s after it was stored")
        assert state["report"]["swaps"] == 1 and state["path"] == "device" and swapped_in < 30
        assert frames_received(gateway) == before
        # The user's choice: on the server. Frames go to /ws/detect, and are answered.
        asyncio.run(browser.evaluate("""(() => { const s = document.getElementById("path-choice");
            s.value = "server"; s.dispatchEvent(new Event("change")); })()"""))
        state = wait_page(browser, lambda s: s["path"] == "server" and s["report"]["server_frames"] >= 5, timeout=60)
        assert frames_received(gateway) > before and "on the server" in state["text"]
        assert state["reason"] == "chosen"


def test_without_webassembly_the_page_falls_back_to_the_server(gateway: Gateway, pg: Settings, runtime: Path, clip,
                                                               tmp_path: Path) -> None:
    video, classes, onnx = clip
    city = new_city(pg, "Wasmless", onnx, classes, 64)
    before = frames_received(gateway)
    # V8's --noexpose_wasm no longer hides WebAssembly in Chromium (156: typeof WebAssembly is still "object");
    # --jitless turns the JIT off and WebAssembly with it (typeof WebAssembly === "undefined").
    with page(gateway, city, video, tmp_path, extra_args=("--js-flags=--jitless",)) as browser:
        state = wait_page(browser, lambda s: s["path"] == "server" and bool(set(s["seen"]) & set(classes[:3])),
                          timeout=120)
        print("page without WebAssembly:", {k: v for k, v in state.items() if k != "report"})
        assert "WebAssembly" in state["reason"] and "on the server" in state["text"]
        assert state["report"]["local_frames"] == 0 and state["report"]["server_frames"] > 0
        assert frames_received(gateway) > before


@pytest.mark.parametrize(("env", "why"), [
    ({"GATEWAY_LOCAL_INFERENCE": "false"}, "turned off on this gateway"),
    # No device runs a frame in a hundredth of a millisecond: the warm-up is over budget.
    ({"GATEWAY_LOCAL_FRAME_BUDGET_MS": "0.01"}, "ms budget")])
def test_a_gateway_without_local_inference_or_a_slow_device_runs_the_page_on_the_server(
        pg: Settings, runtime: Path, clip, tmp_path: Path, env: dict[str, str], why: str) -> None:
    video, classes, onnx = clip
    gw = start_gateway(pg, tmp_path / "gateway.log", **env)
    try:
        city = new_city(pg, "Serverside", onnx, classes, 64)
        with page(gw, city, video, tmp_path) as browser:
            state = wait_page(browser, lambda s: s["path"] == "server" and s["report"]["server_frames"] >= 5 and
                              bool(set(s["seen"]) & set(classes[:3])), timeout=120)
            print("page:", {k: v for k, v in state.items() if k != "report"})
            assert why in state["reason"] and "on the server" in state["text"]
            assert state["report"]["local_frames"] == 0 and frames_received(gw) >= 5
    finally:
        stop_gateway(gw)
