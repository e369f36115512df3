"""Apache Kafka (single node, KRaft) and Kafka Connect with the Debezium plugin, run from their official jars."""

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

from sightscan.config import Settings
from sightscan.kafka import client_config
from sightscan.stack.proc import (
    PidFile,
    StackError,
    port_in_use,
    require_free_port,
    start_detached,
    stop_process,
    wait_for,
)

log = logging.getLogger(__name__)
_QUIET = logging.getLogger("sightscan.stack.rdkafka-probe")
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
        if self.running():
            return
        require_free_port(self.port(), self.name, self.env_port_name)
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(_properties(self.config()))
        self.prepare()
        log.info(f"starting {self.name}", extra={"port": self.port()})
        proc = start_detached(self.java_cmd(self.main_class, str(self.config_path)), self.log_path)
        self.pidfile.write(proc.pid)
        wait_for(self.healthy, timeout, self.name, self.log_path, alive=lambda: proc.poll() is None)

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
    name = "kafka"
    main_class = "kafka.Kafka"
    env_port_name = "KAFKA_BOOTSTRAP_SERVERS"

    def port(self) -> int:
        return self.settings.kafka_port

    def config(self) -> dict[str, object]:
        s = self.settings
        broker, controller = s.kafka_port, s.kafka_controller_port
        return {
            "node.id": 1,
            "process.roles": "broker,controller",
            "controller.quorum.voters": f"1@127.0.0.1:{controller}",
            "listeners": f"PLAINTEXT://127.0.0.1:{broker},CONTROLLER://127.0.0.1:{controller}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{broker}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": self.root / "data",
            "num.partitions": s.topic_partitions,
            # A single node: every internal topic has one replica.
            "offsets.topic.replication.factor": 1,
            "offsets.topic.num.partitions": 10,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "transaction.state.log.num.partitions": 4,
            "share.coordinator.state.topic.replication.factor": 1,
            "share.coordinator.state.topic.min.isr": 1,
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
        id_file = self.root / "cluster.id"
        if not id_file.exists():
            id_file.write_text(random_cluster_id())
        result = subprocess.run(
            self.java_cmd("kafka.tools.StorageTool", "format", f"--cluster-id={id_file.read_text().strip()}",
                          "-c", str(self.config_path), "--ignore-formatted"),
            capture_output=True, text=True)
        if result.returncode != 0:
            raise StackError(f"formatting Kafka storage failed:\n{(result.stdout + result.stderr)[-2000:]}")

    def start(self, timeout: float = 90) -> None:
        if not self.running():
            require_free_port(self.settings.kafka_controller_port, "the Kafka controller", "KAFKA_CONTROLLER_PORT")
        super().start(timeout)

    def healthy(self) -> bool:
        if not port_in_use(self.port()):  # spares librdkafka's connection-refused noise while the JVM starts
            return False
        admin = AdminClient(client_config(self.settings, logger=_QUIET))
        meta = admin.list_topics(timeout=2)
        return bool(meta.brokers)


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
            "bootstrap.servers": s.kafka_bootstrap_servers,
            "group.id": f"{s.topic_prefix}-connect",
            "key.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            # Plain JSON envelopes (no inline schema): smaller events, simpler for every consumer.
            "key.converter.schemas.enable": "false",
            "value.converter.schemas.enable": "false",
            "config.storage.topic": f"{s.topic_prefix}-connect-configs",
            "offset.storage.topic": f"{s.topic_prefix}-connect-offsets",
            "status.storage.topic": f"{s.topic_prefix}-connect-status",
            "config.storage.replication.factor": 1,
            "offset.storage.replication.factor": 1,
            "status.storage.replication.factor": 1,
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
