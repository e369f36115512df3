"""Creating the topics a service reads before it subscribes (a consumer that starts first would ignore them)."""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from sightscan.config import Settings


def ensure_topics(settings: Settings, names: Iterable[str], timeout: float = 30) -> None:
    """Create each missing topic with TOPIC_PARTITIONS partitions; existing topics are left as they are."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [NewTopic(n, num_partitions=settings.topic_partitions, replication_factor=1)
               for n in names if n not in existing]
    if not missing:
        return
    for name, future in admin.create_topics(missing, operation_timeout=timeout).items():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":  # another worker created it first
                raise RuntimeError(f"could not create topic {name}: {exc}") from exc
