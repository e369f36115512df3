"""One city's state in the stream: what exists (with the WAL position of its last change), the counts derived
from it, and the commands that are due. Pure logic; the stream worker keeps it in one Faust table.

Layout: small records whose cost does not grow with the city. Keys start with the city id:
  <city>              the summary: the city row, its sights and models, the counts (kept up to date as facts
                      arrive, never recounted), the command progress, the outbox and the images waiting to be
                      sent for labelling;
  <city>/images/<n>   the records of the city's images with ids n*256 .. n*256+255, by id: each its LSN, whether
                      it exists, its sight, its labelling request, the sights its present labels name (the
                      image's "outcome") and the kind of each present label that is a user's correction;
  <city>/labels/<n>   the same for labels: each its LSN, whether it exists, its image and sight;
  <city>/redo/<0|1>   the redo of a store: every record it changed, so that a store cut short by a kill is read
                      whole (CityState.records).
A batch stores the summary of each city it touched and the buckets it changed. A bucket holds at most 256
records, so the work per event is the same in a city of 1,000 images and one of 100,000; and a crawl or a
labelling batch, whose rows have neighbouring ids, changes a few buckets rather than a record per row (one
changelog message each: the worker's main cost before). Every key of a city lives in the partition of
the city's facts (streams/worker.py CityTable), so the worker that owns a city owns all of it.

Deduplication is by source LSN per entity: a redelivered change (same or older LSN) changes nothing, so counts
stay right under at-least-once delivery, worker crashes and rebalances. A batch's records for a city are stored
together before its commands are sent (the outbox), so a crash never leaves counts that disagree with the
dedupe positions of what was sent.

Corrections (docs/corrections.md) are labels of kind "user-box" (a sight and its true box) and "user-negative" (no
sight of the city in the frame). They are counted per city (user boxes, user negatives) and per sight (user boxes),
one per label, on present images, as every count is. A user box names a sight, so its image is a labelled image of
that sight like any other. A user negative is neither: the frame is not a labelled image (it shows no sight, so it
adds nothing to the training threshold's labelled images) and not a "no landmark" image (that mart is the
labeller's outcome: an image it labelled and found no landmark in). An image with no label at all waits for
labelling; an image with only corrections does not (the user already said what it shows).

Training requests: the first once MIN_LABELLED_IMAGES_NEEDED_FOR_TRAINING labelled images are there (with two
sights that have MIN_IMAGE_NUMBER_PER_LABEL each); then a retrain when the labelled images grew by
RETRAIN_GROWTH_FRACTION since the last request ("growth"), or the corrections did by RETRAIN_MIN_CORRECTIONS
("corrections"). Corrections since the last request are counted net: the corrections present now less those
present when it was sent, so an undo takes one back. A failed or rejected training (the trainer refuses a model that
does worse than the live one, trainer/README.md) waits for the same growth again, from the data present when its
outcome arrived, so a city whose training fails or is refused is not asked again and again.

Labelling requests are batched: a city's unlabelled images wait until LABELLING_BATCH_SIZE of them are there, or
until the oldest has waited LABELLING_LINGER_S. Request ids are the city and a sequence number, so a replay after
a crash derives the same ids.

The layouts of earlier versions (a whole city in one value; one key per record) are read by
streams/old_state_layouts.py, until 0.4.0 drops them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streams import old_state_layouts

Command = tuple[str, dict[str, Any]]  # (kind, the command's JSON object)


@dataclass(frozen=True)
class Thresholds:
    min_labelled_images: int          # MIN_LABELLED_IMAGES_NEEDED_FOR_TRAINING
    min_images_per_label: int         # MIN_IMAGE_NUMBER_PER_LABEL
    retrain_growth_fraction: float    # RETRAIN_GROWTH_FRACTION
    epochs: int                       # MTS_EPOCHS
    retrain_min_corrections: int = 10  # RETRAIN_MIN_CORRECTIONS
    labelling_batch_size: int = 16    # images per labelling request (Vision's batch limit)
    labelling_linger_s: float = 2.0   # longest wait for a labelling request to fill
    max_sights_per_city: int = 20
    max_images_per_sight: int = 100


# Records: one per warehouse row, as of its last change (`lsn`); `present` is False once the row is deleted.
# Stored as short JSON lists in field order. Fields added later go at the end with a default, so a record stored
# by the previous version (a shorter list) reads as the same record.

LABELLER, USER_BOX, USER_NEGATIVE = "labeller", "user-box", "user-negative"


@dataclass(slots=True)
class CityRecord:
    lsn: int
    present: bool
    name: str
    status: str


@dataclass(slots=True)
class ModelRecord:
    lsn: int
    present: bool
    version: int


@dataclass(slots=True)
class SightRecord:
    lsn: int
    present: bool
    name: str


@dataclass(slots=True)
class ImageRecord:
    lsn: int                # 0: not seen yet (a label of it came first)
    present: bool
    sight_id: int | None
    request: str = ""       # the labelling request it is in, until an outcome for it arrives
    labels: dict[str, int | None] = field(default_factory=dict)  # present label id -> its sight (None: no landmark)
    kinds: dict[str, str] = field(default_factory=dict)  # present label id -> its kind, for corrections only

    def outcome(self) -> set[int | None]:
        return set(self.labels.values())


@dataclass(slots=True)
class LabelRecord:
    lsn: int
    present: bool
    image_id: int
    sight_id: int | None  # None: the labeller saw no landmark, or a user negative


def _add_to(counts: dict[str, int], key: str, sign: int) -> None:
    left = counts.get(key, 0) + sign
    if left:
        counts[key] = left
    else:
        counts.pop(key, None)


@dataclass(slots=True)
class Counts:
    """The city's data marts, kept up to date one image at a time."""
    images: int = 0
    labelled_images: int = 0       # present images with a label naming a sight (the labeller's or a user box)
    no_landmark_images: int = 0    # present images with no sight named, and the labeller's "no landmark"
    per_sight: dict[str, int] = field(default_factory=dict)  # sight id -> present images labelled with it
    user_boxes: int = 0            # present user-box labels on present images
    user_negatives: int = 0        # present user-negative labels on present images
    per_sight_user_boxes: dict[str, int] = field(default_factory=dict)  # sight id -> its user boxes

    @property
    def corrections(self) -> int:
        return self.user_boxes + self.user_negatives

    def add(self, image: ImageRecord, sign: int) -> None:
        if not image.present:
            return
        self.images += sign
        sights = image.outcome() - {None}
        if sights:
            self.labelled_images += sign
        elif any(sight is None and label not in image.kinds for label, sight in image.labels.items()):
            self.no_landmark_images += sign
        for sight in sights:
            _add_to(self.per_sight, str(sight), sign)
        for label, kind in image.kinds.items():
            if kind == USER_BOX:
                self.user_boxes += sign
                if image.labels[label] is not None:  # always so (the schema's labels_kind_shape)
                    _add_to(self.per_sight_user_boxes, str(image.labels[label]), sign)
            elif kind == USER_NEGATIVE:
                self.user_negatives += sign


