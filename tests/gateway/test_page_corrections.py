"""Corrections from the web page (docs/corrections.md), in real headless Chromium with a fake camera: the page
recognises the clip, the user pauses and confirms, names the right sight, says there is no sight, draws a box,
keeps the frame; the warehouse holds exactly that, the frame as shown, and undo takes it back."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from sightscan import db
from sightscan.config import Settings
from tests.support.browser import Browser, awaited, colour_clip, drag, poll, press
from tests.support.gateway import TOKEN, Gateway, call_json, next_message, start_gateway, stop_gateway

DECOY = "Nowhere Gate"

# Pause as soon as the frame shown has a detection: checked and clicked in one turn of the page's event loop, so
# the frame paused on is the one checked. null until then.
PAUSE_ON_A_SIGHT = """(() => {
  const pause = document.getElementById("pause");
  if (!pause || pause.disabled || !state.shown || state.shown.detections.length === 0) return null;
  pause.click();
  return JSON.stringify({frame: state.shown.frame, model_version: state.shown.model_version,
                         detections: state.shown.detections, path: state.shown.path});
})()"""

# What the page shows of the corrections it sent.
SENT = """JSON.stringify({
  sent: [...document.querySelectorAll("#sent li")].map((li) => ({id: Number(li.dataset.id), action: li.dataset.action,
          sight: li.dataset.sight || null, state: li.dataset.state, text: li.textContent})),
  result: document.getElementById("correct-result").textContent,
  error: document.getElementById("correct-error").textContent})"""

# The SHA-256 of the frame the page holds as shown (the JPEG it sent to the model), hex.
SHOWN_SHA256 = """(async () => {
  const digest = await crypto.subtle.digest("SHA-256", await state.shown.blob.arrayBuffer());
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
})()"""


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], bytes]:
    return colour_clip(tmp_path_factory.mktemp("clip"), DECOY)


@contextmanager
def opened(gateway: Gateway, pg: Settings, clip, tmp_path: Path) -> Iterator[tuple[Browser, db.City, list[str]]]:
    """The page streaming the clip for a fresh city with the colour model (v1); each class is one of its sights."""
    video, classes, onnx = clip
    with db.transaction(pg) as cur:
        city, _ = db.request_city(cur, f"Correctica {uuid.uuid4().hex[:6]}")
        for name in classes:
            db.ensure_sight(cur, city.id, name, source="test")
        db.insert_model(cur, city.id, onnx, classes, 64, {})
    browser = Browser(f"{gateway.url}/?city={quote(city.name)}&autostart=1", tmp_path / "profile", video,
                      tmp_path / "chromium.log")
    try:
        yield browser, city, classes
    finally:
        browser.close()


@pytest.fixture
def page(gateway: Gateway, pg: Settings, clip, tmp_path: Path) -> Iterator[tuple[Browser, db.City, list[str]]]:
    with opened(gateway, pg, clip, tmp_path) as opened_page:
        yield opened_page


def js(browser: Browser, expression: str) -> Any:
    return asyncio.run(browser.evaluate(expression))


def set_token(browser: Browser, token: str) -> None:
    """Type the write token into the page's field (once the page has loaded)."""
    poll(browser, f"""(() => {{ const t = document.getElementById("token"); if (!t) return false;
                      t.value = {json.dumps(token)}; t.dispatchEvent(new Event("change")); return true; }})()""",
         bool, timeout=30)


def click(browser: Browser, selector: str) -> None:
    assert js(browser, f"""(() => {{ const b = document.querySelector({json.dumps(selector)});
                             if (!b || b.disabled) return false; b.click(); return true; }})()"""), selector


def sent_after(browser: Browser, count: int) -> dict[str, Any]:
    """The page's sent list once it has `count` entries (or an error shows)."""
    return json.loads(poll(browser, SENT, lambda v: bool(v) and (len(json.loads(v)["sent"]) >= count
                                                                  or json.loads(v)["error"] != ""), timeout=20))


