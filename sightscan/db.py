"""The warehouse access layer: connections, migrations and the queries every service shares."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import re
import secrets
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
    kind: str = "labeller"      # or "user-box": a user's correction (sql/migrations/0006_corrections.sql)
    action: str | None = None   # a user box's correction: confirm, wrong-sight or box
    user_id: int | None = None  # its user (None: the operator's, or the labeller's)


def labelled_images(cur: psycopg2.extensions.cursor, city_id: int) -> list[LabelledImage]:
    """Every label of a city that names a sight and has a box (one entry per label; weak ones span the image): the
    labeller's, and users' boxes with their correction's action and user."""
    cur.execute(
        "SELECT i.id, i.data, i.width, i.height, s.id, s.name, l.x_min, l.y_min, l.x_max, l.y_max, l.weak, l.kind,"
        " c.action, c.user_id"
        " FROM labels l JOIN images i ON i.id = l.image_id JOIN sights s ON s.id = l.sight_id"
        " LEFT JOIN corrections c ON c.id = l.correction_id"
        " WHERE l.city_id = %s AND l.x_min IS NOT NULL ORDER BY i.id, l.id",
        (city_id,),
    )
    return [LabelledImage(r[0], bytes(r[1]), r[2], r[3], r[4], r[5], (r[6], r[7], r[8], r[9]), r[10], r[11], r[12],
                          r[13]) for r in cur.fetchall()]


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
                 metrics: dict[str, Any], browser_onnx: bytes | None = None) -> StoredModel:
    """Store a new model as version = previous + 1 (the city row is locked so two trainers cannot collide).
    `browser_onnx`: the graph pages run when it is not `onnx` (sql/migrations/0008_browser_graphs.sql)."""
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
    if browser_onnx is not None:
        cur.execute("INSERT INTO model_browser_graphs (model_id, onnx) VALUES (%s, %s)",
                    (model_id, psycopg2.Binary(browser_onnx)))
    return StoredModel(model_id, city_id, version, onnx, classes, input_size, metrics)


def browser_graph(cur: psycopg2.extensions.cursor, model_id: int) -> tuple[bytes, bool] | None:
    """The graph a page runs for this model, and whether it is the browser's own (else the served graph); None when
    the model is gone."""
    cur.execute("SELECT COALESCE(g.onnx, m.onnx), g.onnx IS NOT NULL FROM models m"
                " LEFT JOIN model_browser_graphs g ON g.model_id = m.id WHERE m.id = %s", (model_id,))
    r = cur.fetchone()
    return (bytes(r[0]), r[1]) if r else None


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


# Users ------------------------------------------------------------------------------------------------
# A person (or a client) with a write token of their own (sql/migrations/0006_corrections.sql). The warehouse keeps
# only the token's SHA-256: the token itself is shown once, when the user is added.

USER_NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,62}"  # as the users table's CHECK


@dataclass(frozen=True)
class User:
    id: int
    name: str
    created_at: Any
    disowned_at: Any = None  # set: the token is refused and the user's corrections are gone


def new_user_token() -> str:
    """A fresh user token: 256 random bits, URL-safe, with a prefix that says what it is."""
    return "ssu_" + secrets.token_urlsafe(32)


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def valid_user_name(name: object) -> bool:
    return isinstance(name, str) and re.fullmatch(USER_NAME_PATTERN, name) is not None


def insert_user(cur: psycopg2.extensions.cursor, name: str, token_hash: str) -> User | None:
    """Add a user with the SHA-256 of their token; None when the name is taken (disowned names stay taken)."""
    cur.execute("INSERT INTO users (name, token_sha256) VALUES (%s, %s) ON CONFLICT DO NOTHING"
                " RETURNING id, name, created_at, disowned_at", (name, token_hash))
    row = cur.fetchone()
    return User(*row) if row else None


def user_by_token_sha256(cur: psycopg2.extensions.cursor, token_hash: str) -> User | None:
    """The user whose token has this SHA-256, disowned or not (the caller refuses a disowned one)."""
    cur.execute("SELECT id, name, created_at, disowned_at FROM users WHERE token_sha256 = %s", (token_hash,))
    row = cur.fetchone()
    return User(*row) if row else None


def user_by_name(cur: psycopg2.extensions.cursor, name: str) -> User | None:
    cur.execute("SELECT id, name, created_at, disowned_at FROM users WHERE name = %s", (name,))
    row = cur.fetchone()
    return User(*row) if row else None


