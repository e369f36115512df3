"""Command line: `sightscan crawl CITY` (via add_parser) and `python -m producers {crawl,serve}`.

`crawl` prints its summary as one JSON line on stdout and a progress line per sight on stderr. Exit codes:
0 done, 1 error, 2 configuration error, 3 sources failed (nothing stored; try again later), 4 unknown city id,
5 interrupted (SIGTERM/SIGINT; the city's status is left as it was).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from producers.exit_codes import (
    EXIT_CONFIG,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOURCES_FAILED,
    EXIT_UNKNOWN_CITY,
)
from sightscan import log as slog
from sightscan.config import ConfigError, Settings, non_negative_int, positive_int


def _argument(parse: Callable[[str], int]) -> Callable[[str], int]:
    """A sightscan.config parser as an argparse type: its ValueError becomes argparse's message."""
    def convert(raw: str) -> int:
        try:
            return parse(raw)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{raw!r}: {exc}") from None
    convert.__name__ = parse.__name__
    return convert


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `crawl CITY`; the parsed args' `func(args, settings)` runs it and returns an exit code."""
    p = subparsers.add_parser("crawl", help="crawl a city's sights and their images into the warehouse now",
                              description="Find a city's sights, crawl licensed images of each into the warehouse.")
    p.add_argument("city", nargs="?", help="city name (requested if new) or id")
    p.add_argument("--city-id", type=int, default=None, help="city id (it must exist)")
    p.add_argument("--limit", type=_argument(non_negative_int), default=None,
                   help="images per sight (default MAX_IMAGES_PER_SIGHT)")
    p.add_argument("--sights-limit", type=_argument(non_negative_int), default=None,
                   help="sights of the city (default MAX_SIGHTS_PER_CITY)")
    p.add_argument("--threads", type=_argument(positive_int), default=None,
                   help="concurrent downloads (default CRAWLER_THREADS)")
    p.add_argument("--full", action="store_true",
                   help="download full-resolution originals instead of CRAWLER_THUMB_WIDTH px thumbnails")
    p.add_argument("--skip", action=argparse.BooleanOptionalAction, default=True,
                   help="skip sights that already have --limit images (default); --no-skip crawls them again "
                        "(images already stored are not stored twice)")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=run_crawl)
    return p


def run_crawl(args: argparse.Namespace, settings: Settings) -> int:
    from producers.crawl import CrawlInterrupted, SourcesFailed, UnknownCity, WarehouseFailed, crawl_city
    from producers.settings import CrawlerSettings

    if (args.city is None) == (args.city_id is None):
        print("crawl: give a CITY or --city-id", file=sys.stderr)
        return EXIT_CONFIG
    try:
        cs = CrawlerSettings.from_env()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        summary = crawl_city(settings, cs, args.city_id if args.city_id is not None else args.city,
                             sights_limit=args.sights_limit, images_limit=args.limit, full=args.full, skip=args.skip,
                             threads=args.threads, progress=None if args.no_progress else progress,
                             create=args.city_id is None)
    except UnknownCity as exc:
        print(f"crawl: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN_CITY
    except SourcesFailed as exc:
        print(f"crawl: {exc}", file=sys.stderr)
        print(json.dumps(exc.summary), flush=True)
        return EXIT_SOURCES_FAILED
    except CrawlInterrupted as exc:
        print(f"crawl: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except WarehouseFailed as exc:
        print(f"crawl: stopped, the warehouse failed: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(summary), flush=True)
    if not args.no_progress:
        rejected = ", ".join(f"{k} {v}" for k, v in sorted(summary["rejected"].items())) or "none"
        failed = ", ".join(f"{k} {v}" for k, v in sorted(summary["failed"].items())) or "none"
        progress(f"{summary['city']}: {summary['stored']} images stored from {summary['sights']} sights "
                 f"({summary['duplicates']} duplicates; rejected: {rejected}; failed: {failed}); "
                 f"city status {summary['status']}")
    return EXIT_OK


def run_service(args: argparse.Namespace, settings: Settings) -> int:
    from producers.service import CrawlerService
    from producers.settings import CrawlerSettings

    try:
        service = CrawlerService(settings, CrawlerSettings.from_env())
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    service.worker.serve_forever()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m producers", description="SightScan crawler")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    sub.add_parser("serve", help="consume crawl requests and crawl each city (the crawler service)") \
        .set_defaults(func=run_service)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    slog.setup(settings.log_level, settings.log_format)
    return args.func(args, settings)
