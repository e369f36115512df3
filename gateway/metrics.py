"""Prometheus metrics of one gateway app (its own registry, so several apps can live in one process, as in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter("sightscan_gateway_http_requests", "HTTP requests", ["route", "status"],
                                     registry=r)
        self.ws_connections = Gauge("sightscan_gateway_ws_connections", "open websocket connections", registry=r)
        self.frames_received = Counter("sightscan_gateway_frames_received", "binary frames received", registry=r)
        self.frames_dropped = Counter("sightscan_gateway_frames_dropped",
                                      "frames replaced by a newer one before processing (latest frame wins)",
                                      registry=r)
        self.frames_processed = Counter("sightscan_gateway_frames_processed", "frames answered with detections",
                                        registry=r)
        self.frame_errors = Counter("sightscan_gateway_frame_errors", "frames answered with an error", ["code"],
                                    registry=r)
        self.frame_latency = Histogram("sightscan_gateway_frame_latency_seconds",
                                       "frame received to detections sent", registry=r,
                                       buckets=(0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5))
        self.inference_seconds = Histogram("sightscan_gateway_inference_seconds", "one batched inference",
                                           registry=r,
                                           buckets=(0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.1, 0.25, 0.5, 1))
        # Where a frame's time goes (bench/gateway prints it): its decode and its wait for a batch and the inference,
        # each with its wait for a thread or a batch included; the rest of frame_latency is the event loop's.
        self.decode_seconds = Histogram("sightscan_gateway_decode_seconds",
                                        "a frame's decode, its wait for a decode thread included", registry=r,
                                        buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.1, 0.25, 0.5, 1))
        self.detect_seconds = Histogram("sightscan_gateway_detect_seconds",
                                        "a decoded frame's wait for its batch and that batch's inference", registry=r,
                                        buckets=(0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.1, 0.25, 0.5, 1))
        self.batch_size = Histogram("sightscan_gateway_batch_size", "frames per inference", registry=r,
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32))
        self.model_swaps = Counter("sightscan_gateway_model_swaps", "models loaded or replaced live", registry=r)
        self.models_released = Counter("sightscan_gateway_models_released",
                                       "swapped-out models freed, their memory handed back", registry=r)
        self.models_unloaded = Counter("sightscan_gateway_models_unloaded",
                                       "models unloaded because no connection watched their city",
                                       registry=r)
        self.model_load_failures = Counter("sightscan_gateway_model_load_failures",
                                           "model rows that could not be loaded", registry=r)
        self.model_events = Counter("sightscan_gateway_model_events", "model change events read from Kafka",
                                    ["op"], registry=r)
