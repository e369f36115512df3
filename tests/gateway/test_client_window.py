"""The OpenCV client's window on a real X server (Debian's Xvfb) against a real gateway: the window shows the
gateway's detections (a screenshot of the display), the correction keys and the mouse (xdotool) send corrections,
and the warehouse stores them (docs/corrections.md).

Xvfb and xdotool come from tests/gateway/install_xvfb.sh (run by ./dev test, and here when missing); the
screenshots are Pillow's own (ImageGrab reads an X display), so nothing else is needed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageGrab

from sightscan import db
from sightscan.children import stop_popen
from sightscan.config import Settings
from tests.support.gateway import COLOURS, REPO, TOKEN, Gateway, start_gateway, stop_gateway
from tests.support.onnx_models import build_colour_model
from tests.support.waiting import wait_until

INSTALL = Path(__file__).with_name("install_xvfb.sh")
CLASSES = list(COLOURS)                    # Red Gate, Green Tower, Blue Hall: the city's sights, numbered 1-3
BOXES = {"Red Gate": [0.25, 0.2, 0.75, 0.8], "Green Tower": [0.1, 0.1, 0.4, 0.4], "Blue Hall": [0.6, 0.6, 0.9, 0.9]}
SIZE = (640, 480)
DETECTION_RGB = (255, 204, 0)              # gateway.client.draw's box colour, (0, 204, 255) in BGR
DRAWN_RGB = (80, 220, 80)                  # a box drawn with the mouse (client_corrections.BOX_COLOUR)
DRAG = (0.1, 0.15, 0.5, 0.55)              # the box the test draws, normalised
PER_MINUTE = 4                             # the gateway's corrections a minute: the test's fifth is refused (429)


def _x_tools() -> None:
    if shutil.which("Xvfb") is None or shutil.which("xdotool") is None:
        subprocess.run(["bash", str(INSTALL)], check=True, timeout=900)
    missing = [tool for tool in ("Xvfb", "xdotool") if shutil.which(tool) is None]
    if missing:
        raise AssertionError(f"{' and '.join(missing)} not installed, and {INSTALL} could not install them")


@contextlib.contextmanager
def xvfb(log_path: Path) -> Iterator[str]:
    """A fresh Xvfb on a free display number (it picks one and writes it to -displayfd)."""
    read, write = os.pipe()
    log = log_path.open("w")
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1024x900x24", "-nolisten", "tcp"],
                            pass_fds=(write,), stdout=log, stderr=log)
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], 30)
        number = os.read(read, 32).decode().strip() if ready else ""
        if not number.isdigit():
            raise AssertionError(f"Xvfb did not start: {log_path.read_text()[-2000:]}")
        yield f":{number}"
    finally:
        os.close(read)
        stop_popen(proc)
        log.close()


@pytest.fixture(scope="module")
def limited_gateway(pg: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway of its own that takes PER_MINUTE corrections a minute from one token."""
    gw = start_gateway(pg, tmp_path_factory.mktemp("gateway") / "gateway.log",
                       GATEWAY_CORRECTIONS_PER_MINUTE=str(PER_MINUTE))
    yield gw
    stop_gateway(gw)


def _video(path: Path, frames: int = 40) -> Path:
    """A short clip of the Red Gate's colour with a little noise (the colour model names it by its mean)."""
    rng = np.random.default_rng(5)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, SIZE)
    red_bgr = np.array(COLOURS["Red Gate"][::-1], dtype=np.int16)
    for _ in range(frames):
        noise = rng.integers(-12, 13, (SIZE[1], SIZE[0], 3), dtype=np.int16)
        writer.write(np.clip(red_bgr + noise, 0, 255).astype(np.uint8))
    writer.release()
    return path


def _xdotool(display: str, *args: str) -> str:
    run = subprocess.run(["xdotool", *args], env={**os.environ, "DISPLAY": display}, capture_output=True,
                         text=True, timeout=30)
    assert run.returncode == 0, f"xdotool {' '.join(args)}: {run.stderr}"
    return run.stdout


