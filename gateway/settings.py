"""Gateway settings from environment variables, with local defaults (the pattern of sightscan.config).

DOS_PORT keeps the original orchestration service's name for its port.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from sightscan.config import (
    ServiceSettings,
    boolean,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    tcp_port_or_zero,
    unit_interval,
)
from sightscan.config import env_field as _env


def normal_origin(raw: str) -> str:
    """An origin as browsers send it: scheme://host[:port], lower-case, no path, no default port."""
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/") or parts.query \
            or parts.fragment or parts.username is not None:
        raise ValueError(f"{raw.strip()!r} is not an origin like https://sightscan.example.org")
    default = {"http": 80, "https": 443}[parts.scheme]
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = "" if parts.port in (None, default) else f":{parts.port}"
    return f"{parts.scheme}://{host}{port}"


def _origins(raw: str) -> tuple[str, ...]:
    return tuple("*" if o.strip() == "*" else normal_origin(o) for o in raw.split(",") if o.strip())


def _public_url(raw: str) -> str:
    return normal_origin(raw) if raw.strip() else ""


def _ws_token(raw: str) -> str:
    # URL-safe characters only: the token travels as a query parameter or inside a subprotocol name.
    token = raw.strip()
    if token and not re.fullmatch(r"[A-Za-z0-9._~-]{16,256}", token):
        raise ValueError("must be 16 to 256 characters among A-Z a-z 0-9 . _ ~ -")
    return token


@dataclass(frozen=True)
class GatewaySettings(ServiceSettings):
    host: str = _env("GATEWAY_HOST", "127.0.0.1", doc="interface the gateway listens on")
    port: int = _env("DOS_PORT", 8080, tcp_port_or_zero,
                     "gateway HTTP port (the original orchestration service's name; 0 picks a free one)")
    api_token: str = _env("SIGHTSCAN_API_TOKEN", "", doc="bearer token for writes; unset: writes are refused")
    public_url: str = _env("GATEWAY_PUBLIC_URL", "", _public_url,
                           "the origin browsers load the page from (https://sightscan.example.org) when it is not "
                           "this machine's loopback or IP address; allowed on the websocket")
    allowed_origins: tuple[str, ...] = _env(
        "GATEWAY_ALLOWED_ORIGINS", "", _origins,
        "more browser origins allowed on the websocket, comma-separated; * for any")
    ws_token: str = _env("GATEWAY_WS_TOKEN", "", _ws_token,
                         "if set, /ws/detect needs it: ?token=... or the subprotocol sightscan.token.<token>")
    max_frame_bytes: int = _env("GATEWAY_MAX_FRAME_BYTES", 1_048_576, positive_int, "largest webcam frame accepted")
    max_upload_bytes: int = _env("GATEWAY_MAX_UPLOAD_BYTES", 10_485_760, positive_int, "largest uploaded image")
    max_pixels: int = _env("GATEWAY_MAX_PIXELS", 40_000_000, positive_int,
                           "largest uploaded image, width x height, checked from its header before decoding")
    max_frame_pixels: int = _env("GATEWAY_MAX_FRAME_PIXELS", 8_294_400, positive_int,
                                 "largest webcam frame, width x height (a 4K frame), checked from its header")
    idle_timeout_s: float = _env("GATEWAY_IDLE_TIMEOUT_S", 60.0, positive_float,
                                 "close a websocket that sent nothing for this long")
    score_threshold: float = _env("GATEWAY_SCORE_THRESHOLD", 0.3, unit_interval, "drop detections scoring below this")
    max_batch: int = _env("GATEWAY_MAX_BATCH", 8, positive_int, "most frames of one city run in one inference")
    inference_threads: int = _env("GATEWAY_INFERENCE_THREADS", 0, non_negative_int,
                                  "ONNX Runtime threads per inference; 0 = all cores")
    decode_threads: int = _env("GATEWAY_DECODE_THREADS", 2, positive_int, "threads decoding frames")
    upload_threads: int = _env("GATEWAY_UPLOAD_THREADS", 1, positive_int,
                               "uploads read and validated at once (each on its own thread); more wait their turn")
    follow_models: bool = _env("GATEWAY_FOLLOW_MODELS", "true", boolean,
                               "follow model change events on Kafka and hot-swap models")
    corrections_per_minute: int = _env("GATEWAY_CORRECTIONS_PER_MINUTE", 30, positive_int,
                                       "corrections each credential (the operator's token, each user's) may send a "
                                       "minute, in bursts of as many; more get 429 with Retry-After")
    local_inference: bool = _env("GATEWAY_LOCAL_INFERENCE", "true", boolean,
                                 "offer pages the city's model to run on their own device (onnxruntime-web); "
                                 "false: every page runs on the server")
    local_frame_budget_ms: float = _env("GATEWAY_LOCAL_FRAME_BUDGET_MS", 100.0, positive_float,
                                        "a page on 'where it is best' whose median time per frame on its device is "
                                        "over this runs on the server instead")
    model_idle_s: float = _env("GATEWAY_MODEL_IDLE_S", 600.0, non_negative_float,
                               "unload a city's model once no connection has watched it for this long, so that its "
                               "memory goes back (the next frame loads it again); 0: never")
    no_model_recheck_s: float = _env("GATEWAY_NO_MODEL_RECHECK_S", 10.0, positive_float,
                                     "how long 'this city has no model' is believed before asking PostgreSQL again")
    # The review queue (docs/corrections.md): unsure live frames, kept only for cities the operator opted in.
    review_threshold_margin: float = _env(
        "GATEWAY_REVIEW_THRESHOLD_MARGIN", 0.1, unit_interval,
        "review queue: keep a live frame whose top score lies within this of the model's calibrated threshold "
        "(GATEWAY_SCORE_THRESHOLD for a model without one); only in cities that opted in")
    review_close_margin: float = _env("GATEWAY_REVIEW_CLOSE_MARGIN", 0.1, unit_interval,
                                      "review queue: keep a live frame whose top two sights score within this of "
                                      "each other")
    review_per_minute: int = _env("GATEWAY_REVIEW_PER_MINUTE", 6, positive_int,
                                  "review queue: frames kept per city in any 60 s at most")
    review_per_day: int = _env("GATEWAY_REVIEW_PER_DAY", 200, positive_int,
                               "review queue: frames kept per city in any 24 h at most")
    review_max_queue: int = _env("GATEWAY_REVIEW_MAX_QUEUE", 500, positive_int,
                                 "review queue: frames waiting for review per city at most; a full queue keeps no more")
    review_recheck_s: float = _env("GATEWAY_REVIEW_RECHECK_S", 10.0, positive_float,
                                   "how long a city's review opt-in is believed before asking PostgreSQL again (a "
                                   "change through this gateway counts at once)")


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every gateway setting, for the README."""
    return GatewaySettings.describe()
