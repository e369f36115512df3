"""The item pipeline: check each downloaded image, then store it in the warehouse, or count why not."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import psycopg2
from scrapy.crawler import Crawler
from scrapy.exceptions import DropItem

from producers.validate import Rejected, check_image
from sightscan import db

if TYPE_CHECKING:
    from producers.spider import ImageItem, SightSpider

log = logging.getLogger(__name__)


class WarehousePipeline:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> WarehousePipeline:
        return cls(crawler)

    def process_item(self, item: ImageItem) -> Any:
        # Synchronous on purpose: one short INSERT on the reactor thread keeps the per-sight counts (and so the
        # limits) exact, with no thread pool to coordinate.
        spider: SightSpider = self.crawler.spider  # type: ignore[assignment]
        plan, state = spider.plan, spider.states[item.sight]
        tally = state.tally
        if state.counted >= plan.images_limit:
            tally.surplus += 1
            raise DropItem("surplus: the sight has reached its limit")
        try:
            checked = check_image(item.data, plan.limits)
        except Rejected as exc:
            tally.rejected[exc.reason] += 1
            log.info("image rejected", extra={"sight": tally.name, "url": item.url, "reason": exc.reason,
                                              "detail": exc.detail})
            raise DropItem(f"rejected: {exc}") from exc
        image = db.NewImage(city_id=plan.city_id, data=item.data, mime_type=checked.mime_type, width=checked.width,
                            height=checked.height, origin="crawl", sight_id=tally.sight_id, source_url=item.url,
                            licence=item.licence, author=item.author)
        try:
            image_id = spider.warehouse.store(image)
        except psycopg2.Error as exc:
            spider.fail(f"warehouse: {exc}")  # not this image's fault: the crawl fails and is retried
            raise DropItem("warehouse error") from exc
        if image_id is None:
            tally.duplicates += 1
            raise DropItem("duplicate: the city already has these bytes")
        tally.stored += 1
        state.counted += 1
        log.debug("image stored", extra={"sight": tally.name, "image_id": image_id, "url": item.url,
                                         "bytes": len(item.data), "width": checked.width, "height": checked.height})
        return item
