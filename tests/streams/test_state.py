"""The city state on its own (streams/state.py): counts kept up to date fact by fact equal a recount, whatever the
order, the redeliveries and the store/reload cycles, corrections (user boxes and user negatives) included;
labelling requests are batched, lingering ones go out; training requests follow the thresholds, corrections
included, and a failed or rejected training waits for more data. The layouts of earlier versions are read in
test_old_state_layouts.py."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from streams.state import CityState, Thresholds
from tests.support.city_facts import Table, city, image, label, model, outcome, sight

LIMITS = Thresholds(min_labelled_images=4, min_images_per_label=2, retrain_growth_fraction=0.5, epochs=3,
                    labelling_batch_size=4, labelling_linger_s=2.0, retrain_min_corrections=3)
KINDS = ("labeller", "user-box", "user-negative")


def recount(facts: list[dict[str, Any]]) -> dict[str, Any]:
    """The marts from scratch: the latest version of each row, counted as SQL would (docs/corrections.md): an image
    is labelled when a label of any kind names a sight; "no landmark" when none does and the labeller found none
    (a user negative alone is neither); user boxes and user negatives are counted one per label."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for f in facts:
        key = (f["kind"], f["id"])
        if key not in latest or f["lsn"] > latest[key]["lsn"]:
            latest[key] = f
    images = {i for (k, i), f in latest.items() if k == "image" and f["present"]}
    outcomes: dict[int, list[tuple[str, int | None]]] = {}
    for (k, _), f in latest.items():
        if k == "label" and f["present"] and f["image_id"] in images:
            outcomes.setdefault(f["image_id"], []).append((f["label_kind"], f["sight_id"]))
    per_sight: dict[int, int] = {}
    per_sight_user_boxes: dict[int, int] = {}
    labelled = no_landmark = user_boxes = user_negatives = 0
    for labels in outcomes.values():
        sights = {s for _, s in labels} - {None}
        labelled += bool(sights)
        no_landmark += not sights and ("labeller", None) in labels
        for s in sights:
            per_sight[s] = per_sight.get(s, 0) + 1
        for kind, s in labels:
            user_boxes += kind == "user-box"
            user_negatives += kind == "user-negative"
            if kind == "user-box":
                per_sight_user_boxes[s] = per_sight_user_boxes.get(s, 0) + 1
    return {"images": len(images), "labelled_images": labelled, "no_landmark_images": no_landmark, "models": 0,
            "per_sight": per_sight, "user_boxes": user_boxes, "user_negatives": user_negatives,
            "per_sight_user_boxes": per_sight_user_boxes}


def nonzero(counts: dict[str, Any]) -> dict[str, Any]:
    """counts() lists every present sight, with 0 where it has nothing; a recount lists only what it found."""
    return {k: {s: n for s, n in v.items() if n} if isinstance(v, dict) else v for k, v in counts.items()}


# A history: rows changed several times (each change a higher LSN), delivered in any order across rows, with
# redeliveries; and, at random points, the state stored and loaded again (a worker restart).
@st.composite
def histories(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[bool]]:
    lsn, facts = 1, [city()]
    for _ in range(draw(st.integers(1, 40))):
        lsn += 1
        if draw(st.booleans()):
            facts.append(image(draw(st.integers(1, 8)), lsn, present=draw(st.integers(0, 4)) > 0,
                               sight=draw(st.sampled_from([7, 8, None]))))
        else:  # each change of a label may give it another kind (an update), in the shapes the schema allows
            kind = draw(st.sampled_from(KINDS))
            sights = {"labeller": [7, 8, None], "user-box": [7, 8], "user-negative": [None]}[kind]
            facts.append(label(draw(st.integers(1, 10)), lsn, draw(st.integers(1, 8)), draw(st.sampled_from(sights)),
                               present=draw(st.integers(0, 4)) > 0, kind=kind))
    delivered = draw(st.permutations(facts))
    delivered += draw(st.lists(st.sampled_from(facts), max_size=10))  # redeliveries
    restarts = draw(st.lists(st.booleans(), min_size=len(delivered), max_size=len(delivered)))
    return delivered, restarts


@hsettings(max_examples=300, deadline=None)
@given(histories())
def test_counts_kept_fact_by_fact_equal_a_recount(history):
    delivered, restarts = history
    table, state, requested = Table(), CityState(1), set()
    for fact, restart in zip(delivered, restarts, strict=True):
        before = state.label(fact["id"]) if fact["kind"] == "label" else None
        if state.apply(fact) and fact["kind"] != "city":  # an outcome, or a delete, ends the image's request
            requested -= {fact["id"] if fact["kind"] == "image" else fact["image_id"]}
            requested -= {before.image_id} if before is not None else set()
        for kind, command in state.due_commands(LIMITS, now_ms=0):
            if kind == "labelling":
                for image_id in command["image_ids"]:
                    assert image_id not in requested, f"image {image_id} in two requests at once"
                    assert state.image(image_id).present and not state.image(image_id).labels
                    requested.add(image_id)
        if restart:
            table.store(state)
            state = table.load()
    assert nonzero(state.counts()) == recount(delivered)


