"""Every Kafka topic SightScan uses, named in one place, and creating them before a service subscribes.

Topic names start with TOPIC_PREFIX (Settings.topic_prefix, "sightscan" by default).

# Topics --------------------------------------------------------------------------------
#
# Commands are emitted by the stream agents (streams/), each on its own topic, keyed by city id (as text) so one
# city's work stays ordered. Values are JSON objects; every command has a deterministic `request_id`: a command
# redelivered after a crash carries the same id, so consumers deduplicate by it.
#
#   <prefix>.commands.crawl       {"request_id": "crawl-<city>", "city_id", "city", "max_sights_per_city",
#                                  "max_images_per_sight", "ts_ms"}
#   <prefix>.commands.labelling   {"request_id": "label-<city>-<seq>", "city_id", "city", "image_ids": [...],
#                                  "ts_ms"}            (an image is never in two outstanding requests)
#   <prefix>.commands.training    {"request_id": "train-<city>-<seq>", "city_id", "city", "epochs", "classes": [...],
#                                  "labelled_images", "reason": "threshold" | "growth", "ts_ms"}
#   <prefix>.events.training      {"request_id", "city_id", "city", "trigger", "status": "succeeded" | "failed" |
#                                  "dispatched", ...} (published by the trainer; succeeded adds version, model_id,
#                                  classes, metrics; the exact variants are in sightscan/asyncapi.py)
#   <prefix>.streams.dead-letter  {"topic", "partition", "offset", "key", "value", "reason", "ts_ms"}
#   <prefix>.commands.dead-letter {"topic", "partition", "offset", "key", "value", "reason", "ts_ms"}
#   <prefix>.public.<table>       Debezium change events of a watched table (sightscan/events.py parses them)
#   <app id>.facts                the stream worker's city-keyed facts (streams/): a message is a list of one city's
#                                  facts from one rekey batch, or one fact (a linger nudge)
#
# sightscan/asyncapi.py catalogues every topic (AsyncAPI 3: channel, key, payload schema, publishers, consumers).
"""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import KafkaException
from confluent_kafka.admin import NewTopic

from sightscan.config import Settings
from sightscan.kafka import admin

WATCHED_TABLES = ("cities", "sights", "images", "labels", "models")
COMMAND_KINDS = ("crawl", "labelling", "training")


def change_topic(table: str, prefix: str = "sightscan") -> str:
    """The Kafka topic Debezium writes a table's changes to, e.g. sightscan.public.images."""
    if table not in WATCHED_TABLES:
        raise ValueError(f"{table!r} is not a watched table; expected one of {', '.join(WATCHED_TABLES)}")
    return f"{prefix}.public.{table}"


def command_topic(kind: str, prefix: str = "sightscan") -> str:
    if kind not in COMMAND_KINDS:
        raise ValueError(f"unknown command {kind!r}; expected one of {', '.join(COMMAND_KINDS)}")
    return f"{prefix}.commands.{kind}"


def training_events_topic(prefix: str = "sightscan") -> str:
    """The trainer's outcomes, one per training request."""
    return f"{prefix}.events.training"


def dead_letter_topic(prefix: str = "sightscan") -> str:
    """Change events and facts the stream worker cannot read."""
    return f"{prefix}.streams.dead-letter"


def command_dead_letter_topic(prefix: str = "sightscan") -> str:
    """Commands that can never be processed (sightscan/commands.py)."""
    return f"{prefix}.commands.dead-letter"


def facts_topic(app_id: str) -> str:
    return f"{app_id}.facts"


def ensure_topics(settings: Settings, names: Iterable[str], timeout: float = 30) -> None:
    """Create each missing topic with TOPIC_PARTITIONS partitions, replicated as the cluster allows; existing topics
    are left as they are. A consumer that subscribes before its topic exists would ignore it."""
    client = admin(settings)
    existing = set(client.list_topics(timeout=timeout).topics)
    missing = [NewTopic(n, num_partitions=settings.topic_partitions, replication_factor=settings.replication_factor,
                        config={"min.insync.replicas": str(settings.min_insync_replicas)})
               for n in names if n not in existing]
    if not missing:
        return
    for name, future in client.create_topics(missing, operation_timeout=timeout).items():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":  # another worker created it first
                raise RuntimeError(f"could not create topic {name}: {exc}") from exc