def corrections(pg: Settings, city_id: int) -> dict[int, dict[str, Any]]:
    """The city's corrections with their label (if any) and frame, by id."""
    with db.transaction(pg) as cur:
        cur.execute("""
            SELECT co.id, co.action, co.user_id, co.model_version, co.shown, co.image_id, i.origin, i.sha256,
                   l.kind, s.name, l.x_min, l.y_min, l.x_max, l.y_max
            FROM corrections co JOIN images i ON i.id = co.image_id
            LEFT JOIN labels l ON l.correction_id = co.id LEFT JOIN sights s ON s.id = l.sight_id
            WHERE co.city_id = %s""", (city_id,))
        return {r[0]: {"action": r[1], "user_id": r[2], "model_version": r[3], "shown": r[4], "image_id": r[5],
                       "origin": r[6], "sha256": r[7], "kind": r[8], "sight": r[9],
                       "box": None if r[10] is None else [r[10], r[11], r[12], r[13]]}
                for r in cur.fetchall()}


def image_exists(pg: Settings, image_id: int) -> bool:
    with db.transaction(pg) as cur:
        cur.execute("SELECT 1 FROM images WHERE id = %s", (image_id,))
        return cur.fetchone() is not None


def close_to(a: list[float], b: list[float], tol: float) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


async def answer_to(gateway: Gateway, city: str, frame: bytes) -> dict[str, Any]:
    """The gateway's answer to one frame sent over the websocket."""
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{gateway.ws_url}?city={quote(city)}") as ws:
        await next_message(ws, "hello")
        await ws.send_bytes(frame)
        return await next_message(ws, "detections")


