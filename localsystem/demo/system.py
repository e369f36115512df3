"""`sightscan demo`: the whole system learns a synthetic city offline, end to end, and serves it to the web page.

It renders a synthetic city (localsystem.demo.city) and a webcam clip of it under SIGHTSCAN_HOME/demo/, serves the
city on local web sources that speak Wikidata's, Commons' and Maps' APIs (localsystem.demo.web_sources, started as
a service of the local system), brings up the stack and SightScan's services with the crawler pointed at those
sources and thresholds sized to the city, requests the city through the gateway's REST API and follows it until
it has a model to serve.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from localsystem.demo.city import CityInfo, H, W, clip_length, render_city, render_clip
from localsystem.demo.web_sources import sources_env
from localsystem.stack.settings import SystemSettings
from sightscan.config import Settings

DEFAULT_SOURCES_PORT: int = SystemSettings.demo_sources_port  # DEMO_SOURCES_PORT's default


@dataclass(frozen=True)
class DemoOptions:
    city: str = "Synthetica"
    seed: int = 7
    sights: int = 5
    per_sight: int = 40
    sources_port: int = DEFAULT_SOURCES_PORT  # DEMO_SOURCES_PORT
    seconds: float | None = None              # the clip's length; default 2 s per sight
    fps: int = 10
    timeout: float = 1800.0                   # seconds to wait for a live model; 0: do not wait
    poll_s: float = 2.0
    look: str = "synthetic"                   # "photo": a city of real photographs (localsystem.demo.photos)
    negatives: int = 6                        # photos of the city's streets with no sight, rendered with it

    @property
    def clip_seconds(self) -> float:
        return self.seconds if self.seconds is not None else 2.0 * self.sights


def demo_folder(settings: Settings, opts: DemoOptions) -> Path:
    """Where the demo city is rendered: SIGHTSCAN_HOME/demo/<city>-seed<seed>-<sights>x<per_sight>/."""
    slug = re.sub(r"[^a-z0-9]+", "-", opts.city.lower()).strip("-") or "city"
    look = "" if opts.look == "synthetic" else f"-{opts.look}"
    return settings.home / "demo" / f"{slug}-seed{opts.seed}-{opts.sights}x{opts.per_sight}{look}"


def prepare_city(settings: Settings, opts: DemoOptions,
                 progress: Callable[[str], None] = lambda _: None) -> tuple[CityInfo, Path]:
    """The rendered demo city and its clip (clip.y4m beside it), rendered unless an earlier run left them: the
    renderer is deterministic, so the same options give the same files."""
    folder = demo_folder(settings, opts)
    info: CityInfo | None = None
    try:
        info = CityInfo.load(folder)
    except (OSError, ValueError, KeyError):
        pass
    if info is None or (info.city, info.seed, len(info.sights), info.per_sight, info.look) != (
            opts.city, opts.seed, opts.sights, opts.per_sight, opts.look):
        progress(f"rendering {opts.city}: {opts.sights} sights x {opts.per_sight} photos ({opts.look}) -> {folder}")
        info = render_city(folder, city=opts.city, seed=opts.seed, sights=opts.sights, per_sight=opts.per_sight,
                           negatives=opts.negatives, look=opts.look)
    clip, meta_path = folder / "clip.y4m", folder / "video_annotations.json"
    frames = clip_length(opts.sights, opts.clip_seconds, opts.fps)
    try:
        meta = json.loads(meta_path.read_text())
        fresh = (meta["fps"] == opts.fps and len(meta["frames"]) == frames
                 and clip.stat().st_size == len(_y4m_header(opts.fps)) + frames * (6 + W * H * 3 // 2))
    except (OSError, ValueError, KeyError):
        fresh = False
    if not fresh:
        progress(f"rendering the webcam clip ({opts.clip_seconds:g} s at {opts.fps} fps) -> {clip}")
        render_clip(clip, info, seconds=opts.clip_seconds, fps=opts.fps, annotations=meta_path)
    return info, clip


def _y4m_header(fps: int) -> bytes:
    return f"YUV4MPEG2 W{W} H{H} F{fps}:1 Ip A1:1 C420jpeg\n".encode()


def demo_env(opts: DemoOptions, sources_url: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The settings the demo gives every service, by their usual names.

    Always: the crawler's four sources on the local web sources, Wikidata for sight names (no Maps key), offline
    weak labels (Vision does not know synthetic sights). Sized to the city unless set in `environ`: a city is
    trained once 60% of its photos are labelled, a sight is a class with a quarter of its photos, the crawler
    looks for every sight and keeps every photo, with no politeness delay towards the local server.
    """
    environ = os.environ if environ is None else environ
    total = opts.sights * opts.per_sight
    sized = {"MIN_LABELLED_IMAGES_NEEDED_FOR_TRAINING": str(max(1, math.ceil(0.6 * total))),
             "MIN_IMAGE_NUMBER_PER_LABEL": str(max(1, opts.per_sight // 4)),
             "MAX_SIGHTS_PER_CITY": str(opts.sights), "MAX_IMAGES_PER_SIGHT": str(opts.per_sight),
             "CRAWLER_DOWNLOAD_DELAY_S": "0"}
    return {**{k: environ.get(k) or v for k, v in sized.items()}, **sources_env(sources_url),
            "MAPS_KEY": "", "CRAWLER_SIGHT_SOURCE": "wikidata", "LABELLER_BACKEND": "weak"}


def page_url(gateway: str, city: str, autostart: bool = False) -> str:
    return f"{gateway}/?city={quote(city)}" + ("&autostart=1" if autostart else "")


def _http(method: str, url: str, body: Any = None, token: str | None = None) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def request_city(gateway: str, token: str, city: str) -> dict[str, Any]:
    """POST /api/cities through the gateway's REST API: {"id", "name", "status", "created"}."""
    return _http("POST", f"{gateway}/api/cities", {"name": city}, token)


def city_status(gateway: str, city: str) -> dict[str, Any]:
    """GET /api/cities/<city>: counts, the newest model and the version the gateway serves."""
    return _http("GET", f"{gateway}/api/cities/{quote(city)}")


def model_version(row: Mapping[str, Any]) -> int | None:
    """The city's newest model: what the gateway serves (it loads a city's model on the first frame sent)."""
    return (row.get("model") or {}).get("version")


def progress_line(row: Mapping[str, Any], expected: int) -> str:
    model = model_version(row)
    return (f"{row.get('status', '?'):<10} sights {row.get('sights', 0)}  crawled {row.get('images', 0)}/{expected}"
            f"  labelled {row.get('labelled_images', 0)}  model {f'v{model}' if model else '-'}")


def start_system(settings: Settings, opts: DemoOptions, info: CityInfo, clip: Path,
                 progress: Callable[[str], None]) -> None:
    """The stack, then the services in demo mode: the web sources first, every service with `demo_env`."""
    from localsystem.stack import LocalStack
    from localsystem.stack.services import (
        DEMO_SOURCES,
        PythonService,
        demo_sources_spec,
        demo_state,
        services,
        start_all,
        supervisor,
        write_demo_state,
    )

    LocalStack(settings, progress).up()
    env = demo_env(opts, f"http://127.0.0.1:{opts.sources_port}")
    state = {"city": opts.city, "folder": str(info.folder), "port": opts.sources_port, "clip": str(clip),
             "env": env}
    old = demo_state(settings)
    if old is not None and old != state:  # an earlier demo's sources serve another city or port
        PythonService(settings, demo_sources_spec(old)).stop()
    write_demo_state(settings, state)
    supervisor(settings).stop()  # it would restart what we stop below; start_all starts it again
    for svc in services(settings):
        if svc.name != DEMO_SOURCES and svc.running() and not svc.started_with(env):
            progress(f"restarting service {svc.name} with the demo's settings")
            svc.stop()
    start_all(settings, progress)


def run_demo(settings: Settings, opts: DemoOptions, progress: Callable[[str], None],
             say: Callable[[str], None] = print) -> int:
    """The demo; 0 once the city has a model to serve (or at once with timeout 0), 1 when the timeout passes
    first (the system keeps running)."""
    from localsystem.stack.services import api_token, gateway_port

    info, clip = prepare_city(settings, opts, progress)
    start_system(settings, opts, info, clip, progress)
    gateway = f"http://127.0.0.1:{gateway_port()}"
    created = request_city(gateway, api_token(settings), opts.city)
    say(f"{opts.city} requested ({'new' if created['created'] else 'known already'}, status {created['status']})")
    say(f"open {page_url(gateway, opts.city)}")
    started, expected, last, row = time.monotonic(), opts.sights * opts.per_sight, "", {}
    while opts.timeout > 0:
        try:
            row = city_status(gateway, opts.city)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            row = {"status": f"({exc})"}
        line = progress_line(row, expected)
        if line != last:
            say(f"{time.monotonic() - started:6.0f} s  {line}")
            last = line
        if model_version(row):
            break
        if time.monotonic() - started > opts.timeout:
            say(f"no model for {opts.city} yet after {opts.timeout:g} s; the system keeps running "
                "(./dev status, logs under " f"{settings.home / 'logs'}; ./dev down stops it)")
            _how_to_watch(say, gateway, opts.city, clip)
            return 1
        time.sleep(opts.poll_s)
    if model_version(row):
        say(f"{opts.city} has a model (v{model_version(row)}): the page recognises its sights")
    _how_to_watch(say, gateway, opts.city, clip)
    return 0


def _how_to_watch(say: Callable[[str], None], gateway: str, city: str, clip: Path) -> None:
    say(f"open {page_url(gateway, city)}")
    say(f"webcam clip of the city: {clip}")
    say("a fake webcam playing it: chromium --use-fake-device-for-media-stream "
        f"--use-file-for-fake-video-capture={clip} '{page_url(gateway, city, autostart=True)}'")
