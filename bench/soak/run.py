"""Soak: the whole system for a set time under webcam load and new cities; does anything grow without bound?

On a private stack, with a steady webcam load and a new city every few minutes: do memory, the Kafka log, the
database, the replication slot's retained WAL or consumer lag grow without bound?

    .venv/bin/python -m bench.soak [--minutes 30] [--city-every MIN] [--clients 8] [--fps 10] [--out DIR]

Set-up (not on the clock, bounded by --setup-timeout): a private stack and every service in the offline demo's
mode (bench/soak/cities.py), the cities rendered ahead, the first city requested and learned. Then, for --minutes:
  - a new city is requested every --city-every minutes (default: a sixth of the run, between 2 and 5 minutes);
  - --clients webcam clients stream the live cities' clips to /ws/detect at --fps each (bench/soak/load.py);
  - models retrain as each city's labels grow and the gateway hot-swaps them;
  - every --interval seconds (10) each process's RSS and CPU, the Kafka log directory, the database, the
    replication slot's retained WAL, every consumer group's lag (bench/soak/sampling.py) and the websocket
    latency of the interval are sampled to DIR/samples.csv (t_s,series,value).
Then every process it started is stopped and the stack deleted (also on Ctrl-C, SIGTERM or an error: an
interrupted soak still judges what it sampled). It draws DIR/soak.png, judges each series flat / bounded /
growing and checks the issue's targets (bench/soak/verdicts.py says how), writes DIR/summary.json and prints the
`JSON {...}` line last. DIR defaults to .sightscan/soak/<timestamp>/; the stack's logs are copied to DIR/logs/.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.soak.cities import Renderer, SoakCity, model_versions, plan, request
from bench.soak.load import Load
from bench.soak.sampling import SERVICES, Sampler
from bench.soak.verdicts import Verdict, judge, p99_target, rss_target, window_s
from bench.stats import exit_cleanly_on_sigterm, machine_note, report
from localsystem.stack import LocalStack
from localsystem.stack.services import stop_all
from sightscan.config import Settings
from tests.support.stack import ephemeral_settings, free_port

ORDER = ("rss_mb", "cpu_pct", "kafka_log_mb", "db_mb", "slot_wal_mb", "lag", "ws_p99_ms", "ws_p50_ms",
         "ws_answered_fps", "ws_dropped_fps", "ws_errors", "host_load1")


def say(message: str) -> None:
    print(f"  {message}", flush=True)


class Record:
    """The samples: each series as (t, value), written to samples.csv as they come; the latencies per sample."""

    def __init__(self, path: Path) -> None:
        self.series: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.latencies: list[tuple[float, list[float]]] = []  # (t, ms of the frames answered in the interval)
        self.problems: dict[str, int] = defaultdict(int)
        self._file = path.open("w", newline="")
        self._csv = csv.writer(self._file)
        self._csv.writerow(["t_s", "series", "value"])

    def add(self, t: float, values: dict[str, float], latencies_ms: list[float]) -> None:
        for name, value in values.items():
            self.series[name].append((t, value))
            self._csv.writerow([f"{t:.1f}", name, f"{value:.4f}"])
        self._file.flush()
        self.latencies.append((t, latencies_ms))

    def close(self) -> None:
        self._file.close()

    @property
    def length_s(self) -> float:
        return self.latencies[-1][0] if self.latencies else 0.0

    def ordered(self) -> list[str]:
        """The series by kind (ORDER), then by process (the services first)."""
        rank = {k: i for i, k in enumerate(ORDER)}
        procs = [*SERVICES, "websources", "supervisor", "postgres", "kafka", "connect", "soak"]

        def key(name: str) -> tuple[int, int, str]:
            kind, _, who = name.partition(":")
            return rank.get(kind, len(ORDER)), procs.index(who) if who in procs else len(procs), name

        return sorted(self.series, key=key)


class Soak:
    def __init__(self, a: argparse.Namespace, settings: Settings, stack: LocalStack, gateway: str,
                 cities: list[SoakCity], renderer: Renderer, record: Record) -> None:
        self.a, self.settings, self.stack, self.gateway = a, settings, stack, gateway
        self.cities, self.renderer, self.record = cities, renderer, record
        self.load = Load(gateway.replace("http://", "ws://") + "/ws/detect", a.clients, a.fps)
        self.sampler: Sampler | None = None
        self.t0 = time.monotonic()
        self.first_times = (0.0, 0.0)  # when the first city was requested and went live (monotonic)
        self.models_before = 0        # the first city's models when the clock started

    def clock(self) -> float:
        return time.monotonic() - self.t0

    def setup(self) -> None:
        deadline = time.monotonic() + self.a.setup_timeout
        first = self.renderer.wait(0, self.a.setup_timeout)
        request(self.settings, self.gateway, first, say)  # brings the stack and the services up first
        requested = time.monotonic()
        say(f"{first.name} requested; waiting for its first model")
        while not (versions := model_versions(self.settings, first.name)):
            if time.monotonic() > deadline:
                raise SystemExit(f"{first.name} has no model after {self.a.setup_timeout:g} s of set-up")
            time.sleep(2)
        self.first_times = (requested, time.monotonic())
        say(f"{first.name} has model v{versions[0]} {time.monotonic() - requested:.0f} s after its request")
        for i in range(1, len(self.cities)):
            self.renderer.wait(i, max(1.0, deadline - time.monotonic()))
        self.renderer.close()
        self.load.add_city(first.name, first.payloads)

    async def run(self) -> None:
        sampler = Sampler(self.settings, self.stack)
        self.sampler = sampler
        await asyncio.to_thread(sampler.sample)  # CPU baselines: the first sample has CPU figures
        self.t0 = time.monotonic()
        first = self.cities[0]
        first.requested_s, first.live_s = (at - self.t0 for at in self.first_times)
        self.models_before = len(await asyncio.to_thread(model_versions, self.settings, first.name))
        clients = asyncio.create_task(self.load.run(), name="clients")
        cities = asyncio.create_task(self._cities(), name="cities")
        self.load.take()
        length = self.a.minutes * 60
        n = 0
        try:
            while (n + 1) * self.a.interval <= length + 1e-6:
                n += 1
                await asyncio.sleep(max(0.0, n * self.a.interval - self.clock()))
                t = self.clock()
                ws, ms = self.load.take()
                values, problems = await asyncio.to_thread(sampler.sample)
                self.record.add(t, {**values, **ws}, ms)
                for line in problems:
                    self.record.problems[line] += 1
                    if self.record.problems[line] == 1:
                        say(f"t={t:.0f} s: could not sample {line}")
                if n % max(1, round(60 / self.a.interval)) == 0:
                    say(self._progress(t, values, ws))
                for task in (clients, cities):
                    if task.done():
                        task.result()  # an error there ends the soak
        finally:
            for task in (clients, cities):
                task.cancel()
            await asyncio.gather(clients, cities, return_exceptions=True)

    def _progress(self, t: float, values: dict[str, float], ws: dict[str, float]) -> str:
        lag = sum(v for k, v in values.items() if k.startswith("lag:"))
        rss = " ".join(f"{s} {values.get(f'rss_mb:{s}', float('nan')):.0f}" for s in SERVICES)
        return (f"{t / 60:5.1f} min  RSS MB: {rss}  p99 {ws.get('ws_p99_ms', float('nan')):.0f} ms "
                f"({ws['ws_answered_fps']:.0f} answered/s)  lag {lag:.0f}  db {values.get('db_mb', 0):.0f} MB  "
                f"kafka {values.get('kafka_log_mb', 0):.0f} MB  load {values['host_load1']:.1f}")

    async def _cities(self) -> None:
        waits = []
        for k, city in enumerate(self.cities[1:], 1):
            await asyncio.sleep(max(0.0, k * self.a.city_every * 60 - self.clock()))
            city.requested_s = self.clock()
            await asyncio.to_thread(request, self.settings, self.gateway, city, lambda _m: None)
            say(f"t={city.requested_s:.0f} s: requested {city.name}")
            waits.append(asyncio.create_task(self._until_live(city)))
        await asyncio.gather(*waits)

    async def _until_live(self, city: SoakCity) -> None:
        while not await asyncio.to_thread(model_versions, self.settings, city.name):
            await asyncio.sleep(2)
        city.live_s = self.clock()
        self.load.add_city(city.name, city.payloads)
        say(f"t={city.live_s:.0f} s: {city.name} has a model ({city.live_s - (city.requested_s or 0):.0f} s after "
            "its request); the clients are dealt again")


def judge_all(record: Record, minutes_run: float) -> tuple[dict[str, Verdict], list, float]:
    length = minutes_run * 60
    verdicts = {name: judge(name, [t for t, _ in record.series[name]], [v for _, v in record.series[name]],
                            span=(0.0, length)) for name in record.ordered()}
    window = window_s(minutes_run)
    targets = []
    for service in SERVICES:
        points = record.series.get(f"rss_mb:{service}", [])
        targets.append(rss_target(service, [t for t, _ in points], [v for _, v in points], window))
    half_step = (record.latencies[1][0] - record.latencies[0][0]) / 2  # sample times run a little late
    first = [ms for t, lat in record.latencies if t < window + half_step for ms in lat]
    last = [ms for t, lat in record.latencies if t > length - window + half_step for ms in lat]
    targets.append(p99_target(first, last, window))
    return verdicts, targets, window


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0, help="the soak's length, after set-up (default 30)")
    p.add_argument("--city-every", type=float, help="minutes between city requests (default: minutes/6, 2..5)")
    p.add_argument("--clients", type=int, default=8, help="webcam clients (default 8)")
    p.add_argument("--fps", type=float, default=10.0, help="frames per second per client (default 10)")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between samples (default 10)")
    p.add_argument("--sights", type=int, default=5)
    p.add_argument("--per-sight", type=int, default=40)
    p.add_argument("--setup-timeout", type=float, default=900.0,
                   help="seconds for the stack, the renders and the first city's model (default 900)")
    p.add_argument("--out", type=Path, help="output folder (default .sightscan/soak/<timestamp>/)")
    a = p.parse_args(argv)
    if a.minutes * 60 < 6 * a.interval:
        p.error(f"--minutes {a.minutes:g} is under six samples of {a.interval:g} s")
    if a.city_every is None:
        a.city_every = min(5.0, max(2.0, a.minutes / 6))
    a.out = a.out or Path(".sightscan") / "soak" / time.strftime("%Y%m%d-%H%M%S")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    exit_cleanly_on_sigterm()
    a.out.mkdir(parents=True, exist_ok=True)
    os.environ["DOS_PORT"] = str(free_port())  # the private system's gateway; the demo's services read it
    os.environ.setdefault("TRAINER_THREADS", "2")
    gateway = f"http://127.0.0.1:{os.environ['DOS_PORT']}"
    count = 1 + max(0, int((a.minutes - 1e-9) // a.city_every))
    note_before = machine_note()
    print(f"soak: {a.minutes:g} min, a city every {a.city_every:g} min ({count} cities of {a.sights} x "
          f"{a.per_sight}), {a.clients} clients at {a.fps:g} fps; {note_before}; out: {a.out}", flush=True)
    record = Record(a.out / "samples.csv")
    interrupted = ""
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        settings = ephemeral_settings(Path(tmp) / "stack")
        stack = LocalStack(settings, progress=lambda m: say(f"[stack] {m}"))
        cities = plan(count, a.sights, a.per_sight, free_port())
        renderer = Renderer(settings, cities)
        soak = Soak(a, settings, stack, gateway, cities, renderer, record)
        try:
            soak.setup()
            try:
                asyncio.run(soak.run())
            except (KeyboardInterrupt, SystemExit) as exc:
                interrupted = f"interrupted after {record.length_s / 60:.1f} min ({type(exc).__name__})"
                say(interrupted)
            for city in cities:
                if city.requested_s is not None:
                    city.versions = model_versions(settings, city.name)
        finally:
            renderer.close()
            record.close()
            say("stopping every service and deleting the stack")
            stop_all(settings)
            shutil.copytree(settings.home / "logs", a.out / "logs", dirs_exist_ok=True)
            stack.down(purge=True)
    return finish(a, record, soak, note_before, interrupted)


def finish(a: argparse.Namespace, record: Record, soak: Soak, note_before: str, interrupted: str) -> int:
    from bench.soak.plot import draw

    cities, load = soak.cities, soak.load
    restarts = dict(soak.sampler.restarts) if soak.sampler else {}
    minutes_run = record.length_s / 60 if interrupted else a.minutes  # sample times run a little late
    if len(record.latencies) < 6:
        print(f"soak: only {len(record.latencies)} samples; no verdicts", flush=True)
        return 1
    verdicts, targets, window = judge_all(record, minutes_run)
    plot = draw(a.out / "soak.png", {k: record.series[k] for k in record.ordered()}, verdicts, minutes_run * 60,
                window, f"soak: {minutes_run:.3g} min, {len(cities)} cities, {a.clients} clients at {a.fps:g} fps "
                f"({note_before})")
    print("\nverdicts (bench/soak/verdicts.py):")
    for v in verdicts.values():
        print(f"  {v.line()}")
    print(f"\ntargets ({window / 60:.3g}-minute windows):")
    for target in targets:
        print(f"  {target.line()}")
    trained = sum(len(c.versions) for c in cities) - soak.models_before
    if trained == 0:
        print("\nwarning: no model was stored during the soak, so nothing was hot-swapped under the clients: "
              "trainings took longer than the run (a longer --minutes, or smaller cities: --sights, --per-sight)")
    expected = {"websources": "restarts with each city (it serves one)",
                "supervisor": "restarts with each city (start_system)"}
    figures: dict[str, Any] = {
        "minutes": round(minutes_run, 2), "interrupted": interrupted or None, "interval_s": a.interval,
        "window_min": round(window / 60, 2), "machine_before": note_before, "machine_after": machine_note(),
        "cities": [c.as_json() for c in cities],
        "models_during_soak": trained, "load": load.summary(),
        "restarts": {k: f"{n} ({expected[k]})" if k in expected else n for k, n in restarts.items()},
        "verdicts": {k: v.as_json() for k, v in verdicts.items()},
        "verdict_counts": {kind: sum(1 for v in verdicts.values() if v.verdict == kind)
                           for kind in ("flat", "bounded", "growing", "too few samples")},
        "growing": [k for k, v in verdicts.items() if v.verdict == "growing"],
        "targets": {t.name: {"figure": round(t.figure, 3), "limit": t.limit, "met": t.met, "text": t.text}
                    for t in targets},
        "targets_met": all(t.met for t in targets),
        "problems": dict(record.problems),
        "csv": str(a.out / "samples.csv"), "plot": str(plot),
    }
    (a.out / "summary.json").write_text(json.dumps(figures, indent=1))
    print(f"\nplot: {plot}\nsamples: {a.out / 'samples.csv'}; summary: {a.out / 'summary.json'}")
    compact = {k: v for k, v in figures.items() if k not in ("verdicts",)}
    compact["targets"] = {t.name: {"figure": round(t.figure, 3), "limit": t.limit, "met": t.met} for t in targets}
    compact["verdicts"] = {k: f"{v.verdict} ({v.slope_second:+.3g} {v.unit}/min)" for k, v in verdicts.items()}
    report("soak", compact)
    return 0 if not interrupted else 130


if __name__ == "__main__":
    raise SystemExit(main())
