"""RabbitMQ over TLS against a private node this module starts with ``scripts/brokers``' RabbitMQ
class (the Debian rabbitmq-server the shared node runs from, ~8 s to boot): a TLS listener serving
a certificate from the test's throwaway CA and one user, ``alice``. The shared node is not touched.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from security_support import Pki, free_port, refused, roundtrip, running, scripts_brokers, unavailable

import unimq

pytestmark = pytest.mark.needs_broker("rabbitmq")

PASSWORD = f"pw-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def amqps(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of the private node's TLS listener."""
    module = scripts_brokers()
    if not (module.RabbitMQ.bin / "rabbitmq-server").exists():
        unavailable("rabbitmq-server is not installed here: `scripts/brokers up rabbitmq` installs it")
    tls = free_port()
    config = (f"listeners.ssl.default = 127.0.0.1:{tls}\n"
              f"ssl_options.cacertfile = {pki.ca}\n"
              f"ssl_options.certfile = {pki.cert}\n"
              f"ssl_options.keyfile = {pki.key}\n"
              "ssl_options.verify = verify_none\n"
              "ssl_options.fail_if_no_peer_cert = false\n"
              "default_user = alice\n"
              f"default_pass = {PASSWORD}\n")
    broker = module.RabbitMQ(home=tmp_path_factory.mktemp("rabbitmq"), ports=(free_port(), free_port()),
                             node=f"unimq-tls-{uuid.uuid4().hex[:8]}@localhost", config=config)
    with running(broker, timeout=90.0):
        yield f"127.0.0.1:{tls}"


def _url(amqps: str, ca: Path | None, password: str = PASSWORD, extra: str = "") -> str:
    query = "&".join(q for q in (f"ca_file={ca}" if ca else "", extra) if q)
    return f"amqps://alice:{password}@{amqps}/?{query}"


async def test_amqps_round_trip(amqps: str, pki: Pki) -> None:
    await roundtrip(_url(amqps, pki.ca))


async def test_server_signed_by_another_ca_fails_verification(amqps: str, pki: Pki) -> None:
    await refused(_url(amqps, pki.other_ca), "CERTIFICATE_VERIFY_FAILED", secrets=(PASSWORD,))
    # Without ca_file the system CAs apply: they did not sign the test CA's server either.
    await refused(_url(amqps, None), "CERTIFICATE_VERIFY_FAILED", secrets=(PASSWORD,))


async def test_verify_false_accepts_an_untrusted_server(amqps: str) -> None:
    await roundtrip(_url(amqps, None, extra="verify=false"))


async def test_wrong_password_names_the_refusal(amqps: str, pki: Pki) -> None:
    wrong = f"wrong-{PASSWORD}"
    error = await refused(_url(amqps, pki.ca, password=wrong), "ACCESS_REFUSED", secrets=(PASSWORD, wrong),
                          kind=unimq.AuthenticationError)
    assert not error.retryable
