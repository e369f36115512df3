"""Corrections (docs/corrections.md) against a real gateway process and the real warehouse: users and their tokens,
what each action stores, undo, disowning, the rate limit, refusals that store nothing, and the label's change
event on Kafka."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from gateway.ratelimit import RateLimiter
from sightscan import db
from sightscan.config import Settings
from sightscan.events import parse_change
from sightscan.topics import change_topic
from tests.support.gateway import (
    Gateway,
    add_user,
    call,
    call_json,
    jpeg,
    multipart,
    noise_jpeg,
    post_correction,
    start_gateway,
    stop_gateway,
)

LIMIT = 8  # GATEWAY_CORRECTIONS_PER_MINUTE of this module's gateway
BOX = [0.1, 0.2, 0.6, 0.9]


@pytest.fixture(scope="module")
def gw(pg: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway of its own, with a small rate limit (the session's gateway has a large one for the fuzz)."""
    gateway = start_gateway(pg, tmp_path_factory.mktemp("corrections") / "gateway.log",
                            GATEWAY_CORRECTIONS_PER_MINUTE=str(LIMIT), GATEWAY_FOLLOW_MODELS="false")
    yield gateway
    stop_gateway(gateway)


@pytest.fixture
def city(pg: Settings) -> db.City:
    """A fresh city with two sights."""
    with db.transaction(pg) as cur:
        made, _ = db.request_city(cur, f"Fixes {uuid.uuid4().hex[:10]}")
        for sight in ("Red Gate", "Blue Hall"):
            db.ensure_sight(cur, made.id, sight, "test")
    return made


_frames = iter(range(1, 10**6))


def frame() -> bytes:
    """A JPEG no other test sends (frames are deduplicated by their bytes)."""
    return noise_jpeg(np.random.default_rng(next(_frames) + uuid.uuid4().int % 10**6), (64, 48))


