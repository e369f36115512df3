"""PostgreSQL SIGKILLed on a private stack (killing the session's would disturb every other test), brought back by
the supervisor's own loop over the stack's parts: its orphaned backends cleared, crash recovery, Debezium back on
its replication slot. Killed mid-stream, with a real stream worker, every committed change reaches the marts once;
and a gateway answers at once, and plainly, while PostgreSQL is down.

The time from SIGKILL to healthy again is printed, never asserted (tests/README.md: timings only in bench/).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psutil
import psycopg2
import pytest

import connectors
from localsystem.stack import LocalStack
from localsystem.stack.settings import SystemSettings
from localsystem.stack.supervisor import Supervisor, stack_units
from sightscan import db
from sightscan.config import Settings
from sightscan.topics import change_topic
from tests.conftest import TopicReader
from tests.support.gateway import call, call_json, jpeg, next_message, start_gateway, stop_gateway
from tests.support.stack import ephemeral_stack
from tests.support.streams import Worker, marts, wait_marts_match

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with ephemeral_stack(tmp_path_factory.mktemp("pgcrash")) as stack:
        yield stack


class SupervisorLoop(threading.Thread):
    """The supervisor's loop as `sightscan up` leaves it running (default poll and backoff), over the private
    stack's parts only: PostgreSQL, Kafka, Connect and the Debezium connector. `held` pauses it, so a test can keep
    PostgreSQL down for as long as it looks at the outage."""

    def __init__(self, stack: LocalStack) -> None:
        super().__init__(daemon=True)
        self.system = SystemSettings.from_env({})
        units = stack_units(stack)
        self.supervisor = Supervisor(stack.settings, self.system, lambda: units)
        self.held, self.done = threading.Event(), threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.done.is_set():
                if not self.held.is_set():
                    self.supervisor.check_once()
                self.done.wait(self.system.poll_s)
        except BaseException as exc:  # the test reads it: a dead supervisor would restart nothing
            self.failure = exc

    def stop(self) -> None:
        self.done.set()
        self.join(180)  # a restart in progress finishes first

    def record(self, name: str) -> dict:
        rec = self.supervisor.records[name]
        return {"state": rec.state, "restarts": rec.restarts, "last_error": rec.last_error}


@pytest.fixture()
def supervisor(private: LocalStack) -> Iterator[SupervisorLoop]:
    loop = SupervisorLoop(private)
    loop.supervisor.check_once()  # every part seen running before anything is killed
    loop.start()
    try:
        yield loop
    finally:
        loop.stop()
        if not private.postgres.running():  # whatever happened above, the next test gets a whole stack
            private.recover_postgres()


class Writer(threading.Thread):
    """Warehouse changes at a steady pace: an image for every city and a label of the first city's, per transaction.
    A transaction PostgreSQL refuses (it is down) is counted and tried again; what counts in the end is what was
    committed, recounted by SQL."""

    def __init__(self, settings: Settings, city_ids: list[int], sights: list[int], seconds: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.city_ids, self.sights, self.seconds = settings, city_ids, sights, seconds
        self.committed = self.refused = 0
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            rng, end = random.Random(7), time.monotonic() + self.seconds
            while time.monotonic() < end:
                try:
                    with db.transaction(self.settings) as cur:
                        for city_id in self.city_ids:
                            sight = rng.choice(self.sights) if city_id == self.city_ids[0] else None
                            image_id = db.insert_image(cur, db.NewImage(
                                city_id, f"img-{uuid.uuid4()}".encode(), "image/jpeg", 64, 48, "crawl", sight))
                            if sight is not None and rng.random() < 0.7:
                                db.insert_label(cur, db.NewLabel(image_id, city_id, "test", sight, 0.9,
                                                                 (0.1, 0.1, 0.9, 0.9)))
                    self.committed += 1
                except psycopg2.Error:
                    self.refused += 1
                    time.sleep(0.2)
                time.sleep(0.05)
        except BaseException as exc:  # the test reads it: a writer that died would make a vacuous pass
            self.failure = exc


def _long_query(stack: LocalStack) -> int:
    """A backend computing for minutes: it outlives its postmaster (it looks for its death only when idle), the
    orphan the supervisor must clear. Returns its pid."""
    def run() -> None:
        with contextlib.suppress(psycopg2.Error), db.transaction(stack.settings) as cur:  # killed: expected
            cur.execute("SELECT count(*) FROM generate_series(1, 100000000000) AS orphan_to_be")

    threading.Thread(target=run, daemon=True).start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with db.transaction(stack.settings) as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE query LIKE '%%AS orphan_to_be%%' AND pid <> "
                        "pg_backend_pid()")
            row = cur.fetchone()
        if row:
            return row[0]
        time.sleep(0.2)
    raise AssertionError("the long query never started")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _kill_postmaster(stack: LocalStack) -> tuple[float, set[int]]:
    """SIGKILL the postmaster; returns when, and the orphans it left (seen before the supervisor's backoff ends)."""
    postmaster = stack.postgres.postmaster()
    assert postmaster is not None
    postmaster.kill()
    killed = time.monotonic()
    while stack.postgres.running():
        time.sleep(0.01)
    return killed, {p.pid for p in stack.postgres.orphans()}


def _healthy_again(stack: LocalStack, killed: float, timeout: float = 120) -> dict[str, float]:
    """Seconds from the SIGKILL until PostgreSQL accepts connections, Debezium streams from its slot again, and
    every part of the stack is healthy (what `sightscan status` checks)."""
    marks: dict[str, float] = {}
    deadline = killed + timeout
    while time.monotonic() < deadline:
        now = time.monotonic() - killed
        if "postgres" not in marks and stack.postgres.healthy():
            marks["postgres"] = now
        if "postgres" in marks and "debezium" not in marks:
            try:
                if stack.slot_active():
                    marks["debezium"] = now
            except psycopg2.Error:
                pass
        if "debezium" in marks and all(s.healthy for s in stack.status()):
            marks["healthy"] = now
            return marks
        time.sleep(0.1)
    parts = [(s.name, s.healthy, s.where) for s in stack.status()]
    raise AssertionError(f"the stack was not healthy {timeout:.0f} s after the SIGKILL: {marks}; {parts}")


def _where_it_stopped(stack: LocalStack, city_ids: list[int], worker_log: Path) -> str:
    """Where a change that never reached the marts stopped: the slot and the connector, the change events on Kafka
    against the rows in the warehouse, and the worker's warnings and errors."""
    settings = stack.settings
    lines = [f"connector: {connectors.status(settings)}"]
    with db.transaction(settings) as cur:
        cur.execute("SELECT slot_name, active, confirmed_flush_lsn, pg_current_wal_lsn() FROM pg_replication_slots")
        lines.append(f"slots: {cur.fetchall()}")
        for table in ("images", "labels"):
            cur.execute(f"SELECT id FROM {table} WHERE city_id = ANY(%s)", (city_ids,))
            rows = {r[0] for r in cur.fetchall()}
            reader = TopicReader(settings, change_topic(table))
            events = [m["value"] for m in reader.drain(quiet_s=5, timeout=60) if m["value"]]
            reader.close()
            seen = [e["after"]["id"] for e in events if e.get("after") and e["after"].get("city_id") in city_ids]
            lines.append(f"{table}: {len(rows)} rows, {len(set(seen))} on Kafka ({len(seen)} events); missing "
                         f"{sorted(rows - set(seen))[:20]}")
    log = [line for line in worker_log.read_text(errors="replace").splitlines()
           if any(w in line for w in ("WARNING", "ERROR", "Traceback", "retrying"))]
    return "\n".join(lines) + "\n--- worker.log (warnings and errors, last 30)\n" + "\n".join(log[-30:])


def test_postgres_sigkilled_mid_stream_comes_back_and_every_change_counts_once(
        private: LocalStack, supervisor: SupervisorLoop, tmp_path: Path) -> None:
    settings = private.settings
    run = uuid.uuid4().hex[:6]
    with db.transaction(settings) as cur:
        cities = [db.request_city(cur, f"Crash {run} {i}")[0] for i in range(3)]
        sights = [db.ensure_sight(cur, cities[0].id, name, "test") for name in ("Tower", "Gate")]
    city_ids = [c.id for c in cities]
    worker = Worker(settings, f"pgcrash-{run}", tmp_path / "worker.log").start()
    writer = Writer(settings, city_ids, sights, seconds=40)
    try:
        writer.start()
        orphan = _long_query(private)
        # Mid-stream: the worker has taken in every city (their marts exist) and the writer goes on. (A city whose
        # first change reaches the worker while PostgreSQL is down: the last test.)
        deadline = time.monotonic() + 120
        while set(marts(settings, city_ids)[0]) != set(city_ids):
            assert time.monotonic() < deadline, f"the worker took in no city\n{(tmp_path / 'worker.log').read_text()}"
            time.sleep(0.5)
        time.sleep(3)
        before = writer.committed
        killed, orphans = _kill_postmaster(private)
        print(f"SIGKILL the postmaster after {before} transactions; its orphans: {sorted(orphans)}")
        assert orphan in orphans                  # the long query's backend outlived its postmaster

        marks = _healthy_again(private, killed)
        print("PostgreSQL SIGKILLed mid-stream; seconds until it accepts connections again: "
              f"{marks['postgres']:.1f}, Debezium streams from its slot: {marks['debezium']:.1f}, "
              f"every part healthy: {marks['healthy']:.1f}")
        assert _gone(orphan)
        after = writer.committed
        writer.join()
        assert writer.failure is None, writer.failure
        assert writer.refused > 0, "no write was refused: PostgreSQL was not killed mid-stream"
        assert writer.committed > after, "no change was committed after the restart"
        try:
            wait_marts_match(settings, city_ids, timeout=180)  # every committed change counted, none twice
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{_where_it_stopped(private, city_ids, tmp_path / 'worker.log')}") from None
        assert worker.alive(), f"the stream worker died:\n{(tmp_path / 'worker.log').read_text()[-3000:]}"
        assert supervisor.failure is None, supervisor.failure
        assert supervisor.record("postgres") == {"state": "running", "restarts": 1, "last_error": "exited"}
        assert supervisor.record("debezium")["state"] == "running"
        assert connectors.status(settings)["tasks"][0]["state"] == "RUNNING"
    finally:
        writer.seconds = 0
        worker.stop()


def test_a_gateway_answers_plainly_while_postgres_is_down(private: LocalStack, supervisor: SupervisorLoop,
                                                          tmp_path: Path) -> None:
    settings = private.settings
    name = f"Outage {uuid.uuid4().hex[:6]}"
    with db.transaction(settings) as cur:
        db.request_city(cur, name)
    gateway = start_gateway(settings, tmp_path / "gateway.log", GATEWAY_IDLE_TIMEOUT_S="120")
    frame = jpeg((200, 30, 30))

    async def outage() -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{gateway.ws_url}?city={name}") as before:
            assert (await next_message(before, "hello"))["city"] == name
            supervisor.held.set()             # PostgreSQL stays down while we look
            await asyncio.to_thread(_kill_postmaster, private)

            status, headers, body = await asyncio.to_thread(call, gateway, "GET", f"/api/cities/{name}")
            assert (status, headers.get("Retry-After")) == (503, "5"), body
            assert b'"warehouse_unavailable"' in body
            status, ready = await asyncio.to_thread(call_json, gateway, "GET", "/readyz")
            assert status == 503 and ready["checks"]["warehouse"].startswith("down"), ready

            async with http.ws_connect(f"{gateway.ws_url}?city={name}") as during:
                assert (await next_message(during, "error"))["code"] == "unavailable"
                await during.send_bytes(frame)
                answer = await next_message(during, ("error", "detections", "hello"))
                assert (answer["type"], answer["code"], answer["frame"]) == ("error", "unavailable", 1), answer

                # A connection made before the outage still answers each frame: its city has no model, as
                # the gateway remembers, or the warehouse is unavailable (it looked again).
                await before.send_bytes(frame)
                answer = await next_message(before, ("error", "detections"))
                assert answer.get("code") in ("no_model", "unavailable"), answer

                supervisor.held.clear()       # the supervisor brings PostgreSQL back
                await asyncio.to_thread(_healthy_again, private, time.monotonic())
                await during.send_bytes(frame)  # the city is tried again: hello, then the frame's answer
                assert (await next_message(during, "hello"))["city"] == name
                answer = await next_message(during, ("error", "detections"))
                assert (answer.get("code"), answer["frame"]) == ("no_model", 2), answer

        status, city = call_json(gateway, "GET", f"/api/cities/{name}")
        assert status == 200 and city["name"] == name

    try:
        asyncio.run(outage())
        deadline = time.monotonic() + 60  # the supervisor counts the restart once its recovery has returned
        while supervisor.record("postgres")["restarts"] != 1:
            assert time.monotonic() < deadline, supervisor.record("postgres")
            time.sleep(0.2)
    finally:
        supervisor.held.clear()
        stop_gateway(gateway)


def test_a_city_first_seen_while_postgres_is_down_is_counted_once_it_is_back(
        private: LocalStack, supervisor: SupervisorLoop, tmp_path: Path) -> None:
    """The stream worker looks a new city up in the warehouse; while PostgreSQL is down that lookup waits (and the
    batch with it) instead of ending the batch, which Faust would ack, losing its facts."""
    settings = private.settings
    with db.transaction(settings) as cur:
        city, _ = db.request_city(cur, f"First fact {uuid.uuid4().hex[:6]}")
        for _ in range(5):
            db.insert_image(cur, db.NewImage(city.id, f"img-{uuid.uuid4()}".encode(), "image/jpeg", 64, 48, "crawl",
                                             None))
    reader = TopicReader(settings, change_topic("images"))
    reader.collect(lambda got: sum(((m["value"] or {}).get("after") or {}).get("city_id") == city.id
                                   for m in got) == 5, timeout=60)  # all five on Kafka before the kill
    reader.close()
    supervisor.held.set()  # PostgreSQL stays down until the worker has met the city's facts
    _kill_postmaster(private)
    worker = Worker(settings, f"firstfact-{uuid.uuid4().hex[:6]}", tmp_path / "worker.log").start()
    try:
        deadline = time.monotonic() + 120
        while "looking up a city failed" not in (tmp_path / "worker.log").read_text(errors="replace"):
            assert worker.alive() and time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
            time.sleep(0.5)
        supervisor.held.clear()
        _healthy_again(private, time.monotonic())
        wait_marts_match(settings, [city.id], timeout=120)
    finally:
        supervisor.held.clear()
        worker.stop()
