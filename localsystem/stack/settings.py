"""Settings of the local system as `sightscan up`, `demo` and the supervisor run it (not of any one service).

Where `up` expects the gateway (DOS_PORT) and the token it hands every service (SIGHTSCAN_API_TOKEN) are the
gateway's own settings (gateway/settings.py), declared there once and read from there (localsystem/stack/services.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from sightscan.config import ServiceSettings, env_field, positive_float, positive_int, tcp_port


@dataclass(frozen=True)
class SystemSettings(ServiceSettings):
    demo_sources_port: int = env_field("DEMO_SOURCES_PORT", 8766, tcp_port, "port of the demo's local web sources")

    # The supervisor `up` leaves behind (localsystem/stack/supervisor.py).
    max_crashes: int = env_field("SUPERVISOR_MAX_CRASHES", 5, positive_int,
                                 "crashes of one service within SUPERVISOR_CRASH_WINDOW_S before it is given up")
    crash_window_s: float = env_field("SUPERVISOR_CRASH_WINDOW_S", 300.0, positive_float,
                                      "seconds over which crashes count towards giving up")
    backoff_s: float = env_field("SUPERVISOR_BACKOFF_S", 1.0, positive_float,
                                 "wait before the first restart; doubles with each crash in the window")
    backoff_max_s: float = env_field("SUPERVISOR_BACKOFF_MAX_S", 30.0, positive_float, "longest wait before a restart")
    poll_s: float = env_field("SUPERVISOR_POLL_S", 1.0, positive_float, "how often the supervisor checks each service")