def test_page_sends_each_correction_of_a_paused_frame_and_undoes_it(gateway: Gateway, pg: Settings, page,
                                                                    tmp_path: Path) -> None:
    browser, city, classes = page
    set_token(browser, TOKEN)
    shown = json.loads(poll(browser, PAUSE_ON_A_SIGHT, bool, timeout=90))
    first = shown["detections"][0]
    assert shown["model_version"] == 1 and first["sight"] in classes[:3]
    # Paused: the frozen frame is on screen instead of the video, and the panel lists its detections.
    panel = json.loads(js(browser, """JSON.stringify({
        still: !document.getElementById("still").hidden, video: document.getElementById("video").hidden,
        pressed: document.getElementById("pause").getAttribute("aria-pressed"),
        info: document.getElementById("frame-info").textContent,
        shown: [...document.querySelectorAll("#shown li")].map((li) => li.dataset.sight)})"""))
    assert panel["still"] and panel["video"] and panel["pressed"] == "true"
    assert panel["shown"] == [d["sight"] for d in shown["detections"]]
    assert f"Frame {shown['frame']}" in panel["info"] and "model v1" in panel["info"]
    shown_sha = awaited(browser, SHOWN_SHA256)

    # Confirm the first detection.
    click(browser, "#shown li:first-child button:nth-of-type(1)")
    state = sent_after(browser, 1)
    assert state["error"] == "" and state["sent"][0]["action"] == "confirm", state

    # Wrong sight: the first detection is another of the city's sights.
    other = next(c for c in classes if c != first["sight"])
    click(browser, "#shown li:first-child button:nth-of-type(2)")
    choices = json.loads(js(browser, """JSON.stringify([...document.getElementById("wrong-sight").options]
                                        .map((o) => o.value))"""))
    assert first["sight"] not in choices and set(choices) == set(classes) - {first["sight"]}
    js(browser, f'document.getElementById("wrong-sight").value = {json.dumps(other)}')
    click(browser, "#wrong-form button[type=submit]")
    state = sent_after(browser, 2)
    assert state["error"] == "" and state["sent"][0]["action"] == "wrong-sight", state

    # No sight here.
    click(browser, "#no-sight")
    state = sent_after(browser, 3)
    assert state["error"] == "" and state["sent"][0]["action"] == "no-sight", state

    # Draw a box with the mouse for the decoy sight, then move it right with the keyboard.
    click(browser, "#draw-box")
    js(browser, f"""(() => {{ const s = document.getElementById("box-sight"); s.value = {json.dumps(DECOY)};
                    s.dispatchEvent(new Event("change")); }})()""")
    rect = json.loads(js(browser, """JSON.stringify(document.getElementById("overlay").getBoundingClientRect())"""))
    drawn = [0.2, 0.25, 0.6, 0.7]
    at = lambda x, y: (rect["left"] + x * rect["width"], rect["top"] + y * rect["height"])  # noqa: E731
    drag(browser, at(drawn[0], drawn[1]), at(drawn[2], drawn[3]))
    focused = js(browser, "document.activeElement.id")
    assert focused == "overlay"  # the keyboard reaches the box
    press(browser, "ArrowRight")
    press(browser, "ArrowRight")
    expected = [drawn[0] + 0.02, drawn[1], drawn[2] + 0.02, drawn[3]]
    assert "x 22%–62%" in js(browser, 'document.getElementById("box-value").textContent')
    click(browser, "#box-send")
    state = sent_after(browser, 4)
    assert state["error"] == "" and state["sent"][0]["action"] == "box", state

    # Keep the frame as a photo of the city.
    click(browser, "#keep")
    state = sent_after(browser, 5)
    assert state["error"] == "" and state["sent"][0]["action"] == "keep", state

    # The page shows what was sent, newest first, each with its undo.
    sent = {s["action"]: s for s in state["sent"]}
    assert [s["action"] for s in state["sent"]] == ["keep", "box", "no-sight", "wrong-sight", "confirm"]
    assert all(s["state"] == "sent" and "Undo" in s["text"] for s in state["sent"])
    assert f"Confirmed {first['sight']}" in sent["confirm"]["text"]
    assert f"this is {other}" in sent["wrong-sight"]["text"]
    assert f"Box for {DECOY}" in sent["box"]["text"] and "No sight here" in sent["no-sight"]["text"]
    assert sent["keep"]["text"].startswith(f"Kept as a photo of {city.name}")

    # The warehouse holds what the page sent: one frame (stored once, of origin user, exactly the frame whose
    # answer was shown) and a label per correction.
    rows = corrections(pg, city.id)
    assert set(rows) == {s["id"] for s in state["sent"]}
    by_action = {r["action"]: r for r in rows.values()}
    frames = {r["image_id"] for r in rows.values()}
    assert len(frames) == 1
    assert all(r["origin"] == "user" and r["sha256"] == shown_sha and r["user_id"] is None
               and r["model_version"] == 1 and r["shown"] == shown["detections"] for r in rows.values())
    assert by_action["confirm"]["kind"] == "user-box" and by_action["confirm"]["sight"] == first["sight"]
    assert close_to(by_action["confirm"]["box"], first["box"], 1e-5)
    assert by_action["wrong-sight"]["kind"] == "user-box" and by_action["wrong-sight"]["sight"] == other
    assert close_to(by_action["wrong-sight"]["box"], first["box"], 1e-5)
    assert by_action["no-sight"]["kind"] == "user-negative" and by_action["no-sight"]["sight"] is None
    assert by_action["no-sight"]["box"] is None
    assert by_action["box"]["kind"] == "user-box" and by_action["box"]["sight"] == DECOY
    assert close_to(by_action["box"]["box"], expected, 0.01), (by_action["box"]["box"], expected)
    assert by_action["keep"]["kind"] is None  # the frame only
    # The stored frame is the one the model answered: sent again, it gets the answer the page showed. On the
    # server path the model saw exactly this JPEG; on this device ("auto" picks it when the device is fast enough)
    # it saw the camera's pixels, and the JPEG was made from them after, so the answer is close, not identical.
    with db.transaction(pg) as cur:
        cur.execute("SELECT data FROM images WHERE id = %s", (frames.pop(),))
        stored = bytes(cur.fetchone()[0])
    assert hashlib.sha256(stored).hexdigest() == shown_sha
    again = asyncio.run(answer_to(gateway, city.name, stored))
    assert [d["sight"] for d in again["detections"]] == [d["sight"] for d in shown["detections"]]
    assert shown["path"] in ("server", "device")
    tol = 1e-3 if shown["path"] == "server" else 0.02
    for a, b in zip(again["detections"], shown["detections"], strict=True):
        assert abs(a["score"] - b["score"]) < tol and close_to(a["box"], b["box"], tol), (shown["path"], a, b)

    asyncio.run(browser.screenshot(tmp_path / "corrections.png"))  # for a person to look at (pytest --basetemp)
    # Undo the box: its row and label go, the rest stay, and the page says it was undone.
    click(browser, '#sent li[data-action="box"] button')
    undone = json.loads(poll(browser, SENT, lambda v: any(s["state"] == "undone" for s in json.loads(v)["sent"]),
                             timeout=20))
    assert [s["action"] for s in undone["sent"] if s["state"] == "undone"] == ["box"]
    assert "Undone: Box for" in undone["result"] and undone["error"] == ""
    left = corrections(pg, city.id)
    assert set(left) == set(rows) - {sent["box"]["id"]}
    with db.transaction(pg) as cur:
        cur.execute("SELECT count(*) FROM labels WHERE correction_id = %s", (sent["box"]["id"],))
        assert cur.fetchone()[0] == 0

    # Undo the rest: the frame goes with its last correction; keeping it again stores it again.
    image_id = by_action["keep"]["image_id"]
    for action in ("keep", "no-sight", "wrong-sight", "confirm"):
        click(browser, f'#sent li[data-action="{action}"] button')
    poll(browser, SENT, lambda v: all(s["state"] == "undone" for s in json.loads(v)["sent"]), timeout=20)
    assert corrections(pg, city.id) == {} and not image_exists(pg, image_id)
    click(browser, "#keep")
    state = sent_after(browser, 6)
    assert state["error"] == "" and state["sent"][0]["action"] == "keep", state
    [kept] = corrections(pg, city.id).values()
    assert kept["action"] == "keep" and kept["sha256"] == shown_sha and kept["origin"] == "user"

    # Resume: the video is back and answers flow again.
    click(browser, "#pause")
    live = json.loads(js(browser, """JSON.stringify({still: document.getElementById("still").hidden,
        hint: !document.getElementById("correct-hint").hidden, pressed:
        document.getElementById("pause").getAttribute("aria-pressed")})"""))
    assert live == {"still": True, "hint": True, "pressed": "false"}


