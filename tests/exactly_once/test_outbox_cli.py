"""``unimq outbox``: the DDL a non-Python stack uses, rows written by such a stack (plain sqlite3),
and the relay command publishing them until idle."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

import unimq
from unimq.cli import main


def test_ddl_create_and_relay_rows_written_by_another_stack(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            broker_url: Callable[[str], str]) -> None:
    assert main(["outbox", "ddl", "--dialect", "sqlite"]) == 0
    ddl = capsys.readouterr().out
    assert "CREATE TABLE IF NOT EXISTS unimq_outbox" in ddl
    db = tmp_path / "legacy.db"
    with sqlite3.connect(db) as conn:  # another stack: its own driver, its own transaction
        conn.executescript(ddl)
        ids = [uuid.uuid4().hex for _ in range(5)]
        dest = f"cli-outbox-{uuid.uuid4().hex[:8]}"
        conn.executemany("INSERT INTO unimq_outbox (destination, message_key, message_id, body) VALUES (?, ?, ?, ?)",
                         [(dest, "k", i, f"body {n}".encode()) for n, i in enumerate(ids)])
    url = broker_url("redis")
    assert main(["outbox", "relay", f"sqlite:///{db}", url, "--until-idle"]) == 0
    assert "relayed 5" in capsys.readouterr().err

    async def received() -> list[str]:
        got = []
        async with unimq.connect(url) as broker, broker.consumer(dest) as consumer:
            while (d := await consumer.receive(timeout=2)) is not None:
                got.append(d.message.message_id)
                await d.ack()
            await broker.delete(dest)
        return got

    assert asyncio.run(received()) == ids
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM unimq_outbox WHERE sent_at IS NULL").fetchone() == (0,)


def test_bad_database_url_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["outbox", "relay", "not-a-url", "memory://"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unimq: ") and len(err.splitlines()) == 1 and "postgresql://" in err
