"""The labeller service end to end on the real stack: labelling requests on Kafka -> labels in the warehouse,
through the real Vision client and the local Vision server."""

from __future__ import annotations

import hashlib
import json

import psycopg2
import pytest

from consumers.service import LabellerService
from sightscan import db
from sightscan.topics import command_dead_letter_topic
from tests.support.labelling import (
    costs_of,
    isolated,
    labeller_settings,
    labels_of,
    publish,
    running,
    seed_city,
)
from tests.support.vision_server import Landmark, box_landmark
from tests.support.waiting import wait_until


def _teach(fake, city) -> dict[str, object]:
    """The server's answers for the city's images, with the spellings Vision might use; returns what to expect."""
    imgs = {name: [i for i in city.images if i.sight == name] for name in city.sights}
    lighthouse, gate, arch = imgs["Golden Lighthouse"], imgs["Emperor's Gate"], imgs["Market Arch"]
    for img in lighthouse[:3]:
        fake.know_image(img.data, [box_landmark("GOLDEN LIGHTHOUSE", img.pixel_box, score=0.91)])
    for img in gate:
        fake.know_image(img.data, [box_landmark("Emperors Gate", img.pixel_box, score=0.8)])
    # The first arch photo names it in English with its mid; the next ones in French, same mid.
    fake.know_image(arch[0].data, [box_landmark("Market Arch", arch[0].pixel_box, mid="/m/arch", score=0.7)])
    fake.know_image(arch[1].data, [box_landmark("Arc du Marché", arch[1].pixel_box, mid="/m/arch", score=0.75)])
    # A landmark the crawler did not know of, beside the arch: a new sight, source 'vision'.
    fake.know_image(arch[2].data, [box_landmark("Arc du Marché", arch[2].pixel_box, mid="/m/arch"),
                                   box_landmark("Vision Fountain", (10, 300, 110, 470), mid="/m/fountain",
                                                score=0.6)])
    # Only a degenerate polygon (a line): no usable landmark.
    fake.know_image(arch[3].data, [Landmark("Market Arch", [(10, 10), (300, 10)], 0.9)])
    # A landmark whose description names nothing (sightscan.names): skipped, no sight made, the batch goes on.
    fake.know_image(lighthouse[3].data, [box_landmark("\u200b\u202e", lighthouse[3].pixel_box, score=0.9)])
    return {"no_landmark": {lighthouse[3].id, arch[3].id}, "fountain_image": arch[2].id}


def test_requests_become_labels_and_redelivery_changes_nothing(migrated, label_city, vision_server):
    settings = isolated(migrated)
    city = seed_city(settings, label_city)
    expect = _teach(vision_server.fake, city)
    ids = [i.id for i in city.images]
    service = LabellerService(settings, labeller_settings(vision_server.endpoint))
    with running(service):
        publish(settings, city, ids[:8], seq=1)
        publish(settings, city, ids[8:], seq=2)
        wait_until(lambda: {r.image_id for r in labels_of(settings, city.id)} == set(ids), what="every image labelled")
        rows = labels_of(settings, city.id)

        by_image: dict[int, list] = {}
        for r in rows:
            by_image.setdefault(r.image_id, []).append(r)
        assert all(r.labeller == "google-vision" and not r.weak for r in rows)
        # No landmark: one row, no sight, no box.
        for image_id in expect["no_landmark"]:
            assert [(r.sight_id, r.box) for r in by_image[image_id]] == [(None, None)]
        # Every other image is labelled with its own sight (all spellings merged) and the true box.
        for img in city.images:
            if img.id in expect["no_landmark"]:
                continue
            own = [r for r in by_image[img.id] if r.sight == img.sight]
            assert len(own) == 1, (img.sight, by_image[img.id])
            assert own[0].box == pytest.approx(img.expected_box, abs=1e-6)
            assert 0 < own[0].score <= 1
        # The unknown landmark became a sight of the city, from Vision.
        fountain = [r for r in by_image[expect["fountain_image"]] if r.sight == "Vision Fountain"]
        assert len(fountain) == 1 and fountain[0].box == pytest.approx((10 / 640, 300 / 480, 110 / 640, 470 / 480))
        assert {r.sight for r in rows if r.sight} == {*city.sights, "Vision Fountain"}

        # Billing: 12 images in 2 requests (8 + 4), as reserved.
        costs = costs_of(settings, city.id)
        assert (costs.calls_spent, costs.vision_requests) == (12, 2)
        assert vision_server.fake.images_received == 12

        # Redelivery (same request ids again, e.g. after a crash before the commit): nothing new is sent or written.
        publish(settings, city, ids[:8], seq=1)
        publish(settings, city, ids[8:], seq=2)
        wait_until(lambda: service.worker.handled >= 4, what="the redelivered requests handled")
    assert labels_of(settings, city.id) == rows
    assert vision_server.fake.images_received == 12
    assert costs_of(settings, city.id).calls_spent == 12


def test_missing_images_are_skipped(migrated, label_city, vision_server):
    settings = isolated(migrated)
    city = seed_city(settings, label_city)
    service = LabellerService(settings, labeller_settings(vision_server.endpoint))
    summary = service.handle({"request_id": "r", "city_id": city.id, "image_ids": [city.images[0].id, 987654321]})
    assert (summary["skipped_missing"], summary["labelled_images"], summary["sent_to_vision"]) == (1, 1, 1)
    service.labeller.close()
    service.worker.consumer.close()


