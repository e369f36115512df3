"""Helpers of the crawler tests: run a crawl as a child process, make odd images, read what was stored.

A crawl runs as `python -m producers crawl` in a child process, as the service runs it: scrapy's reactor cannot be
restarted, so it must not run inside the test process.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from localsystem.demo.web_sources import WebSources
from sightscan import db
from sightscan.config import Settings

ROOT = Path(__file__).resolve().parents[2]

# Fast and small for tests; still the same scrapy machinery (timeouts, retries, robots.txt, size limits).
FAST = {"CRAWLER_DOWNLOAD_DELAY_S": "0", "CRAWLER_DOWNLOAD_TIMEOUT_S": "1.5", "CRAWLER_RETRY_TIMES": "1",
        "CRAWLER_MAX_IMAGE_BYTES": "400000", "CRAWLER_MAX_PIXELS": "10000000", "CRAWLER_THUMB_WIDTH": "640",
        "SIGHTSCAN_LOG_FORMAT": "console", "SIGHTSCAN_LOG_LEVEL": "INFO", "MAPS_KEY": ""}


def png(width: int, height: int, noise: bool = False) -> bytes:
    img = (Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8))
           if noise else Image.new("RGB", (width, height), (90, 120, 200)))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


@dataclass
class CrawlRun:
    returncode: int
    summary: dict[str, Any]
    stderr: str


def crawler_env(settings: Settings, web: WebSources, **extra: str) -> dict[str, str]:
    return {**os.environ, **settings.env(), **web.env(), **FAST, **extra}


def run_crawl(settings: Settings, web: WebSources, *args: str, **env: str) -> CrawlRun:
    proc = subprocess.run([sys.executable, "-m", "producers", "crawl", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=crawler_env(settings, web, **env))
    lines = proc.stdout.strip().splitlines()
    summary = json.loads(lines[-1]) if lines else {}
    return CrawlRun(proc.returncode, summary, proc.stderr)


def stored_images(settings: Settings, city_id: int) -> list[dict[str, Any]]:
    """Every image of a city with its sight's name and source."""
    with db.transaction(settings) as cur:
        cur.execute("SELECT i.data, i.mime_type, i.sha256, i.width, i.height, i.source_url, i.licence, i.author,"
                    " i.origin, s.name, s.source FROM images i LEFT JOIN sights s ON s.id = i.sight_id"
                    " WHERE i.city_id = %s ORDER BY i.id", (city_id,))
        cols = ("data", "mime_type", "sha256", "width", "height", "source_url", "licence", "author", "origin",
                "sight", "sight_source")
        return [dict(zip(cols, (bytes(r[0]), *r[1:]), strict=True)) for r in cur.fetchall()]


def city_row(settings: Settings, name: str) -> db.City:
    with db.transaction(settings) as cur:
        city = db.find_city(cur, name)
    assert city is not None, f"no city {name!r}"
    return city


def sight_names(settings: Settings, city_id: int) -> dict[str, str]:
    with db.transaction(settings) as cur:
        cur.execute("SELECT name, source FROM sights WHERE city_id = %s", (city_id,))
        return dict(cur.fetchall())
