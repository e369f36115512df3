"""The city-state layouts of earlier versions (streams/old_state_layouts.py), each read and converted to the same
state in the current layout. Delete this file with that module in 0.4.0."""

from __future__ import annotations

from streams.state import CityState, Thresholds
from tests.support.city_facts import Table, city, image, label

LIMITS = Thresholds(min_labelled_images=4, min_images_per_label=2, retrain_growth_fraction=0.5, epochs=3,
                    labelling_batch_size=4, labelling_linger_s=2.0)


NO_CORRECTIONS = {"user_boxes": 0, "user_negatives": 0}  # the older layouts predate corrections


def test_layout_1_a_whole_city_from_before_the_outbox_converts_to_the_same_state():
    before_the_outbox = {  # no "pending"
        "city_id": 1, "city": {"lsn": 1, "present": True, "name": "X", "status": "labelling"},
        "images": {"1": [2, True, 7], "2": [3, True, 7], "3": [4, True, 7]}, "labels": {"9": [5, True, 1, 7]},
        "models": {}, "sights": {"7": [1, True, "Tower"]}, "max_lsn": 5,
        "cmd": {"crawl": True, "label_seq": 1, "outstanding": {"2": "label-1-1"}, "train_seq": 0,
                "train_outstanding": False, "trained_on": 0}}
    state = CityState.from_legacy(before_the_outbox)
    assert state.summary.pending == []
    assert state.counts() == {"images": 3, "labelled_images": 1, "no_landmark_images": 0, "models": 0,
                              "per_sight": {7: 1}, **NO_CORRECTIONS, "per_sight_user_boxes": {7: 0}}
    assert state.image(2).request == "label-1-1"  # in its request still
    assert state.summary.waiting == [3]            # no label, no request: waits for the next one
    assert not state.apply(label(9, 5, 1, 7))      # a duplicate, known by its LSN
    table = Table()
    table.store(state)
    assert set(table.data) == {"1", "1/redo/1", "1/images/0", "1/labels/0"} and table.data["1"]["layout"] == 2
    again = table.load()
    assert again.counts() == state.counts() and again.image(2).request == "label-1-1"
    due = again.due_commands(LIMITS, now_ms=again.summary.waiting_since_ms + 2000)
    assert [(c["request_id"], c["image_ids"]) for k, c in due if k == "labelling"] == [("label-1-2", [3])]


def test_layout_2_a_whole_city_value_converts_to_the_same_state():
    legacy = {"city_id": 1, "city": {"lsn": 1, "present": True, "name": "X", "status": "labelling"},
              "images": {"1": [2, True, 7], "2": [3, True, 8], "3": [4, True, None], "4": [5, False, 7]},
              "labels": {"9": [6, True, 1, 7], "10": [7, True, 3, None], "11": [8, False, 2, 8]},
              "models": {"5": [9, True, 1]}, "sights": {"7": [1, True, "Tower"], "8": [1, True, "Gate"]},
              "max_lsn": 9, "pending": [["crawl", {"request_id": "crawl-1"}]],
              "cmd": {"crawl": True, "label_seq": 1, "outstanding": {"2": "label-1-1"}, "train_seq": 0,
                      "train_outstanding": False, "trained_on": 0}}
    state = CityState.from_legacy(legacy)
    assert state.counts() == {"images": 3, "labelled_images": 1, "no_landmark_images": 1, "models": 1,
                              "per_sight": {7: 1, 8: 0}, **NO_CORRECTIONS, "per_sight_user_boxes": {7: 0, 8: 0}}
    assert state.summary.pending == [("crawl", {"request_id": "crawl-1"})]
    assert state.summary.waiting == []            # image 2 is in request label-1-1 still
    table = Table()
    table.store(state)
    again = table.load()
    assert again.counts() == state.counts() and again.image(2).request == "label-1-1"
    assert set(table.data) == {"1", "1/redo/1", "1/images/0", "1/labels/0"}
    assert set(table.data["1/images/0"]) == {"1", "2", "3", "4"} and set(table.data["1/labels/0"]) == {"9", "10", "11"}


def test_layout_3_records_stored_one_per_key_are_still_read():
    table = Table()
    state = CityState(1)
    state.apply(city())
    state.apply(image(5, 2))
    state.apply(label(9, 3, 5, 7))
    summary = dict(state.records())[""]
    # The previous version's layout: one key per record.
    table.data = {"1": summary, "1/i/5": [2, True, 7, "", {"9": 7}], "1/l/9": [3, True, 5, 7]}
    state = table.load()
    assert not state.apply(image(5, 2)) and not state.apply(label(9, 3, 5, 7))  # duplicates, known by LSN
    state.apply(label(9, 4, 5, 8))  # the label now names another sight
    table.store(state)
    again = table.load()
    assert again.counts()["per_sight"] == {8: 1} and again.image(5).labels == {"9": 8}
    assert table.data["1/labels/0"]["9"] == [4, True, 5, 8]
