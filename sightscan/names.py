"""City and sight names: the one normalisation every part of SightScan uses.

Two forms of a name:
- `clean_name(raw)`, the display form stored in `cities.name` / `sights.name`: NFKC, every kind of blank made a
  plain space, invisible characters (format and control: zero-width spaces and joiners, bidi overrides, BOM, soft
  hyphen, NUL…) removed, blanks collapsed and stripped;
- `name_key(raw)`, the identity stored in `cities.name_key` / `sights.name_key` under a unique index: the clean
  form case-folded. Two names with the same key are the same city (or the same sight of a city).

Why in Python and not in SQL: PostgreSQL has no NFKC case folding that matches Python's, and the warehouse and
the crawler must agree on identity to the character (a mismatch created duplicate cities and made repeated
requests fail).
"""

from __future__ import annotations

import unicodedata

MAX_NAME_CHARS = 200
# A key may be longer than its clean name: case folding expands a character to at most 3 ("ß" -> "ss",
# "ΐ" -> 3 code points). The key's own limit keeps name_key idempotent on keys of long names.
MAX_KEY_CHARS = 3 * MAX_NAME_CHARS

_DROPPED_CATEGORIES = ("Cf", "Cc")  # format (invisible) and control characters
# Default-ignorable code points (Unicode DerivedCoreProperties) that are not Cf: fillers and variation selectors
# render as nothing, so they must not tell two names apart either.
_IGNORABLE = frozenset([0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x3164, 0xFFA0,
                        *range(0x180B, 0x1810), *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)])


class BadName(ValueError):
    """A name that cannot name a city or a sight; the message says why, for the person who typed it."""


def _clean(raw: str) -> str:
    """The clean form with no length limit; BadName when nothing printable is left."""
    if not isinstance(raw, str):
        raise BadName("a name must be text")
    for ch in raw:
        if unicodedata.category(ch) == "Cs":  # a lone surrogate: no encoding (UTF-8, the database's) can store it
            raise BadName(f"the name is not valid Unicode: it holds a lone surrogate (U+{ord(ch):04X})")
    text = unicodedata.normalize("NFKC", raw)
    kept = []
    for ch in text:
        if ch.isspace():  # before the category test: \n, \t and \r are control characters too, but blanks
            kept.append(" ")
        elif unicodedata.category(ch) not in _DROPPED_CATEGORIES and ord(ch) not in _IGNORABLE:
            kept.append(ch)
    # Again: a removed character may have kept a base letter and its combining mark apart (e + ZWSP + U+0301).
    text = " ".join(unicodedata.normalize("NFKC", "".join(kept)).split())
    if not text:
        raise BadName("a name must have a printable character (blanks and invisible characters do not count)")
    return text


def _fold(text: str) -> str:
    """NFKC(casefold(text)), repeated until it stops changing (one pass is not always a fixed point)."""
    for _ in range(4):
        folded = unicodedata.normalize("NFKC", text.casefold())
        if folded == text:
            break
        text = folded
    return text


def clean_name(raw: str) -> str:
    """The display form of a name; BadName if it is not valid Unicode, has nothing printable, or is too long."""
    text = _clean(raw)
    if len(text) > MAX_NAME_CHARS:
        raise BadName(f"a name must be at most {MAX_NAME_CHARS} characters (this one has {len(text)})")
    return text


def name_key(raw: str) -> str:
    """The identity of a name, for uniqueness and lookup: case, Unicode form, blanks and invisible characters do
    not count. Idempotent: name_key(name_key(x)) == name_key(x).

    BadName as clean_name, except that the length limit is MAX_KEY_CHARS on the key (so that a key is itself a
    valid input); the warehouse takes keys of clean names only, so its names keep MAX_NAME_CHARS."""
    key = _fold(_clean(raw))
    if len(key) > MAX_KEY_CHARS:
        raise BadName(f"a name must be at most {MAX_NAME_CHARS} characters (this one has {len(_clean(raw))})")
    return key


def nameable(raw: str) -> bool:
    """Whether `raw` names something (clean_name would not refuse it)."""
    try:
        clean_name(raw)
    except BadName:
        return False
    return True
