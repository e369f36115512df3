"""Two small checks the Kubernetes manifests run inside SightScan's image (mounted from a ConfigMap).

    python /opt/sightscan-k8s/sightscan_k8s.py wait-for-topics   # init container: every topic exists
    python /opt/sightscan-k8s/sightscan_k8s.py ready             # readiness: PostgreSQL and Kafka answer

wait-for-topics: SightScan's services create a topic they miss with replication factor 1 (sightscan.topics,
Faust's topic_replication_factor). On a cluster with min.insync.replicas=2 such a topic refuses every acks=all
write, so here the topics are KafkaTopic resources (replicas 3) and no service starts before the Topic Operator has
created all of them. The names come from the project's own functions, with this pod's settings.

ready: the services other than the gateway serve no HTTP health endpoint; this proves at least that the pod's
settings reach the warehouse and the brokers.
"""

from __future__ import annotations

import sys
import time

from sightscan.config import Settings
from sightscan.topics import (
    COMMAND_KINDS,
    WATCHED_TABLES,
    change_topic,
    command_dead_letter_topic,
    command_topic,
    dead_letter_topic,
    facts_topic,
    training_events_topic,
)
from streams.settings import StreamsSettings

# The stream worker's Faust table (streams/worker.py) and Faust's own leader topic.
FAUST_TABLE = "city-state"


def wanted_topics(settings: Settings, streams: StreamsSettings) -> dict[str, int]:
    """Every topic SightScan's services would otherwise create themselves, with its partition count."""
    prefix, app_id, parts = settings.topic_prefix, streams.app_id_for(settings.topic_prefix), settings.topic_partitions
    names = [*(change_topic(t, prefix) for t in WATCHED_TABLES), *(command_topic(k, prefix) for k in COMMAND_KINDS),
             training_events_topic(prefix), dead_letter_topic(prefix), command_dead_letter_topic(prefix),
             facts_topic(app_id), f"{app_id}-{FAUST_TABLE}-changelog"]
    return {**dict.fromkeys(names, parts), f"{app_id}-__assignor-__leader": 1}


def wait_for_topics(timeout_s: float = 900) -> int:
    from sightscan.kafka import admin

    settings = Settings.from_env()
    want = set(wanted_topics(settings, StreamsSettings.from_env()))
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            missing = want - set(admin(settings).list_topics(timeout=10).topics)
        except Exception as exc:  # the brokers are not up yet
            missing, why = want, f"Kafka does not answer: {exc}"
        else:
            why = "the Topic Operator has not created them yet"
        if not missing:
            print(f"all {len(want)} topics exist", flush=True)
            return 0
        if time.monotonic() > deadline:
            print(f"gave up waiting for {sorted(missing)} ({why})", file=sys.stderr, flush=True)
            return 1
        print(f"waiting for {len(missing)} topics ({why}): {', '.join(sorted(missing))}", flush=True)
        time.sleep(5)


def ready() -> int:
    from sightscan import db
    from sightscan.kafka import admin

    settings = Settings.from_env()
    db.connect(settings).close()
    admin(settings).list_topics(timeout=5)
    return 0


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "wait-for-topics":
        sys.exit(wait_for_topics())
    if command == "ready":
        sys.exit(ready())
    sys.exit(f"usage: {sys.argv[0]} wait-for-topics|ready")
