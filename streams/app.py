"""The stream worker: change events -> city-keyed facts -> city state, data marts and commands.

Two stages:
  rekey  (streams/rekey.py, a Kafka-transactional thread) reads the warehouse's change topics and the trainer's
         outcomes, turns each event into a fact keyed by city, and sends events it cannot read to the dead-letter
         topic with the reason; facts and source offsets commit together;
  marts  (a Faust agent) reads the facts in small batches, applies them to each city's state (a Faust table with
         a changelog), emits the commands that became due, stores the state and upserts the data marts.

Processing guarantee of the marts agent: at_least_once, made exact by design rather than by Kafka transactions.
faust-streaming's exactly_once has open reports of duplicates on rebalance (issues 323, 517, 502); instead every
change is
deduplicated by its source LSN inside the city state, mart upserts write absolute values guarded by LSN, and
commands go through an outbox in the city state (stored and flushed before they are sent, resent after
recovery), so a crossing yields one command: after a crash at worst an identical copy with the same request id.
Faust's own consumer would commit events it skipped during a rebalance; streams/rebalance_fix.py stops that.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import socket
from typing import Any

import faust
import mode

from sightscan import db, kafka
from sightscan import log as sightscan_log
from sightscan.config import Settings
from sightscan.topics import (
    COMMAND_KINDS,
    WATCHED_TABLES,
    change_topic,
    command_topic,
    dead_letter_topic,
    ensure_topics,
    training_events_topic,
)
from streams import rebalance_fix
from streams.marts import write_marts
from streams.rekey import Rekeyer
from streams.state import Thresholds, apply_fact, copy_state, counts, due_commands, new_state

log = logging.getLogger("streams")

BATCH_SIZE = int(os.environ.get("STREAMS_BATCH_SIZE", "1000"))
BATCH_WITHIN_S = float(os.environ.get("STREAMS_BATCH_WITHIN_S", "0.05"))


def thresholds(settings: Settings) -> Thresholds:
    return Thresholds(
        min_labelled_images=settings.min_labelled_images_needed_for_training,
        min_images_per_label=settings.min_image_number_per_label,
        retrain_growth_fraction=settings.retrain_growth_fraction,
        epochs=settings.mts_epochs,
        labelling_batch_size=int(os.environ.get("LABELLING_BATCH_SIZE", "16")),
        max_sights_per_city=settings.max_sights_per_city,
        max_images_per_sight=settings.max_images_per_sight,
    )


def create_app(settings: Settings | None = None, declare_topics: bool = True) -> faust.App:
    rebalance_fix.install()
    settings = settings or Settings.from_env()
    sightscan_log.setup(settings.log_level, settings.log_format)
    prefix = settings.topic_prefix
    limits = thresholds(settings)
    datadir = settings.home / "streams" / f"{socket.gethostname()}-{os.getpid()}"
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app_id = os.environ.get("STREAMS_APP_ID", f"{prefix}-streams")  # consumer group, table and facts topics
    app = faust.App(
        app_id,
        broker=";".join(f"kafka://{h}" for h in settings.kafka_bootstrap_servers.split(",")),
        store="memory://",
        processing_guarantee="at_least_once",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        datadir=str(datadir),
        web_enabled=False,
        broker_commit_interval=1.0,
        # A killed worker's partitions move after 10 s instead of Faust's default 60 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        table_cleanup_interval=3600.0,
    )

    table_of_topic = {change_topic(t, prefix): t for t in WATCHED_TABLES}
    outcomes_topic = training_events_topic(prefix)
    facts_topic = f"{app_id}.facts"
    if declare_topics:  # a worker that starts before a topic exists would ignore it
        ensure_topics(settings, [*table_of_topic, outcomes_topic, facts_topic, dead_letter_topic(prefix),
                                 *(command_topic(k, prefix) for k in COMMAND_KINDS)])
    facts = app.topic(facts_topic, key_serializer="raw", value_serializer="json",
                      partitions=settings.topic_partitions)
    dead_letters = app.topic(dead_letter_topic(prefix), key_serializer="raw", value_serializer="json")
    commands = {kind: app.topic(command_topic(kind, prefix), key_serializer="raw", value_serializer="json")
                for kind in COMMAND_KINDS}
    # Keyed by city id as text bytes, the same bytes as the facts' keys; use_partitioner puts each city's changelog
    # records in the partition its facts come from, even though `marts` takes facts of several partitions at once.
    city_state = app.Table("city-state", default=None, partitions=settings.topic_partitions, use_partitioner=True,
                           key_type=bytes)
    # Faust's producer.flush() gives up after a record takes 0.1 s to reach the Kafka client (ProducerBuffer.
    # flush_atmost), so it does not prove a changelog record was written: on a loaded machine a worker killed
    # after its commit lost city states that way. Each changelog send's future is kept and awaited instead.
    unconfirmed: list[Any] = []
    send_changelog = city_state.send_changelog

    def send_and_keep(*args: Any, **kwargs: Any) -> Any:
        future = send_changelog(*args, **kwargs)
        unconfirmed.append(future)
        return future

    city_state.send_changelog = send_and_keep  # type: ignore[method-assign]

    async def changelog_written() -> None:
        """Every changelog record set so far is acknowledged by the broker (raises if one failed)."""
        while unconfirmed:
            batch = unconfirmed[:]
            del unconfirmed[:len(batch)]
            await asyncio.gather(*batch)

    pg = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="streams-pg")
    pg_conn: list[Any] = []

    def _conn() -> Any:
        if not pg_conn or pg_conn[0].closed:
            pg_conn[:] = [db.connect(settings)]
        return pg_conn[0]

    def _city_exists(city_id: int) -> bool:
        with _conn() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1 FROM cities WHERE id = %s", (city_id,))
            return cur.fetchone() is not None

    async def in_pg(fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pg, fn, *args)

    rekeyer = Rekeyer(settings, app_id, table_of_topic, outcomes_topic, facts_topic, dead_letter_topic(prefix))

    @app.service
    class RekeyService(mode.Service):
        """Runs the rekey thread for as long as the worker runs."""

        async def on_start(self) -> None:
            rekeyer.start()

        async def on_stop(self) -> None:
            rekeyer.close()
            await asyncio.get_running_loop().run_in_executor(None, rekeyer.join, 30)

        @mode.Service.task
        async def _watch(self) -> None:
            while not self.should_stop:
                if rekeyer.failure is not None:  # a fatal Kafka error: stop the worker, loudly, to be restarted
                    await self.crash(rekeyer.failure)
                    return
                await self.sleep(1.0)

    @app.agent(facts)
    async def marts(stream: faust.StreamT) -> None:
        async for batch in stream.take(BATCH_SIZE, within=BATCH_WITHIN_S):
            touched: dict[str, dict[str, Any]] = {}
            for fact in batch:
                key = str(fact["city_id"])
                state = touched.get(key)
                if state is None:
                    stored = city_state.get(key.encode())
                    if stored is None:
                        if not await in_pg(_city_exists, fact["city_id"]):
                            reason = f"unknown city {fact['city_id']}"
                            await dead_letters.send(key=key.encode(), value=kafka.dead_letter(
                                facts.get_topic_name(), None, None, key, json.dumps(fact), reason), force=True)
                            continue
                        stored = new_state(fact["city_id"])
                    state = copy_state(stored)  # never mutate the stored value before it is written back
                if apply_fact(state, fact):
                    touched[key] = state
            if not touched:
                continue
            # Outbox: due commands are stored in the city state, the state is flushed to its changelog, and only
            # then are the commands sent. A crash after the flush resends the stored commands on recovery
            # (identical copies, same request ids); a crash before it replays the facts into the same decision.
            for state in touched.values():
                state["pending"] = state.get("pending", []) + [list(c) for c in due_commands(state, limits)]

            async def store(touched: dict[str, dict[str, Any]] = touched) -> None:
                for key, state in touched.items():
                    city_state[key.encode()] = state
                await changelog_written()  # before any command is sent, and before the batch's offsets are acked

            await until_done("storing city states", store)
            for key, state in touched.items():
                if state["pending"]:
                    await until_done(f"sending commands of city {key}", lambda k=key, s=state: send_pending(k, s))
            rows = [(s["city_id"], s["max_lsn"], counts(s)) for s in touched.values()]
            await until_done("writing data marts", lambda rows=rows: in_pg(_write_marts, rows))

    def _write_marts(rows: list[tuple[int, int, dict[str, Any]]]) -> None:
        try:
            write_marts(_conn(), rows)
        except Exception:
            if pg_conn:
                pg_conn[0].close()  # a fresh connection for the retry
            raise

    async def until_done(what: str, step: Any) -> None:
        """Retry a step of a batch until it succeeds. Faust's take() acks a batch even when its body raises, so a
        failing step (broker or PostgreSQL away) must stall the worker, saying so, and never end the batch."""
        delay = 0.5
        while True:
            try:
                await step()
                return
            except Exception as exc:
                log.warning(f"{what} failed, retrying in {delay:.1f} s: {exc}", extra={"step": what})
                await asyncio.sleep(delay)
                delay = min(30.0, delay * 2)

    async def send_pending(key: str, state: dict[str, Any]) -> None:
        for kind, command in state["pending"]:
            sent = await commands[kind].send(key=key.encode(), value=command, force=True)
            await sent
            request_id = command["request_id"]
            log.info(f"command {kind} {request_id}", extra={"kind": kind, "request_id": request_id})
        state["pending"] = []
        city_state[key.encode()] = state

    @city_state.on_recover
    async def resend_after_recovery() -> None:
        """Commands a crashed or rebalanced-away worker stored but may not have sent."""
        for raw_key, stored in list(city_state.items()):
            if stored and stored.get("pending"):
                await send_pending(raw_key.decode(), copy_state(stored))

    return app
