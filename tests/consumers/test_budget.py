"""The Vision budget in the warehouse: atomic reservations under concurrency, kept across restarts, refunds."""

from __future__ import annotations

import threading

from consumers.budget import Budget
from sightscan import db
from tests.support.labelling import costs_of, seed_city


def test_concurrent_reservations_never_exceed_the_cap(migrated, label_city):
    city = seed_city(migrated, label_city)
    cap, threads, wanted = 37, 8, 5  # 8 x 5 x 3 rounds = 120 images asked for, 37 allowed
    grants: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def reserve_some() -> None:
        budget = Budget(cap)
        conn = db.connect(migrated)  # one connection per labeller, as in the service
        try:
            start.wait()
            for _ in range(3):
                granted = budget.reserve(conn, city.id, wanted)
                with lock:
                    grants.append(granted)
        finally:
            conn.close()

    workers = [threading.Thread(target=reserve_some) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert len(grants) == threads * 3
    assert sum(grants) == cap  # every image of the cap granted once, none more
    assert all(0 <= g <= wanted for g in grants)
    assert costs_of(migrated, city.id).calls_spent == cap


def test_budget_survives_a_restart_and_refunds_give_back(migrated, label_city):
    city = seed_city(migrated, label_city)
    conn = db.connect(migrated)
    try:
        assert Budget(10).reserve(conn, city.id, 6) == 6
    finally:
        conn.close()
    # A new labeller (new process, new connection) reads what was spent: 4 left, not 10.
    conn = db.connect(migrated)
    try:
        budget = Budget(10)
        assert budget.reserve(conn, city.id, 6) == 4
        assert budget.reserve(conn, city.id, 1) == 0
        budget.refund(conn, city.id, 4)  # e.g. Vision answered 429: nothing billed
        assert budget.reserve(conn, city.id, 16) == 4
    finally:
        conn.close()
    costs = costs_of(migrated, city.id)
    assert (costs.calls_spent, costs.vision_requests) == (10, 3)  # grants of 0 are no request
