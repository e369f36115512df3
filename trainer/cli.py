"""Command line: `sightscan train CITY` (via add_parser) and `python -m trainer {train,serve,dispatch}`."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence

from sightscan import log as slog
from sightscan.config import ConfigError, Settings


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `train CITY`; the parsed args' `func(args, settings)` runs it and returns an exit code."""
    p = subparsers.add_parser("train", help="train and store a detector for a city now, with a progress bar")
    p.add_argument("city", help="city name or id")
    p.add_argument("--epochs", type=int, default=None, help="override MTS_EPOCHS")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)
    return p


def run_train(args: argparse.Namespace, settings: Settings) -> int:
    from trainer.data import NotEnoughData
    from trainer.guard import Rejected
    from trainer.pipeline import train_city

    try:
        outcome = train_city(settings, args.city, progress=not args.no_progress, epochs=args.epochs)
    except (NotEnoughData, LookupError, ConfigError) as exc:
        print(f"training failed: {exc}", file=sys.stderr)
        return 1
    except Rejected as exc:
        print(f"model refused, the live model stays: {exc}", file=sys.stderr)
        return 1
    summary = {"city": outcome.city, "version": outcome.version, "sights": len(outcome.classes),
               "map50": round(outcome.metrics["map50"], 4), "map50_95": round(outcome.metrics["map"], 4),
               "train_seconds": outcome.metrics["train_seconds"]}
    print(json.dumps(summary))
    return 0


def run_service(args: argparse.Namespace, settings: Settings) -> int:
    from trainer.service import TrainerService

    service = TrainerService(settings, role="train" if args.command == "serve" else args.command)
    signal.signal(signal.SIGTERM, lambda *_: service.close())
    signal.signal(signal.SIGINT, lambda *_: service.close())
    service.run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description="SightScan trainer")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    for role, text in (("serve", "consume training requests and train (the trainer service)"),
                       ("dispatch", "cloud mode: start the EC2 training instance for each training request")):
        sub.add_parser(role, help=text).set_defaults(func=run_service)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    slog.setup(settings.log_level, settings.log_format)
    return args.func(args, settings)