# A worker killed while it stores a batch: some of its changelog records reached Kafka (a prefix, in the order they
# were sent) and the rest did not; the next owner loads what is there and gets every fact since the last complete
# store again (their offsets were not committed). CI once saw a survivor count a killed worker's images twice.
@hsettings(max_examples=300, deadline=None)
@given(histories(), st.data())
def test_a_store_cut_short_by_a_kill_and_the_replay_count_each_fact_once(history, data):
    delivered, stores = history
    table, state, since_stored = Table(), CityState(1), []
    for fact, store in zip(delivered, stores, strict=True):
        state.apply(fact)
        since_stored.append(fact)
        if not store:
            continue
        if data.draw(st.booleans(), label="killed while storing"):
            table.store(state, crash_after=data.draw(st.integers(0, 4), label="records that reached Kafka"))
            state = table.load()
            for again in since_stored:
                state.apply(again)
        else:
            table.store(state)
            state = table.load()
            since_stored = []
    assert nonzero(state.counts()) == recount(delivered)
    table.store(state)
    assert nonzero(table.load().counts()) == recount(delivered)


def test_redelivered_facts_change_nothing():
    state = CityState(1)
    facts = [city(), image(5, 2), label(9, 3, 5, 7), image(6, 4), image(6, 5, present=False)]
    applied = [state.apply(f) for f in facts + facts]  # everything delivered twice
    assert applied == [True] * 5 + [False] * 5
    c = state.counts()
    assert (c["images"], c["labelled_images"], c["per_sight"]) == (1, 1, {7: 1})


def test_labelling_requests_are_full_batches_and_the_rest_goes_after_the_linger():
    state = CityState(1)
    state.apply(city())
    for i in range(1, 11):
        state.apply(image(i, 1 + i))
    sent = state.due_commands(LIMITS, now_ms=state.summary.waiting_since_ms)
    assert [(c["request_id"], c["image_ids"]) for k, c in sent if k == "labelling"] == [
        ("label-1-1", [1, 2, 3, 4]), ("label-1-2", [5, 6, 7, 8])]
    start = state.summary.waiting_since_ms
    assert state.due_commands(LIMITS, now_ms=start + 1999) == []   # two images wait for the linger
    assert state.linger_deadline_ms(LIMITS) == start + 2000
    late = state.due_commands(LIMITS, now_ms=start + 2000)
    assert [(c["request_id"], c["image_ids"]) for k, c in late if k == "labelling"] == [("label-1-3", [9, 10])]
    assert state.linger_deadline_ms(LIMITS) is None and state.summary.waiting == []
    state.apply(label(1, 20, 1, None))   # an outcome ends the image's request; a re-crawled image waits again
    assert state.image(1).request == "" and state.summary.waiting == []
    state.apply(image(1, 21, present=False))
    state.apply(label(1, 22, 1, None, present=False))  # its labels go with it
    state.apply(image(1, 23))
    assert state.summary.waiting == [1]


def test_a_batch_writes_only_what_it_changed():
    table = Table()
    state = CityState(1)
    state.apply(city())
    for i in range(1, 1001):
        state.apply(image(i, 1 + i))
        state.apply(label(i, 2000 + i, i, 7))
    table.store(state)
    state = table.load()
    state.apply(image(1001, 5000))
    state.apply(label(1001, 5001, 1001, 8))
    written = dict(state.records())
    assert set(written) == {"redo/0", "", "images/3", "labels/3"}  # 1001 // 256: one bucket of each kind
    assert len(json.dumps(written[""])) < 600  # the summary does not grow with the city's images
    assert written["redo/0"]["records"] == {"images/3": {"1001": written["images/3"]["1001"]},
                                            "labels/3": {"1001": written["labels/3"]["1001"]}}
    assert len(written["images/3"]) == 256 - (1024 - 1001) + 1  # ids 768..1001 of this city
    assert state.counts()["per_sight"] == {7: 1000, 8: 1}


