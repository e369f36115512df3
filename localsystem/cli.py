"""The `sightscan` command: the local stack, the warehouse and (as they land) each service."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import TYPE_CHECKING

from sightscan import db, log
from sightscan.config import ConfigError, Settings, current_values
from sightscan.names import BadName

if TYPE_CHECKING:
    from localsystem.stack import LocalStack


def with_brokers(args: argparse.Namespace, settings: Settings) -> Settings:
    """The settings with `--brokers N` (KAFKA_BROKERS) applied, where the command has it."""
    brokers = getattr(args, "brokers", None)
    return dataclasses.replace(settings, kafka_brokers=brokers) if brokers else settings


def _stack(args: argparse.Namespace, settings: Settings) -> int:
    from localsystem.stack import LocalStack

    def progress(msg: str) -> None:
        print(f"sightscan: {msg}", file=sys.stderr, flush=True)

    stack = LocalStack(with_brokers(args, settings), progress)
    if args.action == "up":
        timings = stack.up()
        print(json.dumps({"status": "up", "seconds": {k: round(v, 2) for k, v in timings.items()}}))
    elif args.action == "down":
        stack.down(purge=args.purge)
        print(json.dumps({"status": "down", "purged": args.purge}))
    else:
        rows = stack.status()
        for row in rows:
            state = "healthy" if row.healthy else ("running" if row.running else "stopped")
            print(f"{row.name:<10} {state:<8} {row.where}")
        return 0 if all(r.healthy for r in rows) else 3
    return 0


def _system(args: argparse.Namespace, settings: Settings) -> int:
    """The whole system: the stack, then SightScan's services (up); services, then the stack (down)."""
    from localsystem.stack import LocalStack
    from localsystem.stack.services import api_token, gateway_port, start_all, stop_all

    def progress(msg: str) -> None:
        print(f"sightscan: {msg}", file=sys.stderr, flush=True)

    stack = LocalStack(with_brokers(args, settings), progress if args.command != "status" else None)
    settings = stack.settings  # with the stack's own number of Kafka nodes, for the services
    if args.command == "up":
        stack.up()
        start_all(settings, progress)
        print(f"SightScan is up: open http://127.0.0.1:{gateway_port()}/ (API token: {api_token(settings)})")
        return 0
    if args.command == "down":
        stop_all(settings)
        stack.down(purge=args.purge)
        print("SightScan is down")
        return 0
    return _print_status(settings, stack)


def _print_status(settings: Settings, stack: LocalStack) -> int:
    """One line a part: state, where (port or log), and what the supervisor did to it; exit 3 unless all healthy."""
    from localsystem.stack.services import services, supervisor
    from localsystem.stack.supervisor import read_state

    supervised = read_state(settings)
    rows = [(r.name, r.healthy, r.running, r.where) for r in stack.status()]
    rows += [(s.name, s.healthy(), s.running(), str(s.log_path)) for s in [*services(settings), supervisor(settings)]]
    for name, healthy, running, where in rows:
        rec = supervised.get(name, {})
        state = "healthy" if healthy else "running" if running else "stopped"
        if rec.get("state") == "gave-up":
            state = "gave-up"
        note = f"restarts {rec['restarts']}" if rec.get("restarts") else ""
        if rec.get("state") in ("waiting", "restarting", "gave-up"):
            note += f"{'; ' if note else ''}{rec['state']} after {len(rec.get('crashes', []))} crash(es): "
            note += rec.get("last_error", "")
        print(f"{name:<10} {state:<8} {where}{'  ' + note if note else ''}")
    return 0 if all(r[1] for r in rows) else 3


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    """Offline: a synthetic city on local web sources, learnt by the whole system and served to the page."""
    from localsystem.demo.system import DemoOptions, run_demo
    from localsystem.stack.settings import SystemSettings

    port = args.sources_port if args.sources_port is not None else SystemSettings.from_env().demo_sources_port

    def progress(msg: str) -> None:
        print(f"sightscan: {msg}", file=sys.stderr, flush=True)

    opts = DemoOptions(city=args.city, seed=args.seed, sights=args.sights, per_sight=args.per_sight,
                       sources_port=port, seconds=args.seconds, fps=args.fps, timeout=args.timeout, look=args.look)
    return run_demo(settings, opts, progress, say=lambda line: print(line, flush=True))


