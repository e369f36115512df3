"""Gateway settings from environment variables, with local defaults (the pattern of sightscan.config).

DOS_PORT keeps the original orchestration service's name for its port.
"""

from __future__ import annotations

from dataclasses import dataclass

from sightscan.config import ServiceSettings, boolean, non_negative_int, positive_float, positive_int, unit_interval
from sightscan.config import env_field as _env


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("must be a TCP port, 0..65535 (0 picks a free one)")
    return value


def _origins(raw: str) -> tuple[str, ...]:
    items = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    for origin in items:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ValueError(f"{origin!r} is not an origin like https://example.org or *")
    return items


@dataclass(frozen=True)
class GatewaySettings(ServiceSettings):
    host: str = _env("GATEWAY_HOST", "127.0.0.1", doc="interface the gateway listens on")
    port: int = _env("DOS_PORT", 8080, _port, "gateway HTTP port (the original orchestration service's name)")
    api_token: str = _env("SIGHTSCAN_API_TOKEN", "", doc="bearer token for writes; unset: writes are refused")
    allowed_origins: tuple[str, ...] = _env(
        "GATEWAY_ALLOWED_ORIGINS", "", _origins,
        "extra browser origins allowed on the websocket and writes, comma-separated; * for any")
    max_frame_bytes: int = _env("GATEWAY_MAX_FRAME_BYTES", 1_048_576, positive_int, "largest webcam frame accepted")
    max_upload_bytes: int = _env("GATEWAY_MAX_UPLOAD_BYTES", 10_485_760, positive_int, "largest uploaded image")
    max_pixels: int = _env("GATEWAY_MAX_PIXELS", 40_000_000, positive_int,
                           "largest decoded image, width x height (guards against decompression bombs)")
    idle_timeout_s: float = _env("GATEWAY_IDLE_TIMEOUT_S", 60.0, positive_float,
                                 "close a websocket that sent nothing for this long")
    score_threshold: float = _env("GATEWAY_SCORE_THRESHOLD", 0.3, unit_interval, "drop detections scoring below this")
    max_batch: int = _env("GATEWAY_MAX_BATCH", 8, positive_int, "most frames of one city run in one inference")
    inference_threads: int = _env("GATEWAY_INFERENCE_THREADS", 0, non_negative_int,
                                  "ONNX Runtime threads per inference; 0 = all cores")
    decode_threads: int = _env("GATEWAY_DECODE_THREADS", 2, positive_int, "threads decoding frames")
    follow_models: bool = _env("GATEWAY_FOLLOW_MODELS", "true", boolean,
                               "follow model change events on Kafka and hot-swap models")
    no_model_recheck_s: float = _env("GATEWAY_NO_MODEL_RECHECK_S", 10.0, positive_float,
                                     "how long 'this city has no model' is believed before asking PostgreSQL again")


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every gateway setting, for the README."""
    return GatewaySettings.describe()
