"""Labeller settings from environment variables, with local defaults (the pattern of sightscan.config).

The cost cap itself, MAX_GOOGLE_VISION_CALLS_PER_NEW_CITY, is a shared setting (sightscan.config.Settings).
GOOGLE_APPLICATION_CREDENTIALS is read by google-auth itself; it is listed here so that `auto` can tell whether
Google credentials are configured and so the README lists it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sightscan.config import ServiceSettings, consumer_group, one_of, positive_float, positive_int, unit_interval
from sightscan.config import env_field as _env

BACKENDS = ("auto", "vision", "weak")
VISION_MAX_BATCH = 16  # images per batch_annotate_images request that Vision accepts


def _batch(raw: str) -> int:
    value = positive_int(raw)
    if value > VISION_MAX_BATCH:
        raise ValueError(f"Vision takes at most {VISION_MAX_BATCH} images per request")
    return value


def _endpoint(raw: str) -> str:
    value = raw.strip().rstrip("/")
    if value and not value.startswith(("http://", "https://")):
        raise ValueError("must be a URL like http://127.0.0.1:8765 or https://vision.googleapis.com")
    return value


@dataclass(frozen=True)
class LabellerSettings(ServiceSettings):
    backend: str = _env("LABELLER_BACKEND", "auto", one_of(*BACKENDS),
                        "auto (Vision when GOOGLE_APPLICATION_CREDENTIALS or GOOGLE_VISION_ENDPOINT is set, else "
                        "weak), vision or weak")
    vision_endpoint: str = _env("GOOGLE_VISION_ENDPOINT", "", _endpoint,
                                "Vision API endpoint, e.g. a local server http://127.0.0.1:8765 (unset: Google's)")
    credentials_file: str = _env("GOOGLE_APPLICATION_CREDENTIALS", "",
                                 doc="Google service-account key file (read by google-auth)")
    transport: str = _env("VISION_TRANSPORT", "rest", one_of("rest", "grpc"), "rest or grpc (the tests cover rest)")
    batch_size: int = _env("VISION_BATCH_SIZE", 16, _batch, "images per Vision request, 1..16")
    timeout_s: float = _env("VISION_TIMEOUT_S", 30.0, positive_float, "timeout of one Vision request")
    max_results: int = _env("VISION_MAX_RESULTS", 5, positive_int, "landmarks asked for per image")
    min_score: float = _env("VISION_MIN_SCORE", 0.0, unit_interval, "landmarks scoring below this are ignored")
    match_cutoff: float = _env("LABELLER_MATCH_CUTOFF", 0.85, unit_interval,
                               "fuzzy similarity a landmark name needs to be taken as an existing sight")
    group_id: str = _env("LABELLER_GROUP_ID", "", doc="Kafka consumer group (default <TOPIC_PREFIX>-labeller)")
    max_attempts: int = _env("LABELLER_MAX_ATTEMPTS", 8, positive_int,
                             "attempts at a request failing for a passing reason (quota, 5xx, timeout) before it "
                             "goes to the dead-letter topic")
    backoff_s: float = _env("LABELLER_BACKOFF_S", 2.0, positive_float,
                            "first retry delay after a passing failure (doubles, up to 60 s)")

    @property
    def active_backend(self) -> str:
        """'vision' or 'weak': what `auto` resolves to."""
        if self.backend != "auto":
            return self.backend
        return "vision" if (self.vision_endpoint or self.credentials_file) else "weak"

    def group(self, topic_prefix: str) -> str:
        return consumer_group(topic_prefix, "labeller", self.group_id)


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every labeller setting, for the README."""
    return LabellerSettings.describe()
