"""A durable local replay journal for dual-publish's ``primary`` policy.

One file per message that the new backend has not accepted yet, written atomically (temp file,
fsync, rename) before ``send()`` returns, and removed once a replay lands. A process restart
finds the files and replays them: nothing accepted by the old backend is lost on the new one.
Files are JSON (body base64): readable with ``cat``, no pickle.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from unimq.message import Message


def encode(destination: str, message: Message) -> bytes:
    fields: dict[str, Any] = asdict(message)
    fields["body"] = base64.b64encode(message.body).decode()
    fields["timestamp"] = message.timestamp.isoformat() if message.timestamp else None
    for name in ("delay", "ttl"):
        value = fields[name]
        fields[name] = value.total_seconds() if value is not None else None
    return json.dumps({"destination": destination, "message": fields}).encode()


def decode(data: bytes) -> tuple[str, Message]:
    record = json.loads(data)
    fields = record["message"]
    fields["body"] = base64.b64decode(fields["body"])
    if fields["timestamp"]:
        fields["timestamp"] = datetime.fromisoformat(fields["timestamp"])
    for name in ("delay", "ttl"):
        if fields[name] is not None:
            fields[name] = timedelta(seconds=fields[name])
    return record["destination"], Message(**fields)


class Journal:
    """Pending messages in ``directory``, one file each, named by message id."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, message_id: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in message_id)
        return self.directory / f"{safe}.json"

    def append(self, destination: str, message: Message) -> None:
        path = self._path(message.message_id)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(encode(destination, message))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def pending(self) -> list[tuple[str, Message]]:
        """Journaled messages, oldest first."""
        files = sorted(self.directory.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
        return [decode(p.read_bytes()) for p in files]

    def remove(self, message_id: str) -> None:
        self._path(message_id).unlink(missing_ok=True)

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("*.json"))
