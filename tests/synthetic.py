"""The synthetic city from ../shared/tools/synthetic_city.py (real landmark photos cannot be downloaded here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

GENERATOR = Path(__file__).resolve().parents[1].parent / "shared" / "tools" / "synthetic_city.py"


def render_city(out: Path, sights: int, per_sight: int, seed: int = 7, city: str = "Synthetica") -> Path:
    """Render `sights` x `per_sight` photos with COCO boxes into `out` (images/, annotations.json)."""
    # The generator needs numpy and Pillow: run it with this interpreter (the project's venv), not a bare python3.
    subprocess.run([sys.executable, str(GENERATOR), "--out", str(out), "--sights", str(sights),
                    "--per-sight", str(per_sight), "--seed", str(seed), "--city", city],
                   check=True, capture_output=True, timeout=300)
    return out
