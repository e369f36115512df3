"""The scrapy spider: a city's sight names from a sight source, then images of each sight from Commons.

Politeness, retries and timeouts are scrapy's own middlewares, configured by `scrapy_settings`: robots.txt is
obeyed for every image download, concurrency is capped per host, AutoThrottle adapts the per-host delay, and
5xx/429/timeouts are retried. Each sight's Commons results are read a page at a time; the next page is asked for
only when the engine is idle (every download of the previous page stored or rejected) and the sight still
needs images, so the per-sight limit is reached without fetching far more than it.

Downloads go round-robin across sights: every listing (sight names, result pages) is scheduled before any image,
and an image request's scrapy priority is minus its rank within its sight, so the first image of every sight is
fetched before the second image of any. The warehouse stores images in the order they arrive, so whenever the
stream worker's training threshold is crossed, every sight found already has its share of images (scrapy's
scheduler is otherwise LIFO, which filled one sight after another and left the first model knowing only some).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import scrapy
from scrapy import signals
from scrapy.crawler import Crawler
from scrapy.exceptions import (
    CannotResolveHostError,
    DontCloseSpider,
    DownloadCancelledError,
    DownloadConnectionRefusedError,
    DownloadTimeoutError,
    IgnoreRequest,
)
from scrapy.http import Response
from scrapy.spidermiddlewares.httperror import HttpError
from scrapy.utils.defer import deferred_from_coro
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectError, TimeoutError
from twisted.python.failure import Failure

from producers.report import CrawlReport, SightTally
from producers.settings import CrawlerSettings
from producers.sources import Call, CommonsImages, SightSource, SourceError, page_size
from producers.validate import ImageLimits
from producers.warehouse import Warehouse
from sightscan.names import BadName, clean_name, name_key

log = logging.getLogger(__name__)

# Full-resolution originals of other types are not downloaded: the warehouse keeps JPEG, PNG and WebP only.
FULL_MIME_TYPES = ("image/jpeg", "image/png", "image/webp")

# Scheduler priorities (higher first): listings before any image; images by their rank within their sight.
LISTING_PRIORITY = 1_000_000


def image_priority(rank: int) -> int:
    """The scrapy priority of a sight's `rank`-th image request (0 first): round-robin across sights."""
    return -rank


def scrapy_settings(cs: CrawlerSettings, threads: int | None = None) -> dict[str, Any]:
    """Scrapy settings for one crawl: politeness, retries and limits from the crawler's settings."""
    return {
        "USER_AGENT": cs.user_agent,
        "ROBOTSTXT_OBEY": True,
        "CONCURRENT_REQUESTS": threads or cs.threads,
        "CONCURRENT_REQUESTS_PER_DOMAIN": min(cs.per_host, threads or cs.threads),
        "DOWNLOAD_DELAY": cs.download_delay_s,
        "AUTOTHROTTLE_ENABLED": cs.autothrottle,
        "AUTOTHROTTLE_START_DELAY": cs.download_delay_s,
        "AUTOTHROTTLE_MAX_DELAY": cs.max_delay_s,
        "AUTOTHROTTLE_TARGET_CONCURRENCY": float(cs.per_host),
        "RETRY_ENABLED": True,
        "RETRY_TIMES": cs.retry_times,
        "RETRY_HTTP_CODES": [500, 502, 503, 504, 522, 524, 408, 429],
        "RETRY_GIVE_UP_LOG_LEVEL": "WARNING",
        "DOWNLOAD_TIMEOUT": cs.download_timeout_s,
        "DOWNLOAD_MAXSIZE": cs.max_image_bytes,  # larger answers are cut off, not buffered
        "DOWNLOAD_WARNSIZE": 0,
        "COOKIES_ENABLED": False,
        "TELNETCONSOLE_ENABLED": False,  # it would open a port per crawl
        # Requests are planned (API calls, listed files), not discovered links: a URL listed for two sights is
        # fetched for each (the second is a sha256 duplicate), and a dropped request would leave a sight waiting.
        "DUPEFILTER_CLASS": "scrapy.dupefilters.BaseDupeFilter",
        "ITEM_PIPELINES": {"producers.pipeline.WarehousePipeline": 300},
        "DEFAULT_DROPITEM_LOG_LEVEL": "DEBUG",
        "LOG_INSTALL_ROOT_HANDLER": False,  # sightscan.log's handler formats scrapy's records too
        "STATS_DUMP": False,
        "LOG_VERSIONS": [],
        "LOGSTATS_INTERVAL": 0,
    }