@dataclass(frozen=True)
class Disowned:
    user: User
    corrections_deleted: int
    images_deleted: int


def disown_user(cur: psycopg2.extensions.cursor, name: str) -> Disowned | None:
    """Refuse the user's token from now on and delete every correction they made, with its labels (a cascade,
    so each label's delete is a change event) and each frame no other correction uses. None: no such user.
    Disowning twice is harmless: the second time finds nothing left to delete."""
    cur.execute("UPDATE users SET disowned_at = COALESCE(disowned_at, now()) WHERE name = %s"
                " RETURNING id, name, created_at, disowned_at", (name,))
    row = cur.fetchone()
    if row is None:
        return None
    user = User(*row)
    cur.execute("DELETE FROM corrections WHERE user_id = %s RETURNING image_id", (user.id,))
    frames = [r[0] for r in cur.fetchall()]
    images = sum(_delete_frame_if_unused(cur, image_id) for image_id in sorted(set(frames)))
    return Disowned(user, len(frames), images)


# Corrections ------------------------------------------------------------------------------------------
# What a user fixes on the page becomes a label (docs/corrections.md). A correction, its label and its frame are
# written in one transaction; undo deletes the correction (its label goes by cascade) and the frame when nothing
# else uses it.

CORRECTION_ACTIONS = ("confirm", "wrong-sight", "box", "no-sight", "keep")
BOX_ACTIONS = ("confirm", "wrong-sight", "box")  # a sight and a box: a 'user-box' label


class UnknownSight(LookupError):
    """The correction names a sight the city does not have."""


class UnknownImage(LookupError):
    """The correction names a frame that is not a frame of an earlier correction of this city."""


@dataclass(frozen=True)
class NewCorrection:
    city_id: int
    user: User | None  # None: the operator's token
    action: str  # one of CORRECTION_ACTIONS
    sight: str | None = None  # BOX_ACTIONS: the sight's name, one of the city's
    box: tuple[float, float, float, float] | None = None  # BOX_ACTIONS: x_min, y_min, x_max, y_max in 0..1
    model_version: int | None = None
    shown: list[dict[str, Any]] | None = None
    frame: NewImage | None = None  # the frame as sent (origin 'user'), or
    image_id: int | None = None  # a frame an earlier correction of this city stored


@dataclass(frozen=True)
class Correction:
    id: int
    city_id: int
    city: str
    image_id: int
    action: str
    sight: str | None
    box: tuple[float, float, float, float] | None
    label_id: int | None
    user: str | None  # None: the operator
    model_version: int | None
    shown: list[dict[str, Any]]
    created_at: Any


_CORRECTION_SQL = """
SELECT co.id, co.city_id, ci.name, co.image_id, co.action, s.name, l.x_min, l.y_min, l.x_max, l.y_max, l.id,
       u.name, co.model_version, co.shown, co.created_at
FROM corrections co
JOIN cities ci ON ci.id = co.city_id
LEFT JOIN users u ON u.id = co.user_id
LEFT JOIN LATERAL (SELECT * FROM labels WHERE correction_id = co.id ORDER BY id LIMIT 1) l ON true
LEFT JOIN sights s ON s.id = l.sight_id
"""


def _correction(r: tuple[Any, ...]) -> Correction:
    box = None if r[6] is None else (r[6], r[7], r[8], r[9])
    return Correction(r[0], r[1], r[2], r[3], r[4], r[5], box, r[10], r[11], r[12], r[13], r[14])


def _sight_id(cur: psycopg2.extensions.cursor, city_id: int, name: str) -> int:
    """The id of one of the city's sights, by name_key; UnknownSight when it has none of that name."""
    try:
        key = _name_and_key(name)[1]
    except ValueError as exc:  # BadName: names nothing
        raise UnknownSight(str(exc)) from exc
    cur.execute("SELECT id FROM sights WHERE city_id = %s AND name_key = %s", (city_id, key))
    row = cur.fetchone()
    if row is None:
        raise UnknownSight(f"the city has no sight named {name!r}")
    return row[0]


