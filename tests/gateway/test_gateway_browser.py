"""The web page in real headless Chromium, its camera faked with a synthetic sight clip: the page names the sight."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import cv2
import pytest

from sightscan import db
from sightscan.config import Settings
from tests.support.browser import Browser, colour_clip, poll
from tests.support.gateway import REPO, Gateway

DECOY = "Nowhere Gate"  # a class whose colour is in no frame: the page must never name it


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], bytes]:
    return colour_clip(tmp_path_factory.mktemp("clip"), DECOY)


def test_page_names_the_sight_in_the_camera(gateway: Gateway, pg: Settings, clip, tmp_path: Path) -> None:
    video, classes, onnx = clip
    with db.transaction(pg) as cur:
        city, _ = db.request_city(cur, f"Synthetica {uuid.uuid4().hex[:6]}")
        db.insert_model(cur, city.id, onnx, classes, 64, {"map50": 0.8})
    browser = Browser(f"{gateway.url}/?city={quote(city.name)}&autostart=1", tmp_path / "profile", video,
                      tmp_path / "chromium.log")
    try:
        state_js = """!document.getElementById("current") ? null : JSON.stringify({
            seen: [...document.querySelectorAll('#seen li')].map(li => li.dataset.sight),
            current: document.getElementById('current').textContent,
            status: document.getElementById('status').textContent,
            conn: document.getElementById('conn').textContent,
            error: document.getElementById('error').textContent})"""
        first = classes[0]
        state = json.loads(poll(browser, state_js, lambda v: v and first in json.loads(v)["seen"], timeout=90))
        print("page state:", state)
        assert "model v1" in state["conn"]
        # The clip pans across all three sights in turn; the page names each as it passes.
        def two_sights(v: str | None) -> bool:
            return bool(v) and len(set(json.loads(v)["seen"]) & set(classes[:3])) >= 2

        state = json.loads(poll(browser, state_js, two_sights, timeout=60))
        assert DECOY not in state["seen"]
        assert "v1" in state["status"] and city.name in state["status"]  # the live pipeline panel
        drawn = poll(browser, "document.getElementById('overlay').width", lambda v: v and v > 0, timeout=10)
        assert drawn > 0
        asyncio.run(browser.screenshot(tmp_path / "page.png"))  # for a person to look at (pytest --basetemp)
    finally:
        browser.close()


def test_opencv_client_streams_a_video_file(gateway: Gateway, pg: Settings, clip, tmp_path: Path) -> None:
    video, classes, onnx = clip
    with db.transaction(pg) as cur:
        city, _ = db.request_city(cur, f"Synthetica {uuid.uuid4().hex[:6]}")
        db.insert_model(cur, city.id, onnx, classes, 64, {})
    out = tmp_path / "annotated.avi"
    run = subprocess.run([sys.executable, "-m", "gateway.client", "--url", gateway.url, "--city", city.name,
                          "--video", str(video), "--out", str(out), "--no-window", "--fps", "30"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["frames_read"] == 60 and summary["answers"] > 10 and summary["errors"] == {}
    assert set(summary["sights"]) & set(classes[:3]) and DECOY not in summary["sights"]
    assert summary["model_versions"] == [1]
    written = cv2.VideoCapture(str(out))
    count = 0
    while written.read()[0]:
        count += 1
    assert count == 60
