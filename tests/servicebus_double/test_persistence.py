"""The double's ``data_dir``: a stop and a new double on the same directory keep the state."""

from __future__ import annotations

import asyncio
import datetime
import signal
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("proton")
pytest.importorskip("azure.servicebus")

from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient
from unimq_servicebus.testing.double import ServiceBusDouble


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


async def receive_all(receiver, count: int, wait: float = 3.0) -> list:
    received: list = []
    deadline = time.monotonic() + wait
    while len(received) < count and time.monotonic() < deadline:
        batch = await receiver.receive_messages(max_message_count=count - len(received), max_wait_time=0.5)
        received.extend(batch)
    return received


async def test_restart_keeps_entities_messages_and_counts(tmp_path: Path) -> None:
    double = ServiceBusDouble(port=0, data_dir=str(tmp_path)).start()
    double.configure_entity("q", kind="queue", lock_duration=30, max_delivery_count=5,
                            duplicate_detection_window=600)
    double.configure_entity("t", kind="topic")
    double.configure_entity("t/Subscriptions/s")
    async with ServiceBusClient.from_connection_string(double.connection_string) as client:
        async with client.get_queue_sender("q") as sender:
            await sender.send_messages([ServiceBusMessage(f"m{i}", message_id=f"id{i}",
                                                          application_properties={"i": i}) for i in range(5)])
            await sender.schedule_messages(ServiceBusMessage("later"), utcnow() + datetime.timedelta(hours=1))
        async with client.get_topic_sender("t") as sender:
            await sender.send_messages(ServiceBusMessage("fan"))
        async with client.get_queue_receiver("q") as receiver:
            first = await receive_all(receiver, 4)
            assert [str(m) for m in first] == ["m0", "m1", "m2", "m3"]
            await receiver.abandon_message(first[0])
            await receiver.dead_letter_message(first[1], reason="bad", error_description="why")
            await receiver.defer_message(first[2])
            deferred_seq = first[2].sequence_number
            # first[3] stays locked when the double stops
    double.stop()

    double = ServiceBusDouble(port=0, data_dir=str(tmp_path)).start()
    try:
        stats = double.stats("q")
        assert stats["config"]["max_delivery_count"] == 5
        assert stats["messages"] == 5  # m0, m2 (deferred), m3, m4, the scheduled one
        assert stats["scheduled"] == 1 and stats["deferred"] == 1 and stats["dead_letter_messages"] == 1
        async with ServiceBusClient.from_connection_string(double.connection_string) as client:
            async with client.get_queue_sender("q") as sender:
                await sender.send_messages(ServiceBusMessage("dup", message_id="id4"))  # within the window
            async with client.get_queue_receiver("q") as receiver:
                again = await receive_all(receiver, 3)
                # m0 was abandoned once; m3's lock was lost in the restart; "later" is still scheduled
                assert {str(m): m.delivery_count for m in again} == {"m0": 1, "m3": 1, "m4": 0}
                assert next(m for m in again if str(m) == "m0").application_properties[b"i"] == 0
                for message in again:
                    await receiver.complete_message(message)
                (deferred,) = await receiver.receive_deferred_messages([deferred_seq])
                assert str(deferred) == "m2"
                await receiver.complete_message(deferred)
            async with client.get_queue_receiver("q", sub_queue=ServiceBusSubQueue.DEAD_LETTER) as receiver:
                (dead,) = await receive_all(receiver, 1)
                assert str(dead) == "m1" and dead.dead_letter_reason == "bad"
            async with client.get_subscription_receiver(
                "t", "s", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE
            ) as receiver:
                assert [str(m) for m in await receive_all(receiver, 1)] == ["fan"]
        assert double.stats("q")["duplicates"] == 1
    finally:
        double.stop()


async def test_sigterm_of_the_process_persists(tmp_path: Path) -> None:
    """``python -m unimq_servicebus.testing.double --data-dir``: SIGTERM writes the state."""
    args = [sys.executable, "-m", "unimq_servicebus.testing.double", "--port", "0", "--data-dir", str(tmp_path)]

    async def run_double() -> tuple[asyncio.subprocess.Process, str]:
        proc = await asyncio.create_subprocess_exec(*args, stderr=asyncio.subprocess.PIPE)
        assert proc.stderr is not None
        while True:
            line = (await proc.stderr.readline()).decode()
            assert line, "the double exited"
            if "connection string: " in line:
                return proc, line.split("connection string: ", 1)[1].strip()

    async def sigterm(proc: asyncio.subprocess.Process) -> int:
        proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(proc.wait(), 10)

    proc, connection_string = await run_double()
    try:
        async with ServiceBusClient.from_connection_string(connection_string) as client, \
                client.get_queue_sender("kept") as sender:
            await sender.send_messages([ServiceBusMessage(f"k{i}") for i in range(3)])
    finally:
        assert await sigterm(proc) == 0
    proc, connection_string = await run_double()
    try:
        async with ServiceBusClient.from_connection_string(connection_string) as client, \
                client.get_queue_receiver("kept") as receiver:
            assert sorted(str(m) for m in await receive_all(receiver, 3)) == ["k0", "k1", "k2"]
    finally:
        await sigterm(proc)
