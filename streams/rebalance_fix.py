"""A fix for faust-streaming 0.15: during a rebalance, events the stream skips are acked, and so committed.

When a rebalance starts (or a message of an older consumer generation is dequeued after it), Faust's stream loop
skips the message without handing it to the agent, and then acks it like a processed one (streams.py, _py_aiter:
`if event is not None and (do_ack or value is skipped_value): event.ack()`). The revocation's own commit (in
`wait_empty`) and later periodic commits then move the group's offset past events no agent ever saw; the next
owner of the partition starts after them and they are lost. We saw exactly that: a worker killed while another
joined lost one source partition's change events for a city (counts short, a training request never sent).

A skipped message was never *tracked* (Faust tracks a message only once it passes that check), so the fix is to
refuse the ack of an untracked consumer message: its offset stays uncommitted and the partition's next owner
reads it again. Processed messages, including ones a processor skips with faust.Skip, are tracked and acked as
before.
"""

from __future__ import annotations

from faust.events import Event
from faust.types.tuples import ConsumerMessage

_original_ack = Event.ack


def _ack_only_what_a_stream_took(self: Event) -> bool:
    message = self.message
    if isinstance(message, ConsumerMessage) and not message.tracked:
        return False
    return _original_ack(self)


def install() -> None:
    """Idempotent; called by create_app before any stream runs."""
    if Event.ack is not _ack_only_what_a_stream_took:
        Event.ack = _ack_only_what_a_stream_took  # type: ignore[method-assign]
