"""The stream worker's own settings (the shared ones, thresholds included, come from sightscan.config.Settings)."""

from __future__ import annotations

from dataclasses import dataclass

from sightscan.config import ServiceSettings, consumer_group, positive_float, positive_int
from sightscan.config import env_field as _env


@dataclass(frozen=True)
class StreamsSettings(ServiceSettings):
    app_id: str = _env("STREAMS_APP_ID", "", doc="consumer group, table and facts topic name; default "
                                                  "<TOPIC_PREFIX>-streams")
    batch_size: int = _env("STREAMS_BATCH_SIZE", 300, positive_int,
                           "facts messages the marts agent takes at once at most (a message holds a batch of one "
                           "city's facts)")
    batch_within_s: float = _env("STREAMS_BATCH_WITHIN_S", 0.05, positive_float,
                                 "how long the marts agent waits to fill a batch")
    facts_per_message: int = _env("STREAMS_FACTS_PER_MESSAGE", 1000, positive_int,
                                  "most facts of one city in one facts message (each ~100 bytes; 1 is the earlier "
                                  "one-fact messages, for comparison)")
    labelling_batch_size: int = _env("LABELLING_BATCH_SIZE", 16, positive_int,
                                     "images per labelling request (Google Vision's batch limit is 16)")
    labelling_linger_s: float = _env("LABELLING_LINGER_S", 2.0, positive_float,
                                     "longest wait for a labelling request to fill before it goes out smaller")

    def app_id_for(self, topic_prefix: str) -> str:
        return consumer_group(topic_prefix, "streams", self.app_id)


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every stream worker setting."""
    return StreamsSettings.describe()
