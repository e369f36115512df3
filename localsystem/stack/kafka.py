"""Apache Kafka (KRaft: one node, or three combined broker-controllers) and Kafka Connect with the Debezium plugin,
run from their official jars."""

from __future__ import annotations

import abc
import base64
import json
import logging
import shutil
import subprocess
import urllib.request
import uuid
from pathlib import Path

from confluent_kafka.admin import AdminClient

from localsystem.stack.proc import (
    PidFile,
    StackError,
    port_in_use,
    require_free_port,
    start_detached,
    stop_process,
    wait_for,
)
from sightscan.config import Settings
from sightscan.kafka import client_config

log = logging.getLogger(__name__)
_QUIET = logging.getLogger("localsystem.stack.rdkafka-probe")
_QUIET.setLevel(logging.CRITICAL)

TEMPLATES = Path(__file__).parent / "templates"


def _properties(values: dict[str, object]) -> str:
    return "".join(f"{k}={v}\n" for k, v in values.items())


class _JavaService(abc.ABC):
    """A JVM service of the stack: config file, detached process, pid file, health check."""

    name = "java"
    main_class = ""
    env_port_name = ""

    def __init__(self, settings: Settings, java: str, classpath: Path) -> None:
        self.settings, self.java, self.classpath = settings, java, classpath
        self.root = settings.home / self.name
        self.config_path = self.root / f"{self.name}.properties"
        self.log_path = settings.home / "logs" / f"{self.name}.log"
        self.pidfile = PidFile(settings.home / "run" / f"{self.name}.pid", str(self.config_path))
        self._launched: subprocess.Popen | None = None  # the process this object started last, if any

    def java_cmd(self, main_class: str, *args: str) -> list[str]:
        log4j = self.settings.home / "log4j2.properties"
        if not log4j.exists():
            shutil.copy(TEMPLATES / "log4j2.properties", log4j)
        # Small heaps and the serial collector: the stack shares a 2-core laptop with the services.
        return [self.java, f"-Xmx{self.settings.jvm_heap}", "-Xms64m", *self.settings.jvm_options.split(),
                f"-Dlog4j2.configurationFile={log4j}", "-Djava.awt.headless=true",
                "-cp", f"{self.classpath}/*", main_class, *args]

    def running(self) -> bool:
        return self.pidfile.process() is not None

    @abc.abstractmethod
    def port(self) -> int:
        """The port the service listens on."""

    @abc.abstractmethod
    def config(self) -> dict[str, object]:
        """Its properties file, as a mapping."""

    @abc.abstractmethod
    def healthy(self) -> bool:
        """Whether it answers its own protocol."""

    def prepare(self) -> None:  # noqa: B027 - optional hook: most services need no set-up
        """One-time set-up before the first start (e.g. formatting storage)."""

    def start(self, timeout: float = 90) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process without waiting for it (nodes of a cluster need each other to become ready)."""
        self._launched = None
        if self.running():
            return
        require_free_port(self.port(), self.name, self.env_port_name)
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(_properties(self.config()))
        self.prepare()
        log.info(f"starting {self.name}", extra={"port": self.port()})
        proc = start_detached(self.java_cmd(self.main_class, str(self.config_path)), self.log_path)
        self.pidfile.write(proc.pid)
        self._launched = proc

    def wait_ready(self, timeout: float = 90) -> None:
        # Our own child is watched through its Popen: right after exec its command line (what running() matches)
        # can still be empty for a moment, which read as "exited during start-up".
        launched = self._launched
        alive = (lambda: launched.poll() is None) if launched is not None else self.running
        try:
            wait_for(self.healthy, timeout, self.name, self.log_path, alive=alive)
        except StackError as exc:
            code = launched.poll() if launched is not None else None
            if code is None:
                raise
            how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            raise StackError(f"{exc} ({self.name}: {how})") from None

    def stop(self) -> None:
        proc = self.pidfile.process()
        if proc is not None:
            log.info(f"stopping {self.name}", extra={"pid": proc.pid})
            stop_process(proc)
        self.pidfile.clear()

    def kill(self) -> None:
        """SIGKILL, for failure tests: no clean shutdown."""
        proc = self.pidfile.process()
        if proc is not None:
            proc.kill()
            proc.wait(10)
        self.pidfile.clear()


class Kafka(_JavaService):
    """One KRaft node (broker and controller in one process). Node 1 alone is the default stack; with KAFKA_BROKERS=3
    the three nodes form one cluster whose topics have three replicas, two of which must acknowledge a write."""

    main_class = "kafka.Kafka"
    env_port_name = "KAFKA_BOOTSTRAP_SERVERS"

    def __init__(self, settings: Settings, java: str, classpath: Path, node: int = 1) -> None:
        self.node = node
        self.name = "kafka" if node == 1 else f"kafka-{node}"
        super().__init__(settings, java, classpath)

    @property
    def label(self) -> str:
        return "Kafka" if self.node == 1 else f"Kafka node {self.node}"

    def port(self) -> int:
        return self.settings.kafka_nodes[self.node - 1][1]

    def controller_port(self) -> int:
        return self.settings.kafka_nodes[self.node - 1][2]

    def config(self) -> dict[str, object]:
        s = self.settings
        host, broker, controller = s.kafka_nodes[self.node - 1]
        rf, min_isr = s.replication_factor, s.min_insync_replicas
        return {
            "node.id": self.node,
            "process.roles": "broker,controller",
            "controller.quorum.voters": ",".join(f"{i}@{h}:{c}" for i, (h, _, c) in enumerate(s.kafka_nodes, 1)),
            "listeners": f"PLAINTEXT://{host}:{broker},CONTROLLER://{host}:{controller}",
            "advertised.listeners": f"PLAINTEXT://{host}:{broker}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": self.root / "data",
            "num.partitions": s.topic_partitions,
            # Every topic, internal ones included, has min(3, brokers) replicas; with three, a write needs two of
            # them (acks=all), so one broker can fail without losing or refusing an acknowledged write.
            "default.replication.factor": rf,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": 10,
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": 4,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": min_isr,
            "group.initial.rebalance.delay.ms": 0,
            "auto.create.topics.enable": "true",
            "log.retention.hours": 168,
            "log.segment.bytes": 64 * 1024 * 1024,
            "num.network.threads": 2,
            "num.io.threads": 2,
        }

    def prepare(self) -> None:
        if (self.root / "data" / "meta.properties").exists():
            return
        # One cluster id for every node, kept with node 1's state; and the cluster's size, which a stack keeps.
        first = self.settings.home / "kafka"
        first.mkdir(parents=True, exist_ok=True)
        id_file = first / "cluster.id"
        if not id_file.exists():
            id_file.write_text(random_cluster_id())
            (first / "brokers").write_text(str(self.settings.kafka_brokers))
        result = subprocess.run(
            self.java_cmd("kafka.tools.StorageTool", "format", f"--cluster-id={id_file.read_text().strip()}",
                          "-c", str(self.config_path), "--ignore-formatted"),
            capture_output=True, text=True)
        if result.returncode != 0:
            raise StackError(f"formatting Kafka storage failed:\n{(result.stdout + result.stderr)[-2000:]}")

    def launch(self) -> None:
        if not self.running():
            require_free_port(self.controller_port(), f"the controller of {self.label}", "KAFKA_CONTROLLER_PORT")
        super().launch()

    def healthy(self) -> bool:
        """This node answers as a broker and is registered in the cluster (which needs a controller quorum)."""
        if not port_in_use(self.port()):  # spares librdkafka's connection-refused noise while the JVM starts
            return False
        host = self.settings.kafka_nodes[self.node - 1][0]
        admin = AdminClient(client_config(self.settings, logger=_QUIET,
                                          **{"bootstrap.servers": f"{host}:{self.port()}"}))
        meta = admin.list_topics(timeout=2)
        return self.node in meta.brokers


def recorded_brokers(settings: Settings) -> int | None:
    """The number of Kafka nodes the stack in SIGHTSCAN_HOME was created with (None: not created yet)."""
    path = settings.home / "kafka" / "brokers"
    return int(path.read_text()) if path.exists() else None


def random_cluster_id() -> str:
    """What `StorageTool random-uuid` prints (a base64url UUID), without paying for a second JVM start. Like
    Kafka's Uuid.randomUuid, never one starting with "-": the tool's argument parser would take it for an option
    (one stack in 64 failed to format its storage that way)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class Connect(_JavaService):
    name = "connect"
    main_class = "org.apache.kafka.connect.cli.ConnectDistributed"
    env_port_name = "CONNECT_URL"

    def __init__(self, settings: Settings, java: str, classpath: Path, plugin_path: Path) -> None:
        super().__init__(settings, java, classpath)
        self.plugin_path = plugin_path

    def port(self) -> int:
        return self.settings.connect_port

    def config(self) -> dict[str, object]:
        s = self.settings
        return {
            "bootstrap.servers": s.bootstrap_servers,
            "group.id": f"{s.topic_prefix}-connect",
            "key.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            # Plain JSON envelopes (no inline schema): smaller events, simpler for every consumer.
            "key.converter.schemas.enable": "false",
            "value.converter.schemas.enable": "false",
            "config.storage.topic": f"{s.topic_prefix}-connect-configs",
            "offset.storage.topic": f"{s.topic_prefix}-connect-offsets",
            "status.storage.topic": f"{s.topic_prefix}-connect-status",
            # Connect's own topics are replicated as the cluster allows (3 with three brokers).
            "config.storage.replication.factor": s.replication_factor,
            "offset.storage.replication.factor": s.replication_factor,
            "status.storage.replication.factor": s.replication_factor,
            # Debezium's events: written once (idempotence) and on every in-sync replica before they count.
            "producer.acks": "all",
            "producer.enable.idempotence": "true",
            # Send at once: Kafka 4's 5 ms default linger only adds latency at our rates (bench/cdc_latency's
            # sweep: p99 at 1,000 rows/s 24 ms with 0, 44 ms with 20; throughput was not the limit).
            "producer.linger.ms": 0,
            # Flush source offsets (the WAL position Debezium confirms) often: fewer replays after a crash.
            "offset.flush.interval.ms": 1000,
            "plugin.path": self.plugin_path,
            "listeners": f"http://127.0.0.1:{s.connect_port}",
            "rest.advertised.host.name": "127.0.0.1",
            "rest.advertised.port": s.connect_port,
            "topic.creation.enable": "true",
            # A connector may tune its own producer (producer.override.*): how bench/cdc_latency tries settings.
            "connector.client.config.override.policy": "All",
        }

    def healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.settings.connect_url}/connectors", timeout=2) as resp:
            return resp.status == 200 and isinstance(json.loads(resp.read()), list)
