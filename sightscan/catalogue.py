"""The catalogue: every Kafka topic and consumer group of SightScan, in one table.

Each topic says how it is named, how many partitions it has and which topic configs it sets beyond the cluster's
defaults (cleanup policy, retention), what its key is, who writes it, who reads it (and in which consumer group),
and who creates it when it is missing. Everything else reads this table rather than listing topics itself:

    sightscan/topics.py            the topic names the services use, and creating missing topics
    streams/worker.py              the topics the stream worker creates at start, its Faust table's name
    sightscan/asyncapi.py          the AsyncAPI document's channels and operations (+ each message's schema)
    deploy/k8s/app/sightscan_k8s.py  the topics a cluster declares: kafka/topics.yaml is generated from it
    tests/core/test_catalogue.py   checks that every one of them, docker-compose.yml, deploy/k8s, the services'
                                   consumer groups and the local stack's Connect agree with it

What a message looks like (payload schemas, key schemas, examples) is in sightscan/asyncapi.py, and the change
events' envelope in sightscan/events.py; this module only names things. It imports nothing of SightScan's, so
anything can read it.

Names are templates: `{TOPIC_PREFIX}` is the setting TOPIC_PREFIX ("sightscan" by default) and `{STREAMS_APP_ID}`
the stream worker's app id (STREAMS_APP_ID, by default `<TOPIC_PREFIX>-streams`). `Topic.name()` fills them in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

PREFIX = "{TOPIC_PREFIX}"      # placeholder of the topic prefix in a name template
APP_ID = "{STREAMS_APP_ID}"    # placeholder of the stream worker's app id
DEFAULT_PREFIX = "sightscan"

WATCHED_TABLES = ("cities", "sights", "images", "labels", "models")  # the tables Debezium streams (connectors/)
COMMAND_KINDS = ("crawl", "labelling", "training")
CITY_STATE_TABLE = "city-state"  # the stream worker's Faust table: its changelog topic is named after it


def default_app_id(prefix: str) -> str:
    """The stream worker's app id when STREAMS_APP_ID is not set (streams/settings.py StreamsSettings.app_id_for,
    through sightscan.config.consumer_group)."""
    return f"{prefix}-streams"


def fill(template: str, prefix: str = DEFAULT_PREFIX, app_id: str | None = None) -> str:
    """A name from its template, with these settings."""
    return template.replace(APP_ID, app_id or default_app_id(prefix)).replace(PREFIX, prefix)


# Who is who -------------------------------------------------------------------------------------------------------

# Every service that writes or reads a topic (the AsyncAPI document's `x-service`).
SERVICES = {
    "debezium": "Debezium's PostgreSQL connector (sightscan-postgres) in Kafka Connect (connectors/)",
    "rekeyer": "the stream worker's first stage (streams/rekey.py), a Kafka-transactional thread of each worker",
    "marts": "the stream worker's Faust marts agent (streams/worker.py)",
    "crawler": "the crawler service (producers/service.py)",
    "labeller": "the labeller service (consumers/service.py)",
    "trainer": "the trainer service (trainer/service.py), on the stack or on the EC2 training instance",
    "dispatcher": "cloud mode only: the trainer's dispatch role beside the stack, which starts the EC2 instance",
    "gateway": "the gateway (gateway/follower.py): every instance follows model changes to hot-swap models",
}

# Who creates a topic that does not exist yet (`Topic.created_by`).
STREAM_WORKER = "stream worker"          # streams/worker.py, at start, before it subscribes (sightscan/topics.py)
COMMAND_CONSUMERS = "command consumers"  # sightscan/commands.py CommandWorker, at start: its kind's command topic
                                         # and the command dead letters (crawler, labeller, trainer, dispatcher)
FAUST = "faust"                          # Faust, for the stream worker's table changelog and its leader election
DEBEZIUM = "debezium"                    # Debezium's topic.creation.default.* (connectors/): TOPIC_PARTITIONS


# Topics -----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Topic:
    id: str                                   # the AsyncAPI channel id
    template: str                             # the name, with {TOPIC_PREFIX} and {STREAMS_APP_ID}
    title: str
    description: str
    key: str                                  # what a message's key is
    key_format: str | None                    # "json" or "text" (UTF-8); None: no message is ever written
    producers: Mapping[str, str]              # service -> what it writes, in a few words
    consumers: Mapping[str, str]              # service -> what it does with it
    created_by: tuple[str, ...]               # who creates it when it is missing
    partitions: int | None = None             # None: TOPIC_PARTITIONS
    config: Mapping[str, str] = field(default_factory=dict)  # topic configs beyond the cluster's defaults
    internal: bool = False                    # only its own service reads it; its layout may change

    def name(self, prefix: str = DEFAULT_PREFIX, app_id: str | None = None) -> str:
        return fill(self.template, prefix, app_id)

    def partition_count(self, topic_partitions: int) -> int:
        """Its partitions, where TOPIC_PARTITIONS is `topic_partitions`."""
        return topic_partitions if self.partitions is None else self.partitions


CITY_KEY = "the city id as text: one city's messages stay in one partition, in order"


def _change_topic(table: str) -> Topic:
    consumers = {"rekeyer": "turns each change into a fact, or a dead letter"}
    if table == "models":
        consumers["gateway"] = "hot-swaps a city's model when a new one is stored"
    return Topic(
        table, f"{PREFIX}.public.{table}", f"{table} changes",
        f"Every change of warehouse table {table}, written by Debezium (connectors/) within milliseconds of its "
        "commit; keyed by the row's primary key, so one row's changes stay in order.",
        key='the row\'s primary key, as JSON: {"id": 42}', key_format="json",
        producers={"debezium": f"writes every change of table {table}"}, consumers=consumers,
        created_by=(DEBEZIUM, STREAM_WORKER))


_COMMAND_FLOWS: dict[str, tuple[str, dict[str, str]]] = {  # kind -> (when the marts agent sends it, its consumers)
    "crawl": ("once a requested city is seen", {"crawler": "crawls the city (idempotent)"}),
    "labelling": ("when LABELLING_BATCH_SIZE images wait, or the oldest waited LABELLING_LINGER_S",
                  {"labeller": "labels the images (idempotent)"}),
    "training": ("at the threshold, then on growth",
                 {"trainer": "trains the city; a copy of an answered request is answered again",
                  "dispatcher": "starts the EC2 training instance"}),
}


def _command_topic(kind: str) -> Topic:
    when, consumers = _COMMAND_FLOWS[kind]
    return Topic(
        f"{kind}Commands", f"{PREFIX}.commands.{kind}", f"{kind} commands",
        f"{kind.capitalize()} requests of the stream worker, keyed by city id. Every command has a deterministic "
        "request_id: a copy (after a crash, or from a worker finishing a batch of partitions it is losing in a "
        "rebalance) carries the same id, so consumers deduplicate by it.",
        key=CITY_KEY, key_format="text", producers={"marts": when}, consumers=consumers,
        created_by=(STREAM_WORKER, COMMAND_CONSUMERS))


_TOPICS: list[Topic] = [
    *(_change_topic(table) for table in WATCHED_TABLES),
    *(_command_topic(kind) for kind in COMMAND_KINDS),
    Topic(
        "trainingEvents", f"{PREFIX}.events.training", "training outcomes",
        "The trainer's outcome of each training request, keyed as the request was; the stream worker reads it to "
        "allow the next request.",
        key="the training request's key, as it came: the city id as text for the stream worker's requests",
        key_format="text",
        producers={"trainer": "one outcome per request, before the request's offset is committed",
                   "dispatcher": "dispatched, or failed when the instance did not start"},
        consumers={"rekeyer": "turns each outcome into a fact (dispatched: none), or a dead letter"},
        created_by=(STREAM_WORKER,)),
    Topic(
        "streamsDeadLetter", f"{PREFIX}.streams.dead-letter", "stream worker dead letters",
        "Change events and training outcomes the stream worker cannot read, and facts of a city that is not in the "
        "warehouse, each with the reason; keyed as the input was. Nothing reads it: it is for operators.",
        key="the input's key, as it came (as text; none when it had none)", key_format="text",
        producers={"rekeyer": "events it cannot read, in the batch's transaction",
                   "marts": "facts of a city that is not in the warehouse"},
        consumers={}, created_by=(STREAM_WORKER,)),
    Topic(
        "commandsDeadLetter", f"{PREFIX}.commands.dead-letter", "command dead letters",
        "Commands the crawler, labeller or trainer can never carry out (malformed, unknown city), or that still "
        "failed after their retries, each with the reason; keyed as the command was. Nothing reads it: it is for "
        "operators.",
        key="the command's key, as it came (as text; none when it had none)", key_format="text",
        producers={"crawler": "malformed requests, unknown cities, requests still failing after "
                              "CRAWLER_MAX_ATTEMPTS",
                   "labeller": "malformed requests, requests Vision refused, requests still failing after "
                               "LABELLER_MAX_ATTEMPTS",
                   "trainer": "malformed requests (also announced as failed on trainingEvents)",
                   "dispatcher": "malformed requests"},
        consumers={}, created_by=(COMMAND_CONSUMERS,)),
    Topic(
        "facts", f"{APP_ID}.facts", "facts",
        "The stream worker's first stage (streams/rekey.py) turns each change event and training outcome into a "
        "small fact keyed by city, in Kafka transactions with the source offsets; its second stage (the Faust marts "
        "agent) reads them. Internal to the stream worker.",
        key=CITY_KEY, key_format="text",
        producers={"rekeyer": "one message per city and batch, in the batch's transaction",
                   "marts": "linger nudges (kind linger) through the city's own partition"},
        consumers={"marts": "applies facts to the city states, writes the data marts, emits the due commands"},
        created_by=(STREAM_WORKER,), internal=True),
    Topic(
        "cityStateChangelog", f"{APP_ID}-{CITY_STATE_TABLE}-changelog", "city-state changelog",
        "The changelog of the stream worker's Faust table city-state (streams/state.py): a worker restores the "
        "cities of its partitions from it. Compacted; internal to the stream worker, its layout changes between "
        "versions.",
        key="<city> (its summary) or <city>/<kind>/<n> (a bucket of its records), as text", key_format="text",
        producers={"marts": "every city state it changes, before the commands it calls for"},
        consumers={"marts": "restores the states of its partitions at start and rebalance"},
        created_by=(FAUST,), config={"cleanup.policy": "compact"}, internal=True),
    Topic(
        "faustLeader", f"{APP_ID}-__assignor-__leader", "Faust leader election",
        "Created by Faust for each app to elect a leader among its workers through partition assignment; no "
        "message is ever written to it. Internal.",
        key="none: no message is ever written", key_format=None,
        producers={}, consumers={"marts": "Faust's leader election (nothing is written)"},
        created_by=(FAUST,), partitions=1, internal=True),
    Topic(
        "debeziumHeartbeat", f"__debezium-heartbeat.{PREFIX}", "Debezium heartbeats",
        "Debezium's heartbeat every 5 s (heartbeat.interval.ms), which keeps the replication slot moving while no "
        "watched table changes (the heartbeat query writes table debezium_heartbeat). Nothing of SightScan reads "
        "it. Internal. The name is Debezium's: __debezium-heartbeat.<TOPIC_PREFIX>.",
        key='{"serverName": <TOPIC_PREFIX>}, as JSON', key_format="json",
        producers={"debezium": "beats every 5 s"}, consumers={},
        created_by=(DEBEZIUM,), internal=True),
]

TOPICS: dict[str, Topic] = {t.id: t for t in _TOPICS}  # channel id -> topic, in the order above


def created_by(creator: str) -> list[Topic]:
    """The topics `creator` (STREAM_WORKER, COMMAND_CONSUMERS, FAUST, DEBEZIUM) creates when they are missing."""
    return [t for t in TOPICS.values() if creator in t.created_by]


def names(prefix: str = DEFAULT_PREFIX, app_id: str | None = None) -> dict[str, str]:
    """Channel id -> the topic's name with these settings."""
    return {t.id: t.name(prefix, app_id) for t in TOPICS.values()}