def _screen(display: str) -> np.ndarray:
    return np.asarray(ImageGrab.grab(xdisplay=display).convert("RGB"))


def _extent(screen: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 10) -> tuple[int, int, int, int] | None:
    """The bounding box (x0, y0, x1, y1) of the pixels of this colour, or None."""
    mask = (np.abs(screen.astype(np.int16) - np.array(rgb, dtype=np.int16)) <= tolerance).all(axis=-1)
    ys, xs = np.nonzero(mask)
    if len(xs) < 50:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())




def test_window_draws_detections_and_its_keys_store_corrections(limited_gateway: Gateway, pg: Settings,
                                                                tmp_path: Path) -> None:
    _x_tools()
    with db.transaction(pg) as cur:
        city, _ = db.request_city(cur, f"Windowtest {uuid.uuid4().hex[:8]}")
        for name in CLASSES:
            db.ensure_sight(cur, city.id, name, source="test")
        protos = np.array([COLOURS[name] for name in CLASSES], dtype=np.float32) / 255.0
        onnx = build_colour_model(protos, np.array([BOXES[name] for name in CLASSES]))
        db.insert_model(cur, city.id, onnx, CLASSES, 64, {})
    video = _video(tmp_path / "red.avi")
    displays = contextlib.ExitStack()
    display, stderr_path, client = "", tmp_path / "client.stderr", None

    def start_client() -> subprocess.Popen:
        with stderr_path.open("w") as stderr:
            return subprocess.Popen(
                [sys.executable, "-m", "gateway.client", "--url", limited_gateway.url, "--city", city.name,
                 "--video", str(video), "--fps", "10"],
                cwd=REPO, env={**os.environ, "DISPLAY": display, "SIGHTSCAN_API_TOKEN": TOKEN},
                stdout=subprocess.PIPE, stderr=stderr, text=True)

    def said() -> str:
        return stderr_path.read_text()

    def both_said() -> str:  # for a failure: the client's words, the gateway's, and the X server's windows
        windows = subprocess.run(["xdotool", "search", "--name", "SightScan", "getwindowgeometry", "%@"],
                                 env={**os.environ, "DISPLAY": display}, capture_output=True, text=True, timeout=30)
        return (f"client ({'running' if client.poll() is None else f'exited {client.returncode}'}):\n"
                f"{said()[-3000:]}\ngateway:\n{limited_gateway.log.read_text()[-3000:]}\n"
                f"windows on {display}:\n{windows.stdout}{windows.stderr}")

    def wait(what: str, check: Callable[[], object], timeout: float = 30) -> object:
        return wait_until(check, timeout, what, explain=both_said, interval=0.2)

    def settled(text: str, count: int = 1) -> Callable[[], bool]:
        def check() -> bool:
            if client.poll() is not None:
                raise AssertionError(f"the client exited ({client.returncode}):\n{said()[-3000:]}")
            return said().count(text) >= count
        return check

    try:
        # The window shows the frame with the gateway's detection: the Red Gate's box, drawn at its place and
        # size, with its label (white text on black) over its top-left corner. The clip ends; the window holds.
        # In about half of the full suite's runs on our CI machine the window never painted under Xvfb (the
        # whole screen black, the client running and answered; not understood, docs/known-limits.md): each try
        # gets a fresh X server and client, and says so.
        for attempt in (1, 2, 3):
            display = displays.enter_context(xvfb(tmp_path / f"xvfb-{attempt}.log"))
            stderr_path = tmp_path / f"client-{attempt}.stderr"
            client = start_client()
            wait("the end of the video", settled("end of the video"), timeout=60)
            window = _xdotool(display, "search", "--sync", "--onlyvisible", "--name", f"SightScan - {city.name}")
            window = window.split()[0]
            try:
                box = wait("the detection drawn in the window", lambda d=display: _extent(_screen(d), DETECTION_RGB))
                break
            except AssertionError as unpainted:
                if attempt == 3:
                    raise
                Image.fromarray(_screen(display)).save(tmp_path / f"unpainted-{attempt}.png")
                print(f"[window] try {attempt}: nothing drawn on {display}; again on a fresh X server: {unpainted}")
                stop_popen(client)
        x0, y0, x1, y1 = box
        want = BOXES["Red Gate"]
        assert abs((x1 - x0) - (want[2] - want[0]) * SIZE[0]) <= 4, box
        assert abs((y1 - y0) - (want[3] - want[1]) * SIZE[1]) <= 4, box
        # The frame's top-left on the screen, from the box's centre (its lines are drawn across its edges).
        origin = (round((x0 + x1 - (want[0] + want[2]) * SIZE[0]) / 2),
                  round((y0 + y1 - (want[1] + want[3]) * SIZE[1]) / 2))
        assert min(origin) >= 0, origin
        screen = _screen(display)
        label = screen[max(0, y0 - 24):y0, x0:x0 + 120]
        assert (label.min(axis=-1) > 200).sum() > 20, "the sight's name should be written over its box"
        assert (label.max(axis=-1) < 30).sum() > 200, "on the label's black background"
        Image.fromarray(screen).save(tmp_path / "window.png")
        # Keys go to the window under the pointer (no window manager): the pointer rests on the frame.
        _xdotool(display, "mousemove", str(origin[0] + 600), str(origin[1] + 460))
        _xdotool(display, "windowfocus", window)

        def key(name: str) -> None:
            _xdotool(display, "key", "--clearmodifiers", name)

        key("c")                                    # confirm: the Red Gate is right
        wait("the confirmation sent", settled("sent confirm 'Red Gate'"))
        key("3")                                    # wrong sight: that box is the Blue Hall
        wait("the wrong sight sent", settled("sent wrong-sight 'Blue Hall'"))
        key("n")                                    # no sight here ...
        wait("no-sight sent", settled("sent no-sight"))
        key("u")                                    # ... undone
        wait("the undo", settled("undone: correction"))
        key("b")                                    # a box drawn with the mouse, for sight 2
        wait("box mode", settled("drawing a box"))
        start = (origin[0] + int(DRAG[0] * SIZE[0]), origin[1] + int(DRAG[1] * SIZE[1]))
        end = (origin[0] + int(DRAG[2] * SIZE[0]), origin[1] + int(DRAG[3] * SIZE[1]))
        _xdotool(display, "mousemove", str(start[0]), str(start[1]), "mousedown", "1")
        for f in (0.25, 0.5, 0.75, 1.0):
            _xdotool(display, "mousemove", str(int(start[0] + f * (end[0] - start[0]))),
                     str(int(start[1] + f * (end[1] - start[1]))))
            time.sleep(0.1)
        _xdotool(display, "mouseup", "1")
        def in_frame() -> np.ndarray:
            return _screen(display)[origin[1]:origin[1] + SIZE[1], origin[0]:origin[0] + SIZE[0]]

        drawn = wait("the box drawn in the window", lambda: _extent(in_frame(), DRAWN_RGB, tolerance=6))
        want = [int(v * s) for v, s in zip(DRAG, SIZE * 2, strict=True)]
        assert np.abs(np.array(drawn) - np.array(want)).max() <= 3, (drawn, want)
        key("2")
        wait("the box sent", settled("sent box 'Green Tower'"))
        key("k")                                    # the fifth correction this minute: refused, and said so
        wait("the refusal", settled("refused (429)"))
        Image.fromarray(_screen(display)).save(tmp_path / "window-after.png")
        key("q")
        out, _ = client.communicate(timeout=30)
    except BaseException:
        if display:
            Image.fromarray(_screen(display)).save(tmp_path / "failure.png")  # what the display showed
        raise
    finally:
        if client is not None and client.poll() is None:
            stop_popen(client)
        displays.close()
    assert client.returncode == 0, said()[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["model_versions"] == [1] and summary["sights"].keys() == {"Red Gate"}
    assert summary["corrections"] == {"confirm": 1, "wrong-sight": 1, "no-sight": 1, "undone": 1, "box": 1}
    assert summary["corrections_refused"] == {"429": 1}

    # The warehouse: three user boxes on one stored frame (each correction after the first names it), the
    # no-sight gone with its undo, and nothing of the refused keep.
    with db.transaction(pg) as cur:
        cur.execute("SELECT c.action, s.name, l.kind, l.x_min, l.y_min, l.x_max, l.y_max, c.model_version, c.shown,"
                    "       c.image_id, c.user_id"
                    " FROM corrections c LEFT JOIN labels l ON l.correction_id = c.id"
                    " LEFT JOIN sights s ON s.id = l.sight_id WHERE c.city_id = %s ORDER BY c.id", (city.id,))
        rows = cur.fetchall()
        assert [(r[0], r[1], r[2]) for r in rows] == [("confirm", "Red Gate", "user-box"),
                                                      ("wrong-sight", "Blue Hall", "user-box"),
                                                      ("box", "Green Tower", "user-box")], rows
        for row, want_box in zip(rows, (BOXES["Red Gate"], BOXES["Red Gate"], DRAG), strict=True):
            assert np.allclose(row[3:7], want_box, atol=0.01), (row, want_box)
            assert row[7] == 1 and row[10] is None  # the model shown; the operator's token
            assert [d["sight"] for d in row[8]] == ["Red Gate"] and np.allclose(row[8][0]["box"], BOXES["Red Gate"])
        assert len({r[9] for r in rows}) == 1
        cur.execute("SELECT origin, width, height, data FROM images WHERE id = %s", (rows[0][9],))
        origin_kind, width, height, data = cur.fetchone()
        cur.execute("SELECT count(*) FROM labels WHERE city_id = %s AND kind = 'user-negative'", (city.id,))
        assert cur.fetchone()[0] == 0
    assert (origin_kind, width, height) == ("user", *SIZE)
    # The frame as it came from the video: the Red Gate's colour, none of the window's drawing on it.
    stored = np.asarray(Image.open(io.BytesIO(bytes(data))).convert("RGB")).astype(np.int16)
    assert np.abs(stored.mean(axis=(0, 1)) - np.array(COLOURS["Red Gate"])).max() < 8
    assert _extent(stored.astype(np.uint8), DETECTION_RGB, tolerance=30) is None


@pytest.mark.parametrize(("display_env", "reason"), [({}, "no display: neither DISPLAY nor WAYLAND_DISPLAY is set"),
                                                     ({"DISPLAY": ":987"}, "the X display ':987' does not answer")])
def test_without_a_display_the_client_says_so_and_streams_without_a_window(
        gateway: Gateway, pg: Settings, tmp_path: Path, display_env: dict[str, str], reason: str) -> None:
    with db.transaction(pg) as cur:
        city, _ = db.request_city(cur, f"Windowtest {uuid.uuid4().hex[:8]}")
        protos = np.array([COLOURS[name] for name in CLASSES], dtype=np.float32) / 255.0
        db.insert_model(cur, city.id, build_colour_model(protos, np.array([BOXES[n] for n in CLASSES])), CLASSES,
                        64, {})
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")} | display_env
    run = subprocess.run([sys.executable, "-m", "gateway.client", "--url", gateway.url, "--city", city.name,
                          "--video", str(_video(tmp_path / "red.avi", frames=20)), "--fps", "30"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"no window: {reason}. Running as with --no-window" in run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["frames_read"] == 20 and summary["answers"] > 0 and summary["sights"].keys() == {"Red Gate"}
