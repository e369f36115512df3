"""The city state on its own (streams/state.py): counts kept up to date fact by fact equal a recount, whatever the
order, the redeliveries and the store/reload cycles; labelling requests are batched, lingering ones go out. The
layouts of earlier versions are read in test_old_state_layouts.py."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from streams.state import CityState, Summary, Thresholds

LIMITS = Thresholds(min_labelled_images=4, min_images_per_label=2, retrain_growth_fraction=0.5, epochs=3,
                    labelling_batch_size=4, labelling_linger_s=2.0)


def city(lsn: int = 1, status: str = "requested") -> dict[str, Any]:
    return {"kind": "city", "id": 1, "city_id": 1, "lsn": lsn, "present": True, "name": "X", "status": status}


def image(i: int, lsn: int, present: bool = True, sight: int | None = 7) -> dict[str, Any]:
    return {"kind": "image", "id": i, "city_id": 1, "lsn": lsn, "present": present, "sight_id": sight}


def label(i: int, lsn: int, image_id: int, sight: int | None, present: bool = True) -> dict[str, Any]:
    return {"kind": "label", "id": i, "city_id": 1, "lsn": lsn, "present": present, "image_id": image_id,
            "sight_id": sight}


class Table:
    """What the worker's table does for a city: stores its records as JSON and hands them back."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def store(self, state: CityState) -> None:
        for suffix, value in state.records():
            self.data[f"1/{suffix}" if suffix else "1"] = json.loads(json.dumps(value))

    def load(self) -> CityState:
        summary = self.data.get("1")
        return CityState(1, None if summary is None else Summary.from_json(summary),
                         lambda suffix: self.data.get(f"1/{suffix}"))


def recount(facts: list[dict[str, Any]]) -> dict[str, Any]:
    """The marts from scratch: the latest version of each row, counted as SQL would."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for f in facts:
        key = (f["kind"], f["id"])
        if key not in latest or f["lsn"] > latest[key]["lsn"]:
            latest[key] = f
    images = {i for (k, i), f in latest.items() if k == "image" and f["present"]}
    outcomes: dict[int, set[int | None]] = {}
    for (k, _), f in latest.items():
        if k == "label" and f["present"] and f["image_id"] in images:
            outcomes.setdefault(f["image_id"], set()).add(f["sight_id"])
    per_sight: dict[int, int] = {}
    for sights in outcomes.values():
        for s in sights - {None}:
            per_sight[s] = per_sight.get(s, 0) + 1
    return {"images": len(images), "labelled_images": sum(1 for s in outcomes.values() if s - {None}),
            "no_landmark_images": sum(1 for s in outcomes.values() if s == {None}), "models": 0,
            "per_sight": per_sight}


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
        else:
            facts.append(label(draw(st.integers(1, 10)), lsn, draw(st.integers(1, 8)),
                               draw(st.sampled_from([7, 8, None])), present=draw(st.integers(0, 4)) > 0))
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
    c = state.counts()
    expected = recount(delivered)
    per_sight = {s: n for s, n in c.pop("per_sight").items() if n}
    assert {**c, "per_sight": per_sight} == expected


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
    assert set(written) == {"", "images/3", "labels/3"}  # 1001 // 256: one bucket of each kind
    assert len(json.dumps(written[""])) < 600  # the summary does not grow with the city's images
    assert len(written["images/3"]) == 256 - (1024 - 1001) + 1  # ids 768..1001 of this city
    assert state.counts()["per_sight"] == {7: 1000, 8: 1}