def test_corrections_are_counted_by_kind_and_an_undo_takes_them_back():
    state = CityState(1)
    for f in [city(status="live"), sight(7, 2, "Tower"), image(1, 3), label(1, 4, 1, 7),     # the labeller's
              image(2, 5, sight=None), label(2, 6, 2, 7, kind="user-box"),                   # a user's box
              image(3, 7, sight=None), label(3, 8, 3, None, kind="user-negative"),           # a user's "no sight"
              image(4, 9), label(4, 10, 4, None)]:                                           # "no landmark"
        state.apply(f)
    c = state.counts()
    assert (c["labelled_images"], c["no_landmark_images"], c["user_boxes"], c["user_negatives"]) == (2, 1, 1, 1)
    assert c["per_sight"] == {7: 2} and c["per_sight_user_boxes"] == {7: 1}
    assert state.summary.waiting == []  # a frame with a correction is not sent to the labeller
    state.apply(label(3, 11, 3, None, present=False, kind="user-negative"))  # undo
    state.apply(label(2, 12, 2, 7, present=False, kind="user-box"))
    c = state.counts()
    assert (c["labelled_images"], c["no_landmark_images"], c["user_boxes"], c["user_negatives"]) == (1, 1, 0, 0)
    assert c["per_sight"] == {7: 1} and c["per_sight_user_boxes"] == {7: 0}


def _trainable_city() -> tuple[CityState, int]:
    """A city past the first training threshold (4 labelled images, 2 per sight), its request answered by a
    model; returns the state and the next free LSN."""
    state = CityState(1)
    for f in [city(status="live"), sight(7, 2, "Tower"), sight(8, 3, "Gate")]:
        state.apply(f)
    lsn = 10
    for i in range(1, 5):
        state.apply(image(i, lsn))
        state.apply(label(i, lsn + 1, i, 7 + i % 2))
        lsn += 2
    [(kind, first)] = [c for c in state.due_commands(LIMITS, now_ms=0) if c[0] == "training"]
    assert first["reason"] == "threshold" and first["request_id"] == "train-1-1"
    state.apply(model(1, lsn))
    return state, lsn + 1


def _training(state: CityState) -> list[dict[str, Any]]:
    return [c for kind, c in state.due_commands(LIMITS, now_ms=0) if kind == "training"]


def test_corrections_since_the_last_request_ask_for_a_retrain():
    state, lsn = _trainable_city()
    state.apply(label(101, lsn, 1, 8, kind="user-box"))        # a wrong sight corrected on image 1
    state.apply(image(50, lsn + 1, sight=None))
    state.apply(label(102, lsn + 2, 50, None, kind="user-negative"))
    assert _training(state) == []                              # 2 corrections, no growth: not yet
    state.apply(label(102, lsn + 3, 50, None, present=False, kind="user-negative"))  # undone: 1
    state.apply(label(103, lsn + 4, 2, 7, kind="user-box"))
    assert _training(state) == []                              # 2 again
    state.apply(label(104, lsn + 5, 3, 8, kind="user-box"))
    [request] = _training(state)                               # 3 = RETRAIN_MIN_CORRECTIONS
    assert request["reason"] == "corrections" and request["request_id"] == "train-1-2"
    assert request["labelled_images"] == 4                     # the corrected images were labelled already
    assert _training(state) == []                              # one request per crossing
    state.apply(model(2, lsn + 6))
    state.apply(label(105, lsn + 7, 4, 7, kind="user-box"))
    assert _training(state) == []                              # counted from the request: 1 since


def test_a_rejected_or_failed_training_waits_for_more_corrections_instead_of_looping():
    for status in ("rejected", "failed"):
        state, lsn = _trainable_city()
        for n in range(3):
            state.apply(label(200 + n, lsn + n, 1 + n, 7, kind="user-box"))
        [request] = _training(state)
        assert request["reason"] == "corrections"
        assert state.apply(outcome(status, request["request_id"]))
        assert _training(state) == [] and _training(state) == []   # the same data would be refused again
        for n in range(3, 5):
            state.apply(label(200 + n, lsn + n, 1, 8, kind="user-box"))
        assert _training(state) == []
        state.apply(label(210, lsn + 10, 2, 8, kind="user-box"))
        [again] = _training(state)
        assert again["reason"] == "corrections" and again["request_id"] == "train-1-3"


def test_a_summary_and_an_image_stored_before_corrections_read_with_none():
    state = CityState(1)
    for f in [city(), image(5, 2), label(9, 3, 5, 7)]:
        state.apply(f)
    summary = dict(state.records())[""]
    summary["counts"], summary["cmd"] = summary["counts"][:4], summary["cmd"][:5]  # the previous version's
    table = Table()
    table.data = {"1": summary, "1/images/0": {"5": [2, True, 7, "", {"9": 7}]}, "1/labels/0": {"9": [3, True, 5, 7]}}
    again = table.load()
    assert again.counts()["user_boxes"] == 0 and again.summary.cmd.corrections_on == 0
    again.apply(label(10, 4, 5, 7, kind="user-box"))
    table.store(again)
    assert table.data["1/images/0"]["5"] == [2, True, 7, "", {"9": 7, "10": 7}, {"10": "user-box"}]
    assert table.load().counts()["per_sight_user_boxes"] == {7: 1}
