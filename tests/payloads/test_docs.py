"""docs/payloads.md's size-limit table is the one the adapters' capabilities give."""

from __future__ import annotations

from pathlib import Path

from unimq.payloads import size_limits
from unimq.payloads.limits import declared_limits

DOC = Path(__file__).resolve().parents[2] / "docs" / "payloads.md"


def test_the_size_limit_table_matches_the_capabilities() -> None:
    text = DOC.read_text()
    table = text.split("<!-- size-limits:begin -->\n", 1)[1].split("\n<!-- size-limits:end -->", 1)[0]
    expected = size_limits(declared_limits())
    assert table == expected, f"docs/payloads.md is stale; paste this table between the markers:\n{expected}"
    assert {"memory", "kafka", "nats", "rabbitmq", "redis", "servicebus", "sqs"} <= {
        label for label, _ in declared_limits()}
