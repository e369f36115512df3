"""The tests' synthetic city: localsystem.demo.city's renderer (real landmark photos cannot be downloaded here)."""

from __future__ import annotations

from pathlib import Path

from localsystem.demo import city


def render_city(out: Path, sights: int, per_sight: int, seed: int = 7, city: str = "Synthetica",
                negatives: int = 0) -> Path:
    """Render `sights` x `per_sight` photos with COCO boxes into `out` (images/, annotations.json), and `negatives`
    photos of the city's streets with no sight."""
    return _render(out, city=city, seed=seed, sights=sights, per_sight=per_sight, negatives=negatives).folder


_render = city.render_city
