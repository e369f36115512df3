"""The names of SightScan's Kafka topics, and creating them before a service subscribes.

Every topic and consumer group, with its partitions, configs, key, producers and consumers, is in the catalogue,
sightscan/catalogue.py; the functions here give one topic's name from it with the settings (TOPIC_PREFIX,
Settings.topic_prefix, "sightscan" by default; the stream worker's app id). What the messages hold is in
sightscan/asyncapi.py (the AsyncAPI document: key and payload schema of every topic, with examples) and, for the
change events' envelope, sightscan/events.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from confluent_kafka import KafkaException
from confluent_kafka.admin import NewTopic

from sightscan.catalogue import COMMAND_KINDS, TOPICS, WATCHED_TABLES
from sightscan.config import Settings
from sightscan.kafka import admin

__all__ = ["COMMAND_KINDS", "WATCHED_TABLES", "change_topic", "command_dead_letter_topic", "command_topic",
           "dead_letter_topic", "ensure_topics", "facts_topic", "training_events_topic"]


def change_topic(table: str, prefix: str = "sightscan") -> str:
    """The Kafka topic Debezium writes a table's changes to, e.g. sightscan.public.images."""
    if table not in WATCHED_TABLES:
        raise ValueError(f"{table!r} is not a watched table; expected one of {', '.join(WATCHED_TABLES)}")
    return TOPICS[table].name(prefix)


def command_topic(kind: str, prefix: str = "sightscan") -> str:
    if kind not in COMMAND_KINDS:
        raise ValueError(f"unknown command {kind!r}; expected one of {', '.join(COMMAND_KINDS)}")
    return TOPICS[f"{kind}Commands"].name(prefix)


def training_events_topic(prefix: str = "sightscan") -> str:
    """The trainer's outcomes, one per training request."""
    return TOPICS["trainingEvents"].name(prefix)


def dead_letter_topic(prefix: str = "sightscan") -> str:
    """Change events and facts the stream worker cannot read."""
    return TOPICS["streamsDeadLetter"].name(prefix)


def command_dead_letter_topic(prefix: str = "sightscan") -> str:
    """Commands that can never be processed (sightscan/commands.py)."""
    return TOPICS["commandsDeadLetter"].name(prefix)


def facts_topic(app_id: str) -> str:
    """The stream worker's city-keyed facts, named after its app id (STREAMS_APP_ID)."""
    return TOPICS["facts"].name(app_id=app_id)


def ensure_topics(settings: Settings, names: Iterable[str] | Mapping[str, int], timeout: float = 30) -> None:
    """Create each missing topic, replicated as the cluster allows; existing topics are left as they are. A consumer
    that subscribes before its topic exists would ignore it. `names` may map each name to its partitions (the
    catalogue's, Topic.partition_count); a bare name gets TOPIC_PARTITIONS."""
    client = admin(settings)
    existing = set(client.list_topics(timeout=timeout).topics)
    partitions = names if isinstance(names, Mapping) else dict.fromkeys(names, settings.topic_partitions)
    missing = [NewTopic(n, num_partitions=count, replication_factor=settings.replication_factor,
                        config={"min.insync.replicas": str(settings.min_insync_replicas)})
               for n, count in partitions.items() if n not in existing]
    if not missing:
        return
    for name, future in client.create_topics(missing, operation_timeout=timeout).items():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":  # another worker created it first
                raise RuntimeError(f"could not create topic {name}: {exc}") from exc
