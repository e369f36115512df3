"""The warehouse access layer: connections, migrations and the queries every service shares."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from sightscan.config import Settings
from sightscan.names import clean_name, name_key

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "sql" / "migrations"
_MIGRATION_LOCK = 0x5167_5CA9  # advisory lock id: one migrator at a time


def connect(settings: Settings, **kwargs: Any) -> psycopg2.extensions.connection:
    return psycopg2.connect(settings.dsn, connect_timeout=10, **kwargs)


@contextlib.contextmanager
def transaction(settings: Settings) -> Iterator[psycopg2.extensions.cursor]:
    """A cursor inside one transaction: committed on success, rolled back on error, connection closed after."""
    conn = connect(settings)
    try:
        with conn, conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


def migrate(settings: Settings, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every migration not yet applied, in name order, all in one transaction under an advisory lock;
    returns the ones applied now. A migration is a .sql file, or a .py file whose `apply(cur)` does the work
    (for data changes SQL cannot express, such as re-keying names with sightscan.names)."""
    applied_now: list[str] = []
    with transaction(settings) as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        cur.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        cur.execute("SELECT version FROM schema_migrations")
        done = {row[0] for row in cur.fetchall()}
        for path in _migration_files(directory):
            if path.stem in done:
                continue
            log.info("applying migration", extra={"migration": path.name})
            if path.suffix == ".py":
                _load_module(path).apply(cur)
            else:
                cur.execute(path.read_text())
            cur.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (path.stem,))
            applied_now.append(path.stem)
    return applied_now


def _migration_files(directory: Path) -> list[Path]:
    """The .sql and .py migrations in name order; two with one version (0005_x.sql and 0005_x.py) are refused, as
    schema_migrations would record only one of them."""
    paths = sorted([*directory.glob("*.sql"), *directory.glob("*.py")], key=lambda p: p.name)
    stems = [p.stem for p in paths]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise RuntimeError(f"two migrations share a version in {directory}: {', '.join(twice)}")
    return paths


