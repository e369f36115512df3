"""The changelog's form: Keep a Changelog releases, the newest one is the package's version, no dead file names."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import sightscan

ROOT = Path(__file__).resolve().parents[2]
CHANGELOG = (ROOT / "CHANGELOG.md").read_text()


def test_the_newest_release_is_the_package_version() -> None:
    releases = re.findall(r"^## (\d+\.\d+\.\d+) - \d{4}-\d{2}-\d{2}$", CHANGELOG, flags=re.M)
    assert releases, "no '## X.Y.Z - YYYY-MM-DD' release headings"
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert releases[0] == version == sightscan.__version__
    assert CHANGELOG.index("## Unreleased") < CHANGELOG.index(f"## {releases[0]}")


def test_every_file_it_names_exists() -> None:
    named = set(re.findall(r"`((?:[\w.-]+/)+[\w.-]+\.(?:py|md|sql|yaml|yml|json|js|html|env))`", CHANGELOG))
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert not missing, f"CHANGELOG.md names files that do not exist: {missing}"
