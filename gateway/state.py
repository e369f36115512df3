"""What every handler of one gateway app shares."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiohttp import web

from gateway.decoding import Decoder
from gateway.follower import ModelEventFollower
from gateway.metrics import Metrics
from gateway.registry import ModelRegistry
from gateway.settings import GatewaySettings
from gateway.warehouse import PgWarehouse, Warehouse
from sightscan.config import Settings


@dataclass
class GatewayState:
    settings: GatewaySettings
    core: Settings
    warehouse: Warehouse
    registry: ModelRegistry
    metrics: Metrics
    decoder: Decoder
    inference_pool: ThreadPoolExecutor
    follower: ModelEventFollower | None = None

    @property
    def pg(self) -> PgWarehouse:
        """The PostgreSQL warehouse, for the REST API (which only runs against the real one)."""
        if not isinstance(self.warehouse, PgWarehouse):
            raise web.HTTPServiceUnavailable(text="this gateway serves a fixed model and has no warehouse")
        return self.warehouse


STATE: web.AppKey[GatewayState] = web.AppKey("gateway_state", GatewayState)
