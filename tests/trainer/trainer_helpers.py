"""Loading a rendered synthetic city into the warehouse, as the crawler and labeller would have left it."""

from __future__ import annotations

import json
from pathlib import Path

from sightscan import db
from sightscan.config import Settings


def load_city(settings: Settings, folder: Path, name: str) -> tuple[int, list[str]]:
    """Insert the folder's images, sights and boxes for a new city; returns (city id, sight names)."""
    coco = json.loads((folder / "annotations.json").read_text())
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    by_name = {c["name"]: c["id"] for c in coco["categories"]}
    with db.transaction(settings) as cur:
        city, _ = db.request_city(cur, name)
        sight_ids = {cid: db.ensure_sight(cur, city.id, n, "test") for cid, n in cats.items()}
        image_ids = {}
        for img in coco["images"]:
            data = (folder / img["file_name"]).read_bytes()
            image_ids[img["id"]] = db.insert_image(cur, db.NewImage(
                city.id, data, "image/jpeg", img["width"], img["height"], "crawl",
                sight_ids[by_name[img["query_sight"]]], f"http://synthetic.test/{img['file_name']}", "CC0-1.0"))
        sizes = {img["id"]: (img["width"], img["height"]) for img in coco["images"]}
        for ann in coco["annotations"]:
            w, h = sizes[ann["image_id"]]
            x, y, bw, bh = ann["bbox"]
            db.insert_label(cur, db.NewLabel(image_ids[ann["image_id"]], city.id, "test", sight_ids[ann["category_id"]],
                                             0.9, (x / w, y / h, min(1.0, (x + bw) / w), min(1.0, (y + bh) / h))))
    return city.id, list(cats.values())