def test_a_lost_database_connection_is_replaced(migrated, label_city, vision_server):
    settings = isolated(migrated)
    city = seed_city(settings, label_city)
    service = LabellerService(settings, labeller_settings(vision_server.endpoint))
    command = {"request_id": "r", "city_id": city.id, "image_ids": [city.images[0].id]}
    service.handle({**command, "image_ids": [city.images[1].id]})  # opens the labeller's connection
    with db.transaction(settings) as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (service.labeller._conn.get_backend_pid(),))
    # The worker retries a database error (sightscan.commands); the next attempt reconnects.
    with pytest.raises((psycopg2.OperationalError, psycopg2.InterfaceError)):
        service.handle(command)
    assert service.handle(command)["labelled_images"] == 1
    service.labeller.close()
    service.worker.consumer.close()


def test_quota_unavailable_and_timeouts_are_retried_then_succeed(migrated, label_city, vision_server):
    settings = isolated(migrated)
    city = seed_city(settings, label_city)
    fake = vision_server.fake
    fake.fail_next(429)
    fake.fail_next(503)
    fake.slow_next(1.0)
    images = city.images[:5]
    for img in images:
        fake.know_image(img.data, [box_landmark(img.sight, img.pixel_box)])
    service = LabellerService(settings, labeller_settings(vision_server.endpoint, timeout_s=0.5, max_attempts=5))
    with running(service):
        publish(settings, city, [i.id for i in images])
        wait_until(lambda: len(labels_of(settings, city.id)) == 5, what="labels after retries")
    assert [r.status for r in fake.requests] == [429, 503, 200, 200]  # the third answered, too late (timeout)
    assert {r.sight for r in labels_of(settings, city.id)} == {i.sight for i in images}
    # 429 and 503 were refunded (not billed); the timed-out request may have been billed, so it stays spent.
    assert costs_of(settings, city.id).calls_spent == 10


def test_failures_that_do_not_pass_are_dead_lettered_with_the_reason(migrated, label_city, vision_server,
                                                                     topic_reader):
    settings = isolated(migrated)
    city = seed_city(settings, label_city)
    fake = vision_server.fake
    dead = topic_reader(command_dead_letter_topic(settings.topic_prefix))
    unreadable = city.images[1]
    fake.image_error(hashlib.sha256(unreadable.data).hexdigest(), 3, "Bad image data.")
    service = LabellerService(settings, labeller_settings(vision_server.endpoint, max_attempts=3))
    with running(service):
        # 1. One unreadable image in a request: the others are labelled, the request dead-lettered naming it.
        publish(settings, city, [i.id for i in city.images[:3]], seq=1)
        letters = dead.collect(lambda ms: len(ms) >= 1, timeout=30)
        assert json.loads(letters[0]["value"]["value"])["request_id"] == f"label-{city.id}-1"
        assert f"{unreadable.id}: code 3: Bad image data." in letters[0]["value"]["reason"]
        assert {r.image_id for r in labels_of(settings, city.id)} == {city.images[0].id, city.images[2].id}

        # 2. Vision refuses (403): dead-lettered at once.
        fake.fail_next(403, message="This API method requires billing to be enabled.")
        publish(settings, city, [city.images[3].id], seq=2)
        letters = dead.collect(lambda ms: len(ms) >= 1, timeout=30)  # each collect returns the messages after the last
        assert "403" in letters[0]["value"]["reason"] and "billing" in letters[0]["value"]["reason"]

        # 3. Quota never comes back: retried max_attempts times, then dead-lettered with the last error.
        fake.fail_next(429, times=3)
        publish(settings, city, [city.images[4].id], seq=3)
        letters = dead.collect(lambda ms: len(ms) >= 1, timeout=30)
        assert letters[0]["value"]["reason"].startswith("gave up after 3 attempts")
        assert "429" in letters[0]["value"]["reason"]
    assert [r.status for r in fake.requests][-4:] == [403, 429, 429, 429]
    assert {r.image_id for r in labels_of(settings, city.id)} == {city.images[0].id, city.images[2].id}


def test_a_request_of_any_size_is_labelled_in_vision_sized_batches(migrated, label_city, vision_server):
    """The stream worker batches labelling requests (LABELLING_BATCH_SIZE, or fewer after LABELLING_LINGER_S);
    the labeller takes a request of any size and sends Vision at most its own batch size per call."""
    settings = isolated(migrated)
    city = seed_city(settings, label_city)
    service = LabellerService(settings, labeller_settings(vision_server.endpoint, batch_size=5))
    ids = [i.id for i in city.images]
    assert len(ids) > 10
    service.handle({"request_id": "big", "city_id": city.id, "image_ids": ids})
    assert {r.image_id for r in labels_of(settings, city.id)} == set(ids)
    costs = costs_of(settings, city.id)
    assert costs.calls_spent == len(ids) and costs.vision_requests == -(-len(ids) // 5)
    assert service.handle({"request_id": "one", "city_id": city.id, "image_ids": ids[:1]})["sent_to_vision"] == 0
    service.labeller.close()
    service.worker.consumer.close()
