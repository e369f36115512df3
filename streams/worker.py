"""The stream worker: change events -> city-keyed facts -> city state, data marts and commands.

Two stages:
  rekey  (streams/rekey.py, a Kafka-transactional thread) reads the warehouse's change topics and the trainer's
         outcomes, turns each event into a fact keyed by city, and sends events it cannot read to the dead-letter
         topic with the reason; facts and source offsets commit together;
  marts  (a Faust agent, StreamWorker.marts) reads the facts in small batches, applies them to each city's state
         (a Faust table with a changelog), emits the commands that became due, stores the state and upserts the
         data marts.

Processing guarantee of the marts agent: at_least_once, made exact by design rather than by Kafka transactions.
faust-streaming's exactly_once has open reports of duplicates on rebalance (issues 323, 517, 502); instead every
change is deduplicated by its source LSN inside the city state, mart upserts write absolute values guarded by LSN,
and commands go through an outbox in the city state (stored and confirmed before they are sent, resent after
recovery), so a crossing yields one command: after a crash at worst an identical copy with the same request id.
The Faust workarounds this relies on are in streams/faust_fixes.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import mode
from aiokafka.partitioner import murmur2

from sightscan import catalogue, kafka
from sightscan import log as sightscan_log
from sightscan.config import Settings
from sightscan.topics import (
    COMMAND_KINDS,
    WATCHED_TABLES,
    change_topic,
    command_topic,
    dead_letter_topic,
    ensure_topics,
    facts_topic,
    training_events_topic,
)
from streams import faust_fixes
from streams.marts import MartsWriter
from streams.rekey import Rekeyer
from streams.settings import StreamsSettings
from streams.state import CityState, Summary, Thresholds

log = logging.getLogger("streams")


def thresholds(settings: Settings, streams: StreamsSettings) -> Thresholds:
    return Thresholds(
        min_labelled_images=settings.min_labelled_images_needed_for_training,
        min_images_per_label=settings.min_image_number_per_label,
        retrain_growth_fraction=settings.retrain_growth_fraction,
        retrain_min_corrections=settings.retrain_min_corrections,
        epochs=settings.mts_epochs,
        labelling_batch_size=streams.labelling_batch_size,
        labelling_linger_s=streams.labelling_linger_s,
        max_sights_per_city=settings.max_sights_per_city,
        max_images_per_sight=settings.max_images_per_sight,
    )


class RekeyService(mode.Service):
    """Runs one worker's rekey thread for as long as the worker runs; a fatal Kafka error in it stops the worker,
    loudly, to be restarted."""

    rekeyer: Rekeyer  # set on the subclass registered for one worker (Faust instantiates services itself)

    async def on_start(self) -> None:
        self.rekeyer.start()

    async def on_stop(self) -> None:
        self.rekeyer.close()
        await asyncio.get_running_loop().run_in_executor(None, self.rekeyer.join, 30)

    @mode.Service.task
    async def _watch(self) -> None:
        while not self.should_stop:
            if self.rekeyer.failure is not None:
                await self.crash(self.rekeyer.failure)
                return
            await self.sleep(1.0)


async def until_done(what: str, step: Callable[[], Awaitable[Any]]) -> Any:
    """Retry a step of a batch until it succeeds; its result. Faust's take() acks a batch even when its body raises,
    so a failing step (broker or PostgreSQL away) must stall the worker, saying so, and never end the batch."""
    delay = 0.5
    while True:
        try:
            return await step()
        except Exception as exc:
            log.warning(f"{what} failed, retrying in {delay:.1f} s: {exc}", extra={"step": what})
            await asyncio.sleep(delay)
            delay = min(30.0, delay * 2)


class CityTable(faust.Table):
    """The city-state table. Keys are b"<city>" (the summary) and b"<city>/<kind>/<id>" (its records): each goes
    to the changelog partition of the city's facts (murmur2 of the city id, the rekeyer's and Faust's partitioner),
    so the worker that owns a city's facts owns every record of it, after any rebalance too."""

    def partition_for_key(self, key: bytes) -> int:
        return (murmur2(key.split(b"/", 1)[0]) & 0x7FFFFFFF) % self.partitions


def linger_fact(city_id: int) -> dict[str, Any]:
    """A nudge through the city's own partition: its waiting images may now be due (streams/state.py)."""
    return {"kind": "linger", "id": 0, "city_id": city_id, "lsn": None, "present": True}


def facts_of(values: list[Any]) -> list[dict[str, Any]]:
    """The facts of a batch of messages, in order: a message holds a list of one city's facts (the rekeyer's), or
    one fact (a linger nudge, or a message written by an earlier version)."""
    facts: list[dict[str, Any]] = []
    for value in values:
        if isinstance(value, list):
            facts.extend(value)
        else:
            facts.append(value)
    return facts


