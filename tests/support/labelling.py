"""Helpers for the labeller tests: an isolated topic prefix, a city seeded from the synthetic generator, a service
run in a thread, warehouse reads."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consumers import warehouse
from consumers.service import LabellerService
from consumers.settings import LabellerSettings
from sightscan import db, kafka
from sightscan.config import Settings
from sightscan.topics import command_topic

PREFIXES: list[str] = []  # topic prefixes made by isolated(); conftest deletes their topics after each test


def isolated(settings: Settings, **overrides: Any) -> Settings:
    """The stack's settings with a topic prefix of this test's own: its labeller sees only the commands it sends
    (the shared stack's labelling topic holds other tests' requests)."""
    prefix = f"lbl{uuid.uuid4().hex[:10]}"
    PREFIXES.append(prefix)
    return dataclasses.replace(settings, topic_prefix=prefix, **overrides)


def labeller_settings(endpoint: str = "", **overrides: Any) -> LabellerSettings:
    base = {"vision_endpoint": endpoint, "credentials_file": "", "backend": "auto", "backoff_s": 0.05,
            "max_attempts": 4, "timeout_s": 5.0}
    base.update(overrides)
    return LabellerSettings.from_env({}, **base)


@dataclass(frozen=True)
class SeededImage:
    id: int
    data: bytes
    width: int
    height: int
    sight: str                               # the query sight (and the landmark it shows)
    bbox: tuple[float, float, float, float]  # pixels x, y, w, h (COCO)

    @property
    def pixel_box(self) -> tuple[int, int, int, int]:
        x, y, w, h = self.bbox
        return round(x), round(y), round(x + w), round(y + h)

    @property
    def expected_box(self) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = self.pixel_box
        return x0 / self.width, y0 / self.height, min(1.0, x1 / self.width), min(1.0, y1 / self.height)


@dataclass(frozen=True)
class SeededCity:
    id: int
    name: str
    sights: dict[str, int]  # name -> sight id
    images: list[SeededImage]


def seed_city(settings: Settings, folder: Path, name: str = "Labelton", with_query_sight: bool = True) -> SeededCity:
    """A fresh city (unique name) with the folder's sights and images; images keep their query sight."""
    coco = json.loads((folder / "annotations.json").read_text())
    boxes = {a["image_id"]: tuple(a["bbox"]) for a in coco["annotations"]}
    images: list[SeededImage] = []
    with db.transaction(settings) as cur:
        city, _ = db.request_city(cur, f"{name} {uuid.uuid4().hex[:8]}")
        sights = {c["name"]: db.ensure_sight(cur, city.id, c["name"], "crawl") for c in coco["categories"]}
        for img in coco["images"]:
            data = (folder / img["file_name"]).read_bytes()
            sight_id = sights[img["query_sight"]] if with_query_sight else None
            image_id = db.insert_image(cur, db.NewImage(city.id, data, "image/jpeg", img["width"], img["height"],
                                                        "crawl" if with_query_sight else "upload", sight_id))
            images.append(SeededImage(image_id, data, img["width"], img["height"], img["query_sight"],
                                      boxes[img["id"]]))
    return SeededCity(city.id, city.name, sights, images)


def add_image(settings: Settings, city: SeededCity, data: bytes, sight: str | None) -> int:
    with db.transaction(settings) as cur:
        return db.insert_image(cur, db.NewImage(city.id, data, "image/jpeg", 640, 480,
                                                "crawl" if sight else "upload",
                                                city.sights[sight] if sight else None))


def publish(settings: Settings, city: SeededCity, image_ids: list[int], seq: int = 1) -> dict[str, Any]:
    """A labelling request as the stream agent sends it."""
    command = {"request_id": f"label-{city.id}-{seq}", "city_id": city.id, "city": city.name,
               "image_ids": image_ids, "ts_ms": int(time.time() * 1000)}
    producer = kafka.producer(settings)
    producer.produce(command_topic("labelling", settings.topic_prefix), json.dumps(command).encode(),
                     key=str(city.id).encode())
    assert producer.flush(10) == 0
    return command


@dataclass(frozen=True)
class LabelRow:
    image_id: int
    sight_id: int | None
    sight: str | None
    score: float | None
    box: tuple[float, float, float, float] | None
    labeller: str
    weak: bool


def labels_of(settings: Settings, city_id: int) -> list[LabelRow]:
    with db.transaction(settings) as cur:
        cur.execute("SELECT l.image_id, l.sight_id, s.name, l.score, l.x_min, l.y_min, l.x_max, l.y_max,"
                    " l.labeller, l.weak FROM labels l LEFT JOIN sights s ON s.id = l.sight_id"
                    " WHERE l.city_id = %s ORDER BY l.image_id, l.id", (city_id,))
        return [LabelRow(r[0], r[1], r[2], r[3], None if r[4] is None else (r[4], r[5], r[6], r[7]), r[8], r[9])
                for r in cur.fetchall()]


def costs_of(settings: Settings, city_id: int) -> warehouse.LabellingCosts:
    with db.transaction(settings) as cur:
        return warehouse.labelling_costs(cur, city_id)




@contextlib.contextmanager
def running(service: LabellerService) -> Iterator[LabellerService]:
    """The service consuming in a thread; stopped (and its consumer closed) on exit."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            service.run()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="labeller", daemon=True)
    thread.start()
    try:
        yield service
    finally:
        service.close()
        thread.join(30)
        assert not thread.is_alive(), "the labeller did not stop"
    if errors:
        raise errors[0]
