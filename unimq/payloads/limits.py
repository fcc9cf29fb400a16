"""The per-backend body size limits that decide what a claim-check must carry, from the capabilities."""

from __future__ import annotations

from unimq.capabilities import Capabilities


def size_limits(capabilities: list[Capabilities]) -> str:
    """A Markdown table of each backend's ``max_message_bytes`` (for docs/payloads.md)."""
    rows = ["| backend | max body (bytes) | max body |", "|---|---:|---:|"]
    for caps in sorted(capabilities, key=lambda c: c.backend):
        size = caps.max_message_bytes
        human = f"{size / 1024 / 1024:.2f} MiB" if size >= 1024 * 1024 else f"{size / 1024:.0f} KiB"
        rows.append(f"| {caps.backend} | {size:,} | {human} |")
    return "\n".join(rows)
