"""Command line: `sightscan label CITY` (via add_parser) and `python -m consumers {serve,label}`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sightscan import log as slog
from sightscan.config import ConfigError, Settings

if TYPE_CHECKING:  # the labeller imports google-cloud-vision: only when a command runs, not to build the parser
    from consumers.labeller import Labeller, Outcome
    from consumers.settings import LabellerSettings


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `label CITY`; the parsed args' `func(args, settings)` runs it and returns an exit code."""
    p = subparsers.add_parser("label", help="label a city's unlabelled images now (Vision or offline weak labels), "
                                            "with progress")
    p.add_argument("city", help="city name or id")
    p.add_argument("--limit", type=int, default=None, help="label at most this many images")
    p.add_argument("--no-progress", action="store_true", help="no progress line")
    p.set_defaults(func=run_label)
    return p


def run_label(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.labeller import Labeller
    from consumers.service import check_schema
    from consumers.settings import LabellerSettings

    try:
        lsettings = LabellerSettings.from_env()
        check_schema(settings)
        labeller = Labeller(settings, lsettings)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        return _label_city(args, settings, labeller, lsettings)
    finally:
        labeller.close()


def _label_city(args: argparse.Namespace, settings: Settings, labeller: Labeller,
                lsettings: LabellerSettings) -> int:
    from consumers import warehouse
    from consumers.labeller import Outcome
    from consumers.vision import VisionRefused, VisionUnavailable
    from sightscan import db
    from sightscan.commands import Backoff

    with db.transaction(settings) as cur:
        city = db.resolve_city(cur, args.city)
        if city is None:
            print(f"no city named {args.city!r}; ask for it with `sightscan request-city`", file=sys.stderr)
            return 1
        todo = warehouse.unlabelled_image_ids(cur, city.id)[:args.limit]
    described = labeller.describe()
    print(f"labelling {len(todo)} images of {city.name} with {described['backend']}", file=sys.stderr)
    total = Outcome()
    step = lsettings.batch_size
    for start in range(0, len(todo), step):
        chunk = todo[start:start + step]
        delays = Backoff(first_s=lsettings.backoff_s, max_s=60.0).delays()
        for attempt in range(1, lsettings.max_attempts + 1):
            try:
                total.add(labeller.label(city.id, chunk, request_id="cli"))
                break
            except VisionUnavailable as exc:
                if attempt == lsettings.max_attempts:
                    print(f"\nVision unavailable, gave up after {attempt} attempts: {exc}", file=sys.stderr)
                    return _finish(city.name, total, 1)
                delay = next(delays)
                print(f"\nVision unavailable ({exc}); retrying in {delay:.1f} s", file=sys.stderr)
                time.sleep(delay)
            except VisionRefused as exc:
                print(f"\nVision refused the request: {exc}", file=sys.stderr)
                return _finish(city.name, total, 1)
        if not args.no_progress:
            done = min(start + step, len(todo))
            print(f"\r{done}/{len(todo)} images: {total.landmark_labels} landmark labels, {total.no_landmark} "
                  f"no landmark, {total.weak} weak, {len(total.left_unlabelled)} left", end="", file=sys.stderr,
                  flush=True)
    if not args.no_progress and todo:
        print(file=sys.stderr)
    return _finish(city.name, total, 1 if total.failed or total.retry else 0)


def _finish(city: str, total: Outcome, code: int) -> int:
    summary = {"city": city, **total.summary()}
    failed = {**total.failed, **total.retry}
    if failed:
        summary["errors"] = {str(k): v for k, v in sorted(failed.items())}
    print(json.dumps(summary))
    return code


def run_service(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.service import LabellerService

    try:
        service = LabellerService(settings)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    service.serve_forever()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consumers", description="SightScan labeller")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    sub.add_parser("serve", help="consume labelling requests and label (the labeller service)").set_defaults(
        func=run_service)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    slog.setup(settings.log_level, settings.log_format)
    return args.func(args, settings)
