"""The urllib3 message path (unimq_sqs.wire): botocore's SigV4 signature and error codes, one resend."""

from __future__ import annotations

import socket
import threading
from typing import Any

import botocore.auth  # type: ignore[import-untyped]
import botocore.awsrequest  # type: ignore[import-untyped]
import botocore.credentials  # type: ignore[import-untyped]
import botocore.exceptions  # type: ignore[import-untyped]
import pytest
import urllib3
from unimq_sqs.wire import Signer, Wire, client_error

import unimq


def botocore_signature(headers: dict[str, str], body: bytes, creds: Any, region: str) -> str:
    """botocore's SigV4 over the same request, at the same instant (``x-amz-date``)."""
    unsigned = {k: v for k, v in headers.items() if k != "authorization"}
    request = botocore.awsrequest.AWSRequest(method="POST", url=f"https://{headers['host']}/", data=body,
                                             headers=unsigned)
    request.context["timestamp"] = headers["x-amz-date"]
    auth = botocore.auth.SigV4Auth(creds, "sqs", region)
    canonical = auth.canonical_request(request)
    return str(auth.signature(auth.string_to_sign(request, canonical), request))


@pytest.mark.parametrize("token", [None, "session-token/+="])
def test_signature_matches_botocore(token: str | None) -> None:
    creds = botocore.credentials.Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    signer = Signer("sqs.eu-west-1.amazonaws.com", "eu-west-1")
    body = b'{"QueueUrl":"https://sqs.eu-west-1.amazonaws.com/1/q","Entries":[{"Id":"0","MessageBody":"h\xc3\xa9"}]}'
    for stamp in ("20261207T191500Z", "20261208T000001Z"):  # the cached day key is replaced
        headers = signer.headers("AmazonSQS.SendMessageBatch", body, creds.access_key, creds.secret_key, token,
                                 amz_date=stamp)
        ours = headers["authorization"].rsplit("Signature=", 1)[1]
        assert ours == botocore_signature(headers, body, creds, "eu-west-1")
        assert f"Credential=AKIDEXAMPLE/{stamp[:8]}/eu-west-1/sqs/aws4_request" in headers["authorization"]
        assert ("x-amz-security-token" in headers["authorization"]) == (token is not None)


def test_error_code_is_botocores() -> None:
    body = b'{"__type":"com.amazonaws.sqs#QueueDoesNotExist","message":"The specified queue does not exist."}'
    error = client_error(400, body, "SendMessageBatch")
    assert isinstance(error, botocore.exceptions.ClientError)
    assert error.response["Error"] == {"Code": "QueueDoesNotExist", "Message": "The specified queue does not exist."}
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert client_error(503, b"<html>busy</html>", "ReceiveMessage").response["Error"]["Code"] == "503"


async def test_queue_deleted_behind_the_producer_is_not_found(broker: unimq.Broker, boto: Any, name: str) -> None:
    """The message path maps SQS's error through the same table as boto3's: NotFound, not a bare error."""
    await broker.ensure(name)
    producer = broker.producer(name)
    await producer.send(b"the queue URL is cached now")
    boto.delete_queue(QueueUrl=boto.get_queue_url(QueueName=name)["QueueUrl"])
    with pytest.raises(unimq.UnimqError) as raised:
        await producer.send(b"to a queue that is gone")
    chain = [raised.value, raised.value.__cause__, *getattr(raised.value, "errors", [])]
    assert any(isinstance(e, unimq.NotFound) for e in chain), repr(raised.value)


async def test_native_entry_has_boto3_shape(broker: unimq.Broker, boto: Any, name: str) -> None:
    """``delivery.native`` stays what boto3 returns, though the JSON protocol carries binary as base64."""
    await broker.ensure(name)
    url = boto.get_queue_url(QueueName=name)["QueueUrl"]
    boto.send_message(QueueUrl=url, MessageBody="b", MessageAttributes={
        "blob": {"DataType": "Binary", "BinaryValue": b"\x00\xff"}})
    expected = boto.receive_message(QueueUrl=url, MessageAttributeNames=["All"], VisibilityTimeout=0,
                                    WaitTimeSeconds=5)["Messages"][0]
    async with broker.consumer(name) as consumer:
        delivery = await consumer.receive(timeout=5)
        assert delivery is not None
        assert delivery.native["MessageAttributes"] == expected["MessageAttributes"]
        assert delivery.native["Body"] == expected["Body"] and delivery.message.headers == {"blob": "AP8="}
        await delivery.ack()


def test_no_credentials_is_botocores_error() -> None:
    """Without credentials the message path fails as botocore would (the driver maps it to ConfigError)."""
    wire = Wire("https://sqs.eu-west-1.amazonaws.com", "eu-west-1", None, connections=1, read_timeout=1, attempts=1)
    with pytest.raises(botocore.exceptions.NoCredentialsError):
        wire.call("SendMessage", {"QueueUrl": "https://sqs.eu-west-1.amazonaws.com/1/q", "MessageBody": "x"})


def test_request_on_a_connection_the_server_closed_is_resent_once() -> None:
    """ElasticMQ under load closes kept-alive connections: the call goes out again on a new one, once."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    served: list[str] = []

    def serve(replies: list[bool]) -> None:
        for reply in replies:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                served.append("reply" if reply else "closed")
                if reply:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")

    creds = botocore.credentials.Credentials("x", "x")
    wire = Wire(f"http://127.0.0.1:{port}", "us-east-1", creds, connections=1, read_timeout=5, attempts=1)
    thread = threading.Thread(target=serve, args=([False, True],), daemon=True)
    thread.start()
    assert wire.call("DeleteMessageBatch", {"QueueUrl": "q", "Entries": []}) == {}
    thread.join(5)
    assert served == ["closed", "reply"]
    thread = threading.Thread(target=serve, args=([False, False],), daemon=True)
    thread.start()
    with pytest.raises(urllib3.exceptions.ProtocolError):  # twice in a row: the error, not a loop
        wire.call("DeleteMessageBatch", {"QueueUrl": "q", "Entries": []})
    thread.join(5)
    server.close()
