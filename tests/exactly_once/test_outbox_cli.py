"""``unimq outbox``: the DDL a non-Python stack uses, rows written by such a stack (plain sqlite3),
and the relay command publishing them until idle."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import free_port, scripts_brokers

import unimq
from unimq.cli import main
from unimq.outbox import Outbox


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


async def test_relay_started_while_the_broker_is_down_waits_for_it(tmp_path: Path) -> None:
    """A relay process started before its broker (deployed together, or during a restart) retries
    the connection and relays once the broker is up, instead of exiting: the chaos test's relay,
    slow to start on a loaded machine, once met the broker's outage and relayed nothing."""
    brokers = scripts_brokers()
    redis = brokers.Redis(home=tmp_path / "redis")
    redis.port = free_port()
    redis.url = f"redis://127.0.0.1:{redis.port}/0"
    db = tmp_path / "outbox.db"
    dest = f"cli-outbox-{uuid.uuid4().hex[:8]}"
    with sqlite3.connect(db) as conn:
        conn.executescript("".join(f"{statement};" for statement in Outbox().ddl("sqlite")))
        conn.executemany("INSERT INTO unimq_outbox (destination, message_key, message_id, body) VALUES (?, ?, ?, ?)",
                         [(dest, None, uuid.uuid4().hex, b"x") for _ in range(5)])
    log = tmp_path / "relay.log"
    with log.open("wb") as out:
        relay = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "unimq.cli", "outbox", "relay", f"sqlite:///{db}", redis.url, "--until-idle",
            stdout=out, stderr=out)
    try:
        await asyncio.sleep(2.0)
        assert relay.returncode is None, f"the relay exited while the broker was down:\n{log.read_text()}"
        assert await asyncio.to_thread(brokers.up, [redis])
        assert await asyncio.wait_for(relay.wait(), 30) == 0, log.read_text()
    finally:
        if relay.returncode is None:
            relay.kill()
            await relay.wait()
        await asyncio.to_thread(brokers.down, [redis])
    output = log.read_text()
    assert "retrying" in output and "relayed 5" in output, output