def rows(pg: Settings, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with db.transaction(pg) as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def stored(pg: Settings, city_id: int) -> tuple[int, int, int]:
    """(corrections, labels, images) of a city."""
    return rows(pg, "SELECT (SELECT count(*) FROM corrections WHERE city_id = %s),"
                    " (SELECT count(*) FROM labels WHERE city_id = %s),"
                    " (SELECT count(*) FROM images WHERE city_id = %s)", city_id, city_id, city_id)[0]


# Users --------------------------------------------------------------------------------------------------


def test_a_user_gets_a_token_shown_once_and_the_warehouse_keeps_its_sha256(gw: Gateway, pg: Settings) -> None:
    name = f"ada-{uuid.uuid4().hex[:8]}"
    status, body = call_json(gw, "POST", "/api/users", {"name": name})
    assert status == 201 and body["name"] == name and body["token"].startswith("ssu_"), body
    [(token_sha256, disowned)] = rows(pg, "SELECT token_sha256, disowned_at FROM users WHERE name = %s", name)
    assert token_sha256 == hashlib.sha256(body["token"].encode()).hexdigest() and disowned is None
    status, again = call_json(gw, "POST", "/api/users", {"name": name})
    assert (status, again["error"]) == (409, "user_exists")
    # Only the operator adds users; a user's token is a 403, none a 401.
    status, refused = call_json(gw, "POST", "/api/users", {"name": f"x{name}"}, token=body["token"])
    assert (status, refused["error"]) == (403, "operator_only")
    status, refused = call_json(gw, "POST", "/api/users", {"name": f"y{name}"}, token=None)
    assert (status, refused["error"]) == (401, "token_required")
    assert rows(pg, "SELECT count(*) FROM users WHERE name IN (%s, %s)", f"x{name}", f"y{name}") == [(0,)]


@pytest.mark.parametrize("payload", [{"name": "Ada"}, {"name": ""}, {"name": "-ada"}, {"name": "a" * 64},
                                     {"name": 7}, {}, [1], b"{nope"])
def test_bad_user_names_are_refused(gw: Gateway, payload: Any) -> None:
    status, body = call_json(gw, "POST", "/api/users", payload)
    assert status == 400 and body["error"] in ("bad_name", "bad_json"), body


def test_a_user_token_may_correct_but_not_upload_or_request_cities(gw: Gateway, city: db.City) -> None:
    _, token = add_user(gw)
    status, body = call_json(gw, "POST", "/api/cities", {"name": "Anywhere"}, token=token)
    assert (status, body["error"]) == (403, "operator_only")
    form, ctype = multipart({"image": ("a.jpg", frame())})
    status, _, data = call(gw, "POST", f"/api/cities/{city.name}/images", form, token=token, content_type=ctype)
    assert (status, json.loads(data)["error"]) == (403, "operator_only")
    status, _, body = post_correction(gw, city.name, {"action": "keep"}, frame(), token=token)
    assert status == 201, body


# What each action stores -------------------------------------------------------------------------------


@pytest.mark.parametrize("action, kind", [("confirm", "user-box"), ("wrong-sight", "user-box"),
                                          ("box", "user-box"), ("no-sight", "user-negative"), ("keep", None)])
def test_each_action_stores_what_the_contract_says(gw: Gateway, pg: Settings, city: db.City, action: str,
                                                   kind: str | None) -> None:
    name, token = add_user(gw)
    image = frame()
    shown = [{"sight": "Blue Hall", "score": 0.71, "box": [0.0, 0.1, 0.5, 0.5]},
             {"sight": "Red Gate", "score": 0.3, "box": [1.0, 0.2, 1.0, 0.2]}]  # as answered, even thin to nothing
    correction: dict[str, Any] = {"action": action, "model_version": 3, "shown": shown}
    if kind == "user-box":
        correction |= {"sight": "  red gate ", "box": BOX}  # names compare as everywhere (sightscan/names.py)
    status, _, body = post_correction(gw, city.name, correction, image, token=token)
    assert status == 201, body
    boxed = kind == "user-box"
    assert body == {**body, "city": city.name, "action": action, "user": name, "model_version": 3, "shown": shown,
                    "sight": "Red Gate" if boxed else None, "box": BOX if boxed else None}
    assert (body["label_id"] is None) == (kind is None)

    [(user, got_action, version, got_shown, image_id)] = rows(
        pg, "SELECT u.name, c.action, c.model_version, c.shown, c.image_id FROM corrections c"
            " JOIN users u ON u.id = c.user_id WHERE c.id = %s", body["id"])
    assert (user, got_action, version, got_shown, image_id) == (name, action, 3, shown, body["image_id"])
    [(data, origin, mime, city_id)] = rows(pg, "SELECT data, origin, mime_type, city_id FROM images WHERE id = %s",
                                           image_id)
    assert (bytes(data), origin, mime, city_id) == (image, "user", "image/jpeg", city.id)
    labels = rows(pg, "SELECT l.id, l.kind, s.name, l.x_min, l.y_min, l.x_max, l.y_max, l.weak, l.image_id,"
                      " l.labeller FROM labels l LEFT JOIN sights s ON s.id = l.sight_id WHERE l.correction_id = %s",
                  body["id"])
    if kind is None:
        assert labels == []
        return
    [(label_id, got_kind, sight, *box, weak, label_image, labeller)] = labels
    assert (label_id, got_kind, weak, label_image, labeller) == (body["label_id"], kind, False, image_id,
                                                                 f"user:{name}")
    if boxed:
        assert sight == "Red Gate" and box == pytest.approx(BOX)
    else:
        assert sight is None and box == [None] * 4


def test_the_operator_corrects_as_nobody_and_may_leave_out_what_is_optional(gw: Gateway, city: db.City) -> None:
    status, _, body = post_correction(gw, city.name, {"action": "box", "sight": "Blue Hall", "box": BOX}, frame())
    assert status == 201, body
    assert (body["user"], body["model_version"], body["shown"]) == (None, None, [])


def test_one_frame_is_stored_once(gw: Gateway, pg: Settings, city: db.City, make_city) -> None:
    _, token = add_user(gw)
    image = frame()
    _, _, first = post_correction(gw, city.name, {"action": "no-sight"}, image, token=token)
    _, _, second = post_correction(gw, city.name, {"action": "box", "sight": "Red Gate", "box": BOX}, image,
                                   token=token)
    status, _, third = post_correction(gw, city.name, {"action": "keep"}, token=token, image_id=first["image_id"])
    assert status == 201, third
    assert first["image_id"] == second["image_id"] == third["image_id"]
    assert stored(pg, city.id) == (3, 2, 1)
    # image_id names a frame of this city's corrections only.
    other = make_city(with_model=False).city
    status, _, body = post_correction(gw, other.name, {"action": "keep"}, token=token, image_id=first["image_id"])
    assert (status, body["error"]) == (422, "unknown_image")
    status, _, body = post_correction(gw, city.name, {"action": "keep"}, token=token, image_id=2**62)
    assert (status, body["error"]) == (422, "unknown_image")


def test_a_frame_already_stored_is_reused_and_kept_on_undo(gw: Gateway, pg: Settings, city: db.City) -> None:
    image = frame()
    form, ctype = multipart({"image": ("photo.jpg", image)})
    status, _, data = call(gw, "POST", f"/api/cities/{city.name}/images", form, content_type=ctype)
    uploaded = json.loads(data)["id"]
    status, _, body = post_correction(gw, city.name, {"action": "no-sight"}, image)
    assert status == 201 and body["image_id"] == uploaded
    assert call(gw, "DELETE", f"/api/cities/{city.name}/corrections/{body['id']}")[0] == 204
    assert rows(pg, "SELECT origin FROM images WHERE id = %s", uploaded) == [("upload",)]


# Undo -----------------------------------------------------------------------------------------------------


def test_undo_deletes_the_label_and_the_frame_once_no_correction_uses_it(gw: Gateway, pg: Settings,
                                                                          city: db.City) -> None:
    _, token = add_user(gw)
    image = frame()
    _, _, first = post_correction(gw, city.name, {"action": "box", "sight": "Red Gate", "box": BOX}, image,
                                  token=token)
    _, _, second = post_correction(gw, city.name, {"action": "no-sight"}, image, token=token)
    assert stored(pg, city.id) == (2, 2, 1)
    status, _, data = call(gw, "DELETE", f"/api/cities/{city.name}/corrections/{first['id']}", token=token)
    assert (status, data) == (204, b"")
    assert rows(pg, "SELECT id FROM labels WHERE city_id = %s", city.id) == [(second["label_id"],)]
    assert stored(pg, city.id) == (1, 1, 1)  # the frame stays: the second correction uses it
    assert call(gw, "DELETE", f"/api/cities/{city.name}/corrections/{second['id']}", token=token)[0] == 204
    assert stored(pg, city.id) == (0, 0, 0)
    status, body = call_json(gw, "DELETE", f"/api/cities/{city.name}/corrections/{second['id']}", token=token)
    assert (status, body["error"]) == (404, "unknown_correction")


def test_a_user_cannot_undo_another_users_correction_but_the_operator_can(gw: Gateway, pg: Settings,
                                                                          city: db.City, make_city) -> None:
    _, ada = add_user(gw)
    _, bob = add_user(gw)
    _, _, mine = post_correction(gw, city.name, {"action": "no-sight"}, frame(), token=ada)
    path = f"/api/cities/{city.name}/corrections/{mine['id']}"
    status, body = call_json(gw, "DELETE", path, token=bob)
    assert (status, body["error"]) == (403, "not_yours")
    status, body = call_json(gw, "DELETE", path, token=None)
    assert (status, body["error"]) == (401, "token_required")
    other = make_city(with_model=False).city  # the id in another city's path is no correction of that city
    status, body = call_json(gw, "DELETE", f"/api/cities/{other.name}/corrections/{mine['id']}")
    assert (status, body["error"]) == (404, "unknown_correction")
    assert stored(pg, city.id) == (1, 1, 1)
    assert call(gw, "DELETE", path)[0] == 204  # the operator
    assert stored(pg, city.id) == (0, 0, 0)


# Listing --------------------------------------------------------------------------------------------------


def test_a_user_lists_their_own_corrections_and_the_operator_everyones(gw: Gateway, city: db.City) -> None:
    ada_name, ada = add_user(gw)
    bob_name, bob = add_user(gw)
    ids = [post_correction(gw, city.name, {"action": "keep"}, frame(), token=t)[2]["id"] for t in (ada, bob, ada)]
    path = f"/api/cities/{city.name}/corrections"
    status, body = call_json(gw, "GET", path, token=ada)
    assert status == 200 and [c["id"] for c in body["corrections"]] == [ids[2], ids[0]]  # newest first
    assert {c["user"] for c in body["corrections"]} == {ada_name}
    assert [c["id"] for c in call_json(gw, "GET", path)[1]["corrections"]] == ids[::-1]
    assert [c["id"] for c in call_json(gw, "GET", f"{path}?user={bob_name}")[1]["corrections"]] == [ids[1]]
    page = call_json(gw, "GET", f"{path}?limit=1&before={ids[2]}")[1]["corrections"]
    assert [c["id"] for c in page] == [ids[1]]
    status, body = call_json(gw, "GET", f"{path}?user={bob_name}", token=ada)
    assert (status, body["error"]) == (403, "not_yours")
    for query in ("limit=0", "limit=501", "limit=x", "before=-1", "user=Bob", "users=x"):
        status, body = call_json(gw, "GET", f"{path}?{query}")
        assert (status, body["error"]) == (400, "bad_query"), query
    assert call_json(gw, "GET", path, token=None)[0] == 401


# Disowning ------------------------------------------------------------------------------------------------


def test_a_disowned_users_token_is_refused_and_their_corrections_are_gone(gw: Gateway, pg: Settings,
                                                                           city: db.City) -> None:
    ada_name, ada = add_user(gw)
    _, bob = add_user(gw)
    shared, own = frame(), frame()
    _, _, on_shared = post_correction(gw, city.name, {"action": "box", "sight": "Red Gate", "box": BOX}, shared,
                                      token=ada)
    post_correction(gw, city.name, {"action": "no-sight"}, own, token=ada)
    _, _, bobs = post_correction(gw, city.name, {"action": "no-sight"}, shared, token=bob)
    assert stored(pg, city.id) == (3, 3, 2)

    status, body = call_json(gw, "DELETE", f"/api/users/{ada_name}", token=bob)
    assert (status, body["error"]) == (403, "operator_only")
    status, body = call_json(gw, "DELETE", f"/api/users/{ada_name}")
    assert status == 200 and body == {**body, "name": ada_name, "corrections_deleted": 2, "images_deleted": 1}
    # Bob's correction and the frame it uses stay; Ada's own frame went.
    assert stored(pg, city.id) == (1, 1, 1)
    assert rows(pg, "SELECT id, image_id FROM corrections WHERE city_id = %s", city.id) == [
        (bobs["id"], on_shared["image_id"])]
    status, _, refused = post_correction(gw, city.name, {"action": "keep"}, frame(), token=ada)
    assert (status, refused["error"]) == (403, "disowned")
    status, body = call_json(gw, "GET", f"/api/cities/{city.name}/corrections", token=ada)
    assert (status, body["error"]) == (403, "disowned")
    status, body = call_json(gw, "DELETE", f"/api/users/{ada_name}")  # again: nothing left to delete
    assert status == 200 and (body["corrections_deleted"], body["images_deleted"]) == (0, 0)
    status, body = call_json(gw, "POST", "/api/users", {"name": ada_name})  # the name stays taken
    assert (status, body["error"]) == (409, "user_exists")
    status, body = call_json(gw, "DELETE", "/api/users/nobody-" + uuid.uuid4().hex[:8])
    assert (status, body["error"]) == (404, "unknown_user")


# The rate limit -----------------------------------------------------------------------------------------


def test_more_than_the_limit_a_minute_gets_429_with_retry_after(gw: Gateway, pg: Settings, city: db.City) -> None:
    _, ada = add_user(gw)
    _, bob = add_user(gw)
    # Every correction sent counts, stored or refused: half of these are malformed.
    for i in range(LIMIT):
        status, _, body = post_correction(gw, city.name, {"action": "keep"} if i % 2 else b"{", frame(), token=ada)
        assert status == (201 if i % 2 else 400), body
    before = stored(pg, city.id)
    status, headers, body = post_correction(gw, city.name, {"action": "keep"}, frame(), token=ada)
    assert (status, body["error"]) == (429, "rate_limited"), body
    assert 1 <= int(headers["Retry-After"]) <= 60 / LIMIT + 1
    assert stored(pg, city.id) == before
    # Per credential: another user is not held back.
    status, _, body = post_correction(gw, city.name, {"action": "keep"}, frame(), token=bob)
    assert status == 201, body


def test_the_bucket_allows_a_burst_then_one_every_60_over_n_seconds() -> None:
    now = [100.0]
    limiter = RateLimiter(6, clock=lambda: now[0], max_keys=2)
    assert [limiter.take("a") for _ in range(6)] == [0.0] * 6
    assert limiter.take("a") == pytest.approx(10.0) and limiter.retry_after(limiter.take("a")) == "10"
    now[0] += 9.9
    assert limiter.take("a") > 0 and limiter.take("b") == 0.0
    now[0] += 0.2
    assert limiter.take("a") == 0.0 and limiter.take("a") > 0  # one token back after 10 s, no more
    now[0] += 3600
    limiter.take("c")  # past max_keys: the buckets that refilled are forgotten
    assert set(limiter._buckets) == {"c"}
    assert [limiter.take("a") for _ in range(7)].count(0.0) == 6  # a full burst again, never more


# Refusals store nothing -----------------------------------------------------------------------------------


def _too_large() -> bytes:
    return jpeg((1, 2, 3)) + bytes(400_001)  # the test gateway's GATEWAY_MAX_UPLOAD_BYTES is 400000


KEEP = {"action": "keep"}
REFUSED = [
    pytest.param(b"{not json", "frame", 400, "bad_json", id="bad-json"),
    pytest.param(b'["keep"]', "frame", 400, "bad_correction", id="not-an-object"),
    pytest.param({"action": "keep", "boxes": []}, "frame", 400, "bad_correction", id="unknown-field"),
    pytest.param({"sight": "Red Gate"}, "frame", 400, "missing_field", id="no-action"),
    pytest.param({"action": "delete"}, "frame", 400, "unknown_action", id="unknown-action"),
    pytest.param({"action": "box", "box": BOX}, "frame", 400, "missing_field", id="box-without-sight"),
    pytest.param({"action": "confirm", "sight": "Red Gate"}, "frame", 400, "missing_field", id="without-box"),
    pytest.param({"action": "box", "sight": "Red Gate", "box": [0.5, 0.2, 0.4, 0.9]}, "frame", 400, "bad_box",
                 id="box-inverted"),
    pytest.param({"action": "box", "sight": "Red Gate", "box": [0, 0, 1.2, 1]}, "frame", 400, "bad_box",
                 id="box-outside"),
    pytest.param({"action": "box", "sight": "Red Gate", "box": [0.5, 0.2, 0.50000001, 0.9]}, "frame", 400,
                 "bad_box", id="box-empty-in-single-precision"),
    pytest.param({"action": "box", "sight": "Red Gate", "box": [0, 0, 1]}, "frame", 400, "bad_box",
                 id="box-of-three"),
    pytest.param({"action": "box", "sight": "Red Gate", "box": [0, 0, True, 1]}, "frame", 400, "bad_box",
                 id="box-of-bool"),
    pytest.param({"action": "box", "sight": "", "box": BOX}, "frame", 400, "bad_sight", id="empty-sight"),
    pytest.param({"action": "no-sight", "sight": "Red Gate"}, "frame", 400, "unexpected_field",
                 id="no-sight-with-sight"),
    pytest.param({"action": "keep", "model_version": 0}, "frame", 400, "bad_model_version", id="model-version"),
    pytest.param({"action": "keep", "shown": [{"sight": "x"}]}, "frame", 400, "bad_shown", id="shown"),
    pytest.param({"action": "keep", "shown": [{"sight": "x", "score": 0.5, "box": [0, 0, 1, 1.5]}]}, "frame", 400,
                 "bad_shown", id="shown-box"),
    pytest.param({"action": "keep", "shown": [{"sight": "x", "score": 0.5, "box": BOX}] * 51}, "frame", 400,
                 "bad_shown", id="shown-too-many"),
    pytest.param({"action": "wrong-sight", "sight": "Eiffel Tower", "box": BOX}, "frame", 422, "unknown_sight",
                 id="unknown-sight"),
    pytest.param(KEEP, "none", 400, "frame_required", id="no-frame"),
    pytest.param(KEEP, "both", 400, "frame_or_image_id", id="frame-and-image-id"),
    pytest.param(KEEP, "not-an-image", 400, "not_an_image", id="not-an-image"),
    pytest.param(KEEP, "too-large", 413, "too_large", id="frame-too-large"),
    pytest.param(KEEP, "no-token", 401, "token_required", id="no-token"),
    pytest.param(KEEP, "wrong-token", 403, "bad_token", id="wrong-token"),
    pytest.param(KEEP, "not-multipart", 415, "multipart_required", id="not-multipart"),
    pytest.param(KEEP, "unknown-city", 404, "unknown_city", id="unknown-city"),
]


@pytest.mark.parametrize("correction, how, expected, code", REFUSED)
def test_refused_corrections_say_why_and_store_nothing(gw: Gateway, pg: Settings, city: db.City,
                                                      correction: Any, how: str, expected: int, code: str) -> None:
    _, token = add_user(gw)  # a user each: refusals count against the rate limit too
    before = stored(pg, city.id)
    name = city.name + " nowhere" if how == "unknown-city" else city.name
    token_sent = {"no-token": None, "wrong-token": "ssu_" + "x" * 43}.get(how, token)
    if how == "not-multipart":
        status, _, data = call(gw, "POST", f"/api/cities/{name}/corrections", json.dumps(correction).encode(),
                               token=token_sent)
        status, body = status, json.loads(data)
    else:
        image = {"none": None, "not-an-image": b"not an image at all", "too-large": _too_large()}.get(how, frame())
        status, _, body = post_correction(gw, name, correction, image, token=token_sent,
                                          image_id=1 if how == "both" else None)
    assert (status, body["error"]) == (expected, code), body
    assert body["message"]
    assert stored(pg, city.id) == before


# The loop takes them in -----------------------------------------------------------------------------------


def test_a_corrections_label_is_a_change_event_with_its_kind(gw: Gateway, city: db.City, topic_reader) -> None:
    reader = topic_reader(change_topic("labels"), from_now=True)
    _, token = add_user(gw)
    _, _, body = post_correction(gw, city.name, {"action": "box", "sight": "Blue Hall", "box": BOX}, frame(),
                                 token=token)
    label_id = body["label_id"]

    def event(op: str):  # noqa: ANN202
        def until(msgs: list[dict[str, Any]]) -> bool:
            return any(m["value"] and m["value"]["op"] == op and parse_change("labels", m["value"]).key == label_id
                       for m in msgs)
        return until

    created = next(parse_change("labels", m["value"]) for m in reader.collect(event("c"), timeout=60)
                   if m["value"] and parse_change("labels", m["value"]).key == label_id)
    assert created.after["kind"] == "user-box" and created.after["correction_id"] == body["id"]
    assert created.after["x_min"] == pytest.approx(BOX[0]) and created.after["weak"] is False
    assert call(gw, "DELETE", f"/api/cities/{city.name}/corrections/{body['id']}", token=token)[0] == 204
    reader.collect(event("d"), timeout=60)  # undo reaches the loop as a delete


# The local command ----------------------------------------------------------------------------------------


def test_sightscan_user_add_and_disown(gw: Gateway, pg: Settings, city: db.City, monkeypatch, capsys) -> None:
    from localsystem import cli

    for key, value in pg.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(cli.log, "setup", lambda *a, **kw: None)  # keep pytest's log capture
    name = f"cli-{uuid.uuid4().hex[:8]}"
    assert cli.main(["user", "add", name]) == 0
    added = json.loads(capsys.readouterr().out)
    assert added["name"] == name and added["token"].startswith("ssu_")
    status, _, body = post_correction(gw, city.name, {"action": "no-sight"}, frame(), token=added["token"])
    assert status == 201 and body["user"] == name, body
    assert cli.main(["user", "add", name]) == 1 and "already a user" in capsys.readouterr().err
    assert cli.main(["user", "add", "Not A Name"]) == 2 and "not a user name" in capsys.readouterr().err

    assert cli.main(["user", "disown", name]) == 0
    disowned = json.loads(capsys.readouterr().out)
    assert (disowned["name"], disowned["corrections_deleted"], disowned["images_deleted"]) == (name, 1, 1)
    assert stored(pg, city.id) == (0, 0, 0)
    status, _, body = post_correction(gw, city.name, {"action": "keep"}, frame(), token=added["token"])
    assert (status, body["error"]) == (403, "disowned")
    assert cli.main(["user", "disown", "nobody-" + uuid.uuid4().hex[:6]]) == 1
