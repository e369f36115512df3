"""Names in the warehouse (real PostgreSQL): one city or sight per name_key, bad names refused, and migration
0005 re-keying existing rows, look-alike duplicates included."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import unicodedata
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from consumers import warehouse
from sightscan import db
from sightscan.config import Settings
from sightscan.names import BadName


def _full_width(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else "\u3000" if c == " " else c for c in text)


def _look_alikes(base: str) -> list[str]:
    """Spellings of `base` that the old SQL key told apart (or that crashed), and name_key does not."""
    head, tail = base[:3], base[3:]
    return [
        base + "\n", "\t" + base, base + "\r", "\r\n" + base + "\r\n",
        unicodedata.normalize("NFD", base),
        head + "\u200b" + tail, base + "\u200b", "\ufeff" + base, head + "\u202e" + tail,
        head + "\x00" + tail,
        _full_width(base), base.upper(), "  " + base.replace(" ", " \u00a0 ") + "  ",
    ]


BAD_NAMES = ["", "   ", "\n", "\u200b", "\u202e", "\u200b\u200d\ufeff", "\x00", "A\ud800B", "x" * 201]


def _count(cur, table: str) -> int:
    cur.execute(f"SELECT count(*) FROM {table}")  # a fixed table name, never input
    return cur.fetchone()[0]


def test_a_name_with_a_trailing_newline_is_requested_twice(settings: Settings) -> None:
    name = f"Hiddenburg {uuid.uuid4().hex[:8]}\n"
    with db.transaction(settings) as cur:
        first, created = db.request_city(cur, name)
    assert created and first.name == name.strip()
    with db.transaction(settings) as cur:
        again, created_again = db.request_city(cur, name)
    assert not created_again and again == first


def test_look_alikes_are_the_same_city(settings: Settings) -> None:
    base = f"Hiddenbürg {uuid.uuid4().hex[:8]}"
    with db.transaction(settings) as cur:
        city, created = db.request_city(cur, base)
    assert created and city.name == unicodedata.normalize("NFC", base)
    for alike in _look_alikes(base):
        with db.transaction(settings) as cur:
            found, created = db.request_city(cur, alike)
            assert (found.id, created) == (city.id, False), repr(alike)
            assert db.find_city(cur, alike) == city, repr(alike)


def test_resolve_city_reads_an_id_or_a_name(settings: Settings) -> None:
    base = f"Resolvestadt {uuid.uuid4().hex[:8]}"
    digits = f"7{uuid.uuid4().int % 10**15:015d}"  # a name of digits only, far beyond any id in use
    with db.transaction(settings) as cur:
        city, _ = db.request_city(cur, base)
        numbered, _ = db.request_city(cur, digits)
        namesake, _ = db.request_city(cur, str(city.id))  # a city named as another city's id
    with db.transaction(settings) as cur:
        assert db.resolve_city(cur, city.id) == city
        assert db.resolve_city(cur, str(city.id)) == city  # an id first: not the city named so
        assert db.resolve_city(cur, f" {city.id}\n") == city
        assert db.resolve_city(cur, base) == city
        for alike in _look_alikes(base):
            assert db.resolve_city(cur, alike) == city, repr(alike)
        assert db.resolve_city(cur, digits) == numbered  # no such id: then a name
        assert db.resolve_city(cur, int(digits)) is None  # an int is only ever an id
        assert namesake.name == str(city.id)
        assert db.resolve_city(cur, f"Nowhere {uuid.uuid4().hex}") is None
        assert db.resolve_city(cur, 10**20) is None  # beyond bigint: no error, no city
        assert db.resolve_city(cur, "9" * 25) is None
        with pytest.raises(BadName):
            db.resolve_city(cur, "\u200b ")


def test_a_new_city_stores_the_clean_name(settings: Settings) -> None:
    tag = uuid.uuid4().hex[:8]
    with db.transaction(settings) as cur:
        city, created = db.request_city(cur, f"\ufeff New\u200b \t Town\u00a0{tag}\r\n")
        assert created and city.name == f"New Town {tag}"
        cur.execute("SELECT name, name_key FROM cities WHERE id = %s", (city.id,))
        assert cur.fetchone() == (f"New Town {tag}", f"new town {tag}")


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_city_names_are_refused_and_write_nothing(settings: Settings, bad: str) -> None:
    with db.transaction(settings) as cur:
        before = _count(cur, "cities")
        with pytest.raises(BadName):
            db.request_city(cur, bad)
        with pytest.raises(BadName):
            db.find_city(cur, bad)
        assert _count(cur, "cities") == before


def test_look_alike_sights_are_the_same_sight(settings: Settings) -> None:
    base = f"Old Tower {uuid.uuid4().hex[:8]}"
    with db.transaction(settings) as cur:
        city, _ = db.request_city(cur, f"Sightville {uuid.uuid4().hex[:8]}")
        other, _ = db.request_city(cur, f"Elsewhere {uuid.uuid4().hex[:8]}")
        sight = db.ensure_sight(cur, city.id, base, "test")
        assert {db.ensure_sight(cur, city.id, alike, "test") for alike in _look_alikes(base)} == {sight}
        assert db.ensure_sight(cur, other.id, base, "test") != sight  # a name is unique within its city only
        assert warehouse.city_sights(cur, city.id) == {sight: base}


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_sight_names_are_refused_and_write_nothing(settings: Settings, bad: str) -> None:
    with db.transaction(settings) as cur:
        city, _ = db.request_city(cur, f"Badsightville {uuid.uuid4().hex[:8]}")
        before = _count(cur, "sights")
        with pytest.raises(BadName):
            db.ensure_sight(cur, city.id, bad, "test")
        assert _count(cur, "sights") == before


# Migration 0005 on a warehouse with look-alike duplicates -----------------------------------------------


def _admin(settings: Settings):
    conn = db.connect(dataclasses.replace(settings, pgdatabase="postgres"))
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    return conn


@pytest.fixture
def scratch(settings: Settings) -> Iterator[Settings]:
    """A database of its own (the shared one is migrated already), dropped at the end."""
    name = f"names_migration_{uuid.uuid4().hex[:10]}"
    conn = _admin(settings)
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield dataclasses.replace(settings, pgdatabase=name)
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


def _migrations_up_to(version: str, into: Path) -> Path:
    into.mkdir()
    for path in sorted(db.MIGRATIONS_DIR.iterdir()):
        if path.suffix in (".sql", ".py") and path.stem <= version:
            shutil.copy(path, into / path.name)
    return into


NFC, NFD = unicodedata.normalize("NFC", "Hiddenbürg"), unicodedata.normalize("NFD", "Hiddenbürg")
# (id, name) as the old warehouse let them in: its key only trimmed spaces and lower-cased.
OLD_CITIES = [(10, "Lisbon#12"), (11, "Lisbon"), (12, "Lisbon\u200b"), (13, NFC), (14, NFD), (15, "\u200b"),
              (16, "Hiddenbürg\n"), (17, "Ｌｉｓｂｏｎ")]
OLD_SIGHTS = [(20, 11, "Old Tower"), (21, 11, "OLD TOWER\u200b"), (22, 10, "Old Tower"), (23, 11, "\u202e"),
              (24, 11, "Belém"), (25, 11, unicodedata.normalize("NFD", "Belém"))]


def test_migration_rekeys_existing_rows_and_keeps_look_alikes_apart(scratch: Settings, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    applied = db.migrate(scratch, _migrations_up_to("0004_labeller", tmp_path / "old"))
    assert applied[-1] == "0004_labeller" and all(v < "0005" for v in applied)
    with db.transaction(scratch) as cur:
        cur.executemany("INSERT INTO cities (id, name) VALUES (%s, %s)", OLD_CITIES)
        cur.executemany("INSERT INTO sights (id, city_id, name) VALUES (%s, %s, %s)", OLD_SIGHTS)

    with caplog.at_level(logging.WARNING):
        applied = db.migrate(scratch)
    assert applied and applied[0].startswith("0005_")

    with db.transaction(scratch) as cur:
        cur.execute("SELECT id, name, name_key FROM cities ORDER BY id")
        cities = {row[0]: (row[1], row[2]) for row in cur.fetchall()}
        cur.execute("SELECT id, name_key FROM sights ORDER BY id")
        sights = dict(cur.fetchall())
    assert {i: key for i, (_, key) in cities.items()} == {
        10: "lisbon#12",
        11: "lisbon",             # the oldest keeps the plain key
        12: "lisbon#12#12",       # "lisbon#12" was taken by row 10's own name
        13: "hiddenbürg",
        14: "hiddenbürg#14",      # NFD of row 13
        15: "#15",                # nothing printable
        16: "hiddenbürg#16",      # the trailing newline the old key kept
        17: "lisbon#17",          # full-width
    }
    assert {i: name for i, (name, _) in cities.items()} == dict(OLD_CITIES)  # display names are left as they were
    assert sights == {20: "old tower", 21: "old tower#21", 22: "old tower", 23: "#23", 24: "belém", 25: "belém#25"}
    warned = {r.id for r in caplog.records if r.levelno == logging.WARNING and hasattr(r, "id")}
    assert warned == {12, 14, 15, 16, 17, 21, 23, 25}

    with db.transaction(scratch) as cur:
        # Names now resolve to the oldest look-alike; the old function and its indexes are gone.
        assert db.request_city(cur, "Lisbon\u200b") == (db.City(11, "Lisbon", "requested"), False)
        assert db.find_city(cur, NFD).id == 13
        assert db.find_city(cur, "Lisbon#12").id == 10
        assert db.ensure_sight(cur, 11, "old tower") == 20
        cur.execute("SELECT count(*) FROM pg_proc WHERE proname = 'name_key'")
        assert cur.fetchone()[0] == 0
        cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE indexname IN ('cities_name_key',"
                    " 'sights_name_key') ORDER BY indexname")
        indexes = dict(cur.fetchall())
        assert "UNIQUE" in indexes["cities_name_key"] and "(name_key)" in indexes["cities_name_key"]
        assert "(city_id, name_key)" in indexes["sights_name_key"]
        with pytest.raises(psycopg2.errors.NotNullViolation):
            cur.execute("INSERT INTO cities (name) VALUES ('No Key')")
    assert db.migrate(scratch) == []


def test_two_migrations_with_one_version_are_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_x.sql").write_text("SELECT 1")
    (tmp_path / "0001_x.py").write_text("def apply(cur):\n    pass\n")
    with pytest.raises(RuntimeError, match="0001_x"):
        db._migration_files(tmp_path)
