"""Crawler fixtures: synthetic photos, a local web that speaks the sources' APIs (one per test), and command
topics of its own for each service test."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Iterator

import pytest

from localsystem.demo.web_sources import FakeWeb, WebSources
from sightscan import kafka
from sightscan.config import Settings
from sightscan.topics import command_dead_letter_topic, command_topic
from tests.support.synthetic import render_city


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """18 distinct synthetic sight photos (JPEG, 640x480)."""
    folder = render_city(tmp_path_factory.mktemp("crawl-photos"), sights=3, per_sight=6, seed=11, city="Crawlton")
    return [p.read_bytes() for p in sorted((folder / "images").glob("*.jpg"))]


@pytest.fixture
def web() -> Iterator[WebSources]:
    with WebSources(FakeWeb(slow_s=4.0)) as server:
        yield server


@pytest.fixture
def isolated(settings: Settings) -> Iterator[Settings]:
    """Settings with a TOPIC_PREFIX of their own: crawl requests of other tests (and stream workers) sharing the
    stack are not consumed here. The command topics are deleted after the test."""
    own = dataclasses.replace(settings, topic_prefix=f"crawltest-{uuid.uuid4().hex[:8]}")
    yield own
    topics = [command_topic("crawl", own.topic_prefix), command_dead_letter_topic(own.topic_prefix)]
    admin = kafka.admin(own)
    for future in admin.delete_topics(topics, operation_timeout=10).values():
        with contextlib.suppress(Exception):  # never created (the test failed early): nothing to delete
            future.result(15)
