"""Crawler fixtures: synthetic photos and a local web that speaks the sources' APIs (one per test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.web_sources import FakeWeb, WebSources
from tests.synthetic import render_city


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """18 distinct synthetic sight photos (JPEG, 640x480)."""
    folder = render_city(tmp_path_factory.mktemp("crawl-photos"), sights=3, per_sight=6, seed=11, city="Crawlton")
    return [p.read_bytes() for p in sorted((folder / "images").glob("*.jpg"))]


@pytest.fixture
def web() -> Iterator[WebSources]:
    with WebSources(FakeWeb(slow_s=4.0)) as server:
        yield server