@dataclass(slots=True)
class CommandProgress:
    """What the city's commands have asked for so far, so that each is asked once."""
    crawl: bool = False                 # the crawl was requested
    label_seq: int = 0                  # labelling requests sent
    train_seq: int = 0                  # training requests sent
    train_outstanding: bool = False     # a training request awaits its outcome
    trained_on: int = 0                 # labelled images the last training request was asked for
    corrections_on: int = 0             # corrections present when it was asked for


@dataclass(slots=True)
class Summary:
    """The per-city record: everything but the images and labels. Its size does not grow with the city."""
    city: CityRecord | None = None
    sights: dict[str, SightRecord] = field(default_factory=dict)
    models: dict[str, ModelRecord] = field(default_factory=dict)
    counts: Counts = field(default_factory=Counts)
    max_lsn: int = 0
    pending: list[Command] = field(default_factory=list)  # the outbox: due, stored, not yet sent
    cmd: CommandProgress = field(default_factory=CommandProgress)
    waiting: list[int] = field(default_factory=list)      # present images with no outcome and no request
    waiting_since_ms: int = 0                             # when the oldest of them started waiting
    stores: int = 0                                       # stores that changed records: the redo's number

    def to_json(self) -> dict[str, Any]:
        c, n = self.city, self.counts
        return {"layout": 2,
                "city": None if c is None else [c.lsn, c.present, c.name, c.status],
                "sights": {k: [s.lsn, s.present, s.name] for k, s in self.sights.items()},
                "models": {k: [m.lsn, m.present, m.version] for k, m in self.models.items()},
                "counts": [n.images, n.labelled_images, n.no_landmark_images, dict(n.per_sight), n.user_boxes,
                           n.user_negatives, dict(n.per_sight_user_boxes)],
                "max_lsn": self.max_lsn, "pending": [[kind, command] for kind, command in self.pending],
                "cmd": [self.cmd.crawl, self.cmd.label_seq, self.cmd.train_seq, self.cmd.train_outstanding,
                        self.cmd.trained_on, self.cmd.corrections_on],
                "waiting": list(self.waiting), "waiting_since_ms": self.waiting_since_ms, "stores": self.stores}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Summary:
        """A fresh object: changing it never changes the stored value it came from. A summary stored before
        corrections were counted (4 counts, 5 command fields) reads with no corrections."""
        c, n = raw["city"], raw["counts"]
        corrections = (n[4], n[5], dict(n[6])) if len(n) > 4 else (0, 0, {})
        return cls(city=None if c is None else CityRecord(*c),
                   sights={k: SightRecord(*v) for k, v in raw["sights"].items()},
                   models={k: ModelRecord(*v) for k, v in raw["models"].items()},
                   counts=Counts(n[0], n[1], n[2], dict(n[3]), *corrections), max_lsn=raw["max_lsn"],
                   pending=[(kind, command) for kind, command in raw["pending"]], cmd=CommandProgress(*raw["cmd"]),
                   waiting=list(raw["waiting"]), waiting_since_ms=raw["waiting_since_ms"],
                   stores=raw.get("stores", 0))


