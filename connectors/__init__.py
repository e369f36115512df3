"""The Debezium PostgreSQL connector: its configuration and its registration with Kafka Connect.

Watched tables go to topics <TOPIC_PREFIX>.public.<table>; image and model bytes are excluded; keys are primary
keys; heartbeats keep the replication slot moving. Slot and publication are named for the project (the
publication is created by sql/migrations/0002_cdc.sql, so the connector never needs to own tables).
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any

from sightscan.config import Settings
from sightscan.topics import WATCHED_TABLES

log = logging.getLogger(__name__)

CONNECTOR_NAME = "sightscan-postgres"
SLOT_NAME = "sightscan_slot"
PUBLICATION_NAME = "sightscan_publication"
EXCLUDED_COLUMNS = ("public.images.data", "public.models.onnx")


class ConnectorError(RuntimeError):
    pass


def debezium_config(settings: Settings) -> dict[str, str]:
    return {
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "tasks.max": "1",
        "plugin.name": "pgoutput",
        "database.hostname": settings.pghost,
        "database.port": str(settings.pgport),
        "database.user": settings.pguser,
        "database.password": settings.pgpassword,
        "database.dbname": settings.pgdatabase,
        "topic.prefix": settings.topic_prefix,
        "table.include.list": ",".join(f"public.{t}" for t in WATCHED_TABLES),
        "column.exclude.list": ",".join(EXCLUDED_COLUMNS),
        "slot.name": SLOT_NAME,
        "publication.name": PUBLICATION_NAME,
        "publication.autocreate.mode": "disabled",
        "snapshot.mode": "initial",
        "heartbeat.interval.ms": "5000",
        "heartbeat.action.query": "INSERT INTO debezium_heartbeat (id, ts) VALUES (1, now()) "
                                  "ON CONFLICT (id) DO UPDATE SET ts = EXCLUDED.ts",
        # Deletes are one event with op=d and the old row (REPLICA IDENTITY FULL); no extra null tombstone.
        "tombstones.on.delete": "false",
        "decimal.handling.mode": "double",
        # Debezium sleeps this long when its queue is empty; the 500 ms default would dominate latency. 5 ms won
        # bench/cdc_latency's sweep (p50 at 1,000 rows/s 11 ms against 19 ms with 20 ms; 100 ms: 58 ms), at the
        # price of Connect's idle CPU (about 19% of a core, against 9% with 20 ms): CDC_POLL_INTERVAL_MS.
        "poll.interval.ms": str(settings.cdc_poll_interval_ms),
        "topic.creation.default.replication.factor": str(settings.replication_factor),
        "topic.creation.default.min.insync.replicas": str(settings.min_insync_replicas),
        "topic.creation.default.partitions": str(settings.topic_partitions),
    }


def _request(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 10) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
        return json.loads(raw) if raw else None


# Connect answers 409 while its group rebalances and 5xx while it is still reading its internal topics; a busy
# worker (three brokers starting on two cores) may not answer at all within one request's timeout.
TRANSIENT_HTTP_CODES = frozenset({409, 500, 502, 503, 504})


def register(settings: Settings, overrides: dict[str, str] | None = None, timeout: float = 180,
             request_timeout: float = 30) -> None:
    """Create or update the connector (PUT is idempotent); `overrides` replace or add config keys (benchmarks).

    Retries until `timeout` on Connect's transient answers and on requests it leaves unanswered; a refusal of the
    configuration itself (400) fails at once.
    """
    url = f"{settings.connect_url}/connectors/{CONNECTOR_NAME}/config"
    body = {**debezium_config(settings), **(overrides or {})}
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        attempt += 1
        try:
            _request("PUT", url, body, timeout=min(request_timeout, max(0.1, deadline - time.monotonic())))
            break
        except urllib.error.HTTPError as exc:
            detail = f"{exc.code} {exc.read().decode(errors='replace')[:2000]}"
            if exc.code not in TRANSIENT_HTTP_CODES:
                raise ConnectorError(f"Kafka Connect refused the connector: {detail}") from exc
            last = detail
        except (urllib.error.URLError, OSError) as exc:  # a timeout, or Connect restarting
            last = repr(exc)
        if time.monotonic() >= deadline:
            raise ConnectorError(f"Kafka Connect did not accept the connector within {timeout:.0f} s "
                                 f"({attempt} attempts); last answer: {last}")
        log.warning("connector registration retried", extra={"attempt": attempt, "answer": last})
        time.sleep(min(2.0, 0.25 * attempt))
    log.info("connector registered", extra={"connector": CONNECTOR_NAME, "attempts": attempt})


def status(settings: Settings) -> dict[str, Any] | None:
    try:
        return _request("GET", f"{settings.connect_url}/connectors/{CONNECTOR_NAME}/status", timeout=3)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def wait_running(settings: Settings, timeout: float = 120) -> None:
    """Wait until the connector and its task run; a FAILED task fails at once with Connect's trace."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        try:
            last = status(settings)
        except (urllib.error.URLError, OSError):
            last = None
        if last:
            tasks = last.get("tasks") or []
            failed = [t for t in tasks if t.get("state") == "FAILED"]
            if failed:
                raise ConnectorError(f"Debezium task failed: {failed[0].get('trace', '')[:3000]}")
            if last["connector"]["state"] == "RUNNING" and tasks and all(t["state"] == "RUNNING" for t in tasks):
                return
        time.sleep(0.25)
    raise ConnectorError(f"connector {CONNECTOR_NAME} not running after {timeout:.0f} s; last status: {last}")


def failed(state: dict[str, Any] | None) -> bool:
    """Whether a connector status (`status`) shows the connector or any of its tasks FAILED."""
    if not state:
        return False
    return state["connector"]["state"] == "FAILED" or any(t.get("state") == "FAILED" for t in state.get("tasks", []))


def restart(settings: Settings, only_failed: bool = True) -> None:
    """Restart the connector and its tasks through Connect's REST API (only the failed ones with `only_failed`).
    A restarted Debezium task resumes from its replication slot and the offsets Connect stored. Connect answers at
    once (202) and restarts them in the background: `wait_running` waits for the result."""
    query = f"includeTasks=true&onlyFailed={'true' if only_failed else 'false'}"
    _request("POST", f"{settings.connect_url}/connectors/{CONNECTOR_NAME}/restart?{query}", timeout=10)
    log.info("connector restarted", extra={"connector": CONNECTOR_NAME, "only_failed": only_failed})


def delete(settings: Settings) -> None:
    try:
        _request("DELETE", f"{settings.connect_url}/connectors/{CONNECTOR_NAME}")
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise
