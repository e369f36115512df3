"""Labeller fixtures: the warehouse migrated, a small synthetic city, a local Vision server per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sightscan import db, kafka
from sightscan.config import Settings
from tests.support.labelling import PREFIXES
from tests.support.synthetic import render_city
from tests.support.vision_server import VisionServer


@pytest.fixture(scope="session")
def migrated(settings: Settings) -> Settings:
    """The shared stack may predate the labeller's migration (0004): apply it (idempotent)."""
    db.migrate(settings)
    return settings


@pytest.fixture(scope="session")
def label_city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 sights x 4 images: Golden Lighthouse, Emperor's Gate, Market Arch (seed 3)."""
    return render_city(tmp_path_factory.mktemp("label-city"), 3, 4, seed=3, city="Labelton")


@pytest.fixture
def vision_server() -> Iterator[VisionServer]:
    with VisionServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _delete_test_topics(request: pytest.FixtureRequest) -> Iterator[None]:
    """A kept dev stack would otherwise gather two topics per test run (commands and dead letters)."""
    yield
    if not PREFIXES:
        return
    settings = request.getfixturevalue("settings")
    admin = kafka.admin(settings)
    names = [t for t in admin.list_topics(timeout=10).topics if t.split(".", 1)[0] in PREFIXES]
    PREFIXES.clear()
    for future in admin.delete_topics(names, operation_timeout=10).values() if names else ():
        future.result(10)
