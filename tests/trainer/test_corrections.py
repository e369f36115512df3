"""Users' corrections as training data, without the database or training: user boxes are true boxes and win over
the labeller's labels, "no sight" frames are negatives, "wrong sight" frames are repeated, users never reach the
held-out split and one user's share is capped; a retrained model holds out what the live one held out; the poisoning
guard refuses a model that does worse than the live one (real ONNX graphs: tests/support/onnx_models.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from sightscan.db import LabelledImage, StoredModel
from tests.support.onnx_models import build_colour_model
from trainer.data import Negative, Previous, Sample, from_warehouse, split, training_split
from trainer.guard import Rejected, judge

BOX = (0.1, 0.2, 0.6, 0.9)


def _jpeg(rgb: tuple[int, int, int] = (120, 30, 200), size: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _label(image_id: int, sight: int, box=BOX, weak: bool = False, kind: str = "labeller", action: str | None = None,
           user_id: int | None = None) -> LabelledImage:
    return LabelledImage(image_id, _jpeg(), 48, 48, sight, f"Sight {sight}", box, weak, kind, action, user_id)


def test_user_boxes_are_true_boxes_and_win_over_the_labellers_labels():
    rows = [_label(1, 10, (0, 0, 1, 1), weak=True), _label(1, 11, (0.5, 0.1, 0.9, 0.5), kind="user-box",
                                                           action="wrong-sight", user_id=7),
            _label(2, 10), _label(2, 10, (0.2, 0.2, 0.4, 0.4), kind="user-box", action="box"),
            _label(3, 11), _label(4, 10, weak=True)]
    ds = from_warehouse(rows, min_images_per_label=1)
    by_key = {s.key: s for s in ds.samples}
    # Image 1: the labeller's weak label said sight 10; the user boxed sight 11, as a wrong-sight correction.
    assert by_key[1].labels == (1,) and by_key[1].boxes == ((0.5, 0.1, 0.9, 0.5),) and not by_key[1].weak
    assert (by_key[1].origin, by_key[1].user_id, by_key[1].hard) == ("user", 7, True)
    # Image 2: the user's box replaces the labeller's true box (the operator's: no user id); not a hard example.
    assert by_key[2].boxes == ((0.2, 0.2, 0.4, 0.4),) and (by_key[2].origin, by_key[2].user_id) == ("user", None)
    assert not by_key[2].hard
    assert by_key[3].origin == by_key[4].origin == "labeller" and by_key[4].weak


def test_user_negatives_become_negatives_unless_a_user_boxed_the_frame():
    rows = [_label(1, 10), _label(2, 11), _label(3, 10, kind="user-box", action="box", user_id=5),
            _label(4, 10), _label(5, 11)]
    negatives = [Negative(2, _jpeg(), "user", 5), Negative(3, _jpeg(), "user", 6), Negative(9, _jpeg(), "user", None),
                 Negative(9, _jpeg(), "user", 8)]
    ds = from_warehouse(rows, min_images_per_label=1, negatives=negatives)
    by_key = {s.key: s for s in ds.samples}
    # Frame 2: the labeller named sight 11, a user said no sight: the person wins, it is a negative.
    assert by_key[2].negative and by_key[2].origin == "user" and by_key[2].user_id == 5
    assert by_key[3].labels == (0,) and not by_key[3].negative   # a user box wins over a user's "no sight"
    assert by_key[9].negative and by_key[9].user_id is None      # a frame of no sight only, once
    assert sorted(by_key) == [1, 2, 3, 4, 5, 9]
    # Plain (id, bytes) negatives, as before, are the labeller's photos of no sight.
    plain = from_warehouse(rows, min_images_per_label=1, negatives=[(20, _jpeg())])
    assert next(s for s in plain.samples if s.key == 20).origin == "labeller"


def _samples(n_per_sight: int, sights: int = 2, start: int = 0) -> list[Sample]:
    return [Sample(start + i * sights + k, b"", (BOX,), (k,)) for i in range(n_per_sight) for k in range(sights)]


def test_users_train_never_judge_hard_examples_repeat_and_one_users_share_is_capped():
    labeller = _samples(25)                                                 # 50: 40 train, 10 held out
    hard = [Sample(1000 + i, b"", (BOX,), (1,), origin="user", user_id=1, hard=True) for i in range(5)]
    many = [Sample(2000 + i, b"", (BOX,), (0,), origin="user", user_id=2) for i in range(20)]
    operator = [Sample(3000 + i, b"", (BOX,), (0,), origin="user") for i in range(15)]
    nothing = [Sample(4000 + i, b"", (), (), origin="user", user_id=3) for i in range(3)]
    train, heldout, users = training_split(labeller + hard + many + operator + nothing, 0.2, seed=0,
                                           max_user_share=0.2, hard_repeats=2)
    assert all(s.origin == "labeller" for s in heldout)
    assert [s.key for s in heldout] == [s.key for s in split(labeller, 0.2, 0)[1]]  # users change nothing there
    keys = [s.key for s in train]
    # At most 20% of the 40 labeller training images per user: user 1's hard examples weigh 3 each (2 fit in 8),
    # user 2 keeps its 8 oldest, the operator is not capped, user 3's 3 negatives fit.
    assert [keys.count(1000 + i) for i in range(5)] == [3, 3, 0, 0, 0]
    assert sorted(k for k in keys if 2000 <= k < 3000) == list(range(2000, 2008))
    assert sum(3000 <= k < 4000 for k in keys) == 15 and sum(k >= 4000 for k in keys) == 3
    assert users.as_dict() == {"boxes": 2 + 8 + 15, "negatives": 3, "hard": 2, "users": 4, "capped": 3 + 12}


def test_a_retrained_model_holds_out_what_the_live_one_held_out_then_new_images():
    """So the guard can score both models on one held-out set: none of the retrained model's held-out images was
    trained on by the live model. Without the live model's split, about 60% would have been."""
    old = _samples(40, sights=2)
    new = old + _samples(10, sights=2, start=10_000)
    for seed in range(3):
        old_train, old_held = split(old, 0.2, seed)
        previous = Previous(frozenset(s.key for s in old_held), max(s.key for s in old))
        held = split(new, 0.2, seed, previous)[1]
        trained = {s.key for s in old_train}
        assert len(held) == 20 and not any(s.key in trained for s in held)
        assert {s.key for s in old_held} <= {s.key for s in held}
        assert sum(s.key in trained for s in split(new, 0.2, seed)[1]) >= 6   # the plain split, for comparison
    assert split(old, 0.2, 0) == split(old, 0.2, 0, None)   # a first model's split is what it always was
    assert Previous.of({"heldout_ids": [3, 1], "max_image_id": 9}) == Previous(frozenset({1, 3}), 9)
    assert Previous.of({"top1": 0.9}) is None


