"""The README is a map: every file or folder it names exists (issue 19: "names real files"), and so does every
symbol it names in a file (`sightscan/db.py` `labelled_images`)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# `path` or `path` `symbol`, and markdown links to files of the repository.
CODE = re.compile(r"`([^`\s]+)`(?:\s+`([A-Za-z_][\w.]*)`)?")
LINK = re.compile(r"\]\(([^)#\s]+)\)")


def _named_paths(text: str) -> list[tuple[str, str | None]]:
    named = []
    for path, symbol in CODE.findall(text):
        path = path.rstrip(",.;:")
        if "/" in path and not path.startswith(("http", "/", "-", "$")) and "*" not in path and "{" not in path \
                and "<" not in path and "=" not in path:
            named.append((path, symbol or None))
    named += [(link, None) for link in LINK.findall(text) if not link.startswith("http")]
    return named


def test_every_path_and_symbol_the_readme_names_exists() -> None:
    missing = []
    named = _named_paths((ROOT / "README.md").read_text())
    assert len(named) > 30, "the README names fewer files than its map has rows"
    for path, symbol in named:
        target = ROOT / path
        if not target.exists():
            missing.append(path)
        elif symbol and target.is_file() and not re.search(rf"\b{re.escape(symbol.split('.')[0])}\b",
                                                            target.read_text()):
            missing.append(f"{path} {symbol}")
    assert not missing, f"the README names what is not there: {missing}"
