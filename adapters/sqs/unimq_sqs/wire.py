"""The message path (send, receive, delete, visibility) as SQS's JSON protocol on urllib3.

Per call, botocore walks its shape model to serialise and parse, emits a dozen events, builds and
reads the request through its own request objects, ``http.client`` and ``email`` header parsing,
and signs with generic SigV4 code: ~900 µs of CPU per SendMessageBatch of 10 with a message-id
attribute on the benchmark machine. Here one request is ``json.dumps``, a SigV4 signature over a
fixed header set (the signing key cached per day) and one urllib3 POST: about a third of that.
Calls stay blocking, in the driver's thread pools (one thread hop per call, i.e. per 10 messages:
a poll thread can still make what it received after a consumer's close visible again at once).
Control-plane calls (queues, attributes) stay on boto3, which also supplies the credentials
(refreshed as botocore refreshes them), the endpoint and the region.

Errors come back as ``botocore.exceptions.ClientError`` with the code botocore would report, so
one error table serves both paths.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import time
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import botocore.exceptions  # type: ignore[import-untyped]
import botocore.httpsession  # type: ignore[import-untyped]
import urllib3

#: Codes worth another attempt (when ``client_retries`` > 1): throttling and server faults.
RETRYABLE = frozenset({"Throttling", "ThrottlingException", "RequestThrottled", "ServiceUnavailable",
                       "InternalError", "InternalFailure", "RequestTimeout"})
_CONTENT_TYPE = "application/x-amz-json-1.0"


class Signer:
    """AWS Signature Version 4 for ``POST /`` to one SQS endpoint."""

    def __init__(self, host: str, region: str) -> None:
        self.host = host
        self.region = region
        self._keys: dict[tuple[str, str], bytes] = {}

    def _key(self, secret: str, day: str) -> bytes:
        key = self._keys.get((secret, day))
        if key is None:
            key = ("AWS4" + secret).encode()
            for part in (day, self.region, "sqs", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._keys = {(secret, day): key}  # one day, one secret: the old key is never used again
        return key

    def headers(self, target: str, body: bytes, access_key: str, secret_key: str, token: str | None,
                amz_date: str | None = None) -> dict[str, str]:
        """Every header of the request, ``Authorization`` included (``amz_date``: for tests)."""
        stamp = amz_date or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        day = stamp[:8]
        headers = {"content-type": _CONTENT_TYPE, "host": self.host, "x-amz-date": stamp}
        if token:
            headers["x-amz-security-token"] = token
        headers["x-amz-target"] = target
        headers["x-amzn-query-mode"] = "true"  # error codes as the Query protocol named them
        signed = ";".join(headers)
        lines = "".join(f"{k}:{v}\n" for k, v in headers.items())  # in SigV4's sorted order
        canonical = f"POST\n/\n\n{lines}\n{signed}\n{hashlib.sha256(body).hexdigest()}"
        scope = f"{day}/{self.region}/sqs/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._key(secret_key, day), to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={signature}")
        return headers


def client_error(status: int, body: bytes, operation: str) -> botocore.exceptions.ClientError:
    """The ClientError botocore raises for this error response (same ``Error.Code``)."""
    try:
        parsed = json.loads(body) if body else {}
    except ValueError:
        parsed = {"message": body.decode(errors="replace")}
    if not isinstance(parsed, dict):
        parsed = {}
    code = str(parsed.get("__type") or status)
    code = code.split(":", 1)[0].rsplit("#", 1)[-1]
    message = str(parsed.get("message", parsed.get("Message", "")))
    response = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return botocore.exceptions.ClientError(response, operation)


class Wire:
    """One SQS endpoint; thread-safe (urllib3 pools its connections), calls block."""

    def __init__(self, endpoint: str, region: str, credentials: Any, *, connections: int,
                 read_timeout: float, attempts: int, ca_bundle: str | None = None) -> None:
        parts = urlsplit(endpoint)
        self._url = f"{parts.scheme}://{parts.netloc}/"
        self._signer = Signer(parts.netloc, region)
        self._credentials = credentials
        self._attempts = attempts
        options: dict[str, Any] = {
            "maxsize": connections, "block": False, "retries": False,
            "timeout": urllib3.Timeout(connect=5, read=read_timeout),
        }
        if parts.scheme == "https":
            options["ca_certs"] = ca_bundle or botocore.httpsession.get_cert_path(True)  # as botocore verifies
        proxy = urllib.request.getproxies().get(parts.scheme)
        self._http: urllib3.PoolManager = (
            urllib3.ProxyManager(proxy, **options)
            if proxy and not urllib.request.proxy_bypass(parts.hostname or "") else urllib3.PoolManager(**options))

    def close(self) -> None:
        """Close idle connections; a call still running finishes, later calls reconnect."""
        self._http.clear()

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        """One SQS action, blocking; a ClientError for an error response."""
        body = json.dumps(params, separators=(",", ":"), ensure_ascii=False).encode()
        attempt = 1
        reconnected = False
        while True:
            try:
                return self._post(operation, body)
            except urllib3.exceptions.ProtocolError:
                # A kept-alive connection the server closed as this request went out (ElasticMQ does
                # under load): once, at once, on a new connection, outside ``client_retries``. SQS
                # actions are at-least-once anyway (a resent batch may duplicate, as a core retry may).
                if reconnected:
                    raise
                reconnected = True
                continue
            except (botocore.exceptions.ClientError, urllib3.exceptions.HTTPError) as exc:
                if attempt >= self._attempts or not _retryable(exc):
                    raise
            time.sleep(random.uniform(0, min(20.0, 0.05 * 2 ** attempt)))
            attempt += 1

    def _post(self, operation: str, body: bytes) -> dict[str, Any]:
        if self._credentials is None:
            raise botocore.exceptions.NoCredentialsError()  # as botocore signs: a ConfigError for unimq
        creds = self._credentials.get_frozen_credentials()
        headers = self._signer.headers("AmazonSQS." + operation, body, creds.access_key, creds.secret_key,
                                       creds.token)
        response = self._http.urlopen("POST", self._url, body=body, headers=headers)
        if response.status != 200:
            raise client_error(response.status, response.data, operation)
        parsed: dict[str, Any] = json.loads(response.data) if response.data else {}
        return parsed


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, botocore.exceptions.ClientError):
        status = exc.response["ResponseMetadata"]["HTTPStatusCode"]
        return exc.response["Error"]["Code"] in RETRYABLE or status >= 500
    return True