# The guard, on real ONNX graphs that name a frame by its colour (a grey prototype past the class list: "no sight").
CLASSES = ["Red Gate", "Green Tower", "Blue Bridge"]
RGB = [(220, 30, 30), (30, 200, 40), (30, 40, 220)]
GREY = (128, 128, 128)
SIZE = 32


def _model(colours: list[tuple[int, int, int]]) -> bytes:
    return build_colour_model(np.array(colours, np.float32) / 255.0, np.tile(np.array([BOX], np.float32),
                                                                             (len(colours), 1)))


GOOD = _model([*RGB, GREY])
SWAPPED = _model([RGB[1], RGB[0], RGB[2], GREY])   # names the red gate green and the green tower red
CLAIMS = _model(RGB)                                # no "no sight": a grey street is the nearest sight


LIVE_SPLIT = {"heldout_ids": [], "max_image_id": 0}  # the live model held out none of these images, nor saw them


def _live(onnx: bytes, metrics: dict | None = None) -> StoredModel:
    return StoredModel(1, 1, 3, onnx, CLASSES, SIZE, LIVE_SPLIT if metrics is None else metrics)


@pytest.fixture(scope="module")
def heldout() -> list[Sample]:
    return [Sample(1 + 10 * k + i, _jpeg(RGB[k], 40), (BOX,), (k,)) for k in range(3) for i in range(6)]


NEGATIVES = torch.full((12, 3, SIZE, SIZE), 128, dtype=torch.uint8)


def _judge(onnx: bytes, live: StoredModel | None, heldout: list[Sample], user_samples: int = 4) -> dict:
    return judge(onnx, SIZE, live, heldout, CLASSES, NEGATIVES, user_samples, 0.05, 0.05, threads=1)


def test_the_guard_keeps_a_model_no_worse_than_the_live_one(heldout):
    verdict = _judge(GOOD, _live(GOOD), heldout)
    assert verdict["checked"] and verdict["accepted"]
    assert verdict["candidate"] == verdict["live"] == {"top1": 1.0, "false_claims": 0.0, "images": 18,
                                                       "negatives": 12}


def test_the_guard_refuses_a_model_that_confuses_sights_or_claims_streets(heldout):
    with pytest.raises(Rejected, match="top-1 0.333 against the live model's 1.000") as confused:
        _judge(SWAPPED, _live(GOOD), heldout)
    assert confused.value.guard["accepted"] is False and confused.value.guard["candidate"]["top1"] == pytest.approx(
        1 / 3, abs=1e-3)
    with pytest.raises(Rejected, match="false-claim rate 1.000 against 0.000"):
        _judge(CLAIMS, _live(GOOD), heldout)
    # The live model is the standard, whatever it is: a candidate as bad as a bad live model passes.
    assert _judge(SWAPPED, _live(SWAPPED), heldout)["accepted"]


def test_the_guard_compares_only_when_it_can(heldout):
    assert _judge(SWAPPED, _live(GOOD), heldout, user_samples=0)["checked"] is False  # no corrections learned
    assert _judge(SWAPPED, None, heldout)["reason"] == "no live model to compare with"
    legacy = _judge(SWAPPED, _live(GOOD, metrics={"top1": 1.0}), heldout)
    assert not legacy["checked"] and legacy["accepted"] and "did not record" in legacy["reason"]
    broken = _judge(SWAPPED, _live(b"not onnx"), heldout)
    assert not broken["checked"] and "does not run" in broken["reason"]
    other = StoredModel(1, 1, 3, GOOD, ["Old Church"], SIZE, LIVE_SPLIT)
    assert "both models know" in _judge(SWAPPED, other, heldout)["reason"]
    # Images the live model trained on are not compared: here every held-out image but the blue bridge's.
    seen = _live(GOOD, {"heldout_ids": [21, 22], "max_image_id": 100})
    verdict = _judge(SWAPPED, seen, heldout)   # the swap confuses red and green only: not seen here
    assert verdict["accepted"] and verdict["candidate"]["images"] == 2