def worker_topics(settings: Settings, app_id: str) -> dict[str, int]:
    """The topics a stream worker creates at start when they are missing (the catalogue's, sightscan/catalogue.py),
    each with its partitions. Faust creates its table's changelog and its leader topic itself."""
    return {t.name(settings.topic_prefix, app_id): t.partition_count(settings.topic_partitions)
            for t in catalogue.created_by(catalogue.STREAM_WORKER)}


class StreamWorker:
    """One stream worker: its Faust app, topics, city-state table, rekey thread and marts agent."""

    def __init__(self, settings: Settings, streams: StreamsSettings, declare_topics: bool = True) -> None:
        faust_fixes.install()
        self.settings, self.limits = settings, thresholds(settings, streams)
        self.batch_size, self.batch_within_s = streams.batch_size, streams.batch_within_s
        prefix = settings.topic_prefix
        app_id = streams.app_id_for(prefix)  # consumer group, table and facts topic
        datadir = settings.home / "streams" / f"{socket.gethostname()}-{os.getpid()}"
        datadir.parent.mkdir(parents=True, exist_ok=True)
        self.app = faust.App(
            app_id,
            broker=";".join(f"kafka://{h}" for h in settings.bootstrap_servers.split(",")),
            store="memory://",
            processing_guarantee="at_least_once",
            topic_partitions=settings.topic_partitions,
            topic_replication_factor=settings.replication_factor,  # the facts topic and the changelog
            producer_acks=-1,  # every in-sync replica, as our other producers (sightscan/kafka.py)
            consumer_auto_offset_reset="earliest",
            datadir=str(datadir),
            web_enabled=False,
            broker_commit_interval=1.0,
            # A killed worker's partitions move after 10 s instead of Faust's default 60 s.
            broker_session_timeout=10.0,
            broker_heartbeat_interval=2.0,
            table_cleanup_interval=3600.0,
        )

        # Topology -------------------------------------------------------------------------------------------
        table_of_topic = {change_topic(t, prefix): t for t in WATCHED_TABLES}
        outcomes, facts, dead_letters = training_events_topic(prefix), facts_topic(app_id), dead_letter_topic(prefix)
        if declare_topics:  # a worker that starts before a topic exists would ignore it
            ensure_topics(settings, worker_topics(settings, app_id))
        self.facts = self.app.topic(facts, key_serializer="raw", value_serializer="json",
                                    partitions=settings.topic_partitions)
        self.dead_letters = self.app.topic(dead_letters, key_serializer="raw", value_serializer="json")
        self.commands = {kind: self.app.topic(command_topic(kind, prefix), key_serializer="raw",
                                              value_serializer="json") for kind in COMMAND_KINDS}
        # Values are plain JSON in the changelog (streams/state.py has the layout).
        self.city_state = self.app.tables.add(CityTable(
            self.app, name=catalogue.CITY_STATE_TABLE, default=None, partitions=settings.topic_partitions,
            key_type=bytes, beacon=self.app.tables.beacon))
        self.lingering: dict[str, int] = {}  # city -> when its waiting images are due (ms), for cities seen here
        self.changelog = faust_fixes.ConfirmedChangelog(self.city_state)
        self.marts_writer = MartsWriter(settings)
        rekeyer = Rekeyer(settings, app_id, table_of_topic, outcomes, facts, dead_letters,
                          facts_per_message=streams.facts_per_message)
        self.app.service(type("RekeyService", (RekeyService,), {"rekeyer": rekeyer}))
        self.app.agent(self.facts, name="marts")(self.marts)
        self.city_state.on_recover(self.resend_after_recovery)
        self.app.timer(0.25, name="labelling-linger")(self.nudge_lingering_cities)

    # The marts agent ----------------------------------------------------------------------------------------

    async def marts(self, stream: faust.StreamT) -> None:
        async for values in stream.take(self.batch_size, within=self.batch_within_s):
            seen, touched = await self._apply(facts_of(values))
            # Outbox: due commands are stored in the city state, the state is confirmed in its changelog, and only
            # then are the commands sent. A crash after that resends the stored commands on recovery (identical
            # copies, same request ids); a crash before it replays the facts into the same decision.
            for key, state in seen.items():
                due = state.due_commands(self.limits)
                if due:
                    state.summary.pending.extend(due)
                    touched[key] = state
            if touched:
                await until_done("storing city states", lambda touched=touched: self._store(touched))
            due = {key: state for key, state in touched.items() if state.summary.pending}
            if due:
                await until_done("sending commands", lambda due=due: self._send_pending(due))
            # Every city the batch names, changed or not: a fact already applied is redelivered only when a worker
            # stopped between storing a state and writing its marts, which are then behind (the upsert is
            # guarded by LSN, so writing them again is harmless).
            rows = [(s.city_id, s.summary.max_lsn, s.counts()) for s in seen.values()]
            if rows:
                await until_done("writing data marts", lambda rows=rows: self.marts_writer.write(rows))
            self._note_lingering(seen)

    def _load(self, key: str) -> CityState | None:
        stored = self.city_state.get(key.encode())
        if stored is None:
            return None
        if "layout" not in stored:  # stored whole by an earlier version: converted, written anew by _store
            return CityState.from_legacy(stored)
        return CityState.load(int(key), Summary.from_json(stored),
                              lambda suffix, k=key: self.city_state.get(f"{k}/{suffix}".encode()))

    async def _apply(self, batch: list[dict[str, Any]]) -> tuple[dict[str, CityState], dict[str, CityState]]:
        """The batch's facts applied to the states of the cities they name: (every city seen, the cities whose
        state changed), each as city id as text -> state."""
        seen: dict[str, CityState] = {}
        touched: dict[str, CityState] = {}
        for fact in batch:
            key = str(fact["city_id"])
            state = seen.get(key)
            if state is None:
                state = self._load(key)
                # A city's first fact while PostgreSQL is away must wait for it, not end the batch (losing it).
                if state is None and await until_done(
                        "looking up a city", lambda cid=fact["city_id"]: self.marts_writer.city_exists(cid)):
                    state = CityState(fact["city_id"])
                elif state is None:
                    dead = kafka.dead_letter(self.facts.get_topic_name(), None, None, key, json.dumps(fact),
                                             f"unknown city {fact['city_id']}")
                    await until_done("dead-lettering a fact", lambda d=dead, k=key: self.dead_letters.send(
                        key=k.encode(), force=True, value=d))
                    continue
                seen[key] = state
            if state.apply(fact):
                touched[key] = state
        return seen, touched

    def _write(self, key: str, state: CityState) -> None:
        for suffix, value in state.records():
            self.city_state[(f"{key}/{suffix}" if suffix else key).encode()] = value

    async def _store(self, touched: dict[str, CityState]) -> None:
        for key, state in touched.items():
            self._write(key, state)
        await self.changelog.written()  # before any command is sent, and before the batch's offsets are acked

    async def _send_pending(self, states: dict[str, CityState]) -> None:
        """Every city's stored commands: all sent, then all awaited, so a batch costs one round trip however many
        cities it names (a city's commands share a partition, which keeps them in order). A failure retries the
        lot: a command already sent then goes again, an identical copy with the same request id."""
        sent = [await self.commands[kind].send(key=key.encode(), value=command, force=True)
                for key, state in states.items() for kind, command in state.summary.pending]
        await asyncio.gather(*sent)
        for key, state in states.items():
            for kind, command in state.summary.pending:
                log.info(f"command {kind} {command['request_id']}", extra={"kind": kind,
                                                                           "request_id": command["request_id"]})
            state.summary.pending = []
            self._write(key, state)

    def _note_lingering(self, seen: dict[str, CityState]) -> None:
        for key, state in seen.items():
            deadline = state.linger_deadline_ms(self.limits)
            if deadline is None:
                self.lingering.pop(key, None)
            else:
                self.lingering[key] = deadline

    async def nudge_lingering_cities(self) -> None:
        """Timer: a linger fact for each city whose waiting images are due, through the city's own partition (the
        worker that owns it acts on it, whoever that is by then)."""
        now_ms = int(time.time() * 1000)
        for key, deadline in list(self.lingering.items()):
            if now_ms >= deadline:
                del self.lingering[key]
                await self.facts.send(key=key.encode(), value=linger_fact(int(key)))

    async def resend_after_recovery(self) -> None:
        """Commands a crashed or rebalanced-away worker stored but may not have sent; and the lingering cities."""
        for raw_key, stored in list(self.city_state.items()):
            if b"/" in raw_key or not stored:
                continue
            key = raw_key.decode()
            if stored.get("pending"):
                state = self._load(key)
                await self._send_pending({key: state})
            if stored.get("waiting") or "layout" not in stored:
                state = self._load(key)
                self._note_lingering({key: state})


def create_app(settings: Settings | None = None, streams: StreamsSettings | None = None,
               declare_topics: bool = True) -> faust.App:
    """The worker's Faust app, with settings from the environment unless given."""
    settings = settings or Settings.from_env()
    streams = streams or StreamsSettings.from_env()
    sightscan_log.setup(settings.log_level, settings.log_format)
    return StreamWorker(settings, streams, declare_topics).app
