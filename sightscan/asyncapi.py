"""The AsyncAPI 3.0 document of every Kafka topic SightScan uses: each topic's key and payload schemas, with
examples, and who sends and receives it; served by the gateway at /asyncapi.json.

Channels and operations are rendered from the catalogue (sightscan/catalogue.py: names, partitions, configs,
producers, consumers, consumer groups); this module adds what the messages hold. Each channel's `address` is the
topic's name with the defaults (TOPIC_PREFIX "sightscan", STREAMS_APP_ID "<TOPIC_PREFIX>-streams");
`x-address-template` names it with the settings as placeholders, and `topics()` fills them in. Every message says
how its Kafka key is written in `x-key-format`: "json" (a JSON document) or "text" (UTF-8 text); its key's schema
is in the Kafka message binding. Payloads are JSON (draft-07 JSON Schema, which the AsyncAPI Schema extends).
"""

from __future__ import annotations

import copy
from typing import Any

from sightscan.catalogue import (
    APP_ID,
    COMMAND_KINDS,
    DEFAULT_PREFIX,
    PREFIX,
    SERVICES,
    TOPICS,
    WATCHED_TABLES,
    Topic,
    default_app_id,
    fill,
    group_of,
)

__all__ = ["APP_ID", "BINDING", "DEFAULT_PREFIX", "PREFIX", "SERVICES", "default_app_id", "document", "fill",
           "topics"]

