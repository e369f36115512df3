"""Matching a landmark name from Vision to a sight of the city, merging spellings.

Vision names a landmark in its own words ("Saint Anselm's Cathedral", "EMPERORS GATE", "Tour Eiffel"), while the
crawler named sights from its sources. Steps, first hit wins:
1. the landmark's Knowledge Graph id (`mid`) was matched to a sight of this city before: the same sight, whatever
   the spelling or language this time (remembered in the warehouse, table vision_landmarks);
2. the same normalised name: case, accents, punctuation and repeated blanks do not count;
3. a fuzzy match (difflib ratio on the names and on their sorted words, to forgive word order) at or above the
   cutoff, best first;
4. one name's words all in the other's (e.g. "Notre-Dame de Paris" / "Cathedral of Notre Dame de Paris"), when
   the shorter has at least three words that are not fillers (de, of, the…) and exactly one sight qualifies: two
   shared words ("Old Tower" / "Old Tower Bridge") are too weak to merge sights.
Otherwise the landmark is a new sight (the caller creates it with source 'vision').

What it does not do: translate. Names in two languages that share no spelling ("Kölner Dom" / "Cologne
Cathedral") merge only through their mid, i.e. once one of them has been matched.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

# Words that carry no identity; ignored by the word-containment step only.
_FILLER = {"the", "of", "de", "du", "des", "la", "le", "les", "el", "il", "der", "die", "das", "di", "del", "von",
           "and", "et", "y", "und"}
# Common abbreviations, expanded so that both spellings normalise alike.
_EXPAND = {"st": "saint", "ste": "sainte", "mt": "mount", "ft": "fort"}


def normalise(name: str) -> str:
    """Lower case, accents and punctuation dropped, blanks collapsed: 'St. Anselm’s  Cathédrale' ->
    'saint anselms cathedrale'."""
    text = unicodedata.normalize("NFKD", name)
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    text = re.sub(r"['’`]", "", text)  # possessives: "anselm's" and "anselms" are one word
    words = re.sub(r"[\W_]+", " ", text).split()
    return " ".join(_EXPAND.get(w, w) for w in words)


def similarity(a: str, b: str) -> float:
    """0..1 between two normalised names; word order does not count."""
    if not a or not b:
        return 0.0
    plain = difflib.SequenceMatcher(None, a, b).ratio()
    ordered = difflib.SequenceMatcher(None, " ".join(sorted(a.split())), " ".join(sorted(b.split()))).ratio()
    return max(plain, ordered)


@dataclass(frozen=True)
class Match:
    sight_id: int | None  # None: no sight of the city matches; create one
    how: str              # mid | exact | fuzzy | words | new
    similarity: float


class SightMatcher:
    """The sights of one city; `match` is pure, `add` records a sight created or matched meanwhile."""

    def __init__(self, sights: Mapping[int, str], mids: Mapping[str, int] | None = None, cutoff: float = 0.85) -> None:
        self.cutoff = cutoff
        self.names: dict[int, str] = {}
        self.keys: dict[int, str] = {}
        self.mids: dict[str, int] = dict(mids or {})
        for sight_id, name in sights.items():
            self.add(sight_id, name)

    def add(self, sight_id: int, name: str, mid: str = "") -> None:
        self.names[sight_id] = name
        self.keys[sight_id] = normalise(name)
        if mid:
            self.mids[mid] = sight_id

    def match(self, description: str, mid: str = "") -> Match:
        if mid and self.mids.get(mid) in self.names:
            return Match(self.mids[mid], "mid", 1.0)
        key = normalise(description)
        if not key:
            return Match(None, "new", 0.0)
        for sight_id, other in self.keys.items():
            if other == key:
                return Match(sight_id, "exact", 1.0)
        scored = sorted(((similarity(key, other), sight_id) for sight_id, other in self.keys.items()), reverse=True)
        if scored and scored[0][0] >= self.cutoff:
            return Match(scored[0][1], "fuzzy", scored[0][0])
        words = set(key.split()) - _FILLER
        contained = [sight_id for sight_id, other in self.keys.items()
                     if _contains(words, set(other.split()) - _FILLER)]
        if len(contained) == 1:
            return Match(contained[0], "words", similarity(key, self.keys[contained[0]]))
        return Match(None, "new", scored[0][0] if scored else 0.0)


def _contains(a: set[str], b: set[str]) -> bool:
    """One name's words all in the other's, the smaller having at least three words."""
    small, large = (a, b) if len(a) <= len(b) else (b, a)
    return len(small) >= 3 and small <= large
