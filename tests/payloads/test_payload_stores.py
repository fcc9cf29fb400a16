"""The stores against real servers (S3Proxy, Azurite, a directory): objects, failures, and secrets."""

from __future__ import annotations

import logging
import os
from urllib.parse import quote

import pytest
from payload_stores import AZURITE, S3_URL, require_store

import unimq
from unimq.payloads import AzureBlobStore, ObjectMissing, S3Store, Store, open_store

S3_SECRET = "unimq-s3-test-secret"
WRONG_S3_SECRET = "wrong-Secret-0123456789abcdef"
WRONG_AZURE_KEY = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk="


async def test_objects_round_trip_and_a_missing_one_is_reported(store: Store) -> None:
    key = store.new_key()
    data = os.urandom(100_000)
    await store.put(key, data)
    assert await store.get(key) == data
    assert store.uri(key).startswith(f"{store.scheme}://") and store.uri(key).endswith(key.rsplit("/", 1)[-1])
    await store.delete(key)
    await store.delete(key)  # deleting twice is fine
    with pytest.raises(ObjectMissing, match="is missing"):
        await store.get(key)


async def test_keys_the_store_did_not_make_are_refused(store: Store) -> None:
    forged = ["../etc/passwd", f"{store.prefix}../{'a' * 32}", f"{store.prefix}{'A' * 32}", f"{store.prefix}.."]
    if store.prefix:
        forged.append("other/" + "a" * 32)
    for key in forged:
        with pytest.raises(unimq.ConfigError, match="is not one this store"):
            await store.get(key)


async def test_an_unreachable_store_fails_at_open_without_its_secret(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(unimq.BrokerConnectionError, match=r"cannot reach the endpoint.*endpoint_url") as s3:
        await open_store("s3://unimq:secret-value-123@unimq-test/?endpoint_url=http://127.0.0.1:9&region=us-east-1")
    connection = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={WRONG_AZURE_KEY};"
                  "BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;")
    with pytest.raises(unimq.BrokerConnectionError, match="cannot reach the endpoint") as azure:
        await open_store(f"azblob://payloads/?connection_string={quote(connection, safe='')}", retry_total=0)
    shown = f"{s3.value} {s3.value!r} {azure.value} {azure.value!r} {caplog.text}"
    assert "secret-value-123" not in shown and WRONG_AZURE_KEY not in shown


async def test_s3_errors_name_the_fix_and_never_the_secret(caplog: pytest.LogCaptureFixture) -> None:
    require_store("s3")
    caplog.set_level(logging.DEBUG)
    wrong = S3_URL.replace(S3_SECRET, WRONG_S3_SECRET)
    with pytest.raises(unimq.AuthenticationError, match="credentials were refused") as refused:
        await open_store(wrong)
    with pytest.raises(unimq.NotFound, match="bucket 'no-such-bucket' does not exist"):
        await open_store(S3_URL.replace("@unimq-test/", "@no-such-bucket/"))
    store = S3Store("unimq-test", endpoint_url="http://127.0.0.1:9400", region="us-east-1",
                    access_key_id="unimq", secret_access_key=S3_SECRET)
    text = f"{refused.value} {refused.value!r} {store!r} {caplog.text}"
    assert WRONG_S3_SECRET not in text and S3_SECRET not in f"{store!r} {refused.value}"
    await store.close()


async def test_azure_errors_name_the_fix_and_never_the_key(caplog: pytest.LogCaptureFixture) -> None:
    require_store("azurite")
    caplog.set_level(logging.DEBUG)
    real_key = AZURITE.split("AccountKey=")[1].split(";")[0]
    wrong = AzureBlobStore("unimq-test", connection_string=AZURITE.replace(real_key, WRONG_AZURE_KEY))
    with pytest.raises(unimq.AuthenticationError, match="credentials were refused") as refused:
        await wrong.open()
    await wrong.close()
    store = AzureBlobStore("no-such-container", connection_string=AZURITE)
    with pytest.raises(unimq.NotFound, match="container 'no-such-container' does not exist"):
        await store.open()
    await store.close()
    text = f"{refused.value} {refused.value!r} {wrong!r} {store!r} {caplog.text}"
    assert WRONG_AZURE_KEY not in text and real_key not in text


async def test_store_urls_are_checked() -> None:
    with pytest.raises(unimq.ConfigError, match="unknown store scheme 'ftp'"):
        await open_store("ftp://host/x")
    with pytest.raises(unimq.ConfigError, match=r"unknown option.*regoin"):
        await open_store("s3://bucket/?regoin=x")
    with pytest.raises(unimq.ConfigError, match="bucket name"):
        S3Store("Not_A_Bucket")
    with pytest.raises(unimq.ConfigError, match="connection_string= or account_url="):
        AzureBlobStore("container")
    with pytest.raises(unimq.ConfigError, match="does not parse"):
        AzureBlobStore("container", connection_string="AccountKey=c2VjcmV0c2VjcmV0")
