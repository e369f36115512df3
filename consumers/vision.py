"""Google Cloud Vision landmark detection through the real client library, one batch request at a time.

Retries are not done here (the client's own retry is switched off): the labeller reserves budget before every
request, so each attempt must come back to it. Failures are sorted instead:
- VisionUnavailable: passing (quota 429, 5xx, timeouts, connection errors). `refundable` when Vision refused the
  request outright (429, 503), so nothing was billed and the reserved budget may be given back; a timeout or a
  500 may have been processed and billed, so its budget stays spent.
- VisionRefused: the request can never succeed as sent (400, 401, 403, 404…).
A per-image error inside a 200 answer is returned with that image's answer (ImageAnswer.error).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import google.auth.exceptions
import requests
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import vision

from consumers.settings import LabellerSettings
from sightscan.config import ConfigError

log = logging.getLogger(__name__)

# google.rpc.Code values of a per-image error that may pass: DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED,
# INTERNAL, UNAVAILABLE. Any other code (INVALID_ARGUMENT for an unreadable image…) will not pass on a retry.
TRANSIENT_CODES = {4, 8, 10, 13, 14}


class VisionUnavailable(RuntimeError):
    """A passing failure of a whole request; retry later."""

    def __init__(self, message: str, refundable: bool) -> None:
        super().__init__(message)
        self.refundable = refundable


class VisionRefused(RuntimeError):
    """Vision refused the request for a reason a retry will not change (bad request, no permission)."""


@dataclass(frozen=True)
class Landmark:
    description: str
    mid: str
    score: float
    vertices: list[tuple[int, int]]                 # boundingPoly.vertices, pixels
    normalised_vertices: list[tuple[float, float]]  # boundingPoly.normalizedVertices, when Vision sends those
    locale: str = ""


@dataclass(frozen=True)
class ImageAnswer:
    landmarks: list[Landmark] = field(default_factory=list)
    error: tuple[int, str] | None = None  # (google.rpc.Code, message) of a per-image error

    @property
    def transient(self) -> bool:
        return self.error is not None and self.error[0] in TRANSIENT_CODES


def build_client(settings: LabellerSettings) -> Any:
    """The real ImageAnnotatorClient: Google's endpoint with Application Default Credentials, or GOOGLE_VISION_ENDPOINT
    (e.g. a local server, http:// allowed) with anonymous credentials unless a key file is set too."""
    options = ClientOptions(api_endpoint=settings.vision_endpoint) if settings.vision_endpoint else None
    credentials = None
    if settings.vision_endpoint and not settings.credentials_file:
        credentials = AnonymousCredentials()  # a local server checks no token; Google's would refuse it
    if settings.transport == "grpc" and settings.vision_endpoint.startswith("http://"):
        # The gRPC transport always opens a TLS channel; plain-text local servers speak REST.
        raise ConfigError("VISION_TRANSPORT=grpc needs an https:// GOOGLE_VISION_ENDPOINT (or none); use "
                          "VISION_TRANSPORT=rest for a local http:// server")
    try:
        return vision.ImageAnnotatorClient(transport=settings.transport, client_options=options,
                                           credentials=credentials)
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise ConfigError(f"no usable Google credentials for Vision: {exc}. Set GOOGLE_APPLICATION_CREDENTIALS to "
                          "a service-account key file, or unset it and GOOGLE_VISION_ENDPOINT to label offline "
                          "(weak labels)") from exc


class VisionClient:
    """Landmark detection for up to 16 images per call."""

    def __init__(self, settings: LabellerSettings, client: Any | None = None) -> None:
        self.settings = settings
        self.client = client if client is not None else build_client(settings)
        self.feature = vision.Feature(type_=vision.Feature.Type.LANDMARK_DETECTION, max_results=settings.max_results)

    @property
    def endpoint(self) -> str:
        return self.settings.vision_endpoint or "https://vision.googleapis.com"

    def annotate(self, images: list[bytes]) -> list[ImageAnswer]:
        """One batch_annotate_images request; one answer per image, in order."""
        if not 1 <= len(images) <= 16:
            raise ValueError(f"a Vision request takes 1..16 images, got {len(images)}")
        requests_ = [vision.AnnotateImageRequest(image=vision.Image(content=data), features=[self.feature])
                     for data in images]
        try:
            response = self.client.batch_annotate_images(requests=requests_, retry=None,
                                                         timeout=self.settings.timeout_s)
        except (gexc.TooManyRequests, gexc.ServiceUnavailable) as exc:
            raise VisionUnavailable(f"Vision refused the request for now: {_short(exc)}", refundable=True) from exc
        except gexc.ServerError as exc:  # 500, 502, 504, DeadlineExceeded (gRPC)
            raise VisionUnavailable(f"Vision failed: {_short(exc)}", refundable=False) from exc
        except (requests.exceptions.RequestException, google.auth.exceptions.TransportError) as exc:
            raise VisionUnavailable(f"Vision did not answer: {type(exc).__name__}: {exc}", refundable=False) from exc
        except (gexc.GoogleAPICallError, google.auth.exceptions.RefreshError) as exc:
            raise VisionRefused(_short(exc)) from exc
        if len(response.responses) != len(images):
            raise VisionUnavailable(f"Vision answered {len(response.responses)} images of {len(images)}",
                                    refundable=False)
        return [_answer(r) for r in response.responses]


def _answer(response: Any) -> ImageAnswer:
    if response.error.code:
        return ImageAnswer(error=(int(response.error.code), response.error.message))
    return ImageAnswer([
        Landmark(description=a.description, mid=a.mid, score=float(a.score),
                 vertices=[(v.x, v.y) for v in a.bounding_poly.vertices],
                 normalised_vertices=[(v.x, v.y) for v in a.bounding_poly.normalized_vertices],
                 locale=a.locale)
        for a in response.landmark_annotations
    ])


def _short(exc: gexc.GoogleAPICallError) -> str:
    return f"{exc.code} {exc.message}" if getattr(exc, "code", None) else str(exc)