def test_a_refused_write_shows_the_server_error_and_stores_nothing(pg: Settings, page) -> None:
    browser, city, _ = page
    poll(browser, PAUSE_ON_A_SIGHT, bool, timeout=90)
    # No token: the page asks for one and sends nothing.
    set_token(browser, "")
    click(browser, "#no-sight")
    state = json.loads(js(browser, SENT))
    assert "write token" in state["error"] and state["sent"] == []
    assert js(browser, "document.activeElement.id") == "token"
    # A wrong token: the server's refusal, in its own words.
    set_token(browser, "not-a-token-of-anyone")
    click(browser, "#no-sight")
    state = json.loads(poll(browser, SENT, lambda v: "refused" in json.loads(v)["error"], timeout=20))
    assert "403" in state["error"] and "bad_token" in state["error"] and "the token is not valid" in state["error"]
    assert "write token" in state["error"] and state["sent"] == []
    assert js(browser, 'localStorage.getItem("sightscan-token")') == "not-a-token-of-anyone"
    assert "token" not in js(browser, "location.href")
    assert corrections(pg, city.id) == {}


def test_a_users_token_corrects_as_that_user_until_the_rate_limit_says_wait(pg: Settings, clip, tmp_path: Path
                                                                           ) -> None:
    gateway = start_gateway(pg, tmp_path / "gateway.log", GATEWAY_CORRECTIONS_PER_MINUTE="1")
    try:
        status, user = call_json(gateway, "POST", "/api/users", {"name": f"page-{uuid.uuid4().hex[:10]}"})
        assert status == 201, user
        with opened(gateway, pg, clip, tmp_path) as (browser, city, _):
            set_token(browser, user["token"])
            poll(browser, PAUSE_ON_A_SIGHT, bool, timeout=90)
            click(browser, "#keep")
            state = sent_after(browser, 1)
            assert state["error"] == "" and state["sent"][0]["action"] == "keep", state
            click(browser, "#no-sight")
            state = json.loads(poll(browser, SENT, lambda v: "refused" in json.loads(v)["error"], timeout=20))
            assert "429 rate_limited" in state["error"] and "send it again in" in state["error"], state
            assert len(state["sent"]) == 1
            [row] = corrections(pg, city.id).values()
            assert row["action"] == "keep" and row["user_id"] is not None
            with db.transaction(pg) as cur:
                cur.execute("SELECT name FROM users WHERE id = %s", (row["user_id"],))
                assert cur.fetchone()[0] == user["name"]
            # The user undoes their own correction (the rate limit counts corrections sent, not undone).
            click(browser, '#sent li[data-action="keep"] button')
            poll(browser, SENT, lambda v: json.loads(v)["sent"][0]["state"] == "undone", timeout=20)
            assert corrections(pg, city.id) == {}
    finally:
        stop_gateway(gateway)
