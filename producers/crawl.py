"""One crawl of one city, in this process: resolve the city, run the spider to the end, set the city's status.

Scrapy runs on Twisted's reactor, which cannot be started twice in a process, so a process runs one crawl:
`python -m producers crawl` (and `sightscan crawl`) call this once; the service runs each crawl request as such
a child process (producers/service.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from scrapy.crawler import CrawlerProcess

from producers.report import CrawlReport
from producers.settings import CrawlerSettings
from producers.sources import CommonsImages, sight_source
from producers.spider import CrawlPlan, SightSpider, scrapy_settings
from producers.validate import ImageLimits
from producers.warehouse import Warehouse
from sightscan.config import Settings

log = logging.getLogger(__name__)


class UnknownCity(LookupError):
    """The city id is not in the warehouse."""


class WarehouseFailed(RuntimeError):
    """The warehouse failed mid-crawl: the crawl stopped; the city's status is left as it was."""


class CrawlInterrupted(RuntimeError):
    """The spider closed before it was done (SIGTERM/SIGINT): the city's status is left as it was."""


class SourcesFailed(RuntimeError):
    """Nothing was stored and a source failed on the way: worth trying again later, not a city without images."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


class _Redact(logging.Filter):
    """Keeps a secret (the Maps key travels in request URLs, which scrapy quotes in its logs) out of the logs."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.secret in message:
            record.msg, record.args = message.replace(self.secret, "***"), None
        return True


def _tame_scrapy_logs(level: str, secret: str) -> None:
    # CrawlerProcess() sets scrapy's loggers to DEBUG (a line per request); unless we debug, our own per-sight
    # lines say enough.
    if level.upper() != "DEBUG":
        logging.getLogger("scrapy").setLevel(logging.WARNING)
    if secret:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_Redact(secret))


def crawl_city(settings: Settings, cs: CrawlerSettings, city: str | int, *, sights_limit: int | None = None,
               images_limit: int | None = None, full: bool = False, skip: bool = True, threads: int | None = None,
               progress: Callable[[str], None] | None = None, create: bool = False) -> dict[str, Any]:
    """Crawl `city` (an id, or a name; `create` requests a new name) and return the summary.

    Raises UnknownCity, SourcesFailed, CrawlInterrupted or WarehouseFailed."""
    warehouse = Warehouse(settings)
    try:
        found, created = warehouse.city(city, create=create)
        if found is None:
            raise UnknownCity(f"no city {city!r} in the warehouse")
        warehouse.start(found.id)
        sights = sight_source(cs)
        report = CrawlReport(found.id, found.name, sights.kind)
        plan = CrawlPlan(
            city_id=found.id, city=found.name,
            sights_limit=settings.max_sights_per_city if sights_limit is None else sights_limit,
            images_limit=settings.max_images_per_sight if images_limit is None else images_limit,
            full=full, skip=skip, max_pages_per_sight=cs.max_pages_per_sight,
            limits=ImageLimits(cs.min_side, cs.max_image_bytes, cs.max_pixels))
        log.info("crawl started", extra={"city_id": found.id, "city": found.name, "new_city": created,
                                         "source": sights.kind, "sights_limit": plan.sights_limit,
                                         "images_limit": plan.images_limit, "full": full, "skip": skip})
        process = CrawlerProcess(scrapy_settings(cs, threads))
        _tame_scrapy_logs(settings.log_level, cs.maps_key)
        crawler = process.create_crawler(SightSpider)
        process.crawl(crawler, plan=plan, sights=sights, images=CommonsImages(cs, full), warehouse=warehouse,
                      report=report, progress=progress)
        process.start()  # blocks until the spider closes
        spider: SightSpider | None = crawler.spider
        if spider is not None:
            spider.finish_all()
        if report.fatal:
            raise WarehouseFailed(report.fatal)
        reason = crawler.stats.get_value("finish_reason") if crawler.stats else None
        if reason != "finished":
            # Stopped half way: not "done", so neither 'labelling' nor 'failed'; a rerun picks up (sha256 dedupe).
            raise CrawlInterrupted(f"crawl of {found.name!r} stopped before it was done ({reason})")
        summary = report.summary()
        if summary["stored"] == 0 and (report.source_errors or summary["failed"]) \
                and not warehouse.has_images(found.id):
            raise SourcesFailed("nothing stored and sources failed: " + "; ".join(
                report.source_errors or [f"downloads failed: {summary['failed']}"]), summary)
        report.status = warehouse.finish(found.id)
        summary = report.summary()
        log.info("crawl done", extra={k: v for k, v in summary.items() if k != "per_sight"})
        return summary
    finally:
        warehouse.close()