def _load_module(path: Path) -> Any:
    """A .py migration as a module (its name starts with a digit, so it cannot be imported by name)."""
    spec = importlib.util.spec_from_file_location(f"sightscan_migration_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load migration {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Cities -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class City:
    id: int
    name: str
    status: str


def _name_and_key(name: str) -> tuple[str, str]:
    """(display name, key) as stored; BadName for a name that names nothing. The key is taken of the clean name,
    so the length limit is clean_name's (MAX_NAME_CHARS) for lookups too."""
    display = clean_name(name)
    return display, name_key(display)


def request_city(cur: psycopg2.extensions.cursor, name: str) -> tuple[City, bool]:
    """Create the city if new; returns (city, created). Names are matched by sightscan.names.name_key, so case,
    blanks, invisible characters and Unicode forms do not make a new city. BadName: it names nothing."""
    display, key = _name_and_key(name)
    cur.execute("INSERT INTO cities (name, name_key) VALUES (%s, %s) ON CONFLICT (name_key) DO NOTHING "
                "RETURNING id, name, status", (display, key))
    row = cur.fetchone()
    if row:
        return City(*row), True
    # The insert conflicted, so a committed row has this key (the insert waited for its transaction); a new
    # statement's snapshot sees it (READ COMMITTED). No row here means a stricter isolation level hid it.
    cur.execute("SELECT id, name, status FROM cities WHERE name_key = %s", (key,))
    row = cur.fetchone()
    if row is None:
        raise RuntimeError(f"city {display!r} conflicted on insert but cannot be read back")
    return City(*row), False


def find_city(cur: psycopg2.extensions.cursor, name: str) -> City | None:
    """The city of this name (compared by name_key); BadName when the name names nothing."""
    cur.execute("SELECT id, name, status FROM cities WHERE name_key = %s", (_name_and_key(name)[1],))
    row = cur.fetchone()
    return City(*row) if row else None


def find_city_by_id(cur: psycopg2.extensions.cursor, city_id: int) -> City | None:
    cur.execute("SELECT id, name, status FROM cities WHERE id = %s", (city_id,))
    row = cur.fetchone()
    return City(*row) if row else None


def city_id_of(ref: int | str) -> int | None:
    """The id a city reference reads as: an int, or a string of ASCII digits (blanks around allowed); None when it
    can only be a name."""
    if isinstance(ref, int):
        return ref
    digits = ref.strip()
    return int(digits) if digits.isascii() and digits.isdigit() else None


def resolve_city(cur: psycopg2.extensions.cursor, ref: int | str) -> City | None:
    """The city a reference names, or None. An int is an id. An all-digits string is an id first, then a name (a
    city may be called "1984"). Any other string is a name, compared as find_city compares it (BadName when it
    names nothing)."""
    city_id = city_id_of(ref)
    found = None if city_id is None else find_city_by_id(cur, city_id)
    if found is None and isinstance(ref, str):
        return find_city(cur, ref)
    return found


def ensure_sight(cur: psycopg2.extensions.cursor, city_id: int, name: str, source: str = "unknown") -> int:
    """The sight's id, created if new (names compared by name_key within the city); BadName: it names nothing."""
    cur.execute(
        "INSERT INTO sights (city_id, name, name_key, source) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (city_id, name_key) DO UPDATE SET source = sights.source RETURNING id",
        (city_id, *_name_and_key(name), source),
    )
    return cur.fetchone()[0]


# Images -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewImage:
    city_id: int
    data: bytes
    mime_type: str
    width: int
    height: int
    origin: str  # crawl | upload
    sight_id: int | None = None
    source_url: str | None = None
    licence: str | None = None
    author: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def insert_image(cur: psycopg2.extensions.cursor, image: NewImage) -> int | None:
    """Store an encoded image; returns its id, or None when the city already has these exact bytes."""
    cur.execute(
        "INSERT INTO images (city_id, sight_id, data, mime_type, sha256, width, height, source_url, licence, author,"
        " origin) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (city_id, sha256) DO NOTHING"
        " RETURNING id",
        (image.city_id, image.sight_id, psycopg2.Binary(image.data), image.mime_type, image.sha256, image.width,
         image.height, image.source_url, image.licence, image.author, image.origin),
    )
    row = cur.fetchone()
    return row[0] if row else None


# Labels -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewLabel:
    image_id: int
    city_id: int
    labeller: str
    sight_id: int | None = None  # None: no landmark found
    score: float | None = None
    box: tuple[float, float, float, float] | None = None  # x_min, y_min, x_max, y_max in 0..1
    weak: bool = False


def insert_label(cur: psycopg2.extensions.cursor, label: NewLabel) -> int:
    box = label.box or (None, None, None, None)
    cur.execute(
        "INSERT INTO labels (image_id, city_id, sight_id, score, x_min, y_min, x_max, y_max, labeller, weak)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (label.image_id, label.city_id, label.sight_id, label.score, *box, label.labeller, label.weak),
    )
    return cur.fetchone()[0]


@dataclass(frozen=True)
class LabelledImage:
    image_id: int
    data: bytes
    width: int
    height: int
    sight_id: int
    sight_name: str
    box: tuple[float, float, float, float]  # normalised 0..1
    weak: bool = False  # an image-level label (the sight the image was crawled for): its box is not a location


def labelled_images(cur: psycopg2.extensions.cursor, city_id: int) -> list[LabelledImage]:
    """Every label of a city that names a sight and has a box (one entry per label; weak ones span the image)."""
    cur.execute(
        "SELECT i.id, i.data, i.width, i.height, s.id, s.name, l.x_min, l.y_min, l.x_max, l.y_max, l.weak"
        " FROM labels l JOIN images i ON i.id = l.image_id JOIN sights s ON s.id = l.sight_id"
        " WHERE l.city_id = %s AND l.x_min IS NOT NULL ORDER BY i.id, l.id",
        (city_id,),
    )
    return [LabelledImage(r[0], bytes(r[1]), r[2], r[3], r[4], r[5], (r[6], r[7], r[8], r[9]), r[10])
            for r in cur.fetchall()]


# Models -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredModel:
    id: int
    city_id: int
    version: int
    onnx: bytes
    classes: list[str]
    input_size: int
    metrics: dict[str, Any]


def insert_model(cur: psycopg2.extensions.cursor, city_id: int, onnx: bytes, classes: list[str], input_size: int,
                 metrics: dict[str, Any]) -> StoredModel:
    """Store a new model as version = previous + 1 (the city row is locked so two trainers cannot collide)."""
    cur.execute("SELECT id FROM cities WHERE id = %s FOR UPDATE", (city_id,))
    if cur.fetchone() is None:
        raise LookupError(f"no city with id {city_id}")
    cur.execute(
        "INSERT INTO models (city_id, version, onnx, classes, input_size, metrics)"
        " SELECT %s, COALESCE(max(version), 0) + 1, %s, %s, %s, %s FROM models WHERE city_id = %s"
        " RETURNING id, version",
        (city_id, psycopg2.Binary(onnx), json.dumps(classes), input_size, json.dumps(metrics), city_id),
    )
    model_id, version = cur.fetchone()
    return StoredModel(model_id, city_id, version, onnx, classes, input_size, metrics)


def model_for_request(cur: psycopg2.extensions.cursor, city_id: int, request_id: str) -> tuple[int, int] | None:
    """(model id, version) of the model a training request already produced, if any: requests are delivered at
    least once, and a copy must not train the city again."""
    cur.execute("SELECT id, version FROM models WHERE city_id = %s AND metrics->>'request_id' = %s"
                " ORDER BY version LIMIT 1", (city_id, request_id))
    row = cur.fetchone()
    return (row[0], row[1]) if row else None


def latest_model(cur: psycopg2.extensions.cursor, city_id: int) -> StoredModel | None:
    cur.execute(
        "SELECT id, city_id, version, onnx, classes, input_size, metrics FROM models WHERE city_id = %s"
        " ORDER BY version DESC LIMIT 1",
        (city_id,),
    )
    r = cur.fetchone()
    return StoredModel(r[0], r[1], r[2], bytes(r[3]), r[4], r[5], r[6]) if r else None
