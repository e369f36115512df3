"""What a crawl did, per sight and in all: stored, duplicates, rejections and failures counted by reason."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SightTally:
    name: str
    sight_id: int
    existing: int = 0                 # images the sight had before this crawl
    stored: int = 0
    duplicates: int = 0               # bytes the city already had (sha256)
    surplus: int = 0                  # fetched after the sight reached its limit: not stored
    skipped: bool = False             # --skip: the sight already had enough images
    rejected: Counter[str] = field(default_factory=Counter)  # by validation reason (producers/validate.py)
    failed: Counter[str] = field(default_factory=Counter)    # by download failure (timeout, http_500, robots_txt…)
    listing_error: str | None = None

    def line(self) -> str:
        """One progress line: what happened to this sight's images."""
        if self.skipped:
            return f"{self.name}: skipped, already has {self.existing} images"
        parts = [f"{self.stored} stored"]
        for label, counts in (("rejected", self.rejected), ("failed", self.failed)):
            if counts:
                detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                parts.append(f"{sum(counts.values())} {label} ({detail})")
        if self.duplicates:
            parts.append(f"{self.duplicates} duplicates")
        if self.listing_error:
            parts.append(f"search failed: {self.listing_error}")
        return f"{self.name}: " + ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"sight_id": self.sight_id, "existing": self.existing, "stored": self.stored,
                "duplicates": self.duplicates, "surplus": self.surplus, "skipped": self.skipped,
                "rejected": dict(self.rejected), "failed": dict(self.failed), "listing_error": self.listing_error}


@dataclass
class CrawlReport:
    city_id: int
    city: str
    source: str
    sights: dict[str, SightTally] = field(default_factory=dict)   # by name key, in the order found
    source_errors: list[str] = field(default_factory=list)        # the sight source or a search failed
    fatal: str | None = None                                      # the warehouse failed: the crawl is not done
    status: str | None = None                                     # the city's status after the crawl

    def summary(self) -> dict[str, Any]:
        rejected: Counter[str] = Counter()
        failed: Counter[str] = Counter()
        for t in self.sights.values():
            rejected.update(t.rejected)
            failed.update(t.failed)
        tallies = self.sights.values()
        return {
            "city_id": self.city_id, "city": self.city, "source": self.source, "status": self.status,
            "sights": len(self.sights), "sights_skipped": sum(t.skipped for t in tallies),
            "stored": sum(t.stored for t in tallies), "duplicates": sum(t.duplicates for t in tallies),
            "surplus": sum(t.surplus for t in tallies),
            "rejected": dict(rejected), "failed": dict(failed), "source_errors": list(self.source_errors),
            "per_sight": {t.name: t.as_dict() for t in tallies},
        }
