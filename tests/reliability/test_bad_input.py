"""Bad input, found with hypothesis: every failure is a UnimqError naming the problem, nothing is lost.

URLs and options need no network (everything is checked before a driver connects). Headers,
bodies and poison payloads go through every real backend whose adapter is installed (and
memory): either the message round-trips exactly, or ``send()`` raises a UnimqError before
anything reaches the broker.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import unimq
from unimq import registry
from unimq.errors import MessageTooLarge, UnimqError
from unimq.reliability import DEAD_LETTER_REASON
from unimq.testing.brokers import select_targets
from unimq.url import parse_options, parse_url

TARGETS = ["memory", *(t.name for t in select_targets()
                       if t.name in ("rabbitmq", "kafka", "redis", "nats", "sqs", "servicebus"))]
SCHEMES = sorted(registry.installed())
RECEIVE = {"kafka": 30.0, "servicebus": 15.0}


def _prepare(url: str) -> Any:
    """Everything ``unimq.connect`` does before the driver opens a connection."""
    parsed = parse_url(url)
    driver_cls = registry.load(parsed.scheme)
    options = parse_options(driver_cls.Options, driver_cls.name, dict(parsed.query))
    return driver_cls(parsed, options)


# URLs and options ------------------------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30)


@st.composite
def _urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from([*SCHEMES, "nope", "AMQP", ""]))
    known = sorted(registry.load(scheme).Options.model_fields) if scheme in SCHEMES else []
    keys = draw(st.lists(st.one_of(st.sampled_from(known or ["x"]), _text), max_size=4))
    values = st.one_of(_text, st.integers(-(2**40), 2**40).map(str),
                       st.sampled_from(["true", "false", "", "-1", "1e9"]))
    query = "&".join(f"{k}={draw(values)}" for k in keys)
    userinfo = draw(st.sampled_from(["", "user@", "user:pw@", ":@", "u:p:q@"]))
    host = draw(st.sampled_from(["127.0.0.1", "[::1]", "h1,h2", "", "host:0", "host:99999", "host:abc", "é"]))
    path = draw(st.sampled_from(["", "/", "/0", "/vhost", "/x/y", "/-1"]))
    return f"{scheme}://{userinfo}{host}{path}" + (f"?{query}" if query else "")


@given(url=st.one_of(_urls(), _text))
@settings(max_examples=400, deadline=None)
def test_urls_and_options_fail_only_with_unimq_errors(url: str) -> None:
    try:
        _prepare(url)
    except UnimqError as exc:
        assert str(exc), f"empty error message for {url!r}"
    # any other exception type escapes and fails the test


@pytest.mark.parametrize("scheme", SCHEMES)
def test_unknown_and_invalid_options_are_named(scheme: str) -> None:
    base = {"sqs": "sqs://?region=us-east-1", "memory": "memory://x"}.get(scheme, f"{scheme}://127.0.0.1:1")
    glue = "&" if "?" in base else "?"
    with pytest.raises(UnimqError, match="no_such_option"):
        _prepare(f"{base}{glue}no_such_option=1")
    fields = registry.load(scheme).Options.model_fields
    numeric = [name for name, f in fields.items() if f.annotation in (int, float, int | None, float | None)]
    for name in numeric:
        with pytest.raises(UnimqError, match=name):
            _prepare(f"{base}{glue}{name}=not-a-number")


@given(scheme=st.sampled_from(SCHEMES), data=st.data())
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_keyword_options_fail_only_with_unimq_errors(scheme: str, data: st.DataObject) -> None:
    fields = sorted(registry.load(scheme).Options.model_fields) or ["x"]
    values = data.draw(st.dictionaries(st.sampled_from(fields), st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), _text, st.lists(st.integers(), max_size=2)),
        max_size=3))
    try:
        parse_options(registry.load(scheme).Options, scheme, values)
    except UnimqError as exc:
        assert any(k in str(exc) for k in values), f"{exc} names none of {list(values)}"


# Through real brokers --------------------------------------------------------------------------

@pytest.fixture(params=TARGETS)
async def broker(request: pytest.FixtureRequest, broker_url: Callable[[str], str]) -> AsyncIterator[unimq.Broker]:
    target = request.param
    url = "memory://bad-input" if target == "memory" else broker_url(target)
    async with asyncio.timeout(30), unimq.connect(url) as connected:
        yield connected


@pytest.fixture
async def dest(broker: unimq.Broker) -> AsyncIterator[str]:
    name = f"bad-{uuid.uuid4().hex[:8]}"
    await broker.ensure(name)
    yield name
    await broker.delete(name)


async def _roundtrip(broker: unimq.Broker, dest: str, **send: Any) -> unimq.Message | None:
    """Send and receive one message; None if send() refused it with a UnimqError."""
    try:
        sent = await broker.producer(dest).send(**send)
    except UnimqError as exc:
        assert str(exc)
        return None
    async with broker.consumer(dest, prefetch=1) as reader:
        delivery = await reader.receive(timeout=RECEIVE.get(broker.backend, 10.0))
        assert delivery is not None, f"a message send() accepted never arrived ({broker.backend})"
        await delivery.ack()
        assert delivery.message.message_id == sent.message_id
        return delivery.message


_header_keys = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=20)
_header_values = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)


@given(headers=st.dictionaries(_header_keys.filter(lambda k: not k.lower().startswith("x-unimq")), _header_values,
                               max_size=5))
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
async def test_unicode_headers_round_trip_or_fail_clearly(broker: unimq.Broker, dest: str,
                                                          headers: dict[str, str]) -> None:
    received = await _roundtrip(broker, dest, body=b"h", headers=headers)
    if received is not None:
        got = {k: v for k, v in received.headers.items() if not k.lower().startswith("x-unimq")}
        assert got == headers, f"{broker.backend} changed the headers"


@pytest.mark.parametrize("shape", ["huge", "many"])
async def test_huge_and_many_headers(broker: unimq.Broker, dest: str, shape: str) -> None:
    headers = {"big": "v" * 300_000} if shape == "huge" else {f"h{i}": str(i) for i in range(2000)}
    received = await _roundtrip(broker, dest, body=b"h", headers=headers)
    print(f"{broker.backend}: {shape} headers {'round-tripped' if received else 'refused by send()'}")
    if received is not None:
        assert {k: received.headers.get(k) for k in headers} == headers


@pytest.mark.parametrize("body", [b"", bytes(range(256)) * 4, "naïve ✓".encode()], ids=["empty", "binary", "utf8"])
async def test_bodies_round_trip(broker: unimq.Broker, dest: str, body: bytes) -> None:
    received = await _roundtrip(broker, dest, body=body)
    assert received is not None and received.body == body


async def test_max_body_round_trips_and_one_more_byte_is_too_large(broker: unimq.Broker, dest: str) -> None:
    limit = broker.capabilities_for(dest).max_message_bytes
    with pytest.raises(MessageTooLarge, match=str(limit)):
        await broker.producer(dest).send(b"x" * (limit + 1))
    if limit > 32 * 2**20:
        pytest.skip(f"{broker.backend}: the declared limit ({limit} bytes) is too large to send in a test")
    body = bytes(range(256)) * (limit // 256) + b"z" * (limit % 256)
    received = await _roundtrip(broker, dest, body=body)
    assert received is not None, f"{broker.backend} declares {limit} bytes but refused a body of that size"
    assert received.body == body


class Order(BaseModel):
    id: int
    amount: float


async def test_poison_payloads_are_dead_lettered_and_do_not_block(broker: unimq.Broker, dest: str) -> None:
    if not broker.capabilities_for(dest).dead_letter:
        pytest.skip(f"{broker.backend} declares dead_letter none")
    raw = broker.producer(dest)
    await raw.send(b"not json at all")
    await raw.send(json.dumps({"id": "x", "amount": "lots"}).encode(), content_type="application/json")
    typed = broker.producer(dest, schema=Order)
    for i in range(5):
        await typed.send(Order(id=i, amount=i * 1.5))
    seen: list[int] = []
    done = asyncio.Event()

    async def handle(delivery: unimq.Delivery) -> None:
        seen.append(delivery.payload.id)
        if len(seen) == 5:
            done.set()

    timeout = RECEIVE.get(broker.backend, 10.0) + 10
    runner = asyncio.create_task(broker.consume(dest, handle, schema=Order, stop=done))
    await asyncio.wait_for(runner, timeout)
    assert sorted(seen) == list(range(5)), "good messages after the poison ones were not all processed"
    reasons: list[str] = []
    async with broker.consumer(broker.dead_letter_destination(dest)) as dlq:
        while len(reasons) < 2:
            delivery = await dlq.receive(timeout=timeout)
            assert delivery is not None, f"dead-lettered so far: {reasons}"
            reasons.append(delivery.message.headers.get(DEAD_LETTER_REASON, ""))
            await delivery.ack()
    assert all("decode" in r or "validation" in r.lower() for r in reasons), reasons
    assert any("amount" in r for r in reasons), f"the schema error does not name the field: {reasons}"
