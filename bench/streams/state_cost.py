"""The city state's cost per event as a city grows: the per-entity layout (streams/state.py) against the
whole-city value it replaced (bench/streams/whole_city_layout.py), measured in the same run.

    .venv/bin/python -m bench.streams.state_cost [--sizes 1000,10000,100000] [--batches 30] [--repeats 3]

A batch is what the marts agent does for one city: load its state from the table, apply the batch's facts
(new images and their labels), derive the due commands and the marts, and serialise what it stores to the
changelog (orjson, as Faust does). No Kafka and no database: this is the state's own cost, the part that grew
with the city.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson

from bench.stats import report
from bench.streams import whole_city_layout as old
from streams.state import CityState, Summary, Thresholds

LIMITS = Thresholds(min_labelled_images=100, min_images_per_label=20, retrain_growth_fraction=0.25, epochs=30)


def facts_for(first_id: int, n: int, lsn: int) -> list[dict[str, Any]]:
    """n new images and a label for each: 2n facts."""
    out: list[dict[str, Any]] = []
    for i in range(first_id, first_id + n):
        sight = 7 + i % 2
        out.append({"kind": "image", "id": i, "city_id": 1, "lsn": lsn + 2 * i, "present": True, "sight_id": sight})
        out.append({"kind": "label", "id": i, "city_id": 1, "lsn": lsn + 2 * i + 1, "present": True,
                    "image_id": i, "sight_id": sight})
    return out


CITY = {"kind": "city", "id": 1, "city_id": 1, "lsn": 1, "present": True, "name": "Bench", "status": "labelling"}


class PerEntity:
    name = "per-entity"

    def __init__(self, size: int) -> None:
        self.table: dict[bytes, Any] = {}
        state = CityState(1)
        state.apply(CITY)
        self._store(state)
        # Grown in the worker's batches (STREAMS_BATCH_SIZE, 300 facts), as a running worker stores a city: one
        # store of the whole city would leave a redo of all of it for the first measured batch to read.
        facts = facts_for(1, size, 10)
        for start in range(0, len(facts), 300):
            state = CityState.load(1, Summary.from_json(self.table[b"1"]),
                                   lambda s: self.table.get(f"1/{s}".encode()))
            for fact in facts[start:start + 300]:
                state.apply(fact)
            state.due_commands(LIMITS)
            self._store(state)

    def _store(self, state: CityState) -> int:
        written = 0
        for suffix, value in state.records():
            key = f"1/{suffix}" if suffix else "1"
            written += len(orjson.dumps(value))  # the changelog record
            self.table[key.encode()] = value
        return written

    def batch(self, facts: list[dict[str, Any]]) -> int:
        state = CityState.load(1, Summary.from_json(self.table[b"1"]), lambda s: self.table.get(f"1/{s}".encode()))
        for fact in facts:
            state.apply(fact)
        state.summary.pending.extend(state.due_commands(LIMITS))
        state.counts()
        return self._store(state)


class WholeCity:
    name = "whole-city"

    def __init__(self, size: int) -> None:
        state = old.CityState(1)
        state.apply(CITY)
        for fact in facts_for(1, size, 10):
            state.apply(fact)
        state.due_commands(LIMITS)
        self.stored = state.to_json()

    def batch(self, facts: list[dict[str, Any]]) -> int:
        state = old.CityState.from_json(self.stored)
        for fact in facts:
            state.apply(fact)
        state.pending.extend(state.due_commands(LIMITS))
        state.counts()
        self.stored = state.to_json()
        return len(orjson.dumps(self.stored))


def measure(layout: Callable[[int], Any], size: int, batches: int, per_batch: int) -> tuple[float, float]:
    """(µs per event, changelog bytes per event) over `batches` batches of `per_batch` new images (+ labels)."""
    store = layout(size)
    next_id, elapsed, written = size + 1, 0.0, 0
    for _ in range(batches):
        facts = facts_for(next_id, per_batch, 10)
        next_id += per_batch
        started = time.perf_counter()
        written += store.batch(facts)
        elapsed += time.perf_counter() - started
    events = batches * per_batch * 2
    return elapsed / events * 1e6, written / events


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000", help="images per city")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--per-batch", type=int, default=10, help="new images per batch (each with a label)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"  machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start", flush=True)
    figures: dict[str, Any] = {}
    for size in (int(s) for s in args.sizes.split(",")):
        per_layout = {}
        for layout in (PerEntity, WholeCity):
            runs = [measure(layout, size, args.batches, args.per_batch) for _ in range(args.repeats)]
            us = [r[0] for r in runs]
            per_layout[layout.name] = statistics.median(us)
            figures[f"{layout.name}_{size}_us_per_event"] = (
                f"median {statistics.median(us):.1f} (runs {', '.join(f'{u:.1f}' for u in us)})")
            figures[f"{layout.name}_{size}_changelog_bytes_per_event"] = round(statistics.median(r[1] for r in runs))
            print(f"  {size} images, {layout.name}: {figures[f'{layout.name}_{size}_us_per_event']} µs/event",
                  flush=True)
        figures[f"speedup_{size}"] = f"{per_layout['whole-city'] / per_layout['per-entity']:.1f}x"
    print(f"  load average {os.getloadavg()[0]:.2f} at the end", flush=True)
    report("streams state cost per event", figures)


if __name__ == "__main__":
    main()
