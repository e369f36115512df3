"""The real google-cloud-vision client (REST transport) against the local Vision server: answers and failures."""

from __future__ import annotations

import hashlib
import time

import pytest

from consumers.vision import VisionClient, VisionRefused, VisionUnavailable
from tests.support.labelling import labeller_settings
from tests.support.vision_server import Landmark, box_landmark


def client(server, **overrides) -> VisionClient:
    return VisionClient(labeller_settings(server.endpoint, **overrides))


def test_landmarks_come_back_per_image_in_order(vision_server):
    fake = vision_server.fake
    fake.know_image(b"first", [box_landmark("Eiffel Tower", (0, 5, 100, 50), mid="/m/02j81", score=0.8,
                                            lat_lng=(48.858, 2.294))])
    fake.know_image(b"third", [Landmark("Louvre", [(1, 2), (3, 4)], 0.5), Landmark("Seine", [(5, 6)], 0.4)])
    answers = client(vision_server, max_results=7).annotate([b"first", b"second", b"third"])
    assert [len(a.landmarks) for a in answers] == [1, 0, 2]
    eiffel = answers[0].landmarks[0]
    assert (eiffel.description, eiffel.mid) == ("Eiffel Tower", "/m/02j81")
    assert eiffel.score == pytest.approx(0.8)
    assert eiffel.vertices == [(0, 5), (100, 5), (100, 50), (0, 50)]  # zeros left out on the wire read back as 0
    assert all(a.error is None for a in answers)
    # One HTTP request carried the three images, asking for LANDMARK_DETECTION with maxResults.
    assert len(fake.requests) == 1
    assert fake.requests[0].images == [hashlib.sha256(d).hexdigest() for d in (b"first", b"second", b"third")]
    assert fake.requests[0].max_results == 7


@pytest.mark.parametrize(("status", "refundable"), [(429, True), (503, True), (500, False)])
def test_quota_and_server_errors_are_passing(vision_server, status, refundable):
    vision_server.fake.fail_next(status)
    with pytest.raises(VisionUnavailable) as caught:
        client(vision_server).annotate([b"x"])
    assert caught.value.refundable is refundable
    assert str(status) in str(caught.value)
    # The client's own retry is off: the labeller reserves budget before each attempt.
    assert [r.status for r in vision_server.fake.requests] == [status]


def test_a_slow_answer_is_a_passing_timeout(vision_server):
    vision_server.fake.slow_next(1.2)
    started = time.monotonic()
    with pytest.raises(VisionUnavailable, match="ReadTimeout") as caught:
        client(vision_server, timeout_s=0.3).annotate([b"x"])
    assert time.monotonic() - started < 1.0
    assert caught.value.refundable is False  # it may have been processed, and billed


@pytest.mark.parametrize("status", [400, 403])
def test_refusals_are_permanent(vision_server, status):
    vision_server.fake.fail_next(status, message="billing is disabled for this project")
    with pytest.raises(VisionRefused, match=str(status)):
        client(vision_server).annotate([b"x"])


def test_per_image_errors_come_with_their_image(vision_server):
    fake = vision_server.fake
    fake.image_error(hashlib.sha256(b"bad").hexdigest(), 3, "Bad image data.")
    fake.image_error(hashlib.sha256(b"busy").hexdigest(), 14, "try again")
    good, bad, busy = client(vision_server).annotate([b"good", b"bad", b"busy"])
    assert good.error is None
    assert bad.error == (3, "Bad image data.") and not bad.transient
    assert busy.error == (14, "try again") and busy.transient


def test_nothing_listening_is_passing():
    from tests.support.vision_server import VisionServer

    server = VisionServer().start()
    endpoint = server.endpoint
    server.stop()
    with pytest.raises(VisionUnavailable, match="ConnectionError"):
        VisionClient(labeller_settings(endpoint)).annotate([b"x"])


def test_more_than_16_images_is_a_programming_error(vision_server):
    with pytest.raises(ValueError, match="1..16"):
        client(vision_server).annotate([b"x"] * 17)
