"""The review queue (docs/corrections.md, "Review queue") against a real gateway process and the real warehouse:
unsure live frames are kept only in cities that opted in, each with how it was chosen; sure ones never; the caps
per minute and per day hold; accepting is a correction that takes the frame out of the queue, dismissing drops it;
writes need the token; the page lists the queue and accepts with one click (real headless Chromium). The sampler
itself (never waits, drops when busy) is tested without the stack."""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import aiohttp
import numpy as np
import pytest
from PIL import Image

from gateway.imaging import decode_frame
from gateway.metrics import Metrics
from gateway.registry import LoadedModel
from gateway.review import ReviewSampler, model_threshold, unsure
from gateway.settings import GatewaySettings
from gateway.warehouse import PgWarehouse
from sightscan import db
from sightscan.config import Settings
from sightscan.detector import Detection, OnnxDetector
from tests.support.browser import Browser, poll
from tests.support.gateway import (
    COLOURS,
    TOKEN,
    Gateway,
    add_user,
    call,
    call_json,
    next_message,
    post_correction,
    start_gateway,
    stop_gateway,
)
from tests.support.onnx_models import build_colour_model

THRESHOLD = 0.8    # the model row's calibrated threshold
MARGIN = 0.1       # GATEWAY_REVIEW_THRESHOLD_MARGIN and GATEWAY_REVIEW_CLOSE_MARGIN (the defaults)
PER_MINUTE = 4     # GATEWAY_REVIEW_PER_MINUTE of this module's gateway
SIGHTS = list(COLOURS)
# A frame's colour, from the Red Gate's (0) towards the Green Tower's (1): with the soft colour model below, 0 is
# sure (Red Gate ~1.0), 0.42 near the threshold (Red Gate ~0.83), 0.5 two close sights (~0.51 and ~0.48).
MIX = {"sure": 0.0, "near": 0.42, "close": 0.5}
REASON = {"sure": None, "near": "near-threshold", "close": "close-sights"}


@pytest.fixture(scope="module")
def model() -> bytes:
    """The colour model with soft scores (temperature 0.1), so a mixed colour is a middling answer."""
    protos = np.array([COLOURS[s] for s in SIGHTS], dtype=np.float32) / 255.0
    return build_colour_model(protos, np.tile([[0.1, 0.1, 0.9, 0.9]], (len(SIGHTS), 1)), temperature=0.1)


@pytest.fixture(scope="module")
def detector(model: bytes) -> OnnxDetector:
    return OnnxDetector(model, SIGHTS, 64, threads=1)


