"""Capability enforcement: every option on a backend declaring it 'none' raises CapabilityError."""

from collections.abc import Sequence
from datetime import timedelta

import pytest

import unimq
from unimq.broker import Broker
from unimq.capabilities import Capabilities, native
from unimq.driver import Driver, ReceiveSettings, Subscription
from unimq.message import Delivery, Message
from unimq.url import parse_url


class _Sub(Subscription):
    def __init__(self) -> None:
        self.sent = [Delivery(Message(b"x"))]

    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        out, self.sent = self.sent, []
        return out

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None: ...

    async def nack(self, delivery: Delivery, delay: float | None) -> None: ...

    async def extend(self, delivery: Delivery, seconds: float) -> None: ...


class NothingDriver(Driver):
    """A fake backend that supports nothing optional: only plain send and receive."""

    name = "nothing"

    def __init__(self) -> None:
        super().__init__(parse_url("nothing://"), None)
        self.published: list[Message] = []
        self.caps = Capabilities(backend="nothing", max_message_bytes=100)

    @property
    def capabilities(self) -> Capabilities:
        return self.caps

    async def publish(self, destination: str, messages: Sequence[Message]) -> Sequence[BaseException | None]:
        self.published += messages
        return [None] * len(messages)

    def subscription(self, destination: str, group: str | None, settings: ReceiveSettings) -> Subscription:
        return _Sub()


@pytest.fixture
def broker() -> Broker:
    return Broker(NothingDriver(), parse_url("nothing://"))


@pytest.mark.parametrize(
    ("option", "flag"),
    [
        ({"delay": timedelta(seconds=1)}, "delayed_delivery"),
        ({"ttl": timedelta(seconds=1)}, "message_ttl"),
        ({"priority": 1}, "priority"),
        ({"headers": {"a": "b"}}, "headers"),
    ],
)
async def test_send_options(broker: Broker, option: dict[str, object], flag: str) -> None:
    with pytest.raises(unimq.CapabilityError, match=f"nothing cannot honour .*'{flag}'"):
        await broker.producer("d").send(b"x", **option)  # type: ignore[arg-type]
    assert broker._driver.published == []  # type: ignore[attr-defined]


async def test_oversize_before_any_call(broker: Broker) -> None:
    with pytest.raises(unimq.MessageTooLarge, match="at most 100 bytes"):
        await broker.producer("d").send_many([b"ok", b"x" * 101])
    assert broker._driver.published == []  # type: ignore[attr-defined]


async def test_consumer_options(broker: Broker) -> None:
    with pytest.raises(unimq.CapabilityError, match="fanout"):
        broker.consumer("d", group="g")
    with pytest.raises(unimq.CapabilityError, match="replay"):
        broker.consumer("d", start="earliest")
    with pytest.raises(unimq.CapabilityError, match="peek"):
        await broker.peek("d")
    with pytest.raises(unimq.CapabilityError, match="deduplication"):
        await broker.ensure("d", deduplication=timedelta(seconds=5))
    with pytest.raises(unimq.CapabilityError, match=r"groups=.*fanout"):
        await broker.ensure("d", groups=("billing",))


async def test_limits_on_ensure_and_extend() -> None:
    driver = NothingDriver()
    driver.caps = Capabilities(backend="limited", fanout=native(), deduplication=native(limit=300),
                               lock_extension=native(limit=60))
    broker = Broker(driver, parse_url("nothing://"))
    with pytest.raises(unimq.CapabilityError, match="limit is 300"):
        await broker.ensure("d", deduplication=timedelta(minutes=10))
    async with broker.consumer("d") as consumer:
        delivery = await consumer.receive(timeout=1)
        assert delivery is not None
        with pytest.raises(unimq.CapabilityError, match="limit is 60"):
            await delivery.extend(timedelta(minutes=2))
        await delivery.extend(timedelta(seconds=30))


async def test_settlement_options(broker: Broker) -> None:
    async with broker.consumer("d") as consumer:
        delivery = await consumer.receive(timeout=1)
        assert delivery is not None
        with pytest.raises(unimq.CapabilityError, match="nack_delay"):
            await delivery.nack(delay=timedelta(seconds=1))
        with pytest.raises(unimq.CapabilityError, match="dead_letter"):
            await delivery.reject("bad")
        with pytest.raises(unimq.CapabilityError, match="lock_extension"):
            await delivery.extend(timedelta(seconds=1))
        await delivery.ack()
        await delivery.ack()  # double ack is harmless


async def test_require_fails_at_connect() -> None:
    with pytest.raises(unimq.CapabilityError, match=r"lacks required capabilities \['replay'\]"):
        await unimq.connect("memory://", require={"replay", "dead_letter"})
    with pytest.raises(unimq.ConfigError, match="unknown capability"):
        await unimq.connect("memory://", require={"teleport"})


def test_limits_and_rendering() -> None:
    caps = Capabilities(backend="x", delayed_delivery=native(limit=900))
    assert "900" in caps.table() and "| delayed_delivery | native |" in caps.markdown()
    assert '"backend": "x"' in caps.to_json()
    from unimq.capabilities import check_message

    with pytest.raises(unimq.CapabilityError, match="limit is 900"):
        check_message(caps, Message(b"", delay=timedelta(seconds=901)))
