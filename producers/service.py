"""The crawler service: consumes crawl requests (sightscan.commands.CommandWorker) and crawls each city.

Each request is crawled by a child process, `python -m producers crawl --city-id N …`. Scrapy's Twisted reactor
cannot be restarted within a process, so a long-running service cannot run crawl after crawl in-process; a child
per request also gives each crawl a fresh reactor and memory, a hard timeout (it can be killed), and isolation
from a crash. The child's start-up (about a second) is nothing beside a crawl.

Idempotent: a redelivered request crawls again with --skip, so sights that already have their images are skipped
and any image already stored is a sha256 duplicate, never a second row.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Message

from producers.exit_codes import EXIT_OK, EXIT_SOURCES_FAILED, EXIT_UNKNOWN_CITY
from producers.settings import CrawlerSettings
from sightscan import db
from sightscan.children import stop_popen
from sightscan.commands import BadCommand, CommandWorker, RetryLater
from sightscan.config import Settings

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]


def _limit(command: dict[str, Any], name: str, default: int) -> int:
    value = command.get(name, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadCommand(f"field {name!r} must be an integer >= 0, got {value!r}")
    return value


class CrawlerService:
    def __init__(self, settings: Settings, cs: CrawlerSettings | None = None) -> None:
        self.settings, self.cs = settings, cs or CrawlerSettings.from_env()
        self.worker = CommandWorker(
            settings, "crawl", self.cs.group(settings.topic_prefix), self.handle,
            required={"city_id": int}, max_attempts=self.cs.max_attempts,
            # The consumer is not polled while a crawl runs: allow for the longest crawl before it is evicted.
            max_poll_interval_s=self.cs.crawl_timeout_s + 300)

    def close(self) -> None:
        self.worker.close()

    def handle(self, command: dict[str, Any], msg: Message | None = None) -> dict[str, Any]:
        city_id = command["city_id"]
        sights_limit = _limit(command, "max_sights_per_city", self.settings.max_sights_per_city)
        images_limit = _limit(command, "max_images_per_sight", self.settings.max_images_per_sight)
        with db.transaction(self.settings) as cur:
            cur.execute("SELECT 1 FROM cities WHERE id = %s", (city_id,))
            if cur.fetchone() is None:
                raise BadCommand(f"unknown city id {city_id}")
        summary = self.crawl(city_id, sights_limit, images_limit)
        return {"request_id": command.get("request_id"), "city_id": city_id, "city": summary.get("city"),
                "status": summary.get("status"), "sights": summary.get("sights"), "stored": summary.get("stored"),
                "duplicates": summary.get("duplicates"), "rejected": summary.get("rejected"),
                "failed": summary.get("failed")}

    def crawl(self, city_id: int, sights_limit: int, images_limit: int) -> dict[str, Any]:
        return crawl_in_child(self.settings, self.cs, city_id, sights_limit, images_limit, self.worker.stopping)


def crawl_in_child(settings: Settings, cs: CrawlerSettings, city_id: int, sights_limit: int, images_limit: int,
                   stopping: threading.Event | None = None) -> dict[str, Any]:
    """Run one crawl as a child process; its summary, or RetryLater/BadCommand by its exit code."""
    argv = [sys.executable, "-m", "producers", "crawl", "--city-id", str(city_id), "--sights-limit",
            str(sights_limit), "--limit", str(images_limit), "--no-progress"]
    env = {**os.environ, **settings.env(), **cs.env(), "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    # stderr (the child's JSON logs) goes where ours goes; stdout carries its summary.
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, cwd=ROOT)
    while True:
        try:
            out, _ = proc.communicate(timeout=0.5)
            break
        except subprocess.TimeoutExpired as exc:
            stop = stopping is not None and stopping.is_set()
            if stop or time.monotonic() - started > cs.crawl_timeout_s:
                stop_popen(proc, timeout=15)  # SIGTERM: scrapy closes the spider gracefully
                why = "stopping" if stop else f"ran past CRAWLER_TIMEOUT_S={cs.crawl_timeout_s:g}"
                raise RetryLater(f"crawl of city {city_id}: {why}") from exc
    lines = out.decode("utf-8", "replace").strip().splitlines()
    summary: dict[str, Any] = {}
    if lines:
        try:
            summary = json.loads(lines[-1])
        except ValueError:
            summary = {}
    if proc.returncode == EXIT_OK and summary:
        return summary
    if proc.returncode == EXIT_UNKNOWN_CITY:
        raise BadCommand(f"unknown city id {city_id}")
    if proc.returncode == EXIT_SOURCES_FAILED:
        why = summary.get("source_errors") or summary.get("failed")
        raise RetryLater(f"sources failed for city {city_id}: {why}")
    raise RetryLater(f"crawl of city {city_id} exited with {proc.returncode}")
