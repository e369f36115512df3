"""Configuration from environment variables, with local defaults.

The names of the original system are kept (PGHOST…, MAX_IMAGES_PER_SIGHT, MIN_LABELLED_IMAGES_NEEDED_FOR_TRAINING…).
A malformed value fails at start-up with a message naming the variable and how to set it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message says which one and how to set it."""


def env_field(name: str, default: Any, parse: Callable[[str], Any] = str, doc: str = "") -> Any:
    """A dataclass field read from the environment variable `name` (every service's settings use this)."""
    return field(default=default, metadata={"env": name, "parse": parse, "doc": doc})


_env = env_field


def non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be > 0")
    return value


def positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be > 0")
    return value


def non_negative_float(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def tcp_port(raw: str) -> int:
    value = int(raw)
    if not 0 < value <= 65535:
        raise ValueError("must be a TCP port, 1..65535")
    return value


def tcp_port_or_zero(raw: str) -> int:
    """A port to listen on, where 0 lets the system pick a free one."""
    return 0 if raw.strip() == "0" else tcp_port(raw)


def unit_interval(raw: str) -> float:
    value = float(raw)
    if not 0 <= value <= 1:
        raise ValueError("must be between 0 and 1")
    return value


def boolean(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def one_of(*choices: str) -> Callable[[str], str]:
    """A parser accepting one of `choices` (case-insensitive)."""
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value
    return parse


def consumer_group(topic_prefix: str, service: str, named: str = "") -> str:
    """A service's Kafka consumer group: the one its `*_GROUP_ID` names, else `<TOPIC_PREFIX>-<service>`, so two
    systems that share a Kafka cluster under different prefixes never share a group."""
    return named or f"{topic_prefix}-{service}"


def read_fields(cls: type, environ: Mapping[str, str]) -> dict[str, Any]:
    """Each env_field of a settings dataclass, parsed; ConfigError names a malformed variable and its default."""
    values: dict[str, Any] = {}
    for f in fields(cls):
        name, parse = f.metadata["env"], f.metadata["parse"]
        raw = environ.get(name)
        if raw is None or raw == "":
            values[f.name] = parse(f.default) if isinstance(f.default, str) else f.default
            continue
        try:
            values[f.name] = parse(raw)
        except (ValueError, TypeError) as exc:
            doc = f" ({f.metadata['doc']})" if f.metadata["doc"] else ""
            raise ConfigError(
                f"{name}{doc} is malformed: {raw!r}: {exc}. Set it like {name}={f.default} or unset it "
                "to use the default."
            ) from exc
    return values


def describe_fields(cls: type) -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every env_field of a settings dataclass."""
    return [(f.metadata["env"], str(f.default), f.metadata["doc"]) for f in fields(cls)]


@dataclass(frozen=True)
class SettingValue:
    """One setting as `sightscan config` shows it."""
    variable: str
    value: str     # as it will be used; "(set)" for a secret
    source: str    # "environment", "default", or "malformed: <why>"
    meaning: str


_SECRET_MARKERS = ("KEY", "TOKEN", "PASSWORD", "SECRET")


def current_values(cls: type, environ: Mapping[str, str]) -> list[SettingValue]:
    """Every env_field of a settings dataclass with its value now and where it came from."""
    out = []
    for f in fields(cls):
        name, parse, raw = f.metadata["env"], f.metadata["parse"], environ.get(f.metadata["env"])
        if raw is None or raw == "":
            value, source = str(f.default), "default"
        else:
            value, source = raw, "environment"
            try:
                parse(raw)
            except (ValueError, TypeError) as exc:
                source = f"malformed: {exc}"
        if source == "environment" and any(m in name for m in _SECRET_MARKERS):
            value = "(set)"
        out.append(SettingValue(name, value, source, f.metadata["doc"]))
    return out


class ServiceSettings:
    """Base of a service's own settings dataclass (crawler, labeller, gateway): reading and describing them."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Any:
        """Read every setting; a malformed value raises ConfigError naming the variable. Overrides win (tests)."""
        values = read_fields(cls, os.environ if environ is None else environ)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(variable, default, meaning) for every setting, for the README and `sightscan config`."""
        return describe_fields(cls)


def _path(raw: str) -> Path:
    return Path(raw).expanduser().resolve()


@dataclass(frozen=True)
class Settings:
    # Warehouse (names from the original system).
    pghost: str = _env("PGHOST", "127.0.0.1", doc="PostgreSQL host")
    pgport: int = _env("PGPORT", 5432, non_negative_int, "PostgreSQL port")
    pgdatabase: str = _env("PGDATABASE", "sightscan", doc="database name")
    pguser: str = _env("PGUSER", "sightscan", doc="database user (needs REPLICATION for Debezium)")
    pgpassword: str = _env("PGPASSWORD", "sightscan", doc="database password")

    # Kafka and Kafka Connect.
    kafka_bootstrap_servers: str = _env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092", doc="Kafka brokers, host:port,…")
    kafka_controller_port: int = _env("KAFKA_CONTROLLER_PORT", 9093, non_negative_int, "local stack's KRaft port")
    kafka_brokers: int = _env("KAFKA_BROKERS", 1, positive_int,
                              "Kafka nodes of the local stack (1, or 3 for replication); node i listens on the "
                              "first broker and controller ports + 2i unless KAFKA_BOOTSTRAP_SERVERS lists them all")
    kafka_replication_factor: int = _env("KAFKA_REPLICATION_FACTOR", 0, non_negative_int,
                                         "replicas of the topics SightScan creates (0: min(3, KAFKA_BROKERS)); "
                                         "with 3 or more, a write needs 2 in sync")
    connect_url: str = _env("CONNECT_URL", "http://127.0.0.1:8083", doc="Kafka Connect REST URL")
    cdc_poll_interval_ms: int = _env("CDC_POLL_INTERVAL_MS", 5, positive_int,
                                     "Debezium's wait when the WAL has nothing new: lower is faster CDC, higher is "
                                     "less idle CPU (measured: 5 ms ~19% of a core, 20 ~9%, 50 ~4%)")
    topic_prefix: str = _env("TOPIC_PREFIX", "sightscan", doc="prefix of every SightScan topic")
    topic_partitions: int = _env("TOPIC_PARTITIONS", 4, non_negative_int, "partitions of topics SightScan creates")

    # Local stack state.
    home: Path = _env("SIGHTSCAN_HOME", ".sightscan", _path, "folder for the local stack's data, logs and pids")
    cache: Path = _env("SIGHTSCAN_CACHE", "~/.cache/sightscan", _path, "folder for resolved Kafka/Debezium jars")
    jvm_heap: str = _env("SIGHTSCAN_JVM_HEAP", "512m", doc="max heap of each local JVM (Kafka, Connect)")
    jvm_options: str = _env("SIGHTSCAN_JVM_OPTIONS", "-XX:+UseSerialGC",
                            doc="more options of each local JVM, e.g. its garbage collector")

    # Pipeline limits and thresholds (names from the original system).
    max_sights_per_city: int = _env("MAX_SIGHTS_PER_CITY", 20, non_negative_int,
                                    "sights the crawler looks for per city")
    max_images_per_sight: int = _env("MAX_IMAGES_PER_SIGHT", 100, non_negative_int,
                                     "images the crawler keeps per sight")
    max_google_vision_calls_per_new_city: int = _env("MAX_GOOGLE_VISION_CALLS_PER_NEW_CITY", 200, non_negative_int,
                                                    "hard cap on images sent to Google Vision per city")
    min_labelled_images_needed_for_training: int = _env(
        "MIN_LABELLED_IMAGES_NEEDED_FOR_TRAINING", 100, non_negative_int, "labelled images before a city is trained")
    min_image_number_per_label: int = _env("MIN_IMAGE_NUMBER_PER_LABEL", 20, non_negative_int,
                                          "labelled images a sight needs to be a class")
    mts_epochs: int = _env("MTS_EPOCHS", 30, non_negative_int, "training epochs")
    retrain_growth_fraction: float = _env("RETRAIN_GROWTH_FRACTION", 0.25, positive_float,
                                          "retrain when labelled data grew by this fraction since the last model")
    retrain_min_corrections: int = _env("RETRAIN_MIN_CORRECTIONS", 10, positive_int,
                                        "retrain when this many corrections (user boxes and user negatives, less "
                                        "those undone) arrived since the last model")

    # Logging.
    log_level: str = _env("SIGHTSCAN_LOG_LEVEL", "INFO", doc="DEBUG, INFO, WARNING, ERROR")
    log_format: str = _env("SIGHTSCAN_LOG_FORMAT", "json", doc="json or console")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        return cls(**read_fields(cls, os.environ if environ is None else environ))

    def require(self, *env_names: str, environ: Mapping[str, str] | None = None) -> None:
        """Fail unless each named variable is set explicitly (for settings with no safe default in production)."""
        environ = os.environ if environ is None else environ
        missing = [n for n in env_names if not environ.get(n)]
        if missing:
            raise ConfigError(
                "missing required setting(s): " + ", ".join(missing) + ". Set them in the environment, e.g. "
                + " ".join(f"export {n}=…" for n in missing)
            )

    # Derived values --------------------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        return (f"host={self.pghost} port={self.pgport} dbname={self.pgdatabase} "
                f"user={self.pguser} password={self.pgpassword}")

    @property
    def kafka_port(self) -> int:
        return self.kafka_nodes[0][1]

    def _listed_servers(self) -> list[str]:
        return [h.strip() for h in self.kafka_bootstrap_servers.split(",") if h.strip()]

    @property
    def kafka_nodes(self) -> list[tuple[str, int, int]]:
        """(host, broker port, controller port) of each Kafka node of the local stack, node 1 first."""
        listed = [h.rsplit(":", 1) for h in self._listed_servers()]
        host, first = listed[0][0], int(listed[0][1])
        brokers = ([int(port) for _, port in listed] if len(listed) >= self.kafka_brokers
                   else [first + 2 * i for i in range(self.kafka_brokers)])
        return [(host, brokers[i], self.kafka_controller_port + 2 * i) for i in range(self.kafka_brokers)]

    @property
    def bootstrap_servers(self) -> str:
        """What clients bootstrap from: every broker (KAFKA_BOOTSTRAP_SERVERS, or all the local stack's nodes when it
        names only the first), so that a client starts while any one of them is down."""
        listed = self._listed_servers()
        if len(listed) >= self.kafka_brokers:
            return ",".join(listed)
        return ",".join(f"{host}:{port}" for host, port, _ in self.kafka_nodes)

    @property
    def replication_factor(self) -> int:
        """Replicas of every topic: KAFKA_REPLICATION_FACTOR, or 3 on a local cluster of three nodes or more, else
        as many as it has."""
        return self.kafka_replication_factor or min(3, self.kafka_brokers)

    @property
    def min_insync_replicas(self) -> int:
        """With acks=all, a write needs this many replicas: 2 of 3 lets one broker fail and lose nothing."""
        return 2 if self.replication_factor >= 3 else 1

    @property
    def connect_port(self) -> int:
        return urlparse(self.connect_url).port or 8083

    def env(self) -> dict[str, str]:
        """These settings as environment variables, for child processes."""
        return {f.metadata["env"]: str(getattr(self, f.name)) for f in fields(self)}


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting, for the README and `sightscan config`."""
    return describe_fields(Settings)