def image_to_json(r: ImageRecord) -> list[Any]:
    return [r.lsn, r.present, r.sight_id, r.request, dict(r.labels), dict(r.kinds)]


def image_from_json(raw: list[Any]) -> ImageRecord:
    """A record stored before corrections (5 fields) has none."""
    return ImageRecord(raw[0], raw[1], raw[2], raw[3], dict(raw[4]), dict(raw[5]) if len(raw) > 5 else {})


def label_to_json(r: LabelRecord) -> list[Any]:
    return [r.lsn, r.present, r.image_id, r.sight_id]


def label_from_json(raw: list[Any]) -> LabelRecord:
    return LabelRecord(*raw)


Lookup = Callable[[str], Any]  # a key within the city ("images/3") -> its stored JSON, or None

BUCKET_IDS = 256  # ids per bucket of image or label records


def redo_key(stores: int) -> str:
    """The key within the city of a store's redo (CityState.records). Two, taken in turn: a store cut short before
    its summary got there must not overwrite the redo of the summary that is there (a second kill in a row)."""
    return f"redo/{stores % 2}"


def bucket_key(kind: str, row_id: int | str) -> str:
    """The key within the city of the bucket holding a record: kind "i" (image) or "l" (label)."""
    return f"{'images' if kind == 'i' else 'labels'}/{int(row_id) // BUCKET_IDS}"