def failure_reason(failure: Failure) -> str:
    """A short, countable name for why a download failed."""
    exc = failure.value
    if isinstance(exc, HttpError):
        return f"http_{exc.response.status}"
    if isinstance(exc, IgnoreRequest):
        return "robots_txt" if "robots" in str(exc).lower() else "ignored"
    if isinstance(exc, DownloadTimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, DownloadCancelledError | CancelledError):
        return "too_large"  # DOWNLOAD_MAXSIZE cut it off
    if isinstance(exc, DownloadConnectionRefusedError | ConnectError | CannotResolveHostError):
        return "connection"
    return "download_error"


@dataclass(frozen=True)
class CrawlPlan:
    city_id: int
    city: str
    sights_limit: int
    images_limit: int
    full: bool = False
    skip: bool = True
    max_pages_per_sight: int = 5
    limits: ImageLimits = field(default_factory=ImageLimits)


@dataclass
class SightState:
    key: str
    tally: SightTally
    counted: int                     # images counted against the limit (stored now, plus existing with --skip)
    next_offset: int | None = 0      # the next Commons result offset; None: no more results
    pages: int = 0
    rank: int = 0                    # the next image request's rank within the sight (after those it counts)
    done: bool = False


@dataclass
class ImageItem:
    sight: str                       # SightState key
    url: str                         # as listed (before redirects): the file's own URL
    data: bytes = field(repr=False)  # scrapy logs dropped items: not their bytes
    licence: str | None = None
    author: str | None = None


