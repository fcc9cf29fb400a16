"""The per-backend body size limits that decide what a claim-check must carry, from the capabilities."""

from __future__ import annotations

from unimq import registry
from unimq.capabilities import Capabilities
from unimq.url import parse_options, parse_url


def declared_limits() -> list[tuple[str, Capabilities]]:
    """The capabilities of every installed adapter's documented destinations (drivers made, not connected)."""
    from unimq.testing.brokers import TARGETS

    installed = registry.installed()
    columns = []
    for target in TARGETS:
        parsed = parse_url(target.url)
        if not target.matrix or parsed.scheme not in installed:
            continue
        query = dict(parsed.query)
        driver_cls = registry.load(parsed.scheme, query.pop("client", None))
        options: dict[str, object] = {**query}
        driver = driver_cls(parsed, parse_options(driver_cls.Options, driver_cls.name, options))
        columns += [(label, driver.capabilities_for(destination)) for label, destination in target.matrix]
    return columns


def size_limits(columns: list[tuple[str, Capabilities]]) -> str:
    """A Markdown table of each column's ``max_message_bytes`` (the table in docs/payloads.md)."""
    rows = ["| backend | largest body sent inline (bytes) | |", "|---|---:|---:|"]
    for label, caps in columns:
        size = caps.max_message_bytes
        human = f"{size / 1024 / 1024:.2f} MiB" if size >= 1024 * 1024 else f"{size / 1024:.0f} KiB"
        rows.append(f"| {label} | {size:,} | {human} |")
    return "\n".join(rows)