BINDING = "0.5.0"              # version of the AsyncAPI Kafka bindings used


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _null(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema, or null."""
    return {"oneOf": [schema, {"type": "null"}]}


def _obj(properties: dict[str, Any], required: list[str] | None = None, closed: bool = True,
         description: str | None = None) -> dict[str, Any]:
    """An object; every property required unless `required` says otherwise; no other property when `closed`."""
    out: dict[str, Any] = {"type": "object", "required": list(properties) if required is None else required,
                           "properties": properties}
    if closed:
        out["additionalProperties"] = False
    if description:
        out["description"] = description
    return out


def _tuple(*items: dict[str, Any], description: str) -> dict[str, Any]:
    """A fixed-length JSON array, each position its own schema."""
    return {"type": "array", "items": list(items), "additionalItems": False, "minItems": len(items),
            "description": description}


ID = {"type": "integer", "minimum": 1}
COUNT = {"type": "integer", "minimum": 0}
TEXT = {"type": "string"}
NAME = {"type": "string", "minLength": 1}
MS = {"type": "integer", "minimum": 0, "description": "Unix time in milliseconds"}
LSN = {"type": "integer", "minimum": 0, "description": "PostgreSQL WAL position of the change (source.lsn)"}
TIMESTAMP = {"type": "string", "format": "date-time",
             "description": "a timestamptz column: ISO 8601 text in UTC, e.g. 2026-01-31T12:00:00.123456Z"}
CITY_STATUS = ["requested", "crawling", "labelling", "training", "live", "failed"]
CITY_ID_KEY = {"type": "string", "pattern": "^[1-9][0-9]*$",
               "description": "the city id as decimal text, e.g. \"42\": one city's messages stay in one partition, "
                              "in order"}
ROW_KEY = _obj({"id": ID}, description="the row's primary key, as JSON: {\"id\": 42}")
ANY_KEY = {"type": ["string", "null"],
           "description": "the key of the message that could not be processed, as it came (UTF-8 text; null when it "
                          "had none)"}


# Warehouse rows (sql/migrations), as Debezium writes them: bytea columns excluded (connectors/), bigint and
# integer as numbers, real as numbers, timestamptz as text, jsonb as JSON text.

def _rows() -> dict[str, dict[str, Any]]:
    return {
        "CityRow": _obj({
            "id": ID, "name": NAME, "status": {"enum": CITY_STATUS}, "requested_at": TIMESTAMP,
            "updated_at": TIMESTAMP,
            "name_key": {"type": "string", "description": "the name as compared (sightscan/names.py), unique"}},
            description="a row of table cities"),
        "SightRow": _obj({
            "id": ID, "city_id": ID, "name": NAME,
            "source": {"type": "string", "description": "where the sight came from: wikidata, maps, vision, "
                                                        "upload, unknown…"},
            "created_at": TIMESTAMP,
            "name_key": {"type": "string", "description": "the name as compared, unique within the city"}},
            description="a row of table sights"),
        "ImageRow": _obj({
            "id": ID, "city_id": ID,
            "sight_id": {"type": ["integer", "null"], "minimum": 1,
                         "description": "the sight it was crawled or uploaded for; null: none"},
            "mime_type": {"type": "string", "description": "image/jpeg, image/png or image/webp"},
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "width": ID, "height": ID,
            "source_url": {"type": ["string", "null"]}, "licence": {"type": ["string", "null"]},
            "author": {"type": ["string", "null"]}, "origin": {"enum": ["crawl", "upload", "user"],
                                                                         "description": "user: a frame kept by a "
                                                                                        "correction"},
            "created_at": TIMESTAMP},
            description="a row of table images, without its bytes (column data is never in an event)"),
        "LabelRow": _obj({
            "id": ID, "image_id": ID, "city_id": ID,
            "sight_id": {"type": ["integer", "null"], "minimum": 1,
                         "description": "the sight the image shows; null: the labeller found no landmark, or (kind "
                                        "user-negative) a user said no sight is in the frame"},
            "score": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            **{c: {"type": ["number", "null"], "minimum": 0, "maximum": 1,
                   "description": "box edge normalised to 0..1; the four are null together (no box)"}
               for c in ("x_min", "y_min", "x_max", "y_max")},
            "labeller": {"type": "string", "description": "google-vision, weak-query, manual…"},
            "weak": {"type": "boolean", "description": "true for the offline crawl-query label"},
            "created_at": TIMESTAMP,
            "kind": {"enum": ["labeller", "user-box", "user-negative"],
                     "description": "labeller: the labeller's outcome; user-box: a user's correction, the sight and "
                                    "its true box; user-negative: a user's correction, no sight in the frame "
                                    "(docs/corrections.md)"},
            "correction_id": {"type": ["integer", "null"], "minimum": 1,
                              "description": "the correction a user-box or user-negative label comes from; null for "
                                             "the labeller's"}},
            description="a row of table labels: one labelling outcome of an image, or a user's correction"),
        "ModelRow": _obj({
            "id": ID, "city_id": ID, "version": ID,
            "classes": {"type": "string", "contentMediaType": "application/json",
                        "description": "jsonb as JSON text: the sight names in output order, e.g. "
                                       "\"[\\\"Tower\\\", \\\"Gate\\\"]\""},
            "input_size": ID,
            "metrics": {"type": "string", "contentMediaType": "application/json",
                        "description": "jsonb as JSON text: the model's metrics object (sightscan/model_metrics.py); "
                                       "a trained model's has its request_id and trigger"},
            "created_at": TIMESTAMP},
            description="a row of table models, without its ONNX bytes (column onnx is never in an event)"),
    }


ROW_OF_TABLE = {"cities": "CityRow", "sights": "SightRow", "images": "ImageRow", "labels": "LabelRow",
                "models": "ModelRow"}


CHANGE_SCHEMA = {"cities": "CityChange", "sights": "SightChange", "images": "ImageChange", "labels": "LabelChange",
                 "models": "ModelChange"}


def _debezium() -> dict[str, dict[str, Any]]:
    schemas: dict[str, dict[str, Any]] = {
        "DebeziumSource": _obj({
            "version": {"type": "string", "description": "Debezium's version, e.g. 3.6.1.Final"},
            "connector": {"const": "postgresql"},
            "name": {"type": "string", "description": "the connector's topic.prefix: TOPIC_PREFIX"},
            "ts_ms": MS, "ts_us": COUNT, "ts_ns": COUNT,
            "snapshot": {"enum": ["true", "first", "first_in_data_collection", "last_in_data_collection", "last",
                                  "false", "incremental"],
                         "description": "\"false\" for a streamed change; the others for snapshot reads (op r)"},
            "db": TEXT, "sequence": {"type": ["string", "null"]},
            "schema": {"const": "public"}, "table": {"enum": list(WATCHED_TABLES)},
            "txId": {"type": ["integer", "null"]}, "lsn": {"type": ["integer", "null"], "minimum": 0},
            "xmin": {"type": ["integer", "null"]}, "origin": {"type": ["string", "null"]},
            "origin_lsn": {"type": ["integer", "null"]}},
            required=["version", "connector", "name", "ts_ms", "snapshot", "db", "schema", "table", "txId", "lsn"],
            closed=False,
            description="where and when the change happened; the stream worker reads lsn (an event's identity, "
                        "with table, key and op), txId and ts_ms"),
    }
    for table, row in ROW_OF_TABLE.items():
        source = {"allOf": [_ref("DebeziumSource"), {"properties": {"table": {"const": table}}}]}
        common = {"source": source, "transaction": {"type": "null"}, "ts_ms": MS, "ts_us": COUNT, "ts_ns": COUNT}
        schemas[CHANGE_SCHEMA[table]] = {
            "description": f"a change of table {table}: Debezium's JSON envelope without inline schemas. Every "
                           "table has REPLICA IDENTITY FULL: an update and a delete carry the whole old row",
            "oneOf": [
                _obj({"op": {"enum": ["c", "r"], "description": "c: insert; r: read by a snapshot"},
                      "before": {"type": "null"}, "after": _ref(row), **common},
                     required=["op", "before", "after", "source", "ts_ms"]),
                _obj({"op": {"const": "u", "description": "update"}, "before": _ref(row), "after": _ref(row),
                      **common}, required=["op", "before", "after", "source", "ts_ms"]),
                _obj({"op": {"const": "d", "description": "delete (no tombstone follows: tombstones.on.delete is "
                                                          "false)"},
                      "before": _ref(row), "after": {"type": "null"}, **common},
                     required=["op", "before", "after", "source", "ts_ms"]),
            ]}
    schemas["DebeziumHeartbeat"] = _obj({"ts_ms": MS}, description="Debezium's heartbeat, every 5 s")
    return schemas


def _commands() -> dict[str, dict[str, Any]]:
    return {
        "CrawlCommand": _obj({
            "request_id": {"type": "string", "pattern": "^crawl-[1-9][0-9]*$", "description": "crawl-<city id>"},
            "city_id": ID, "city": NAME,
            "max_sights_per_city": {**COUNT, "description": "MAX_SIGHTS_PER_CITY"},
            "max_images_per_sight": {**COUNT, "description": "MAX_IMAGES_PER_SIGHT"},
            "ts_ms": MS},
            description="crawl a requested city's sights and images (once per city)"),
        "LabellingCommand": _obj({
            "request_id": {"type": "string", "pattern": "^label-[1-9][0-9]*-[1-9][0-9]*$",
                           "description": "label-<city id>-<sequence number>"},
            "city_id": ID, "city": NAME,
            "image_ids": {"type": "array", "items": ID, "minItems": 1, "uniqueItems": True,
                          "description": "ascending; at most LABELLING_BATCH_SIZE; an image is never in two "
                                         "outstanding requests"},
            "ts_ms": MS},
            description="label these images of the city"),
        "TrainingCommand": _obj({
            "request_id": {"type": "string", "pattern": "^train-[1-9][0-9]*-[1-9][0-9]*$",
                           "description": "train-<city id>-<sequence number>"},
            "city_id": ID, "city": NAME,
            "epochs": {**COUNT, "description": "MTS_EPOCHS (0: the trainer's default)"},
            "classes": {"type": "array", "items": NAME, "minItems": 2, "uniqueItems": True,
                        "description": "the sights with at least MIN_IMAGE_NUMBER_PER_LABEL labelled images, sorted"},
            "labelled_images": COUNT,
            "reason": {"enum": ["threshold", "growth", "corrections"],
                       "description": "threshold: the first model, once MIN_LABELLED_IMAGES_NEEDED_FOR_TRAINING "
                                      "labelled images are there; growth: labelled images grew by "
                                      "RETRAIN_GROWTH_FRACTION since the last request; corrections: "
                                      "RETRAIN_MIN_CORRECTIONS corrections arrived since. (The trainer also accepts "
                                      "\"manual\", and a request without a reason, from a hand-written request.)"},
            "ts_ms": MS},
            description="train (or retrain) the city's model"),
    }


def _training_events() -> dict[str, dict[str, Any]]:
    base = {"request_id": {"type": "string", "description": "the request's id (\"\" when it had none)"},
            "city_id": ID, "city": TEXT,
            "trigger": {"enum": ["threshold", "growth", "corrections", "manual"],
                        "description": "the request's reason"}}
    return {
        "TrainingEvent": {
            "description": "one outcome per training request, keyed as the request was",
            "oneOf": [_ref("TrainingSucceeded"), _ref("TrainingAnsweredAgain"), _ref("TrainingFailed"),
                      _ref("TrainingRejected"), _ref("TrainingBadRequest"), _ref("TrainingDispatched")]},
        "TrainingSucceeded": _obj({
            **base, "status": {"const": "succeeded"}, "version": ID, "model_id": ID,
            "classes": {"type": "array", "items": NAME, "minItems": 1},
            "metrics": {"type": "object", "description": "the stored model's metrics (sightscan/model_metrics.py)"}},
            description="trained: the model row is stored (its change event follows on the models topic)"),
        "TrainingAnsweredAgain": _obj({
            **base, "status": {"const": "succeeded"}, "version": ID, "model_id": ID, "duplicate": {"const": True}},
            description="a redelivered request whose model was already stored: answered again, not trained again"),
        "TrainingFailed": _obj({
            **base, "status": {"const": "failed"}, "reason": TEXT,
            "trace": {"type": "string", "description": "the traceback, when training crashed"}},
            required=[*base, "status", "reason"],
            description="training failed (not enough data, unknown city, a crash, or in cloud mode the instance "
                        "did not start)"),
        "TrainingRejected": _obj({
            **base, "status": {"const": "rejected"}, "reason": NAME,
            "guard": {"type": "object", "description": "the held-out check that refused it: the candidate's and the "
                                                       "live model's figures and the tolerances (trainer/README.md)"}},
            description="trained, but the model learned from users' corrections and does worse than the live model "
                        "on the labeller's held-out images: no model row is stored, the live model stays"),
        "TrainingBadRequest": _obj({
            "request_id": {"description": "the request's request_id field as it was (any JSON value), or null when "
                                         "the request could not be read"},
            "city_id": {"type": ["integer", "null"], "description": "null when the request had no integer city_id: "
                                                                    "such an event cannot be applied to a city and "
                                                                    "the stream worker dead-letters it"},
            "status": {"const": "failed"},
            "reason": {"type": "string", "pattern": "^bad request: ",
                       "description": "the reason the request was dead-lettered for"}},
            description="a request the trainer could never carry out (malformed): it went to the command "
                        "dead-letter topic and is announced here"),
        "TrainingDispatched": _obj({
            **base, "status": {"const": "dispatched"}, "instance_id": NAME, "instance_state": TEXT},
            description="cloud mode: the dispatcher started the EC2 training instance; the outcome comes from the "
                        "instance (the stream worker ignores this progress event)"),
    }


def _dead_letter() -> dict[str, dict[str, Any]]:
    return {"DeadLetter": _obj({
        "topic": {"type": "string", "description": "the topic the input came from"},
        "partition": {"type": ["integer", "null"], "minimum": 0, "description": "null: not a consumed message "
                                                                                 "(a fact of an unknown city)"},
        "offset": {"type": ["integer", "null"], "minimum": 0},
        "key": {"type": ["string", "null"], "description": "the input's key as text (bytes that are not UTF-8 are "
                                                           "replaced)"},
        "value": {"type": ["string", "null"], "description": "the input as text (not UTF-8: replaced)"},
        "reason": NAME, "ts_ms": MS},
        description="an input that can never be processed: where it came from, the input as text, and why "
                    "(sightscan/kafka.py dead_letter)")}


def _facts() -> dict[str, dict[str, Any]]:
    def fact(kind: str, fields: dict[str, Any], description: str, row: bool = True,
             optional: tuple[str, ...] = ()) -> dict[str, Any]:
        head = ({"kind": {"const": kind}, "id": ID, "city_id": ID, "lsn": LSN,
                 "present": {"type": "boolean", "description": "false: the row was deleted"}} if row else
                {"kind": {"const": kind}, "id": {"const": 0}, "city_id": ID, "lsn": {"type": "null"},
                 "present": {"const": True}})
        every = {**head, **fields}
        return _obj(every, required=[k for k in every if k not in optional], description=description)

    return {
        "Fact": {"description": "one change, keyed by city (streams/facts.py)", "oneOf": [
            fact("city", {"name": NAME, "status": {"enum": CITY_STATUS}}, "a city row changed (id = city_id)"),
            fact("sight", {"name": NAME}, "a sight row changed"),
            fact("image", {"sight_id": {"type": ["integer", "null"], "minimum": 1}}, "an image row changed"),
            fact("label", {"image_id": ID, "sight_id": {"type": ["integer", "null"], "minimum": 1},
                           "label_kind": {"enum": ["labeller", "user-box", "user-negative"],
                                          "description": "the row's kind (absent in a fact of an earlier version: "
                                                         "labeller)"}},
                 "a label row changed", optional=("label_kind",)),
            fact("model", {"version": ID}, "a model row changed"),
            fact("training_outcome", {"status": {"enum": ["succeeded", "failed", "rejected"]},
                                      "request_id": {"type": ["string", "null"]}},
                 "the trainer's outcome of a request", row=False),
            fact("linger", {}, "a nudge of the worker's timer: the city's waiting images may be due for labelling",
                 row=False)]},
        "FactsMessage": {
            "description": "a list of one city's facts from one rekey batch, in order (at most "
                           "STREAMS_FACTS_PER_MESSAGE, 1,000 by default); or one fact: a linger nudge, or a "
                           "message of an earlier version. The marts agent reads both (streams/worker.py facts_of)",
            "oneOf": [_ref("Fact"), {"type": "array", "items": _ref("Fact"), "minItems": 1}]},
    }


def _city_state() -> dict[str, dict[str, Any]]:
    def since(schema: dict[str, Any], n: int) -> dict[str, Any]:
        """A tuple whose last positions were added later: a value stored before has only the first n."""
        return {**schema, "minItems": n}

    image = since(_tuple(LSN, {"type": "boolean"}, {"type": ["integer", "null"]}, TEXT,
                         {"type": "object", "patternProperties": {"^[0-9]+$": {"type": ["integer", "null"]}},
                          "additionalProperties": False},
                         {"type": "object", "patternProperties": {"^[0-9]+$": {"enum": ["user-box", "user-negative"]}},
                          "additionalProperties": False},
                         description="an image: [lsn (0: not seen yet), present, sight id, its labelling request id "
                                     "(\"\": none), {label id: the sight it names, null for no landmark or a user "
                                     "negative}, {label id: its kind, for the labels that are corrections} "
                                     "(absent in a value stored by 0.3.0)]"), 5)
    label = _tuple(LSN, {"type": "boolean"}, ID, {"type": ["integer", "null"]},
                   description="a label: [lsn, present, image id, sight id or null]")
    command = {"oneOf": [_tuple({"const": kind}, _ref(f"{kind.capitalize()}Command"),
                                description=f"a due {kind} command") for kind in COMMAND_KINDS]}
    return {
        "CityStateValue": {"description": "streams/state.py: the city's summary, a bucket of image or label "
                                          "records, or one record", "anyOf": [
            _obj({
                "layout": {"const": 2},
                "city": _null(_tuple(LSN, {"type": "boolean"}, NAME, {"enum": CITY_STATUS},
                                     description="[lsn, present, name, status]")),
                "sights": {"type": "object", "additionalProperties": _tuple(
                    LSN, {"type": "boolean"}, NAME, description="[lsn, present, name]")},
                "models": {"type": "object", "additionalProperties": _tuple(
                    LSN, {"type": "boolean"}, ID, description="[lsn, present, version]")},
                "counts": since(_tuple(COUNT, COUNT, COUNT, {"type": "object", "additionalProperties": COUNT},
                                       COUNT, COUNT, {"type": "object", "additionalProperties": COUNT},
                                       description="[images, labelled images, no-landmark images, {sight id: "
                                                   "labelled images}, user boxes, user negatives, {sight id: user "
                                                   "boxes}] (the last three absent in a value stored by 0.3.0)"), 4),
                "max_lsn": {"type": "integer", "minimum": 0},
                "pending": {"type": "array", "items": command,
                            "description": "the outbox: commands due, stored, not yet confirmed sent"},
                "cmd": since(_tuple({"type": "boolean"}, COUNT, COUNT, {"type": "boolean"}, COUNT, COUNT,
                                    description="[crawl requested, labelling requests sent, training requests sent, a "
                                                "training request outstanding, labelled images it was asked for, "
                                                "corrections present then (absent in a value stored by 0.3.0)]"), 5),
                "waiting": {"type": "array", "items": ID,
                            "description": "images with no outcome and no labelling request yet"},
                "waiting_since_ms": MS,
                "stores": {"type": "integer", "minimum": 0,
                           "description": "stores that changed records: the number of the last one's redo (absent "
                                          "in a value stored by 0.3.0)"}},
                required=["layout", "city", "sights", "models", "counts", "max_lsn", "pending", "cmd", "waiting",
                          "waiting_since_ms"],
                description="the summary of a city (key <city>)"),
            _obj({"stores": {"type": "integer", "minimum": 1},
                  "records": {"type": "object", "propertyNames": {"pattern": "^(images|labels)/[0-9]+$"},
                              "additionalProperties": {"type": "object", "minProperties": 1,
                                                       "patternProperties": {"^[0-9]+$": {"anyOf": [image, label]}},
                                                       "additionalProperties": False}}},
                 description="the redo of a store (key <city>/redo/<stores mod 2>): every record it changed, by "
                             "bucket, read when the summary of that number got to the changelog and a bucket did "
                             "not"),
            {"type": "object", "minProperties": 1, "patternProperties": {"^[0-9]+$": image},
             "additionalProperties": False, "description": "a bucket of image records by id"},
            {"type": "object", "minProperties": 1, "patternProperties": {"^[0-9]+$": label},
             "additionalProperties": False, "description": "a bucket of label records by id"},
            image, label,
            {"type": "object", "required": ["city_id", "cmd", "images", "labels"],
             "not": {"required": ["layout"]},
             "description": "a whole city stored by an earlier version; read, converted and written anew"}]},
    }


CITY_STATE_KEY = {
    "type": "string", "pattern": "^[1-9][0-9]*(/(i|l|images|labels)/[0-9]+|/redo/[01])?$",
    "description": "<city>: the city's summary; <city>/images/<n> and <city>/labels/<n>: a bucket of records (ids "
                   "n*256 .. n*256+255); <city>/redo/0 and <city>/redo/1: the redo of a store, taken in turn; "
                   "<city>/i/<id> and <city>/l/<id>: one record (the previous layout, still read)"}


def _schemas() -> dict[str, dict[str, Any]]:
    return {**_rows(), **_debezium(), **_commands(), **_training_events(), **_dead_letter(), **_facts(),
            **_city_state()}


# Messages ----------------------------------------------------------------------------------------------------

def _message(name: str, title: str, summary: str, payload: str, key: dict[str, Any], key_format: str,
             example: tuple[Any, Any]) -> dict[str, Any]:
    """A message; `example` is (a key, a payload)."""
    return {"name": name, "title": title, "summary": summary, "contentType": "application/json",
            "payload": _ref(payload), "x-key-format": key_format,
            "bindings": {"kafka": {"key": {**key, "examples": [example[0]]}, "bindingVersion": BINDING}},
            "examples": [{"name": "example", "payload": example[1]}]}


_ROW_EXAMPLE = {
    "cities": {"id": 7, "name": "Lisbon", "status": "requested", "requested_at": "2026-01-31T12:00:00.123456Z",
               "updated_at": "2026-01-31T12:00:00.123456Z", "name_key": "lisbon"},
    "sights": {"id": 21, "city_id": 7, "name": "Belém Tower", "source": "wikidata",
               "created_at": "2026-01-31T12:00:01Z", "name_key": "belém tower"},
    "images": {"id": 301, "city_id": 7, "sight_id": 21, "mime_type": "image/jpeg", "sha256": "0" * 64,
               "width": 640, "height": 480, "source_url": "https://commons.wikimedia.org/…", "licence": "CC BY-SA 4.0",
               "author": "someone", "origin": "crawl", "created_at": "2026-01-31T12:00:02Z"},
    "labels": {"id": 901, "image_id": 301, "city_id": 7, "sight_id": 21, "score": 0.93, "x_min": 0.1, "y_min": 0.2,
               "x_max": 0.8, "y_max": 0.9, "labeller": "google-vision", "weak": False,
               "created_at": "2026-01-31T12:00:03Z", "kind": "labeller", "correction_id": None},
    "models": {"id": 3, "city_id": 7, "version": 1, "classes": "[\"Belém Tower\", \"Jerónimos\"]", "input_size": 224,
               "metrics": "{\"top1\": 0.95, \"request_id\": \"train-7-1\"}", "created_at": "2026-01-31T12:09:00Z"},
}


def _change_example(table: str) -> dict[str, Any]:
    return {"before": None, "after": _ROW_EXAMPLE[table], "op": "c", "transaction": None, "ts_ms": 1769860800200,
            "source": {"version": "3.6.1.Final", "connector": "postgresql", "name": "sightscan",
                       "ts_ms": 1769860800123, "snapshot": "false", "db": "sightscan",
                       "sequence": "[\"28742816\",\"28742976\"]", "schema": "public", "table": table, "txId": 765,
                       "lsn": 28742976, "xmin": None}}


def _messages() -> dict[str, dict[str, Any]]:
    dead = {"topic": "sightscan.commands.crawl", "partition": 2, "offset": 17, "key": "7",
            "value": "{\"city_id\": \"seven\"}", "reason": "field 'city_id' missing or not int",
            "ts_ms": 1769860800000}
    messages = {
        f"{table}Change": _message(
            f"{table}Change", f"{table} change", f"a row of table {table} was inserted, updated, deleted or read by a "
            "snapshot", CHANGE_SCHEMA[table], ROW_KEY, "json", ({"id": _ROW_EXAMPLE[table]["id"]},
                                                                       _change_example(table)))
        for table in WATCHED_TABLES}
    messages.update({
        "crawlCommand": _message("crawlCommand", "crawl command", "crawl this city", "CrawlCommand", CITY_ID_KEY,
                                 "text", ("7", {"request_id": "crawl-7", "city_id": 7, "city": "Lisbon",
                                                "max_sights_per_city": 20, "max_images_per_sight": 100,
                                                "ts_ms": 1769860800000})),
        "labellingCommand": _message("labellingCommand", "labelling command", "label these images",
                                     "LabellingCommand", CITY_ID_KEY, "text",
                                     ("7", {"request_id": "label-7-1", "city_id": 7, "city": "Lisbon",
                                            "image_ids": [301, 302], "ts_ms": 1769860800000})),
        "trainingCommand": _message("trainingCommand", "training command", "train this city's model",
                                    "TrainingCommand", CITY_ID_KEY, "text",
                                    ("7", {"request_id": "train-7-1", "city_id": 7, "city": "Lisbon", "epochs": 30,
                                           "classes": ["Belém Tower", "Jerónimos"], "labelled_images": 120,
                                           "reason": "threshold", "ts_ms": 1769860800000})),
        "trainingEvent": _message("trainingEvent", "training outcome", "the outcome of one training request",
                                  "TrainingEvent", {**ANY_KEY, "description": "the training request's key, as it "
                                                    "came: the city id as text for the stream worker's requests"},
                                  "text", ("7", {"request_id": "train-7-1", "city_id": 7, "city": "Lisbon",
                                                 "trigger": "threshold", "status": "succeeded", "version": 1,
                                                 "model_id": 3, "classes": ["Belém Tower", "Jerónimos"],
                                                 "metrics": {"top1": 0.95}})),
        "streamsDeadLetter": _message("streamsDeadLetter", "stream worker dead letter",
                                      "a change event, training outcome or fact the stream worker cannot read",
                                      "DeadLetter", ANY_KEY, "text",
                                      ("{\"id\":301}", {**dead, "topic": "sightscan.public.images",
                                                        "key": "{\"id\":301}", "value": "\u0000not json",
                                                        "reason": "not JSON: …"})),
        "commandsDeadLetter": _message("commandsDeadLetter", "command dead letter",
                                       "a command the crawler, labeller or trainer can never carry out, or that "
                                       "still failed after its retries", "DeadLetter", ANY_KEY, "text", ("7", dead)),
        "fact": _message("fact", "facts", "city-keyed facts from change events and training outcomes",
                         "FactsMessage", CITY_ID_KEY, "text",
                         ("7", [{"kind": "image", "id": 301, "city_id": 7, "lsn": 28744216, "present": True,
                                 "sight_id": 21}])),
        "cityState": _message("cityState", "city state", "a record of the city-state table (internal)",
                              "CityStateValue", CITY_STATE_KEY, "text",
                              ("7/labels/3", {"901": [28745184, True, 301, 21]})),
        "debeziumHeartbeat": _message("debeziumHeartbeat", "Debezium heartbeat", "the connector is alive (internal)",
                                      "DebeziumHeartbeat", _obj({"serverName": {"type": "string", "description":
                                                                                "TOPIC_PREFIX"}}),
                                      "json", ({"serverName": "sightscan"}, {"ts_ms": 1769860800000})),
    })
    return messages


# Channels: one per topic of the catalogue ---------------------------------------------------------------------

MESSAGES_OF = {  # channel id -> its messages (components/messages)
    **{table: [f"{table}Change"] for table in WATCHED_TABLES},
    **{f"{kind}Commands": [f"{kind}Command"] for kind in COMMAND_KINDS},
    "trainingEvents": ["trainingEvent"], "streamsDeadLetter": ["streamsDeadLetter"],
    "commandsDeadLetter": ["commandsDeadLetter"], "facts": ["fact"], "cityStateChangelog": ["cityState"],
    "faustLeader": [], "debeziumHeartbeat": ["debeziumHeartbeat"],
}

_PREFIXED = ("The prefix is TOPIC_PREFIX (\"sightscan\" by default): the name is "
             "`{TOPIC_PREFIX}` followed by the rest of the address.")
_APP = ("`{STREAMS_APP_ID}` is the stream worker's app id: STREAMS_APP_ID, by default `<TOPIC_PREFIX>-streams`; "
        "workers with the same app id share the work.")


def _channel(topic: Topic) -> dict[str, Any]:
    naming = _APP if APP_ID in topic.template else _PREFIXED if topic.template.startswith(PREFIX) else ""
    out: dict[str, Any] = {
        "address": fill(topic.template, DEFAULT_PREFIX), "title": topic.title,
        "description": f"{topic.description} {naming}".rstrip(),
        "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in MESSAGES_OF[topic.id]},
        "x-address-template": topic.template, "x-internal": topic.internal}
    if topic.config:
        configuration = {k: [v] if k == "cleanup.policy" else int(v) if k.endswith((".ms", ".bytes")) else v
                         for k, v in topic.config.items()}
        out["bindings"] = {"kafka": {"topicConfiguration": configuration, "bindingVersion": BINDING}}
    return out


def _channels() -> dict[str, dict[str, Any]]:
    return {topic.id: _channel(topic) for topic in TOPICS.values()}


# Operations: who sends and who receives on each channel (the catalogue's producers and consumers) ----------------

def _operations() -> dict[str, dict[str, Any]]:
    operations: dict[str, dict[str, Any]] = {}
    for topic in TOPICS.values():
        for action, flows in (("send", topic.producers), ("receive", topic.consumers)):
            for service, summary in flows.items():
                op: dict[str, Any] = {"action": action, "channel": {"$ref": f"#/channels/{topic.id}"},
                                      "summary": summary, "x-service": service}
                group = group_of(service, topic.id) if action == "receive" else None
                if group is not None:
                    op["bindings"] = {"kafka": {
                        "groupId": {"type": "string", "examples": [group.name()],
                                    "description": f"{group.template}: {group.description}"},
                        "bindingVersion": BINDING}}
                operations[f"{service}.{action}.{topic.id}"] = op
    return operations


def _info() -> dict[str, Any]:
    services = "\n".join(f"- `{name}`: {what}" for name, what in SERVICES.items())
    return {
        "title": "SightScan Kafka topics",
        "version": "1.0.0",
        "description": (
            "Every Kafka topic of SightScan: the warehouse's change events (Debezium), the stream worker's "
            "commands and facts, the trainer's outcomes and the dead letters.\n\n"
            "Names: each channel's address is its topic with the default settings; `x-address-template` names it "
            "with `{TOPIC_PREFIX}` (TOPIC_PREFIX, default \"sightscan\") and `{STREAMS_APP_ID}` (STREAMS_APP_ID, "
            "default `<TOPIC_PREFIX>-streams`).\n\n"
            "Keys: `x-key-format` of a message says whether its key is JSON (the change topics: the row's primary "
            "key) or UTF-8 text (the rest: mostly the city id), and the Kafka binding gives its schema. Values are "
            "JSON; change events have no inline converter schemas.\n\n"
            "Delivery is at least once everywhere: consumers deduplicate (commands by request_id, change events by "
            "source LSN). `x-internal: true` marks topics that only their own service reads.\n\n"
            "Services (`x-service` of each operation; each channel's `x-publishers` and `x-consumers`):\n"
            f"{services}\n\n"
            "Not listed: Kafka's own topics (__consumer_offsets, __transaction_state) and Kafka Connect's storage "
            "topics (<TOPIC_PREFIX>-connect-configs, -offsets, -status), whose formats are Kafka Connect's."),
        "license": {"name": "Apache-2.0"},
    }


def document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document (a new copy each call)."""
    channels, operations = _channels(), _operations()
    for channel_id, channel in channels.items():
        for action, field in (("send", "x-publishers"), ("receive", "x-consumers")):
            channel[field] = sorted({op["x-service"] for op in operations.values()
                                     if op["action"] == action and op["channel"]["$ref"] == f"#/channels/{channel_id}"})
    return copy.deepcopy({
        "asyncapi": "3.0.0",
        "id": "urn:sightscan:kafka",
        "info": _info(),
        "defaultContentType": "application/json",
        "servers": {"local": {
            "host": "127.0.0.1:9092", "protocol": "kafka", "protocolVersion": "4.3.1",
            "description": "the local stack's broker (KAFKA_BOOTSTRAP_SERVERS; `./dev up`, docker-compose.yml)"}},
        "channels": channels,
        "operations": operations,
        "components": {"schemas": _schemas(), "messages": _messages()},
    })


def topics(prefix: str = DEFAULT_PREFIX, app_id: str | None = None) -> dict[str, str]:
    """Channel id -> the topic's name with these settings."""
    return {topic.id: topic.name(prefix, app_id) for topic in TOPICS.values()}