class SightSpider(scrapy.Spider):
    name = "sightscan-crawler"

    def __init__(self, plan: CrawlPlan, sights: SightSource, images: CommonsImages, warehouse: Warehouse,
                 report: CrawlReport, progress: Callable[[str], None] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan, self.sight_source, self.images = plan, sights, images
        self.warehouse, self.report, self.progress = warehouse, report, progress
        self.found: list[str] = []
        self.states: dict[str, SightState] = {}
        self.total_sights = 0

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> SightSpider:
        spider = super().from_crawler(crawler, *args, **kwargs)
        crawler.signals.connect(spider._on_idle, signal=signals.spider_idle)
        return spider

    async def start(self) -> AsyncIterator[Any]:
        yield self._api(self.sight_source.start(self.plan.city, self.plan.sights_limit), self._on_sights,
                        self._on_sights_error)

    def _api(self, call: Call, callback: Callable[..., Any], errback: Callable[..., Any],
             **meta: Any) -> scrapy.Request:
        # API calls follow the APIs' own terms (an identifying User-Agent, modest concurrency), not robots.txt:
        # Wikimedia's robots.txt disallows /w/ (where api.php lives) to page crawlers. Image files obey it.
        if "timeout_s" in call.state:
            meta["download_timeout"] = max(call.state["timeout_s"], self.crawler.settings.getfloat("DOWNLOAD_TIMEOUT"))
        return scrapy.Request(call.url, callback=callback, errback=errback, priority=LISTING_PRIORITY,
                              meta={"call": call, "dont_obey_robotstxt": True, **meta})

    # Sight names ---------------------------------------------------------------------------------------

    def _on_sights(self, response: Response) -> Iterator[scrapy.Request]:
        call: Call = response.meta["call"]
        try:
            listing = self.sight_source.parse(call, json.loads(response.text), self.plan.sights_limit)
        except (SourceError, ValueError) as exc:
            yield from self._source_failed(f"{self.sight_source.kind}: {exc}")
            return
        self.found.extend(listing.names)
        if listing.next is not None and len(_distinct(self.found)) < self.plan.sights_limit:
            yield self._api(listing.next, self._on_sights, self._on_sights_error)
            return
        yield from self._sights_ready()

    def _on_sights_error(self, failure: Failure) -> Iterator[scrapy.Request]:
        yield from self._source_failed(f"{self.sight_source.kind}: {failure_reason(failure)}")

    def _source_failed(self, error: str) -> Iterator[scrapy.Request]:
        self.report.source_errors.append(error)
        log.warning("sight source failed", extra={"city": self.plan.city, "error": error})
        yield from self._sights_ready()  # with the names of the pages that did answer, if any

    def _sights_ready(self) -> Iterator[scrapy.Request]:
        chosen = list(_distinct(self.found).items())[: self.plan.sights_limit]
        self.total_sights = len(chosen)
        log.info("sights found", extra={"city": self.plan.city, "source": self.sight_source.kind,
                                        "sights": [n for _, n in chosen]})
        for key, name in chosen:
            try:
                sight_id, existing = self.warehouse.sight(self.plan.city_id, name, self.sight_source.kind)
            except psycopg2.Error as exc:
                self.fail(f"warehouse: {exc}")
                return
            tally = SightTally(name, sight_id, existing)
            self.report.sights[key] = tally
            counted = existing if self.plan.skip else 0
            state = SightState(key, tally, counted, rank=counted)  # a sight short of images goes first
            self.states[key] = state
            if self.plan.skip and existing >= self.plan.images_limit:
                tally.skipped = True
                self._finish(state)
            elif self.plan.images_limit > 0:
                yield self._next_page(state)
            else:
                self._finish(state)

    # Images --------------------------------------------------------------------------------------------

    def _next_page(self, state: SightState) -> scrapy.Request:
        count = page_size(self.plan.images_limit - state.counted)
        state.pages += 1
        call = self.images.search(state.tally.name, self.plan.city, count, state.next_offset or 0)
        return self._api(call, self._on_images, self._on_images_error, sight=state.key)

    def _on_images(self, response: Response) -> Iterator[scrapy.Request]:
        state = self.states[response.meta["sight"]]
        try:
            page = self.images.parse(response.meta["call"], json.loads(response.text))
        except (SourceError, ValueError) as exc:
            self._search_failed(state, str(exc))
            return
        state.next_offset = page.next_offset
        for cand in page.candidates:
            if self.plan.full and cand.mime_type and cand.mime_type not in FULL_MIME_TYPES:
                state.tally.rejected["unsupported_format"] += 1
                continue
            if self.plan.full and cand.size and cand.size > self.plan.limits.max_bytes:
                state.tally.rejected["too_large"] += 1  # known from the listing: not downloaded at all
                continue
            yield scrapy.Request(cand.url, callback=self._on_image, errback=self._on_image_error,
                                 priority=image_priority(state.rank),
                                 meta={"sight": state.key, "candidate": cand})
            state.rank += 1

    def _on_images_error(self, failure: Failure) -> None:
        self._search_failed(self.states[failure.request.meta["sight"]], failure_reason(failure))

    def _search_failed(self, state: SightState, error: str) -> None:
        state.tally.listing_error = error
        state.next_offset = None
        self.report.source_errors.append(f"commons {state.tally.name!r}: {error}")
        log.warning("image search failed", extra={"city": self.plan.city, "sight": state.tally.name, "error": error})

    def _on_image(self, response: Response) -> Iterator[ImageItem]:
        cand = response.meta["candidate"]
        yield ImageItem(response.meta["sight"], cand.url, response.body, cand.licence, cand.author)

    def _on_image_error(self, failure: Failure) -> None:
        state = self.states[failure.request.meta["sight"]]
        reason = failure_reason(failure)
        (state.tally.rejected if reason == "too_large" else state.tally.failed)[reason] += 1
        log.info("image not fetched", extra={"sight": state.tally.name, "url": failure.request.url, "reason": reason})

    # Paging and progress ---------------------------------------------------------------------------------

    def _on_idle(self) -> None:
        """Nothing in flight: each sight either gets its next result page or is finished."""
        if self.report.fatal:
            return
        scheduled = False
        for state in self.states.values():
            if state.done:
                continue
            if (state.counted >= self.plan.images_limit or state.next_offset is None
                    or state.pages >= self.plan.max_pages_per_sight):
                self._finish(state)
                continue
            self.crawler.engine.crawl(self._next_page(state))
            scheduled = True
        if scheduled:
            raise DontCloseSpider

    def _finish(self, state: SightState) -> None:
        state.done = True
        t = state.tally
        log.info("sight crawled", extra={"city": self.plan.city, "sight": t.name, **t.as_dict()})
        if self.progress:
            done = sum(s.done for s in self.states.values())
            self.progress(f"[{done}/{self.total_sights}] {t.line()}")

    def fail(self, error: str) -> None:
        """The warehouse failed: stop the whole crawl (it is retried later; what was stored is deduplicated)."""
        if self.report.fatal is None:
            self.report.fatal = error.strip()
            log.error("crawl stopped", extra={"city": self.plan.city, "error": self.report.fatal})
            deferred_from_coro(self.crawler.engine.close_spider_async(reason="warehouse_error"))

    def finish_all(self) -> None:
        """Close the books on sights left open (the crawl was stopped)."""
        for state in self.states.values():
            if not state.done:
                self._finish(state)


def _distinct(names: list[str]) -> dict[str, str]:
    """key -> cleaned name, first spelling kept, as the warehouse will key the sights; names naming nothing
    (blank, only invisible characters) are dropped."""
    out: dict[str, str] = {}
    for name in names:
        try:
            out.setdefault(name_key(name), clean_name(name))
        except BadName:
            continue
    return out