def _frame_id(cur: psycopg2.extensions.cursor, new: NewCorrection) -> int:
    """The frame's image id, locked against an undo deleting it before this transaction commits."""
    if new.frame is None:
        cur.execute("SELECT i.id FROM images i WHERE i.id = %s AND i.city_id = %s AND EXISTS ("
                    "SELECT 1 FROM corrections c WHERE c.image_id = i.id) FOR KEY SHARE OF i",
                    (new.image_id, new.city_id))
        row = cur.fetchone()
        if row is None:
            raise UnknownImage(f"image {new.image_id} is not a frame of a correction of this city")
        return row[0]
    for _ in range(3):  # the same bytes already stored: reuse that row (unless an undo deletes it meanwhile)
        image_id = insert_image(cur, new.frame)
        if image_id is not None:
            return image_id
        cur.execute("SELECT id FROM images WHERE city_id = %s AND sha256 = %s FOR KEY SHARE",
                    (new.frame.city_id, new.frame.sha256))
        row = cur.fetchone()
        if row is not None:
            return row[0]
    raise RuntimeError("the frame was inserted and deleted three times over; try again")


def insert_correction(cur: psycopg2.extensions.cursor, new: NewCorrection) -> Correction:
    """Store a correction with its frame (of origin 'user'; the same bytes again reuse the row) and its label
    ('user-box' for confirm, wrong-sight and box; 'user-negative' for no-sight; none for keep), in the caller's
    transaction. UnknownSight, UnknownImage: nothing is stored (the caller's transaction rolls back)."""
    if new.action not in CORRECTION_ACTIONS:
        raise ValueError(f"unknown action {new.action!r}")
    if (new.frame is None) == (new.image_id is None):
        raise ValueError("a correction needs a frame or an image id, not both")
    sight_id = None
    if new.action in BOX_ACTIONS:
        if new.sight is None or new.box is None:
            raise ValueError(f"{new.action} needs a sight and a box")
        sight_id = _sight_id(cur, new.city_id, new.sight)
    image_id = _frame_id(cur, new)
    cur.execute("INSERT INTO corrections (city_id, image_id, user_id, action, model_version, shown)"
                " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                (new.city_id, image_id, new.user.id if new.user else None, new.action, new.model_version,
                 json.dumps(new.shown or [])))
    correction_id = cur.fetchone()[0]
    if new.action != "keep":
        box = new.box if new.action in BOX_ACTIONS else None
        cur.execute(
            "INSERT INTO labels (image_id, city_id, sight_id, x_min, y_min, x_max, y_max, labeller, weak, kind,"
            " correction_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, false, %s, %s)",
            (image_id, new.city_id, sight_id, *(box or (None,) * 4),
             f"user:{new.user.name}" if new.user else "operator",
             "user-box" if new.action in BOX_ACTIONS else "user-negative", correction_id))
    found = correction_by_id(cur, new.city_id, correction_id)
    assert found is not None
    return found


def correction_by_id(cur: psycopg2.extensions.cursor, city_id: int, correction_id: int) -> Correction | None:
    cur.execute(_CORRECTION_SQL + " WHERE co.id = %s AND co.city_id = %s", (correction_id, city_id))
    row = cur.fetchone()
    return _correction(row) if row else None


def list_corrections(cur: psycopg2.extensions.cursor, city_id: int, user_name: str | None = None,
                     before: int | None = None, limit: int = 100) -> list[Correction]:
    """A city's corrections, newest first: of one user if `user_name` is given (the operator's own: never
    selected by name), with ids below `before` if given (paging), at most `limit`."""
    where, args = ["co.city_id = %s"], [city_id]
    if user_name is not None:
        where.append("u.name = %s")
        args.append(user_name)
    if before is not None:
        where.append("co.id < %s")
        args.append(before)
    cur.execute(_CORRECTION_SQL + " WHERE " + " AND ".join(where) + " ORDER BY co.id DESC LIMIT %s",
                (*args, limit))
    return [_correction(r) for r in cur.fetchall()]


def _delete_frame_if_unused(cur: psycopg2.extensions.cursor, image_id: int) -> bool:
    """Delete a frame a correction stored (origin 'user') once no correction uses it; images of other origins
    (a crawled or uploaded photo a user corrected) stay. The row is locked first, so a correction reusing the
    frame at the same time either commits before this looks or finds the frame gone."""
    cur.execute("SELECT origin FROM images WHERE id = %s FOR UPDATE", (image_id,))
    row = cur.fetchone()
    if row is None or row[0] != "user":
        return False
    cur.execute("DELETE FROM images i WHERE i.id = %s AND NOT EXISTS ("
                "SELECT 1 FROM corrections c WHERE c.image_id = i.id)", (image_id,))
    return cur.rowcount == 1


class NotYours(PermissionError):
    """A user may undo only their own corrections."""


@dataclass(frozen=True)
class Undone:
    correction: Correction
    image_deleted: bool


