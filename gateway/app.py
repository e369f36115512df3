"""The gateway app: wiring, start-up and shutdown, and the command line (`python -m gateway.app`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg2
from aiohttp import web
from aiohttp.web_runner import GracefulExit

from gateway import corrections, model_files, openapi, rest, review, ws
from gateway.decoding import Decoder
from gateway.follower import ModelEventFollower
from gateway.metrics import Metrics
from gateway.protocol import GatewayRunner
from gateway.registry import ModelRegistry
from gateway.settings import GatewaySettings
from gateway.state import STATE, GatewayState
from gateway.warehouse import PgWarehouse, Warehouse
from sightscan import asyncapi
from sightscan import log as sslog
from sightscan.config import ConfigError, Settings

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"


@web.middleware
async def _count(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                 ) -> web.StreamResponse:
    """Counts every request by route and status; a bug becomes a plain JSON 500, its traceback only logged."""
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        if status >= 400 and exc.content_type != "application/json":
            return as_json(exc)
        raise
    except psycopg2.OperationalError as exc:  # PostgreSQL away (restarting after a crash): say so, at once
        status = 503
        log.warning("the warehouse does not answer", extra={"route": route, "error": str(exc).strip()[:200]})
        return web.json_response({"error": "warehouse_unavailable", "message": "the warehouse (PostgreSQL) does "
                                  "not answer; try again in a few seconds"}, status=503, headers={"Retry-After": "5"})
    except Exception:
        log.exception("request failed", extra={"route": route, "method": request.method})
        return web.json_response({"error": "internal", "message": "the gateway failed on this request; it is "
                                  "logged"}, status=500)
    finally:
        request.app[STATE].metrics.http_requests.labels(route, str(status)).inc()


def as_json(exc: web.HTTPException) -> web.Response:
    """aiohttp's own errors (no route, wrong method, body too large) in the API's JSON shape."""
    message = (exc.text or exc.reason).removeprefix(f"{exc.status}: ")
    headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
    return web.json_response({"error": exc.reason.lower().replace(" ", "_"), "message": message},
                             status=exc.status, headers=headers)


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi.document())


async def _asyncapi(request: web.Request) -> web.Response:
    """The AsyncAPI document of every Kafka topic (sightscan/asyncapi.py)."""
    return web.json_response(asyncapi.document())


def make_app(settings: GatewaySettings, core: Settings, warehouse: Warehouse | None = None) -> web.Application:
    """The aiohttp app. `warehouse` defaults to PostgreSQL from `core`; Kafka is followed if settings say so."""
    # Uploads are streamed and capped by max_upload_bytes; this only bounds the other bodies (JSON).
    app = web.Application(middlewares=[_count], client_max_size=settings.max_upload_bytes + 65536)
    metrics = Metrics()
    warehouse = warehouse if warehouse is not None else PgWarehouse(core)
    # One inference thread: ONNX Runtime parallelises inside a run, and a second concurrent run on 2 cores only
    # fights the first for them. Decoding gets its own threads so it overlaps inference.
    inference_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
    registry = ModelRegistry(warehouse, settings, inference_pool, metrics)
    app[STATE] = GatewayState(settings, core, warehouse, registry, metrics, Decoder(settings), inference_pool)
    app.add_routes(rest.routes)
    corrections.setup(app)
    model_files.setup(app)  # the model file, the browser runtime, cross-origin isolation (issue 22)
    review.setup(app)
    app.router.add_get("/openapi.json", _openapi)
    app.router.add_get("/asyncapi.json", _asyncapi)
    app.router.add_get("/ws/detect", ws.detect_handler)
    app.router.add_get("/", _index)
    app.router.add_static("/static", STATIC)
    app.cleanup_ctx.append(_lifecycle)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    state.registry.start()
    if state.settings.follow_models:
        state.follower = ModelEventFollower(state.core, state.registry.on_event, asyncio.get_running_loop())
        state.follower.start()
    log.info("gateway started", extra={"host": state.settings.host, "port": state.settings.port,
                                       "follow_models": state.settings.follow_models})
    yield
    if state.follower is not None:
        await asyncio.get_running_loop().run_in_executor(None, state.follower.stop)
    await state.registry.close()
    state.decoder.close()
    state.inference_pool.shutdown(wait=False, cancel_futures=True)
    close = getattr(state.warehouse, "close", None)
    if close is not None:
        close()


def main(argv: list[str] | None = None) -> int:
    """Run the gateway until interrupted. Settings come from the environment; flags override host and port."""
    parser = argparse.ArgumentParser(prog="sightscan gateway", description=__doc__)
    parser.add_argument("--host", help="interface to listen on (GATEWAY_HOST)")
    parser.add_argument("--port", type=int, help="port to listen on (DOS_PORT); 0 picks a free one")
    args = parser.parse_args(argv)
    try:
        core = Settings.from_env()
        settings = GatewaySettings.from_env()
    except ConfigError as exc:
        parser.exit(2, f"sightscan gateway: {exc}\n")
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if overrides:
        settings = GatewaySettings(**{**settings.__dict__, **overrides})
    sslog.setup(core.log_level, core.log_format)
    if not settings.api_token:
        log.warning("SIGHTSCAN_API_TOKEN is not set: reads only, every write is refused")
    app = make_app(settings, core)
    started = time.monotonic()

    def announce(site_port: int) -> None:
        # A machine-readable line, so scripts and tests that ask for port 0 learn the real one.
        print(f"gateway listening on http://{settings.host}:{site_port}", flush=True)
        log.info("listening", extra={"port": site_port, "start_s": round(time.monotonic() - started, 2)})

    try:
        asyncio.run(_serve(app, settings, announce))
    except (KeyboardInterrupt, GracefulExit):  # SIGINT / SIGTERM: the runner has cleaned up
        pass
    return 0


async def _serve(app: web.Application, settings: GatewaySettings, announce: Callable[[int], None]) -> None:
    runner = GatewayRunner(app, handle_signals=True, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1] if site._server and site._server.sockets else settings.port
    announce(port)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