class CityState:
    """One city while a batch works on it: the summary, and the image and label records the batch read or
    changed. `records()` gives what to store."""

    def __init__(self, city_id: int, summary: Summary | None = None, lookup: Lookup | None = None) -> None:
        self.city_id = city_id
        self.summary = summary or Summary()
        self._lookup: Lookup = lookup or (lambda key: None)
        self._images: dict[str, ImageRecord] = {}
        self._labels: dict[str, LabelRecord] = {}
        self._buckets: dict[str, dict[str, Any]] = {}  # bucket key -> its stored value, as read or last written
        self._changed: set[str] = set()                 # "i/<id>" and "l/<id>" of the records changed since
        self._rewrite: set[str] = set()                 # buckets a store cut short left behind their redo

    @classmethod
    def load(cls, city_id: int, summary: Summary | None, lookup: Lookup) -> CityState:
        """The city as stored: its summary and, through `lookup`, its buckets; the redo of the last store that
        changed records, where its number is the summary's (see records()), applied over its buckets."""
        state = cls(city_id, summary, lookup)
        redo = lookup(redo_key(summary.stores)) if summary is not None and summary.stores else None
        if redo is not None and redo["stores"] == summary.stores:
            for key, rows in redo["records"].items():
                stored = lookup(key) or {}
                # In a running worker the stored records are the redo's own objects: `is` settles it.
                if any((got := stored.get(row_id)) is not record and got != record for row_id, record in rows.items()):
                    state._buckets[key] = {**stored, **rows}  # cut short: the next store writes it again
                    state._rewrite.add(key)
        return state

    # Records ------------------------------------------------------------------------------------------------

    def _bucket(self, key: str) -> dict[str, Any]:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = self._lookup(key) or {}
        return bucket

    def _stored(self, kind: str, row_id: str) -> Any:
        stored = self._bucket(bucket_key(kind, row_id)).get(row_id)
        return stored if stored is not None else self._stored_alone(kind, row_id)

    def image(self, image_id: int | str) -> ImageRecord:
        key = str(image_id)
        record = self._images.get(key)
        if record is None:
            stored = self._stored("i", key)
            record = image_from_json(stored) if stored is not None else ImageRecord(0, False, None)
            self._images[key] = record
        return record

    def label(self, label_id: int | str) -> LabelRecord | None:
        key = str(label_id)
        if key not in self._labels:
            stored = self._stored("l", key)
            if stored is None:
                return None
            self._labels[key] = label_from_json(stored)
        return self._labels[key]

    def records(self) -> list[tuple[str, Any]]:
        """(key within the city, stored JSON) to store, in the order to send them: the summary ("", always) and
        each bucket holding a changed record, preceded by their redo when there are buckets. A bucket is written
        as a new dict: a value handed to the table is never changed later. Records are never removed from a bucket
        (a deleted row's record says so).

        The redo makes a store all or nothing. A worker killed while storing leaves Kafka a prefix of the records
        it sent (one partition, an idempotent producer); the facts since its last complete store come again to
        the next owner, and records that got there and records that did not would disagree: a summary counting
        images whose records were lost counts them twice on the replay. The redo, one record sent first, holds
        every record the store changed and the summary's new `stores` number: if the summary got there, so did the
        redo, and load() lays its records over the buckets. If the summary did not, neither did a bucket, and the redo
        (if it got there) has a number the stored summary does not, and is ignored. Buckets load() took from a
        redo are written again by the next store, and are in its redo."""
        changed: dict[str, dict[str, Any]] = {key: dict(self._bucket(key)) for key in self._rewrite}
        rows = {key: dict(bucket) for key, bucket in changed.items()}  # a bucket load() repaired: all of it
        self._rewrite.clear()
        for key in self._changed:
            kind, row_id = key.split("/", 1)
            bucket = bucket_key(kind, row_id)
            if bucket not in changed:
                changed[bucket] = dict(self._bucket(bucket))
            record = (image_to_json(self._images[row_id]) if kind == "i" else label_to_json(self._labels[row_id]))
            changed[bucket][row_id] = rows.setdefault(bucket, {})[row_id] = record
        self._changed.clear()
        self._buckets.update(changed)
        if not changed:
            return [("", self.summary.to_json())]
        self.summary.stores += 1
        redo = {"stores": self.summary.stores, "records": rows}
        return [(redo_key(self.summary.stores), redo), ("", self.summary.to_json()), *sorted(changed.items())]

    def _change_image(self, image_id: int | str, change: Callable[[ImageRecord], None]) -> None:
        """Apply `change` to an image, keeping the counts and the waiting list in step with it."""
        record = self.image(image_id)
        s = self.summary
        s.counts.add(record, -1)
        change(record)
        s.counts.add(record, +1)
        self._changed.add(f"i/{image_id}")
        waits = record.present and not record.labels and not record.request
        listed = int(image_id) in s.waiting
        if waits and not listed:
            if not s.waiting:
                s.waiting_since_ms = int(time.time() * 1000)
            s.waiting.append(int(image_id))
        elif listed and not waits:
            s.waiting.remove(int(image_id))

    # Older layouts: the only place this module reads them, through streams/old_state_layouts.py (until 0.4.0) ---

    @classmethod
    def from_legacy(cls, raw: dict[str, Any]) -> CityState:
        """A city stored whole by an earlier version (a value without "layout"), in this layout."""
        return old_state_layouts.whole_city(raw)

    def _stored_alone(self, kind: str, row_id: str) -> Any:
        """A record missing from its bucket: stored under a key of its own by an earlier version, or None."""
        return old_state_layouts.record_stored_alone(self._lookup, kind, row_id)

    # Facts ----------------------------------------------------------------------------------------------

    def apply(self, fact: dict[str, Any]) -> bool:
        """Apply one fact (streams/facts.py); returns False when it is a duplicate (already applied)."""
        kind, lsn, s = fact["kind"], fact["lsn"], self.summary
        cmd = s.cmd
        if kind == "training_outcome":
            if not cmd.train_outstanding:
                return False
            cmd.train_outstanding = False
            if fact["status"] in ("failed", "rejected"):
                # Wait for more data before trying again, or a city that fails (or whose model is refused) loops.
                cmd.trained_on = s.counts.labelled_images
                cmd.corrections_on = s.counts.corrections
            return True
        if kind == "linger":  # a nudge from the worker's timer: no data, see due_commands
            return False
        key = str(fact.get("id"))
        if kind == "city":
            if s.city is not None and lsn <= s.city.lsn:
                return False
            s.city = CityRecord(lsn, fact["present"], fact["name"], fact["status"])
        elif kind == "sight":
            if key in s.sights and lsn <= s.sights[key].lsn:
                return False
            s.sights[key] = SightRecord(lsn, fact["present"], fact["name"])
        elif kind == "model":
            current = s.models.get(key)
            if current is not None and lsn <= current.lsn:
                return False
            new_model = fact["present"] and (current is None or not current.present)
            s.models[key] = ModelRecord(lsn, fact["present"], fact["version"])
            if new_model and cmd.train_outstanding:
                # Our request is answered; growth counts from the data it was asked for (set when it was sent),
                # not from whatever arrived meanwhile: change topics are not ordered against each other.
                cmd.train_outstanding = False
            elif new_model:  # a model nobody here asked for (e.g. `sightscan train`): grow from now
                cmd.trained_on = max(cmd.trained_on, s.counts.labelled_images)
                cmd.corrections_on = s.counts.corrections
        elif kind == "image":
            if lsn <= self.image(key).lsn:
                return False

            def set_image(r: ImageRecord) -> None:
                r.lsn, r.present, r.sight_id = lsn, fact["present"], fact["sight_id"]
                if not r.present:
                    r.request = ""
            self._change_image(key, set_image)
        elif kind == "label":
            old = self.label(key)
            if old is not None and lsn <= old.lsn:
                return False
            if old is not None and old.present:
                def drop(r: ImageRecord) -> None:
                    r.labels.pop(key, None)
                    r.kinds.pop(key, None)
                self._change_image(old.image_id, drop)

            def set_outcome(r: ImageRecord) -> None:
                r.request = ""  # any outcome for an image ends its request
                if fact["present"]:
                    r.labels[key] = fact["sight_id"]
                    label_kind = fact.get("label_kind", LABELLER)  # a fact of an earlier version: the labeller's
                    if label_kind != LABELLER:
                        r.kinds[key] = label_kind
            self._change_image(fact["image_id"], set_outcome)
            self._labels[key] = LabelRecord(lsn, fact["present"], fact["image_id"], fact["sight_id"])
            self._changed.add(f"l/{key}")
        else:
            raise ValueError(f"unknown fact kind {kind!r}")
        s.max_lsn = max(s.max_lsn, lsn)
        return True

    # Counts (the data marts) ----------------------------------------------------------------------------

    def counts(self) -> dict[str, Any]:
        s, n = self.summary, self.summary.counts
        per_sight = {int(k): 0 for k, r in s.sights.items() if r.present}
        per_sight.update({int(k): v for k, v in n.per_sight.items()})
        user_boxes = dict.fromkeys(per_sight, 0)
        user_boxes.update({int(k): v for k, v in n.per_sight_user_boxes.items()})
        return {"images": n.images, "labelled_images": n.labelled_images,
                "no_landmark_images": n.no_landmark_images,
                "models": sum(1 for m in s.models.values() if m.present), "per_sight": per_sight,
                "user_boxes": n.user_boxes, "user_negatives": n.user_negatives, "per_sight_user_boxes": user_boxes}

    def linger_deadline_ms(self, limits: Thresholds) -> int | None:
        """When the images waiting now are due to be sent however few they are (None: nothing waits)."""
        s = self.summary
        if not s.waiting or s.city is None or not s.city.present:
            return None
        return s.waiting_since_ms + int(limits.labelling_linger_s * 1000)

    # Commands -------------------------------------------------------------------------------------------

    def due_commands(self, limits: Thresholds, now_ms: int | None = None) -> list[Command]:
        """The commands this state calls for that were not emitted yet; marks them emitted."""
        s = self.summary
        city = s.city
        if city is None or not city.present:
            return []
        cmd, city_id, name = s.cmd, self.city_id, city.name
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        out: list[Command] = []

        if not cmd.crawl and city.status == "requested":
            cmd.crawl = True
            out.append(("crawl", {"request_id": f"crawl-{city_id}", "city_id": city_id, "city": name,
                                  "max_sights_per_city": limits.max_sights_per_city,
                                  "max_images_per_sight": limits.max_images_per_sight, "ts_ms": now_ms}))

        lingered = s.waiting and now_ms >= s.waiting_since_ms + limits.labelling_linger_s * 1000
        while len(s.waiting) >= limits.labelling_batch_size or (s.waiting and lingered):
            batch = sorted(s.waiting)[:limits.labelling_batch_size]
            cmd.label_seq += 1
            request_id = f"label-{city_id}-{cmd.label_seq}"
            for image_id in batch:
                self._change_image(image_id, lambda r, rid=request_id: setattr(r, "request", rid))
            out.append(("labelling", {"request_id": request_id, "city_id": city_id, "city": name,
                                      "image_ids": batch, "ts_ms": now_ms}))
        if s.waiting and not lingered and out and out[-1][0] == "labelling":
            s.waiting_since_ms = now_ms  # what is left waits its own linger

        c = self.counts()
        names = {int(k): r.name for k, r in s.sights.items() if r.present}
        classes = sorted(names[sight] for sight, n in c["per_sight"].items()
                         if n >= limits.min_images_per_label and sight in names)
        ready = c["labelled_images"] >= limits.min_labelled_images and len(classes) >= 2
        grown = c["labelled_images"] >= cmd.trained_on * (1 + limits.retrain_growth_fraction)
        corrected = s.counts.corrections - cmd.corrections_on >= limits.retrain_min_corrections
        first = cmd.train_seq == 0 and not any(m.present for m in s.models.values()) and cmd.trained_on == 0
        if ready and not cmd.train_outstanding and (first or (cmd.trained_on > 0 and (grown or corrected))):
            cmd.train_seq += 1
            cmd.train_outstanding = True
            cmd.trained_on = c["labelled_images"]
            cmd.corrections_on = s.counts.corrections
            out.append(("training", {"request_id": f"train-{city_id}-{cmd.train_seq}", "city_id": city_id,
                                     "city": name, "epochs": limits.epochs, "classes": classes,
                                     "labelled_images": c["labelled_images"],
                                     "reason": "threshold" if first else "growth" if grown else "corrections",
                                     "ts_ms": now_ms}))
        return out
