"""The dead-letter table: rejected MQTT messages, bounded in rows and in size.

Garbage is what this table receives, so everything is made storable first: bytes decoded with
replacement, NUL characters replaced (PostgreSQL text cannot hold them), long values cut.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fleet.server.db.models import DeadLetter

_TOPIC_MAX = 255
_REASON_MAX = 255


def storable_text(data: bytes | str, max_chars: int) -> str:
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    text = text.replace("\x00", "\ufffd")
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    return text


async def record_dead_letter(
    topic: str, reason: str, payload: bytes | str, *, max_payload_chars: int = 4096
) -> DeadLetter:
    return await DeadLetter.create(
        received_at=datetime.now(UTC),
        topic=storable_text(topic, _TOPIC_MAX),
        reason=storable_text(reason, _REASON_MAX),
        payload=storable_text(payload, max_payload_chars),
    )


async def trim_dead_letters(max_rows: int) -> int:
    """Delete the oldest rows beyond `max_rows`; the number deleted.

    Called after a batch of inserts rather than per insert: the table may overshoot by a batch
    between trims, which buys one DELETE per batch instead of one per message.
    """
    newest_dropped = (
        await DeadLetter.all().order_by("-id").offset(max_rows).limit(1).values_list("id")
    )
    if not newest_dropped:
        return 0
    return await DeadLetter.filter(id__lte=newest_dropped[0][0]).delete()
