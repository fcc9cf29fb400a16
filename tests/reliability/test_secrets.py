"""No password, SAS key or token ever shows: not in errors, tracebacks, reprs, or any log record.

For every installed scheme, connect with a known secret to a port where nothing listens (and,
where a broker is running, with a wrong password to the real broker), with every logger at
DEBUG, then look for the secret in everything a user or a log collector could see.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import traceback
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

import unimq
from unimq import registry
from unimq.errors import UnimqError
from unimq.testing.brokers import reachable
from unimq.url import parse_options, parse_url

SECRET = f"Sx7-{uuid.uuid4().hex[:12]}"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PORT = _closed_port()
S = SECRET
CASES: dict[str, list[Any]] = {
    "amqp": [f"amqp://alice:{S}@127.0.0.1:{PORT}/", f"amqp://alice:{S}@127.0.0.1:5672/"],
    "amqps": [f"amqps://alice:{S}@127.0.0.1:{PORT}/"],
    "rabbitmq": [f"rabbitmq://alice:{S}@127.0.0.1:{PORT}/"],
    "kafka": [f"kafka://alice:{S}@127.0.0.1:{PORT}?security_protocol=SASL_PLAINTEXT&sasl_mechanism=SCRAM-SHA-256",
              f"kafka://127.0.0.1:{PORT}?security_protocol=SASL_SSL&sasl_mechanism=PLAIN&sasl_username=a"
              f"&sasl_password={S}",
              f"kafka://alice:{S}@127.0.0.1:9092?security_protocol=SASL_PLAINTEXT&sasl_mechanism=PLAIN"],
    "kafka+confluent": [f"kafka+confluent://alice:{S}@127.0.0.1:{PORT}?security_protocol=SASL_PLAINTEXT"
                        "&sasl_mechanism=SCRAM-SHA-256",
                        f"kafka+confluent://127.0.0.1:{PORT}?security_protocol=SASL_SSL&sasl_mechanism=PLAIN"
                        f"&sasl_username=a&sasl_password={S}"],
    "redis": [f"redis://alice:{S}@127.0.0.1:{PORT}/0", f"redis://alice:{S}@127.0.0.1:6379/0",
              f"redis://:{S}@127.0.0.1:6379/0"],
    "rediss": [f"rediss://alice:{S}@127.0.0.1:{PORT}/0?ssl_password={S}"],
    "redis+cluster": [f"redis+cluster://alice:{S}@127.0.0.1:{PORT},127.0.0.1:{PORT}",
                      f"redis+cluster://:{S}@127.0.0.1:17000"],
    "rediss+cluster": [f"rediss+cluster://alice:{S}@127.0.0.1:{PORT}", f"rediss+cluster://a:b@127.0.0.1:{PORT}"
                       f"?ssl_password={S}"],
    "nats": [f"nats://alice:{S}@127.0.0.1:{PORT}", f"nats://127.0.0.1:{PORT}?token={S}",
             f"nats://alice:{S}@127.0.0.1:4222"],
    "tls": [f"tls://alice:{S}@127.0.0.1:{PORT}"],
    "sqs": [f"sqs://?endpoint_url=http://127.0.0.1:{PORT}&region=us-east-1&aws_access_key_id=AKIDEXAMPLE"
            f"&aws_secret_access_key={S}",
            f"sqs://?endpoint_url=http://127.0.0.1:{PORT}&region=us-east-1&aws_access_key_id=AKIDEXAMPLE"
            f"&aws_secret_access_key=k3y&aws_session_token={S}"],
    "servicebus": [f"servicebus://RootManageSharedAccessKey:{S}@127.0.0.1:{PORT}?emulator=true",
                   "servicebus://?connection_string=" + quote(
                       f"Endpoint=sb://127.0.0.1:{PORT};SharedAccessKeyName=Root;SharedAccessKey={S};"
                       "UseDevelopmentEmulator=true", safe="")],
}
URLS = [pytest.param(scheme, *url.values, marks=url.marks) if isinstance(url, type(pytest.param(0))) else
        pytest.param(scheme, url) for scheme in sorted(registry.installed()) for url in CASES.get(scheme, [])]


def test_every_installed_scheme_has_a_case() -> None:
    missing = set(registry.installed()) - set(CASES) - {"memory"}
    assert not missing, f"add secret cases for {missing}"


@pytest.fixture
def every_logger_at_debug(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Root and every named logger (client libraries' too) at DEBUG, all propagating to caplog."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    saved = [(lg, lg.level, lg.propagate, lg.disabled) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
        lg.propagate = True
        lg.disabled = False
    caplog.set_level(logging.DEBUG)
    yield caplog
    for lg, level, propagate, disabled in saved:
        lg.setLevel(level)
        lg.propagate = propagate
        lg.disabled = disabled


def _texts(exc: BaseException) -> list[str]:
    return [str(exc), repr(exc), "".join(traceback.format_exception(exc))]


@pytest.mark.parametrize(("scheme", "url"), URLS, ids=[f"{p.values[0]}-{i}" for i, p in enumerate(URLS)])
async def test_secret_never_appears(scheme: str, url: str, every_logger_at_debug: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []
    parsed = parse_url(url)
    seen += [repr(parsed), str(parsed), parsed.redacted()]
    driver_cls = registry.load(parsed.scheme)
    options = parse_options(driver_cls.Options, driver_cls.name, dict(parsed.query))
    seen += [repr(options), str(options)]
    with pytest.raises(UnimqError) as bad_option:
        await unimq.connect(url + ("&" if "?" in url else "?") + "bogus_option=1")
    seen += _texts(bad_option.value)
    outcome = "connected"
    try:
        async with asyncio.timeout(30), unimq.connect(url) as broker:
            seen += [repr(broker), str(broker), broker.url, repr(broker.producer("q"))]
            await broker.producer(f"secret-{uuid.uuid4().hex[:6]}", retry=None).send(b"x")
            outcome = "sent (no authentication on this broker)"
    except UnimqError as exc:
        outcome = f"{type(exc).__name__}"
        seen += _texts(exc)
    except TimeoutError as exc:
        outcome = "timed out"
        seen += _texts(exc)
    await asyncio.sleep(0.2)  # let client libraries log their connection failures
    records = every_logger_at_debug.records
    for record in records:
        seen.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            seen += _texts(record.exc_info[1])
    leaks = [text for text in seen if SECRET in text or quote(SECRET) in text]
    where = "reachable" if reachable(url) else "refused"
    print(f"{scheme} ({where}): {outcome}; {len(records)} log records and {len(seen)} texts checked")
    assert not leaks, f"the secret leaked ({len(leaks)}x), first: {leaks[0][:500]}"
    assert outcome != "timed out", "connecting did not fail within 30 s"