def _gateway(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.app import main as gateway_main

    return gateway_main(args.rest)


def _streams(args: argparse.Namespace, settings: Settings) -> int:
    from streams.__main__ import main as streams_main

    streams_main(["worker", *args.rest])
    return 0


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    applied = db.migrate(settings)
    print(json.dumps({"applied": applied}))
    return 0


def settings_of_every_service() -> list[tuple[str, type]]:
    """(service, its settings class) for `sightscan config`: every variable any SightScan process reads."""
    from consumers.settings import LabellerSettings
    from gateway.settings import GatewaySettings
    from localsystem.stack.settings import SystemSettings
    from producers.settings import CrawlerSettings
    from streams.settings import StreamsSettings
    from trainer.settings import TrainerEnv

    return [("shared", Settings), ("local system and supervisor", SystemSettings),
            ("stream worker", StreamsSettings), ("crawler", CrawlerSettings),
            ("labeller", LabellerSettings), ("trainer", TrainerEnv), ("gateway", GatewaySettings)]


def settings_reference() -> str:
    """docs/configuration.md: every variable with its default and meaning, per service (tests keep it current)."""
    lines = ["# Configuration", "",
             "Every setting is an environment variable with a local default; a malformed value stops the process at",
             "start-up with a message naming the variable. `sightscan config` prints the values in force now and where",
             "each came from. This page is generated: `sightscan config --markdown > docs/configuration.md`.", ""]
    for service, cls in settings_of_every_service():
        lines += [f"## {service}", "", "| variable | default | meaning |", "|---|---|---|"]
        for row in current_values(cls, {}):
            meaning = row.meaning.replace("|", "\\|")  # a pipe would end the table cell
            lines.append(f"| `{row.variable}` | {row.value or '(unset)'} | {meaning} |")
        lines.append("")
    return "\n".join(lines)


def _config(args: argparse.Namespace, settings: Settings) -> int:
    import os

    if args.markdown:
        print(settings_reference(), end="")
        return 0
    malformed = 0
    for service, cls in settings_of_every_service():
        print(f"# {service}")
        for row in current_values(cls, os.environ):
            malformed += row.source.startswith("malformed")
            print(f"{row.variable:<38} {row.value:<28} {row.source:<12} {row.meaning}")
        print()
    return 1 if malformed else 0


def _city(args: argparse.Namespace, settings: Settings) -> int:
    try:
        with db.transaction(settings) as cur:
            city, created = db.request_city(cur, args.name)
    except BadName as exc:
        print(f"sightscan request-city: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"id": city.id, "name": city.name, "status": city.status, "created": created}))
    return 0


def _user(args: argparse.Namespace, settings: Settings) -> int:
    """`user add NAME`: a user with a write token of their own, printed this once (the warehouse keeps its SHA-256);
    `user disown NAME`: their token is refused and their corrections deleted (docs/corrections.md)."""
    if not db.valid_user_name(args.name):
        print(f"sightscan user: {args.name!r} is not a user name: 1 to 63 characters among a-z 0-9 . _ -, starting "
              "with a letter or digit", file=sys.stderr)
        return 2
    with db.transaction(settings) as cur:
        if args.action == "add":
            token = db.new_user_token()
            user = db.insert_user(cur, args.name, db.token_sha256(token))
            if user is None:
                print(f"sightscan user add: there is already a user named {args.name!r} (a disowned name stays "
                      "taken)", file=sys.stderr)
                return 1
            print(json.dumps({"name": user.name, "token": token, "created_at": user.created_at.isoformat()}))
            return 0
        done = db.disown_user(cur, args.name)
    if done is None:
        print(f"sightscan user disown: there is no user named {args.name!r}", file=sys.stderr)
        return 1
    print(json.dumps({"name": done.user.name, "disowned_at": done.user.disowned_at.isoformat(),
                      "corrections_deleted": done.corrections_deleted, "images_deleted": done.images_deleted}))
    return 0


def _connector(args: argparse.Namespace, settings: Settings) -> int:
    import connectors

    if args.action == "register":
        connectors.register(settings)
        connectors.wait_running(settings, timeout=args.timeout)
    elif args.action == "delete":
        connectors.delete(settings)
    print(json.dumps(connectors.status(settings)))
    return 0


def add_brokers_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--brokers", type=int, choices=[1, 3],
                        help="Kafka nodes of a new stack (KAFKA_BROKERS; default 1): 3 replicates every topic three "
                             "times, with min.insync.replicas=2; the stack keeps the number it was created with")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sightscan", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    for name, text in (("up", "bring up the whole system: the stack, then every SightScan service"),
                       ("down", "stop the services, then the stack"),
                       ("status", "what runs and whether it is healthy")):
        p = sub.add_parser(name, help=text)
        p.set_defaults(func=_system)
        if name == "down":
            p.add_argument("--purge", action="store_true", help="also delete all state and logs")
        if name == "up":
            add_brokers_option(p)

    demo = sub.add_parser("demo", help="offline demo: the whole system learns a synthetic city served by local web "
                                       "sources, then the page recognises its sights")
    demo.add_argument("--city", default="Synthetica", help="the synthetic city's name")
    demo.add_argument("--seed", type=int, default=7, help="the city's seed (its sights, photos and clip)")
    demo.add_argument("--sights", type=int, default=5)
    demo.add_argument("--per-sight", type=int, default=40, help="photos of each sight on the web sources")
    demo.add_argument("--look", choices=("synthetic", "photo"), default="synthetic",
                      help="drawn sights, or real photographs (localsystem.demo.photos)")
    demo.add_argument("--sources-port", type=int,
                      help="port of the local web sources (default: DEMO_SOURCES_PORT, else 8766)")
    demo.add_argument("--seconds", type=float, help="length of the webcam clip (default 2 s per sight)")
    demo.add_argument("--fps", type=int, default=10, help="frame rate of the webcam clip")
    demo.add_argument("--timeout", type=float, default=1800,
                      help="seconds to follow the city until its model is live (0: do not wait)")
    demo.set_defaults(func=_demo)

    from consumers.cli import add_parser as add_label_parser
    from producers.cli import add_parser as add_crawl_parser
    from trainer.cli import add_parser as add_train_parser

    add_crawl_parser(sub)  # `crawl CITY`: each service owns its command's options
    add_label_parser(sub)  # `label CITY`
    add_train_parser(sub)  # `train CITY`

    gateway = sub.add_parser("gateway", help="run the gateway in the foreground (python -m gateway.app options)")
    gateway.add_argument("rest", nargs=argparse.REMAINDER)
    gateway.set_defaults(func=_gateway)

    streams = sub.add_parser("streams", help="run a stream worker in the foreground (faust worker options)")
    streams.add_argument("rest", nargs=argparse.REMAINDER)
    streams.set_defaults(func=_streams)

    stack = sub.add_parser("stack", help="the local PostgreSQL + Kafka + Debezium stack alone")
    stack.add_argument("action", choices=["up", "down", "status"])
    stack.add_argument("--purge", action="store_true", help="with down: delete all state and logs")
    add_brokers_option(stack)
    stack.set_defaults(func=_stack)

    connector = sub.add_parser("connector", help="the Debezium connector on a running Kafka Connect (CONNECT_URL)")
    connector.add_argument("action", choices=["register", "status", "delete"])
    connector.add_argument("--timeout", type=float, default=120, help="seconds to wait for RUNNING")
    connector.set_defaults(func=_connector)

    migrate = sub.add_parser("migrate", help="apply the warehouse migrations (idempotent)")
    migrate.set_defaults(func=_migrate)

    config = sub.add_parser("config", help="list every setting, its current value and meaning")
    config.add_argument("--markdown", action="store_true",
                        help="print the reference of every setting and its default (docs/configuration.md)")
    config.set_defaults(func=_config)

    city = sub.add_parser("request-city", help="ask SightScan to learn a city")
    city.add_argument("name")
    city.set_defaults(func=_city)

    user = sub.add_parser("user", help="users who send corrections with tokens of their own (docs/corrections.md)")
    user.add_argument("action", choices=["add", "disown"],
                      help="add: create the user and print their token (shown once); disown: refuse their token "
                           "from now on and delete every correction they made")
    user.add_argument("name", help="1 to 63 characters among a-z 0-9 . _ -")
    user.set_defaults(func=_user)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        # The commands that drive the local system print progress lines for people; their logs go to a file.
        quiet = args.command in ("up", "down", "status", "stack", "demo")
        log.setup(settings.log_level, settings.log_format,
                  file=settings.home / "logs" / "sightscan.log" if quiet else None)
        return args.func(args, settings)
    except ConfigError as exc:
        print(f"sightscan: configuration error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a plain message for the known failure kinds, a trace for the rest
        from connectors import ConnectorError
        from localsystem.stack import StackError

        if isinstance(exc, StackError | ConnectorError):
            print(f"sightscan: error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
