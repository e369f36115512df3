"""What the soak samples each interval, as {series: value}; series names are `kind:name` or `kind`.

  rss_mb:<process>, cpu_pct:<process>   psutil, per process of the system: the five services (streams, crawler,
        labeller, trainer, gateway), the demo's web sources, the supervisor, PostgreSQL, each Kafka node, Kafka
        Connect, and the soak itself. A process counts with its children (PostgreSQL: the postmaster and every
        backend, so shared buffers count once per backend that touched them), except the supervisor and the
        soak, whose children are the services. CPU is the process's CPU seconds (its reaped children's included)
        since the last sample over the wall time, in % of one core; none across a restart (a new pid).
  kafka_log_mb      disk used by every Kafka node's log directory (du: preallocated sparse index files count as
                    the blocks they use).
  db_mb             pg_database_size of the warehouse.
  slot_wal_mb:<slot>  pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) of each replication slot: the WAL the
                    server keeps for Debezium.
  lag:<group>       for each consumer group with committed offsets: the sum over its partitions of the end offset
                    minus the committed offset (AdminClient list_consumer_group_offsets and list_offsets, read
                    committed). A transactional topic's last commit marker counts as one message.
  host_load1        the machine's 1-minute load average (everything on it, other people's work included).
The websocket series (ws_*) come from bench/soak/load.py.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from pathlib import Path

import psutil

from localsystem.stack import LocalStack
from localsystem.stack.services import services, supervisor
from sightscan import db, kafka
from sightscan.config import Settings

MB = 1024 * 1024
NO_CHILDREN = ("supervisor", "soak")
SERVICES = ("streams", "crawler", "labeller", "trainer", "gateway")  # the services (its RSS target)


def du_bytes(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
    return total


def postmaster(data: Path) -> psutil.Process | None:
    """The postmaster of the cluster in `data` (line 1 of its postmaster.pid)."""
    try:
        return psutil.Process(int((data / "postmaster.pid").read_text().split()[0]))
    except (OSError, ValueError, IndexError, psutil.Error):
        return None


class Sampler:
    def __init__(self, settings: Settings, stack: LocalStack) -> None:
        self.settings, self.stack = settings, stack
        self.admin = kafka.admin(settings)
        self.restarts: Counter[str] = Counter()  # pid changes seen per process
        self._cpu: dict[str, tuple[int, float, float]] = {}  # name -> (pid, CPU seconds, monotonic)

    def processes(self) -> dict[str, psutil.Process | None]:
        found: dict[str, psutil.Process | None] = {svc.name: svc.pidfile.process() for svc in services(self.settings)}
        found["supervisor"] = supervisor(self.settings).pidfile.process()
        found["postgres"] = postmaster(self.stack.postgres.data)
        for node in self.stack.kafka_nodes:
            found[node.name] = node.pidfile.process()
        found["connect"] = self.stack.connect.pidfile.process()
        found["soak"] = psutil.Process()
        return found

    def _process(self, name: str, proc: psutil.Process) -> dict[str, float]:
        members = [proc] if name in NO_CHILDREN else [proc, *proc.children(recursive=True)]
        rss, cpu = 0, 0.0
        for i, member in enumerate(members):
            with contextlib.suppress(psutil.Error), member.oneshot():
                rss += member.memory_info().rss
                times = member.cpu_times()
                cpu += times.user + times.system + (times.children_user + times.children_system if i == 0 else 0)
        out = {f"rss_mb:{name}": rss / MB}
        now = time.monotonic()
        previous = self._cpu.get(name)
        if previous is not None and previous[0] == proc.pid and now > previous[2]:
            out[f"cpu_pct:{name}"] = max(0.0, 100 * (cpu - previous[1]) / (now - previous[2]))
        elif previous is not None:
            self.restarts[name] += 1
        self._cpu[name] = (proc.pid, cpu, now)
        return out

    def storage(self) -> dict[str, float]:
        out = {"kafka_log_mb": sum(du_bytes(node.root / "data") for node in self.stack.kafka_nodes) / MB}
        with db.transaction(self.settings) as cur:
            cur.execute("SELECT pg_database_size(current_database())")
            out["db_mb"] = cur.fetchone()[0] / MB
            cur.execute("SELECT slot_name, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)"
                        " FROM pg_replication_slots")
            for slot, retained in cur.fetchall():
                out[f"slot_wal_mb:{slot}"] = float(retained or 0) / MB
        return out

    def lag(self) -> dict[str, float]:
        from confluent_kafka import ConsumerGroupTopicPartitions, IsolationLevel, TopicPartition
        from confluent_kafka.admin import OffsetSpec

        listed = self.admin.list_consumer_groups(request_timeout=10).result()
        committed: dict[str, list] = {}
        for group in sorted(g.group_id for g in listed.valid):
            futures = self.admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                                             request_timeout=10)
            parts = [tp for tp in next(iter(futures.values())).result().topic_partitions if tp.offset >= 0]
            if parts:
                committed[group] = parts
        wanted = {(tp.topic, tp.partition) for parts in committed.values() for tp in parts}
        if not wanted:
            return {}
        ends_f = self.admin.list_offsets({TopicPartition(t, p): OffsetSpec.latest() for t, p in wanted},
                                         isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=10)
        ends = {(tp.topic, tp.partition): f.result().offset for tp, f in ends_f.items()}
        return {f"lag:{group}": float(sum(max(0, ends[(tp.topic, tp.partition)] - tp.offset) for tp in parts))
                for group, parts in committed.items()}

    def sample(self) -> tuple[dict[str, float], list[str]]:
        """One sample of everything; and what could not be sampled this time (one line each)."""
        out: dict[str, float] = {"host_load1": os.getloadavg()[0]}
        problems: list[str] = []
        for name, proc in self.processes().items():
            if proc is None:
                problems.append(f"{name}: not running")
                continue
            try:
                out.update(self._process(name, proc))
            except psutil.Error as exc:
                problems.append(f"{name}: {exc}")
        for part in (self.storage, self.lag):
            try:
                out.update(part())
            except Exception as exc:  # a slow broker or database is a finding, not the end of the soak
                problems.append(f"{part.__name__}: {exc!r}")
        return out, problems