def delete_correction(cur: psycopg2.extensions.cursor, city_id: int, correction_id: int,
                      user: User | None) -> Undone | None:
    """Undo a correction: it goes, its label with it (a cascade: a change event like any label delete), and its
    frame when no other correction uses it. `user` None is the operator, who may undo anyone's; a user may undo
    only their own (NotYours). None: the city has no such correction."""
    found = correction_by_id(cur, city_id, correction_id)
    if found is None:
        return None
    if user is not None and found.user != user.name:
        raise NotYours(f"correction {correction_id} is not {user.name}'s")
    cur.execute("DELETE FROM corrections WHERE id = %s AND city_id = %s", (correction_id, city_id))
    if cur.rowcount == 0:  # undone at the same moment by another request
        return None
    return Undone(found, _delete_frame_if_unused(cur, found.image_id))


# Review queue -----------------------------------------------------------------------------------------
# Frames of live streams on which the model was unsure, kept for a person to accept or fix, in the cities whose
# operator opted in (sql/migrations/0007_review_queue.sql; docs/corrections.md, "Review queue"). Not captured by
# CDC: the bytes never reach Kafka. A frame leaves the queue when a correction of the city stores the same bytes,
# or when it is dismissed; either way its bytes are dropped and its row stays, for the caps and the record.

REVIEW_REASONS = ("near-threshold", "close-sights")


@dataclass(frozen=True)
class ReviewCaps:
    """At most `per_minute` frames kept in any 60 s and `per_day` in any 24 h per city, and at most `max_queue`
    waiting for review."""

    per_minute: int
    per_day: int
    max_queue: int


@dataclass(frozen=True)
class NewReviewFrame:
    city_id: int
    reason: str  # one of REVIEW_REASONS
    model_version: int
    threshold: float  # the threshold the rule compared the top score with
    shown: list[dict[str, Any]]  # the detections answered: [{"sight", "score", "box"}]
    data: bytes  # the frame as sent
    mime_type: str
    width: int
    height: int


@dataclass(frozen=True)
class ReviewFrame:
    id: int
    city_id: int
    reason: str
    model_version: int
    threshold: float
    shown: list[dict[str, Any]]
    mime_type: str
    width: int
    height: int
    kept_at: Any
    reviewed_at: Any = None
    outcome: str | None = None  # corrected | dismissed, once reviewed
    correction_id: int | None = None


_REVIEW_SQL = """
SELECT r.id, r.city_id, r.reason, r.model_version, r.threshold, r.shown, r.mime_type, r.width, r.height, r.kept_at,
       r.reviewed_at, r.outcome, r.correction_id
FROM review_frames r
"""
# A frame some correction of the city stored (the same bytes): it has been reviewed, whatever the queue says.
_CORRECTED_SQL = """
SELECT c.id FROM images i JOIN corrections c ON c.image_id = i.id
WHERE i.city_id = r.city_id AND i.sha256 = r.sha256
"""
_PENDING = f"r.reviewed_at IS NULL AND NOT EXISTS ({_CORRECTED_SQL})"


def review_sampling(cur: psycopg2.extensions.cursor, city_id: int) -> bool:
    """Whether the city keeps unsure frames for review (off unless the operator turned it on)."""
    cur.execute("SELECT sample FROM review_settings WHERE city_id = %s", (city_id,))
    row = cur.fetchone()
    return bool(row and row[0])


def set_review_sampling(cur: psycopg2.extensions.cursor, city_id: int, sample: bool) -> tuple[bool, Any]:
    """Turn the city's sampling on or off; (sample, updated_at). Frames already waiting stay in the queue."""
    cur.execute("INSERT INTO review_settings (city_id, sample) VALUES (%s, %s) ON CONFLICT (city_id) DO UPDATE"
                " SET sample = EXCLUDED.sample, updated_at = now() RETURNING sample, updated_at", (city_id, sample))
    row = cur.fetchone()
    return row[0], row[1]


def keep_review_frame(cur: psycopg2.extensions.cursor, new: NewReviewFrame, caps: ReviewCaps) -> int | str:
    """Keep a frame for review: its id, or why it was not kept ('off': the city does not sample; 'per_minute',
    'per_day', 'queue_full': a cap; 'duplicate': the same bytes wait already; 'corrected': a correction of the city
    has them). The city's settings row is locked, so concurrent gateways cannot pass a cap together."""
    if new.reason not in REVIEW_REASONS:
        raise ValueError(f"unknown reason {new.reason!r}")
    cur.execute("SELECT sample FROM review_settings WHERE city_id = %s FOR UPDATE", (new.city_id,))
    row = cur.fetchone()
    if not (row and row[0]):
        return "off"
    cur.execute(
        "SELECT count(*) FILTER (WHERE kept_at > clock_timestamp() - interval '1 minute'),"
        " count(*) FILTER (WHERE kept_at > clock_timestamp() - interval '1 day'),"
        " count(*) FILTER (WHERE reviewed_at IS NULL)"
        " FROM review_frames WHERE city_id = %s"
        " AND (kept_at > clock_timestamp() - interval '1 day' OR reviewed_at IS NULL)", (new.city_id,))
    minute, day, waiting = cur.fetchone()
    if minute >= caps.per_minute:
        return "per_minute"
    if day >= caps.per_day:
        return "per_day"
    if waiting >= caps.max_queue:
        return "queue_full"
    sha = hashlib.sha256(new.data).hexdigest()
    cur.execute("SELECT 1 FROM images i WHERE i.city_id = %s AND i.sha256 = %s AND EXISTS ("
                "SELECT 1 FROM corrections c WHERE c.image_id = i.id)", (new.city_id, sha))
    if cur.fetchone() is not None:
        return "corrected"
    cur.execute(
        "INSERT INTO review_frames (city_id, reason, model_version, threshold, shown, data, mime_type, sha256, width,"
        " height, kept_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, clock_timestamp())"
        " ON CONFLICT (city_id, sha256) WHERE reviewed_at IS NULL DO NOTHING RETURNING id",
        (new.city_id, new.reason, new.model_version, new.threshold, json.dumps(new.shown),
         psycopg2.Binary(new.data), new.mime_type, sha, new.width, new.height))
    row = cur.fetchone()
    return row[0] if row else "duplicate"


def _review_frame(r: tuple[Any, ...]) -> ReviewFrame:
    return ReviewFrame(*r)


def list_review_frames(cur: psycopg2.extensions.cursor, city_id: int, before: int | None = None,
                       limit: int = 50) -> tuple[list[ReviewFrame], int]:
    """The frames waiting for review, newest first (ids below `before` if given, at most `limit`), and how many
    wait in all."""
    cur.execute(f"SELECT count(*) FROM review_frames r WHERE r.city_id = %s AND {_PENDING}", (city_id,))
    waiting = cur.fetchone()[0]
    cur.execute(_REVIEW_SQL + f" WHERE r.city_id = %s AND {_PENDING} AND (%s::bigint IS NULL OR r.id < %s)"
                " ORDER BY r.id DESC LIMIT %s", (city_id, before, before, limit))
    return [_review_frame(r) for r in cur.fetchall()], waiting


def review_frame_data(cur: psycopg2.extensions.cursor, city_id: int, frame_id: int) -> tuple[bytes, str] | None:
    """(bytes, MIME type) of a frame waiting for review; None once it is reviewed, or when the city has no such
    frame."""
    cur.execute(f"SELECT r.data, r.mime_type FROM review_frames r WHERE r.id = %s AND r.city_id = %s AND {_PENDING}",
                (frame_id, city_id))
    row = cur.fetchone()
    return (bytes(row[0]), row[1]) if row else None


def finish_review_frame(cur: psycopg2.extensions.cursor, city_id: int, frame_id: int) -> ReviewFrame | None:
    """Take a frame out of the queue and drop its bytes: outcome 'corrected' (with the correction's id) when a
    correction of the city has its bytes, else 'dismissed'. None: the city has no such frame waiting."""
    cur.execute("SELECT r.sha256 FROM review_frames r WHERE r.id = %s AND r.city_id = %s AND r.reviewed_at IS NULL"
                " FOR UPDATE", (frame_id, city_id))
    if cur.fetchone() is None:
        return None
    cur.execute(f"SELECT ({_CORRECTED_SQL} ORDER BY c.id DESC LIMIT 1) FROM review_frames r WHERE r.id = %s",
                (frame_id,))
    correction_id = cur.fetchone()[0]
    cur.execute("UPDATE review_frames SET data = NULL, reviewed_at = clock_timestamp(), outcome = %s,"
                " correction_id = %s WHERE id = %s",
                ("corrected" if correction_id else "dismissed", correction_id, frame_id))
    cur.execute(_REVIEW_SQL + " WHERE r.id = %s", (frame_id,))
    return _review_frame(cur.fetchone())
