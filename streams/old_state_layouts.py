"""The city-state layouts of earlier versions, read so that a worker upgraded in place keeps the cities its changelog
holds. Dropped in 0.4.0: a 0.4.0 worker reads the current layout (streams/state.py) only. Nothing here writes an
older layout; what is read is written back in the current one when it is next stored.

Three older layouts are read:

1. A whole city in one value, before the outbox (development builds before 0.1.0): the value at key <city> holds
   the city, every sight, model, image and label, and the command progress ("cmd", with the labelling request
   each image is in, "outstanding"); it has no "pending".
2. The same with the outbox (0.1.0 and 0.2.0): "pending" holds the commands due but not yet confirmed sent.
   Neither whole-city layout has a "layout" key, which is how the worker tells them from a current summary
   (streams/worker.py, `_load`). `whole_city` reads both; the next store writes the city in the current layout.
3. One record per key (development builds between 0.2.0 and 0.3.0): the summary is today's, but an image or label
   record has a key of its own, <city>/i/<id> or <city>/l/<id>, rather than a place in its bucket
   <city>/images/<n> or <city>/labels/<n> (0.3.0). A record missing from its bucket is looked for there by
   `record_stored_alone`, and written to its bucket the next time it changes (a record that never changes again
   stays under its own key).

streams/state.py reaches this module in one place (CityState's "Older layouts" section). To drop them in 0.4.0:
delete this module, that section and its callers (CityState._stored's fallback; streams/worker.py's `"layout" not in
stored` branches), tests/streams/test_old_state_layouts.py, and the older values in the AsyncAPI catalogue's
city-state schemas (sightscan/asyncapi.py).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streams.state import CityState, Lookup


def whole_city(raw: dict[str, Any]) -> CityState:
    """A city stored whole (layouts 1 and 2): the same state in the current layout, every record marked changed so
    the next store writes them all (once). The labelling requests images are in, the counts and the images waiting
    for a request are derived from the records, as the current layout keeps them."""
    # Imported here, not at the top: streams/state.py imports this module (and this runs once per old city).
    from streams.state import CityRecord, CityState, CommandProgress, ImageRecord, LabelRecord, ModelRecord, SightRecord

    state, cmd = CityState(raw["city_id"]), raw["cmd"]
    c, s = raw.get("city"), state.summary
    s.city = None if c is None else CityRecord(c["lsn"], c["present"], c["name"], c["status"])
    s.sights = {k: SightRecord(*v) for k, v in raw["sights"].items()}
    s.models = {k: ModelRecord(*v) for k, v in raw["models"].items()}
    s.max_lsn, s.pending = raw["max_lsn"], [(kind, command) for kind, command in raw.get("pending", [])]  # 1: none
    s.cmd = CommandProgress(cmd["crawl"], cmd["label_seq"], cmd["train_seq"], cmd["train_outstanding"],
                            cmd["trained_on"])
    # The records are filled in directly, as CityState itself does when it reads them.
    for k, (lsn, present, sight_id) in raw["images"].items():
        state._images[k] = ImageRecord(lsn, present, sight_id, cmd["outstanding"].get(k, ""))
    for k, v in raw["labels"].items():
        label = state._labels[k] = LabelRecord(*v)
        if label.present:
            state.image(label.image_id).labels[k] = label.sight_id
    for k, image in state._images.items():
        s.counts.add(image, +1)
        if image.present and not image.labels and not image.request:
            s.waiting.append(int(k))
    s.waiting_since_ms = int(time.time() * 1000)
    state._changed = {f"i/{k}" for k in state._images} | {f"l/{k}" for k in state._labels}
    return state


def record_stored_alone(lookup: Lookup, kind: str, row_id: str) -> Any:
    """A record under a key of its own (layout 3): kind "i" (image) or "l" (label), its stored JSON or None."""
    return lookup(f"{kind}/{row_id}")
