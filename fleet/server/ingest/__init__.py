"""MQTT ingest: validate each message, dedupe by (terminal, seq), track presence, receive.

The pieces are pure and separately tested; the pipeline that stores what they produce composes
them:

    receiver.Receiver  -> validate.parse -> sequence.SequenceTracker -> store -> Receiver.ack
                                         -> presence.PresenceTracker  (tick() for timeouts)
"""

from fleet.server.ingest.presence import PresenceTracker, Transition
from fleet.server.ingest.receiver import Received, Receiver, ReceiverConfig, subscriptions
from fleet.server.ingest.sequence import Duplicate, Gap, New, Reset, SequenceTracker
from fleet.server.ingest.validate import (
    CmdResult,
    Event,
    Message,
    Presence,
    Rejection,
    Reported,
    Status,
    parse,
)

__all__ = [
    "CmdResult",
    "Duplicate",
    "Event",
    "Gap",
    "Message",
    "New",
    "Presence",
    "PresenceTracker",
    "Received",
    "Receiver",
    "ReceiverConfig",
    "Rejection",
    "Reported",
    "Reset",
    "SequenceTracker",
    "Status",
    "Transition",
    "parse",
    "subscriptions",
]
