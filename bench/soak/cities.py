"""The soak's cities: synthetic cities of the offline demo (localsystem/demo), one requested every few minutes.

Each city is a demo city of its own seed ("Soakville 41", "Soakville 42", ...), all of one size, so every service
keeps the demo's settings (weak labels, thresholds sized to the city) for the whole run. They are rendered ahead,
one after another in a worker process, while the stack starts (about 20 s each on 2 cores): the soak's clock
starts only once every city is rendered, so rendering is not part of what is measured. A city is requested the
way bench/loop does it: `start_system` points the demo's web sources at it (they serve one city: they restart),
then POST /api/cities.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.loop.run import _jpeg
from localsystem.demo.city import CityInfo, clip_frames
from localsystem.demo.system import DemoOptions, prepare_city, request_city, start_system
from localsystem.stack.services import api_token
from sightscan import db
from sightscan.config import Settings

FIRST_SEED = 41


@dataclass
class SoakCity:
    opts: DemoOptions
    info: CityInfo | None = None
    clip: Path | None = None
    payloads: list[bytes] = field(default_factory=list)  # the clip's frames as JPEG, what the clients send
    requested_s: float | None = None  # on the soak's clock (negative: before it started)
    live_s: float | None = None       # its first model served
    versions: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.opts.city

    def as_json(self) -> dict[str, Any]:
        return {"city": self.name, "requested_s": _round(self.requested_s), "live_s": _round(self.live_s),
                "models": len(self.versions), "newest_version": max(self.versions, default=None)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def plan(count: int, sights: int, per_sight: int, sources_port: int) -> list[SoakCity]:
    return [SoakCity(DemoOptions(city=f"Soakville {FIRST_SEED + i}", seed=FIRST_SEED + i, sights=sights,
                                 per_sight=per_sight, sources_port=sources_port, timeout=0))
            for i in range(count)]


def render(settings: Settings, opts: DemoOptions) -> tuple[CityInfo, Path, list[bytes]]:
    """In the worker process: the city, its clip, and the clip's frames as JPEG."""
    info, clip = prepare_city(settings, opts)
    return info, clip, [_jpeg(f) for f in clip_frames(info, seconds=opts.clip_seconds, fps=opts.fps)]


class Renderer:
    """Renders the planned cities in order in one spawned worker process (no fork of a threaded process)."""

    def __init__(self, settings: Settings, cities: list[SoakCity]) -> None:
        self.pool = multiprocessing.get_context("spawn").Pool(1)
        self.cities = cities
        self.pending = [self.pool.apply_async(render, (settings, c.opts)) for c in cities]

    def wait(self, i: int, timeout: float) -> SoakCity:
        city = self.cities[i]
        if city.info is None:
            city.info, city.clip, city.payloads = self.pending[i].get(timeout)
        return city

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


def request(settings: Settings, gateway: str, city: SoakCity, progress: Callable[[str], None]) -> None:
    """Point the web sources at the city (start_system: the services keep running) and request it."""
    assert city.info is not None and city.clip is not None
    start_system(settings, city.opts, city.info, city.clip, progress)
    request_city(gateway, api_token(settings), city.name)


def model_versions(settings: Settings, city: str) -> list[int]:
    with db.transaction(settings) as cur:
        cur.execute("SELECT m.version FROM models m JOIN cities c ON c.id = m.city_id WHERE c.name = %s"
                    " ORDER BY m.version", (city,))
        return [int(v) for (v,) in cur.fetchall()]