@pytest.fixture(scope="module")
def gw(pg: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(pg, tmp_path_factory.mktemp("review") / "gateway.log", GATEWAY_FOLLOW_MODELS="false",
                            GATEWAY_REVIEW_PER_MINUTE=str(PER_MINUTE), GATEWAY_REVIEW_PER_DAY="1000")
    yield gateway
    stop_gateway(gateway)


@pytest.fixture
def city(pg: Settings, model: bytes) -> db.City:
    """A fresh city with the three sights and the colour model (v1, calibrated threshold 0.8)."""
    with db.transaction(pg) as cur:
        made, _ = db.request_city(cur, f"Reviewia {uuid.uuid4().hex[:10]}")
        for sight in SIGHTS:
            db.ensure_sight(cur, made.id, sight, "test")
        db.insert_model(cur, made.id, model, SIGHTS, 64, {"threshold": THRESHOLD})
    return made


_pixels = itertools.count(uuid.uuid4().int % 10_000)


def frame(kind: str, detector: OnnxDetector) -> bytes:
    """A JPEG no other test sends (one white pixel placed apart), whose answer is of the given kind: checked on the
    model itself, as the gateway decodes it."""
    red, green = np.array(COLOURS["Red Gate"]), np.array(COLOURS["Green Tower"])
    colour = tuple(int(round(v)) for v in (1 - MIX[kind]) * red + MIX[kind] * green)
    n = next(_pixels)
    img = Image.new("RGB", (160, 120), colour)
    img.putpixel((n % 160, (n // 160) % 120), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    [found] = detector.detect(decode_frame(data, 64, 10**7).tensor[None], 0.3)
    assert unsure(found, THRESHOLD, MARGIN, MARGIN) == REASON[kind], (kind, found)
    return data


async def _answers(gateway: Gateway, city: str, frames: list[bytes], gap: float) -> list[dict[str, Any]]:
    out = []
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{gateway.ws_url}?city={quote(city)}") as ws:
        await next_message(ws, "hello")
        for data in frames:
            await ws.send_bytes(data)
            out.append(await next_message(ws, "detections"))
            await asyncio.sleep(gap)
    return out


def stream(gateway: Gateway, city: db.City, frames: list[bytes], gap: float = 0.25) -> list[dict[str, Any]]:
    """Send frames over the websocket one at a time, each after the last was answered and `gap` seconds (so a
    store finishes before the next frame: 'busy' drops are the unit test's); their answers."""
    return asyncio.run(_answers(gateway, city.name, frames, gap))


def kept(pg: Settings, city_id: int) -> list[dict[str, Any]]:
    with db.transaction(pg) as cur:
        cur.execute("SELECT id, reason, model_version, threshold, shown, sha256, data IS NOT NULL, outcome,"
                    " correction_id, kept_at, clock_timestamp() FROM review_frames WHERE city_id = %s ORDER BY id",
                    (city_id,))
        return [{"id": r[0], "reason": r[1], "model_version": r[2], "threshold": r[3], "shown": r[4], "sha256": r[5],
                 "has_bytes": r[6], "outcome": r[7], "correction_id": r[8], "age_s": (r[10] - r[9]).total_seconds()}
                for r in cur.fetchall()]


def settled(pg: Settings, city_id: int, expected: int, timeout: float = 10) -> list[dict[str, Any]]:
    """The city's kept frames once there are `expected` (and a moment more, for any that should not be there)."""
    deadline = time.monotonic() + timeout
    while len(kept(pg, city_id)) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    return kept(pg, city_id)


def sample(gateway: Gateway, city: db.City, on: bool = True) -> None:
    status, body = call_json(gateway, "PUT", f"/api/cities/{city.name}/review", {"sample": on})
    assert (status, body["sample"], body["city"]) == (200, on, city.name), body


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Keeping ------------------------------------------------------------------------------------------------


def test_review_frames_stay_out_of_change_data_capture(pg: Settings) -> None:
    with db.transaction(pg) as cur:
        cur.execute("SELECT tablename FROM pg_publication_tables WHERE pubname = 'sightscan_publication'")
        published = {r[0] for r in cur.fetchall()}
    assert {"images", "labels"} <= published and not {"review_frames", "review_settings"} & published


def test_a_city_keeps_nothing_until_its_operator_turns_sampling_on(gw: Gateway, pg: Settings, city: db.City,
                                                                  detector: OnnxDetector) -> None:
    status, queue = call_json(gw, "GET", f"/api/cities/{city.name}/review")
    assert status == 200 and queue == {"city": city.name, "sample": False, "waiting": 0, "frames": []}, queue
    stream(gw, city, [frame("near", detector), frame("close", detector), frame("near", detector)])
    assert settled(pg, city.id, 0) == []
    # On, then off again: what was kept while on stays, nothing more is kept.
    sample(gw, city, True)
    stream(gw, city, [frame("near", detector)])
    assert len(settled(pg, city.id, 1)) == 1
    sample(gw, city, False)
    stream(gw, city, [frame("close", detector), frame("near", detector)])
    assert len(settled(pg, city.id, 2)) == 1
    status, queue = call_json(gw, "GET", f"/api/cities/{city.name}/review")
    assert (status, queue["sample"], queue["waiting"], len(queue["frames"])) == (200, False, 1, 1)


def test_unsure_frames_are_kept_with_how_they_were_chosen_and_sure_ones_are_not(
        gw: Gateway, pg: Settings, city: db.City, detector: OnnxDetector) -> None:
    sample(gw, city)
    frames = {kind: frame(kind, detector) for kind in ("sure", "near", "close")}
    answers = dict(zip(["sure", "near", "close", "sure2"],
                       stream(gw, city, [frames["sure"], frames["near"], frames["close"], frame("sure", detector)]),
                       strict=True))
    rows = settled(pg, city.id, 2)
    assert [(r["reason"], r["sha256"]) for r in rows] == [("near-threshold", sha(frames["near"])),
                                                           ("close-sights", sha(frames["close"]))]
    for row, kind in zip(rows, ("near", "close"), strict=True):
        assert row["model_version"] == 1 and abs(row["threshold"] - THRESHOLD) < 1e-6
        assert row["shown"] == answers[kind]["detections"] and row["has_bytes"] and 0 <= row["age_s"] < 30
    assert answers["near"]["detections"][0]["score"] == pytest.approx(0.83, abs=0.06)

    # The queue: newest first, each saying why, with what accepting would send; the frame as the camera sent it.
    status, queue = call_json(gw, "GET", f"/api/cities/{city.name}/review")
    assert status == 200 and (queue["sample"], queue["waiting"]) == (True, 2), queue
    close, near = queue["frames"]
    assert (close["reason"], near["reason"]) == ("close-sights", "near-threshold")
    assert near["shown"] == answers["near"]["detections"] and near["model_version"] == 1
    assert near["accept"] == {"action": "confirm", "sight": "Red Gate", "box": near["shown"][0]["box"]}
    assert (near["width"], near["height"], near["mime_type"], near["threshold"]) == (160, 120, "image/jpeg", 0.8)
    assert near["frame"] == f"/api/cities/{quote(city.name, safe='')}/review/{near['id']}/frame"
    status, headers, data = call(gw, "GET", near["frame"])
    assert (status, headers["Content-Type"], data) == (200, "image/jpeg", frames["near"])
    assert "no-store" in headers["Cache-Control"]
    status, page = call_json(gw, "GET", f"/api/cities/{city.name}/review?limit=1&before={close['id']}")
    assert status == 200 and [f["id"] for f in page["frames"]] == [near["id"]]
    # The same bytes again are not kept twice.
    stream(gw, city, [frames["near"]])
    assert len(settled(pg, city.id, 3, timeout=1)) == 2


def test_no_more_than_the_cap_a_minute_is_kept(gw: Gateway, pg: Settings, city: db.City,
                                               detector: OnnxDetector) -> None:
    sample(gw, city)
    stream(gw, city, [frame("near" if i % 2 else "close", detector) for i in range(2 * PER_MINUTE)])
    rows = settled(pg, city.id, PER_MINUTE + 1, timeout=3)
    assert len(rows) == PER_MINUTE, rows
    metrics = call(gw, "GET", "/metrics")[2].decode()
    assert 'sightscan_gateway_review_frames_total{outcome="per_minute"}' in metrics


def test_no_more_than_the_cap_a_day_is_kept(pg: Settings, city: db.City, detector: OnnxDetector,
                                            tmp_path: Path) -> None:
    gateway = start_gateway(pg, tmp_path / "gateway.log", GATEWAY_FOLLOW_MODELS="false",
                            GATEWAY_REVIEW_PER_DAY="3", GATEWAY_REVIEW_PER_MINUTE="100")
    try:
        sample(gateway, city)
        # A day is any 24 hours: a frame kept 23 hours ago counts (reviewed or not), one kept 25 hours ago does not.
        with db.transaction(pg) as cur:
            for hours, data in ((23, b"a"), (25, b"b")):
                cur.execute("INSERT INTO review_frames (city_id, reason, model_version, threshold, mime_type, sha256,"
                            " width, height, kept_at, reviewed_at, outcome) VALUES (%s, 'near-threshold', 1, 0.8,"
                            " 'image/jpeg', %s, 4, 3, now() - make_interval(hours => %s), now(), 'dismissed')",
                            (city.id, sha(data), hours))
        stream(gateway, city, [frame("near", detector) for _ in range(5)])
        rows = settled(pg, city.id, 5, timeout=3)
        assert [r["outcome"] for r in rows] == ["dismissed", "dismissed", None, None], rows
    finally:
        stop_gateway(gateway)


# Reviewing ----------------------------------------------------------------------------------------------


def test_accepting_a_frame_is_a_correction_and_takes_it_out_of_the_queue(gw: Gateway, pg: Settings, city: db.City,
                                                                         detector: OnnxDetector) -> None:
    sample(gw, city)
    stream(gw, city, [frame("near", detector), frame("close", detector)])
    settled(pg, city.id, 2)
    _, queue = call_json(gw, "GET", f"/api/cities/{city.name}/review")
    close, near = queue["frames"]
    # A user accepts: the correction of what the model said, with the frame's bytes.
    _, user_token = add_user(gw)
    _, _, data = call(gw, "GET", near["frame"], token=user_token)
    status, _, correction = post_correction(gw, city.name, {**near["accept"], "model_version": near["model_version"],
                                                            "shown": near["shown"]}, data, token=user_token)
    assert status == 201 and (correction["action"], correction["sight"]) == ("confirm", "Red Gate"), correction
    # Out of the queue as soon as the correction is stored.
    _, queue = call_json(gw, "GET", f"/api/cities/{city.name}/review")
    assert [f["id"] for f in queue["frames"]] == [close["id"]] and queue["waiting"] == 1
    assert call(gw, "GET", near["frame"])[0] == 404
    # The page then takes it out for good: its bytes dropped, the correction named.
    assert call(gw, "DELETE", f"/api/cities/{city.name}/review/{near['id']}", token=user_token)[0] == 204
    row = next(r for r in kept(pg, city.id) if r["id"] == near["id"])
    assert (row["outcome"], row["correction_id"], row["has_bytes"]) == ("corrected", correction["id"], False)
    with db.transaction(pg) as cur:
        cur.execute("SELECT i.sha256, i.origin, l.kind, s.name FROM corrections c JOIN images i ON i.id = c.image_id"
                    " JOIN labels l ON l.correction_id = c.id JOIN sights s ON s.id = l.sight_id WHERE c.id = %s",
                    (correction["id"],))
        assert cur.fetchone() == (sha(data), "user", "user-box", "Red Gate")
    # A frame some correction already has is not kept again.
    stream(gw, city, [data])
    assert len(settled(pg, city.id, 3, timeout=1)) == 2


def test_dismissing_a_frame_drops_it(gw: Gateway, pg: Settings, city: db.City, detector: OnnxDetector) -> None:
    sample(gw, city)
    stream(gw, city, [frame("close", detector)])
    [row] = settled(pg, city.id, 1)
    path = f"/api/cities/{city.name}/review/{row['id']}"
    assert call(gw, "DELETE", path)[0] == 204
    [row] = kept(pg, city.id)
    assert (row["outcome"], row["correction_id"], row["has_bytes"]) == ("dismissed", None, False)
    status, body = call_json(gw, "DELETE", path)
    assert (status, body["error"]) == (404, "unknown_review_frame")
    assert call(gw, "GET", path + "/frame")[0] == 404
    _, queue = call_json(gw, "GET", f"/api/cities/{city.name}/review")
    assert queue["frames"] == [] and queue["waiting"] == 0


def test_the_queue_needs_a_token_and_the_switch_the_operators(gw: Gateway, pg: Settings, city: db.City,
                                                               detector: OnnxDetector) -> None:
    base = f"/api/cities/{city.name}/review"
    _, user_token = add_user(gw)
    on = json.dumps({"sample": True}).encode()
    for token, expected in ((None, (401, "token_required")), ("not-a-token-of-anyone", (403, "bad_token")),
                            (user_token, (403, "operator_only"))):
        status, _, body = call(gw, "PUT", base, on, token=token)
        assert (status, json.loads(body)["error"]) == expected
    assert settled(pg, city.id, 0, timeout=0) == []
    with db.transaction(pg) as cur:
        assert not db.review_sampling(cur, city.id)
    sample(gw, city)
    stream(gw, city, [frame("near", detector)])
    [row] = settled(pg, city.id, 1)
    for method, path in (("GET", base), ("GET", f"{base}/{row['id']}/frame"), ("DELETE", f"{base}/{row['id']}")):
        status, _, body = call(gw, method, path, token=None)
        assert (status, json.loads(body)["error"]) == (401, "token_required"), (method, path)
        status, _, body = call(gw, method, path, token="not-a-token-of-anyone")
        assert (status, json.loads(body)["error"]) == (403, "bad_token"), (method, path)
    assert kept(pg, city.id)[0]["has_bytes"]
    # A user reads the queue; refusals say why.
    status, queue = call_json(gw, "GET", base, token=user_token)
    assert status == 200 and [f["id"] for f in queue["frames"]] == [row["id"]]
    for body in (b'{"sample": "yes"}', b"{}", b'{"sample": true, "more": 1}', b"[true]"):
        status, answer = call_json(gw, "PUT", base, body)
        assert (status, answer["error"]) == (400, "bad_review"), body
    assert call_json(gw, "PUT", base, b"{nope")[1]["error"] == "bad_json"
    for query in ("?limit=0", "?limit=201", "?before=x", "?page=2"):
        status, answer = call_json(gw, "GET", base + query)
        assert (status, answer["error"]) == (400, "bad_query"), query
    status, answer = call_json(gw, "GET", f"/api/cities/Nowhere {uuid.uuid4().hex[:8]}/review")
    assert (status, answer["error"]) == (404, "unknown_city")


# The page ----------------------------------------------------------------------------------------------

QUEUE = """JSON.stringify({
  shown: !document.getElementById("review").hidden,
  sample: document.getElementById("review-sample").checked,
  items: [...document.querySelectorAll("#review-list li")].map((li) => ({id: Number(li.dataset.id),
           reason: li.dataset.reason, loaded: li.dataset.loaded === "1", text: li.textContent})),
  sent: [...document.querySelectorAll("#sent li")].map((li) => ({id: Number(li.dataset.id),
          action: li.dataset.action, sight: li.dataset.sight || null})),
  status: document.getElementById("review-status").textContent,
  error: document.getElementById("review-error").textContent + document.getElementById("correct-error").textContent})"""


def page_state(browser: Browser, until: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
    return json.loads(poll(browser, QUEUE, lambda v: bool(v) and until(json.loads(v)), timeout=timeout))


def js(browser: Browser, expression: str) -> Any:
    return asyncio.run(browser.evaluate(expression))


def click(browser: Browser, selector: str) -> None:
    assert js(browser, f"""(() => {{ const b = document.querySelector({json.dumps(selector)});
                             if (!b || b.disabled) return false; b.click(); return true; }})()"""), selector


def test_the_page_lists_the_queue_and_accepts_with_one_click(gw: Gateway, pg: Settings, city: db.City,
                                                            detector: OnnxDetector, tmp_path: Path) -> None:
    sample(gw, city)
    frames = [frame("near", detector), frame("close", detector), frame("near", detector)]
    stream(gw, city, frames)
    rows = settled(pg, city.id, 3)
    assert len(rows) == 3
    browser = Browser(f"{gw.url}/?city={quote(city.name)}", tmp_path / "profile", tmp_path / "no-camera.y4m",
                      tmp_path / "chromium.log")
    try:
        poll(browser, f"""(() => {{ const t = document.getElementById("token"); if (!t) return false;
                         t.value = {json.dumps(TOKEN)}; t.dispatchEvent(new Event("change")); return true; }})()""",
             bool, timeout=30)
        state = page_state(browser, lambda s: len(s["items"]) == 3 and all(i["loaded"] for i in s["items"]))
        assert state["shown"] and state["sample"] and state["error"] == ""
        assert [i["id"] for i in state["items"]] == [r["id"] for r in reversed(rows)]  # newest first
        first_near, close, last_near = rows
        near_item = next(i for i in state["items"] if i["id"] == last_near["id"])
        assert "Near the threshold: Red Gate" in near_item["text"] and "threshold 80%" in near_item["text"]
        assert "Accept: Red Gate" in near_item["text"]
        close_item = next(i for i in state["items"] if i["id"] == close["id"])
        assert "Two close sights: Red Gate" in close_item["text"] and "Green Tower" in close_item["text"]
        assert "3 frames to review" in state["status"]

        # One click accepts: the correction of what the model said, with the frame as the camera sent it.
        click(browser, f'#review-list li[data-id="{last_near["id"]}"] button.accept')
        state = page_state(browser, lambda s: len(s["sent"]) == 1 and len(s["items"]) == 2)
        assert state["error"] == "" and state["sent"][0]["action"] == "confirm"
        assert state["sent"][0]["sight"] == "Red Gate"
        accepted = state["sent"][0]["id"]
        with db.transaction(pg) as cur:
            cur.execute("SELECT c.action, c.model_version, c.shown, i.sha256 FROM corrections c"
                        " JOIN images i ON i.id = c.image_id WHERE c.id = %s", (accepted,))
            action, version, shown, image_sha = cur.fetchone()
        assert (action, version, image_sha) == ("confirm", 1, last_near["sha256"]) and shown == last_near["shown"]
        deadline = time.monotonic() + 10
        while (row := next(r for r in kept(pg, city.id) if r["id"] == last_near["id"]))["outcome"] is None:
            assert time.monotonic() < deadline, row
            time.sleep(0.2)
        assert (row["outcome"], row["correction_id"], row["has_bytes"]) == ("corrected", accepted, False)

        # Fix opens the corrections panel on the frame: here the user says it is the Green Tower.
        click(browser, f'#review-list li[data-id="{close["id"]}"] button.fix')
        panel = json.loads(poll(browser, """JSON.stringify({open: !document.getElementById("correct-frame").hidden,
            still: !document.getElementById("still").hidden, info: document.getElementById("frame-info").textContent,
            shown: [...document.querySelectorAll("#shown li")].map((li) => li.dataset.sight)})""",
            lambda v: json.loads(v)["open"], timeout=10))
        assert panel["still"] and panel["shown"] == ["Red Gate", "Green Tower"]
        assert f"Review frame #{close['id']}" in panel["info"] and "model v1" in panel["info"]
        click(browser, "#shown li:nth-child(2) button:nth-of-type(1)")  # confirm the Green Tower
        state = page_state(browser, lambda s: len(s["sent"]) == 2 and len(s["items"]) == 1)
        assert state["sent"][0]["action"] == "confirm" and state["sent"][0]["sight"] == "Green Tower"
        with db.transaction(pg) as cur:
            cur.execute("SELECT i.sha256 FROM corrections c JOIN images i ON i.id = c.image_id WHERE c.id = %s",
                        (state["sent"][0]["id"],))
            assert cur.fetchone()[0] == close["sha256"]

        # Dismiss: out of the queue, no correction.
        click(browser, f'#review-list li[data-id="{first_near["id"]}"] button.dismiss')
        state = page_state(browser, lambda s: s["items"] == [])
        assert len(state["sent"]) == 2 and state["error"] == ""
        assert next(r for r in kept(pg, city.id) if r["id"] == first_near["id"])["outcome"] == "dismissed"
    finally:
        browser.close()


# The sampler, without the stack --------------------------------------------------------------------------


def _detections(*scores: tuple[str, float]) -> list[Detection]:
    return [Detection(SIGHTS.index(s) if s in SIGHTS else 0, s, v, (0.1, 0.1, 0.9, 0.9)) for s, v in scores]


def test_what_makes_a_frame_unsure() -> None:
    assert unsure([], 0.8, 0.1, 0.1) is None  # nothing answered: nothing to judge
    assert unsure(_detections(("Red Gate", 0.85)), 0.8, 0.1, 0.1) == "near-threshold"
    assert unsure(_detections(("Red Gate", 0.71)), 0.8, 0.1, 0.1) == "near-threshold"
    assert unsure(_detections(("Red Gate", 0.95)), 0.8, 0.1, 0.1) is None
    assert unsure(_detections(("Red Gate", 0.55), ("Blue Hall", 0.5)), 0.8, 0.1, 0.1) == "close-sights"
    assert unsure(_detections(("Red Gate", 0.6), ("Blue Hall", 0.3)), 0.8, 0.1, 0.1) is None
    # Two boxes of one sight are one sight: its best score against the next sight's.
    assert unsure(_detections(("Red Gate", 0.6), ("Red Gate", 0.58), ("Blue Hall", 0.3)), 0.8, 0.1, 0.1) is None
    assert unsure(_detections(("Red Gate", 0.85), ("Blue Hall", 0.84)), 0.8, 0.1, 0.1) == "near-threshold"
    loaded = LoadedModel(1, 1, 1, SIGHTS, 64, {"threshold": 0.7}, batcher=None)  # type: ignore[arg-type]
    assert model_threshold(loaded, 0.3) == 0.7
    for metrics in ({}, {"threshold": None}, {"threshold": "0.7"}, {"threshold": 1.5}, {"threshold": True}):
        loaded.metrics = metrics
        assert model_threshold(loaded, 0.3) == 0.3


class _SlowWarehouse(PgWarehouse):
    """A warehouse whose stores wait until released: the frame path must not."""

    def __init__(self) -> None:  # no pool, no PostgreSQL
        self.release = asyncio.Event()
        self.stored: list[db.NewReviewFrame] = []

    async def review_sampling(self, city_id: int) -> bool:
        return True

    async def keep_review_frame(self, new: db.NewReviewFrame, caps: db.ReviewCaps) -> int | str:
        await self.release.wait()
        self.stored.append(new)
        return len(self.stored)


def test_the_sampler_never_waits_and_drops_frames_while_busy() -> None:
    async def run() -> None:
        warehouse = _SlowWarehouse()
        metrics = Metrics()
        sampler = ReviewSampler(SimpleNamespace(settings=GatewaySettings(review_per_minute=3), warehouse=warehouse,
                                                metrics=metrics))  # type: ignore[arg-type]
        model = LoadedModel(1, 7, 2, SIGHTS, 64, {"threshold": 0.8}, batcher=None)  # type: ignore[arg-type]
        near = _detections(("Red Gate", 0.82))
        jpeg = b"\xff\xd8\xff" + b"0" * 100

        def offer(found: list[Detection] = near) -> str | None:
            return sampler.offer(7, model, jpeg, 4, 3, found, [d.as_json() for d in found])

        assert offer() is None  # the city's opt-in is not known yet: asked for in the background
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert offer(_detections(("Red Gate", 0.99))) is None  # sure of itself
        # Two stores at most at once; the rest are dropped, and offering returns at once all the same.
        assert [offer() for _ in range(5)] == ["near-threshold", "near-threshold", None, None, None]
        warehouse.release.set()
        await asyncio.sleep(0.05)
        assert len(warehouse.stored) == 2 and warehouse.stored[0].model_version == 2
        assert warehouse.stored[0].mime_type == "image/jpeg" and warehouse.stored[0].threshold == 0.8
        # The minute's cap in memory: 3 a minute, 2 tried already.
        assert [offer() for _ in range(3)] == ["near-threshold", None, None]
        await asyncio.sleep(0.05)
        def value(outcome: str) -> float | None:
            return metrics.registry.get_sample_value("sightscan_gateway_review_frames_total", {"outcome": outcome})

        assert (value("kept"), value("busy"), value("per_minute")) == (3, 3, 2)
        await sampler.close()

    asyncio.run(run())
