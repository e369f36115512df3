#!/usr/bin/env python3
"""The gateway under hostile input (issue 10's targets), against a real gateway on a private stack:

  1. schemathesis: N generated requests (valid and invalid) per operation of /openapi.json, with the token;
     counts the 5xx and the answers that do not match the document (target: 0 x 5xx in 10,000);
  2. 100 decompression-bomb frames (a 12 KB 1-bit PNG declaring 39.9 MP) on one websocket: the gateway's RSS
     before and after (target: within 50 MB) and the time each bomb costs;
  3. /healthz latency p50/p99 while bomb frames and 39.9 MP bomb uploads run (target: p99 <= 50 ms), next to
     /healthz on the idle gateway measured in the same run.

    .venv/bin/python -m bench.gateway_hostile.run [--requests 10000] [--bombs 100]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from bench.stats import exit_cleanly_on_sigterm, report, summary_ms
from gateway import openapi
from localsystem.stack import LocalStack
from sightscan import db
from tests.support.gateway import (
    TOKEN,
    Gateway,
    bomb_png,
    jpeg,
    next_message,
    start_gateway,
    stop_gateway,
)
from tests.support.stack import ephemeral_settings


def fuzz(gateway: Gateway, requests: int, city: str) -> dict[str, Any]:
    """Rounds of generated requests over every operation until `requests` were sent. Every other request to a
    path with {city} names a real city with a model, so uploads and model downloads get past the lookup."""
    schema = schemathesis.openapi.from_dict(openapi.document()).exclude(path="/ws/detect")
    operations = [r.ok() for r in schema.get_all_operations()]
    statuses: collections.Counter[int] = collections.Counter()
    mismatches: collections.Counter[str] = collections.Counter()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    started, rounds = time.perf_counter(), 0
    while sum(statuses.values()) < requests:
        rounds += 1
        for operation in operations:
            _fuzz_operation(gateway, operation, 200, headers, city, statuses, mismatches)
    took = time.perf_counter() - started
    total = sum(statuses.values())
    return {"requests": total, "operations": len(operations), "rounds": rounds, "seconds": round(took, 1),
            "5xx": sum(n for s, n in statuses.items() if s >= 500),
            "statuses": dict(sorted(statuses.items())), "schema_mismatches": sum(mismatches.values()),
            "mismatch_kinds": dict(mismatches.most_common(8))}


def _fuzz_operation(gateway: Gateway, operation: Any, examples: int, headers: dict[str, str], city: str,
                    statuses: collections.Counter[int], mismatches: collections.Counter[str]) -> None:
    sent = itertools.count()

    @given(case=operation.as_strategy())
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    def run(case: schemathesis.Case) -> None:
        if case.path_parameters and "city" in case.path_parameters and next(sent) % 2:
            case.path_parameters["city"] = city
        response = case.call(base_url=gateway.url, headers=headers, timeout=30)
        statuses[response.status_code] += 1
        try:
            excluded = [positive_data_acceptance]  # as tests/gateway/test_gateway_schema.py explains
            if operation.path.endswith("/images"):
                excluded.append(negative_data_rejection)
            case.validate_response(response, excluded_checks=excluded)
        except FailureGroup as group:
            for failure in group.exceptions:
                mismatches[f"{operation.label}: {failure.title}"] += 1
        except AssertionError as failure:
            mismatches[f"{operation.label}: {str(failure).splitlines()[0][:80]}"] += 1

    run()


async def _healthz(gateway: Gateway, until: asyncio.Future[Any] | None, count: int = 200) -> list[float]:
    latencies: list[float] = []
    async with aiohttp.ClientSession() as http:
        while (until is None and len(latencies) < count) or (until is not None and not until.done()):
            start = time.perf_counter()
            async with http.get(gateway.url + "/healthz") as res:
                await res.read()
            latencies.append(time.perf_counter() - start)
            await asyncio.sleep(0.01)
    return latencies


BOMB = bomb_png()  # made before any measurement: encoding it takes the client's loop ~60 ms


async def _bombs(gateway: Gateway, city: str, count: int) -> list[float]:
    bomb, each = BOMB, []
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{gateway.ws_url}?city={city}") as ws:
        await next_message(ws, "hello")
        for _ in range(count):
            start = time.perf_counter()
            await ws.send_bytes(bomb)
            assert (await next_message(ws, ("error", "detections")))["code"] == "too_large"
            each.append(time.perf_counter() - start)
        await ws.send_bytes(jpeg((220, 30, 30)))
        await next_message(ws, ("detections", "error"))
    return each


async def _uploads(gateway: Gateway, city: str, bombs: list[bytes]) -> list[int]:
    async with aiohttp.ClientSession() as http:
        async def one(i: int) -> int:
            form = aiohttp.FormData()
            form.add_field("image", bombs[i], filename="bomb.png", content_type="image/png")
            async with http.post(f"{gateway.url}/api/cities/{city}/images", data=form,
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as res:
                return res.status

        return list(await asyncio.gather(*(one(i) for i in range(len(bombs)))))


async def _bombs_alone(gateway: Gateway, city: str, bombs: int) -> dict[str, Any]:
    work = asyncio.ensure_future(_bombs(gateway, city, bombs))
    busy = await _healthz(gateway, work)
    return {"healthz_under_bombs": summary_ms(busy), "bomb_frame_round_trip": summary_ms(await work)}


async def _bombs_and_uploads(gateway: Gateway, city: str, bombs: int, uploads: list[bytes], seconds: float
                             ) -> dict[str, Any]:
    """Bomb frames and batches of bomb uploads, again and again for `seconds`, while /healthz is polled."""
    idle = await _healthz(gateway, None)

    async def attack() -> list[int]:
        statuses: list[int] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            _, batch = await asyncio.gather(_bombs(gateway, city, bombs), _uploads(gateway, city, uploads))
            statuses += batch
        return statuses

    work = asyncio.ensure_future(attack())
    busy = await _healthz(gateway, work)
    statuses = await work
    return {"healthz_idle": summary_ms(idle), "healthz_under_bombs_and_uploads": summary_ms(busy),
            "bomb_uploads_statuses": dict(collections.Counter(statuses))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000, help="schemathesis requests in all")
    parser.add_argument("--bombs", type=int, default=100, help="bomb frames on one websocket")
    parser.add_argument("--uploads", type=int, default=8, help="39.9 MP bomb uploads at once, during the bombs")
    parser.add_argument("--seconds", type=float, default=20, help="how long bombs and uploads go on")
    args = parser.parse_args()
    exit_cleanly_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="sightscan-bench-hostile-") as home:
        stack = LocalStack(ephemeral_settings(Path(home)), progress=lambda m: print(f"  [stack] {m}", flush=True))
        stack.up()
        gateway = None
        try:
            gateway = start_gateway(stack.settings, Path(home) / "gateway.log", GATEWAY_DECODE_THREADS="2")
            from tests.support.onnx_models import solid_colour_model
            with db.transaction(stack.settings) as cur:
                city, _ = db.request_city(cur, "Bench Bombs")
                onnx, classes = solid_colour_model({"Red Gate": (220, 30, 30), "Blue Hall": (30, 40, 210)})
                db.insert_model(cur, city.id, onnx, classes, 64, {})
            asyncio.run(_bombs(gateway, city.name, 3))  # warm-up
            rss_before = gateway.rss_kib() / 1024
            alone = asyncio.run(_bombs_alone(gateway, city.name, args.bombs))
            rss_after = gateway.rss_kib() / 1024
            report("gateway under bomb frames", {**alone, "rss_before_mib": round(rss_before, 1),
                                                 "rss_after_mib": round(rss_after, 1),
                                                 "rss_growth_mib": round(rss_after - rss_before, 1)})
            uploads = [bomb_png(seed=i) for i in range(args.uploads)]
            mixed = asyncio.run(_bombs_and_uploads(gateway, city.name, args.bombs, uploads, args.seconds))
            report("gateway under bomb frames and 39.9 MP uploads",
                   {**mixed, "rss_after_mib": round(gateway.rss_kib() / 1024, 1)})
            report("gateway schemathesis", fuzz(gateway, args.requests, city.name))
        finally:
            if gateway is not None:
                stop_gateway(gateway)
            stack.down(purge=True)


if __name__ == "__main__":
    main()