# Consumer groups --------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Group:
    id: str
    template: str               # its default name; `setting`, when set, names it instead
    service: str                # the service whose consumers form it
    topics: tuple[str, ...]     # the topics it reads (channel ids)
    description: str
    setting: str = ""           # the variable that overrides the name

    def name(self, prefix: str = DEFAULT_PREFIX, app_id: str | None = None) -> str:
        return fill(self.template, prefix, app_id)


_GROUPS: list[Group] = [
    Group("rekey", f"{APP_ID}-rekey", "rekeyer", (*WATCHED_TABLES, "trainingEvents"),
          "the rekeyer's consumer group (isolation.level read_committed; offsets committed in the facts' "
          "transaction)"),
    Group("streams", APP_ID, "marts", ("facts",), "the Faust app's consumer group", setting="STREAMS_APP_ID"),
    Group("crawler", f"{PREFIX}-crawler", "crawler", ("crawlCommands",),
          "CRAWLER_GROUP_ID, by default <TOPIC_PREFIX>-crawler", setting="CRAWLER_GROUP_ID"),
    Group("labeller", f"{PREFIX}-labeller", "labeller", ("labellingCommands",),
          "LABELLER_GROUP_ID, by default <TOPIC_PREFIX>-labeller", setting="LABELLER_GROUP_ID"),
    Group("trainer", f"{PREFIX}-trainer", "trainer", ("trainingCommands",),
          "TRAINER_GROUP_ID, by default <TOPIC_PREFIX>-trainer", setting="TRAINER_GROUP_ID"),
    Group("dispatcher", f"{PREFIX}-trainer-dispatch", "dispatcher", ("trainingCommands",),
          "the trainer group followed by -dispatch"),
    Group("gateway", "sightscan-gateway-{random}", "gateway", ("models",),
          "one group per gateway instance (every instance sees every model change), reading from the start"),
]

GROUPS: dict[str, Group] = {g.id: g for g in _GROUPS}


def group_of(service: str, topic_id: str) -> Group | None:
    """The consumer group in which `service` reads the topic; None where it reads without one (Faust's changelog
    and leader topics: assigned, not subscribed)."""
    return next((g for g in GROUPS.values() if g.service == service and topic_id in g.topics), None)


# Kafka Connect's own topics and group -----------------------------------------------------------------------------
# Connect creates and formats these itself (they are no channel of the AsyncAPI document); named here so that the
# local stack (localsystem/stack/kafka.py), docker-compose.yml and deploy/k8s/kafka/connect.yaml agree.

CONNECT_GROUP = f"{PREFIX}-connect"
CONNECT_STORAGE_TOPICS = {
    "config": f"{PREFIX}-connect-configs",
    "offset": f"{PREFIX}-connect-offsets",
    "status": f"{PREFIX}-connect-status",
}
