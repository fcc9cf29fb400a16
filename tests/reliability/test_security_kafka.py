"""Kafka security options against a private KRaft broker this module starts from the jars
``scripts/brokers up kafka`` installed (a second JVM, 256 MiB heap, 5-11 s to format and boot),
with a SASL_SSL listener (SCRAM-SHA-256 and -512, credentials created at storage format) and an
SSL listener, both serving a certificate from the test's throwaway CA as inline PEM. The shared
broker is not touched.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from security_support import Pki, free_port, refused, roundtrip, running, scripts_brokers, unavailable

import unimq

pytestmark = pytest.mark.needs_broker("kafka")

PASSWORD = f"pw-{uuid.uuid4().hex[:10]}"
MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
SCRAM_LOGIN = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
#: Kafka consumers wait for a group join: the round trip gets more time than on other brokers.
RECEIVE = 30.0


@dataclass(frozen=True)
class SecureKafka:
    sasl_ssl: str  #: host:port of the SASL_SSL listener
    ssl: str  #: host:port of the SSL listener


@pytest.fixture(scope="module")
def kafka(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    plain, controller, sasl_ssl, ssl = (free_port() for _ in range(4))
    listeners = {"PLAINTEXT": plain, "SASL_SSL": sasl_ssl, "SSL": ssl}
    settings = {
        "listeners": ",".join(f"{name}://127.0.0.1:{port}" for name, port in
                              {**listeners, "CONTROLLER": controller}.items()),
        "advertised.listeners": ",".join(f"{name}://127.0.0.1:{port}" for name, port in listeners.items()),
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL",
        "sasl.enabled.mechanisms": ",".join(MECHANISMS),
        **{f"listener.name.sasl_ssl.{m.lower()}.sasl.jaas.config": SCRAM_LOGIN for m in MECHANISMS},
        # Inline PEM: a PEM keystore file needs an encrypted key, and Java 17 cannot read the PBES2
        # encryption `cryptography` writes.
        "ssl.keystore.type": "PEM",
        "ssl.keystore.key": pki.key.read_text().strip(),
        "ssl.keystore.certificate.chain": pki.cert.read_text().strip(),
        "num.network.threads": "1",
        "num.io.threads": "1",
    }
    scram = tuple(arg for m in MECHANISMS for arg in ("--add-scram", f"{m}=[name=alice,password={PASSWORD}]"))
    broker = scripts_brokers().Kafka(home=tmp_path_factory.mktemp("kafka"), ports=(plain, controller),
                                     settings=settings, format_args=scram, heap="256m")
    if shutil.which("java") is None or not (broker.libs / ".pom-sha256").exists():
        unavailable(f"no Java or no Kafka jars in {broker.libs}: `scripts/brokers up kafka` installs them")
    with running(broker):
        yield SecureKafka(f"127.0.0.1:{sasl_ssl}", f"127.0.0.1:{ssl}")


def _sasl_url(kafka: SecureKafka, ca: Path, mechanism: str = "SCRAM-SHA-256", password: str = PASSWORD) -> str:
    return (f"kafka://alice:{password}@{kafka.sasl_ssl}?security_protocol=SASL_SSL&sasl_mechanism={mechanism}"
            f"&ssl_cafile={ca}")


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_sasl_scram_over_tls_round_trip(kafka: SecureKafka, pki: Pki, mechanism: str) -> None:
    await roundtrip(_sasl_url(kafka, pki.ca, mechanism), RECEIVE)


async def test_sasl_credentials_as_options(kafka: SecureKafka, pki: Pki) -> None:
    await roundtrip(f"kafka://{kafka.sasl_ssl}?security_protocol=SASL_SSL&sasl_mechanism=SCRAM-SHA-512"
                    f"&sasl_username=alice&sasl_password={PASSWORD}&ssl_cafile={pki.ca}", RECEIVE)


async def test_wrong_password_names_the_authentication_failure(kafka: SecureKafka, pki: Pki) -> None:
    wrong = f"wrong-{PASSWORD}"
    error = await refused(_sasl_url(kafka, pki.ca, password=wrong), "SaslAuthenticationFailed",
                          secrets=(PASSWORD, wrong), kind=unimq.AuthenticationError)
    assert "invalid credentials" in str(error)
    assert not error.retryable


async def test_unknown_user_is_refused(kafka: SecureKafka, pki: Pki) -> None:
    url = _sasl_url(kafka, pki.ca).replace("alice:", "mallory:")
    await refused(url, "SaslAuthenticationFailed", secrets=(PASSWORD,))


async def test_mechanism_the_listener_does_not_enable_is_refused(kafka: SecureKafka, pki: Pki) -> None:
    error = await refused(_sasl_url(kafka, pki.ca, mechanism="PLAIN"), "UnsupportedSaslMechanism",
                          secrets=(PASSWORD,))
    assert not error.retryable


async def test_server_signed_by_another_ca_fails_verification(kafka: SecureKafka, pki: Pki) -> None:
    await refused(_sasl_url(kafka, pki.other_ca), "CERTIFICATE_VERIFY_FAILED", secrets=(PASSWORD,))
    await refused(f"kafka://{kafka.ssl}?security_protocol=SSL&ssl_cafile={pki.other_ca}",
                  "CERTIFICATE_VERIFY_FAILED", secrets=())


async def test_tls_only_round_trip(kafka: SecureKafka, pki: Pki) -> None:
    await roundtrip(f"kafka://{kafka.ssl}?security_protocol=SSL&ssl_cafile={pki.ca}", RECEIVE)
