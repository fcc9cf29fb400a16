"""Stream entry → Message on the consumer's hot path, without a broker."""

from __future__ import annotations

from datetime import UTC, datetime

from unimq_redis.fields import from_flat


def test_entry_with_only_body_and_id_takes_the_fast_path() -> None:
    message, fields, expires = from_flat(b"1700000000123-4", [b"body", b"\x00data", b"p:id", b"m-1"])
    assert (message.body, message.key, message.headers, message.message_id) == (b"\x00data", None, {}, "m-1")
    assert (message.correlation_id, message.reply_to, message.content_type) == (None, None, None)
    assert message.timestamp == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert (message.delay, message.ttl, message.priority) == (None, None, None)
    assert fields == {b"body": b"\x00data", b"p:id": b"m-1"} and expires == 0


def test_fast_path_messages_do_not_share_their_headers() -> None:
    first, _, _ = from_flat(b"1-0", [b"body", b"a", b"p:id", b"x"])
    second, _, _ = from_flat(b"1-1", [b"body", b"b", b"p:id", b"y"])
    first.headers["k"] = "v"
    assert second.headers == {}
