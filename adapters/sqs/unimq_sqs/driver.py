"""``sqs://``: AWS SQS (and ElasticMQ): messages through :mod:`unimq_sqs.wire`, queues through boto3.

Both are synchronous, so every call runs in a bounded thread pool and the event loop never
blocks: one pool for long polls (ReceiveMessage), one for everything else, so idle long polls
cannot starve sends and acks. Sends, receives, deletes and visibility changes are SQS's JSON
protocol on urllib3 (a third of botocore's CPU per call); queues, attributes and listing are
boto3 calls, and that client also supplies credentials, endpoint and region.

A destination is a queue, its URL looked up once and cached. Names ending in ``.fifo`` are FIFO
queues (with ``fifo=true`` every destination is, ``.fifo`` appended); capabilities differ per
queue kind, see :meth:`SqsDriver.capabilities_for`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, TypeVar

import boto3  # type: ignore[import-untyped]
import botocore.config  # type: ignore[import-untyped]
import botocore.credentials  # type: ignore[import-untyped]
import botocore.exceptions  # type: ignore[import-untyped]
import urllib3
from pydantic import BaseModel

from unimq.capabilities import Capabilities
from unimq.driver import DestinationSpec, Driver, ReceiveSettings, Stats, Subscription
from unimq.errors import (
    AuthenticationError,
    BrokerConnectionError,
    CapabilityError,
    Closed,
    ConfigError,
    ErrorRule,
    MessageTooLarge,
    NotFound,
    PermissionDenied,
    Throttled,
    Timeout,
    UnimqError,
    register_secret,
    scrub_loggers,
)
from unimq.message import Message
from unimq.url import BrokerURL
from unimq_sqs import mapping
from unimq_sqs.options import MAX_BATCH, MAX_RETENTION, MIN_RETENTION, SqsOptions, capabilities
from unimq_sqs.wire import Wire

T = TypeVar("T")

_QUEUE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
_NOT_FOUND = frozenset({"QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue"})
_EXISTS = frozenset({"QueueAlreadyExists", "QueueNameExists"})
#: Retryable after a pause (QueueDeletedRecently: a deleted name can be created again after 60 s).
_THROTTLED = frozenset({"Throttling", "ThrottlingException", "RequestThrottled", "KmsThrottled", "SlowDown",
                        "OverLimit", "QueueDeletedRecently"})
_UNAVAILABLE = frozenset({"ServiceUnavailable", "InternalError", "InternalFailure", "RequestTimeout"})
_CREDENTIALS = frozenset({
    "InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException", "InvalidSecurity",
    "ExpiredToken", "MissingAuthenticationToken", "IncompleteSignature",
})
_DENIED = frozenset({"AccessDenied", "AccessDeniedException", "KMS.AccessDeniedException"})
_TOO_LARGE = frozenset({"MessageTooLong", "BatchRequestTooLong", "AWS.SimpleQueueService.BatchRequestTooLong"})
#: A receipt handle whose lock was lost: settling it is a no-op, not an error.
_STALE_HANDLE = frozenset({"ReceiptHandleIsInvalid", "InvalidReceiptHandle", "MessageNotInflight",
                           "AWS.SimpleQueueService.MessageNotInflight"})


def _code(codes: frozenset[str]) -> Callable[[BaseException], bool]:
    return lambda exc: error_code(exc) in codes


def error_code(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def entry_error(failed: dict[str, Any], context: str) -> UnimqError:
    """The unimq error for one ``Failed`` entry of a batch call."""
    code = str(failed.get("Code", ""))
    detail = f"{context}: {code}: {failed.get('Message', '')}"
    if code in _TOO_LARGE:
        return MessageTooLarge(detail)
    if code in _THROTTLED:
        return Throttled(detail)
    return UnimqError(detail, retryable=code in _UNAVAILABLE or not failed.get("SenderFault", True))


class SqsDriver(Driver):
    name = "sqs"
    Options: ClassVar[type[BaseModel]] = SqsOptions
    options: SqsOptions
    errors: ClassVar[Sequence[ErrorRule]] = (
        (botocore.exceptions.ClientError, AuthenticationError, _code(_CREDENTIALS)),
        (botocore.exceptions.ClientError, PermissionDenied, _code(_DENIED)),
        (botocore.exceptions.ClientError, NotFound, _code(_NOT_FOUND)),
        (botocore.exceptions.ClientError, MessageTooLarge, _code(_TOO_LARGE)),
        (botocore.exceptions.ClientError, Throttled, _code(_THROTTLED)),
        (botocore.exceptions.ClientError, BrokerConnectionError, _code(_UNAVAILABLE)),
        (botocore.exceptions.ClientError, BrokerConnectionError,
         lambda exc: exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500),  # type: ignore[attr-defined]
        (urllib3.exceptions.NewConnectionError, BrokerConnectionError),
        (urllib3.exceptions.TimeoutError, Timeout),
        (urllib3.exceptions.HTTPError, BrokerConnectionError),
        (botocore.exceptions.ConnectTimeoutError, Timeout),
        (botocore.exceptions.ReadTimeoutError, Timeout),
        (botocore.exceptions.EndpointConnectionError, BrokerConnectionError),
        (botocore.exceptions.ConnectionError, BrokerConnectionError),
        (botocore.exceptions.HTTPClientError, BrokerConnectionError),
        (botocore.exceptions.NoCredentialsError, ConfigError),
        (botocore.exceptions.PartialCredentialsError, ConfigError),
        (botocore.exceptions.NoRegionError, ConfigError),
        (botocore.exceptions.ProfileNotFound, ConfigError),
        (RuntimeError, Closed, lambda exc: "shutdown" in str(exc)),  # a pool of a closed driver
    )

    def __init__(self, url: BrokerURL, options: SqsOptions) -> None:
        super().__init__(url, options)
        if url.hosts or url.path.strip("/"):
            raise ConfigError("sqs:// takes no host or path: use sqs://?region=...&endpoint_url=...")
        register_secret(options.aws_secret_access_key)
        register_secret(options.aws_session_token)
        self._standard = capabilities(options, fifo=False)
        self._fifo = capabilities(options, fifo=True)
        self._client: Any = None
        self._wire: Wire | None = None
        self._models: dict[str, Any] = {}
        self._urls: dict[str, str] = {}
        self._names: dict[str, str] = {}
        half = max(1, options.max_threads // 2)
        self._io = ThreadPoolExecutor(half, thread_name_prefix="unimq-sqs")
        self._polls = ThreadPoolExecutor(half, thread_name_prefix="unimq-sqs-poll")

    # -- declarations -------------------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return self._fifo if self.options.fifo else self._standard

    def capabilities_for(self, destination: str) -> Capabilities:
        return self._fifo if self.is_fifo(destination) else self._standard

    @property
    def native(self) -> Any:
        """The boto3 SQS client (``botocore.client.SQS``)."""
        return self._client

    def is_fifo(self, destination: str) -> bool:
        return self.options.fifo or destination.endswith(".fifo")

    def queue_name(self, destination: str) -> str:
        """The SQS queue name of ``destination``; a ConfigError when SQS would refuse it."""
        name = self._names.get(destination)
        if name is None:
            name = self._names[destination] = self._check_name(destination)
        return name

    def _check_name(self, destination: str) -> str:
        name = destination
        if self.options.fifo and not name.endswith(".fifo"):
            name += ".fifo"
        stem = name[:-5] if name.endswith(".fifo") else name
        if not stem or len(name) > 80 or not set(stem) <= _QUEUE_NAME_CHARS:
            raise ConfigError(
                f"sqs: {destination!r} is not a valid queue name: 1-80 characters of A-Z a-z 0-9 - _ "
                "(FIFO queues end in '.fifo', counted in the 80)"
            )
        return name

    def dead_letter_destination(self, destination: str) -> str:
        if self.is_fifo(destination):
            stem = destination[:-5] if destination.endswith(".fifo") else destination
            return f"{stem}-dlq.fifo"
        return f"{destination}-dlq"

    # -- connection ---------------------------------------------------------------------------

    async def open(self) -> None:
        # botocore logs signed requests (with the session token) at DEBUG: scrub its loggers.
        scrub_loggers("botocore")
        self._client, credentials, ca_bundle = await asyncio.get_running_loop().run_in_executor(
            self._io, self._make_client)
        o = self.options
        self._wire = Wire(self._client.meta.endpoint_url, self._client.meta.region_name, credentials,
                          connections=2 * max(1, o.max_threads // 2), read_timeout=o.wait_time + 30,
                          attempts=o.client_retries, ca_bundle=ca_bundle)

    def _make_client(self) -> tuple[Any, Any, str | None]:
        """The boto3 client, the credentials it signs with and its CA bundle (AWS_CA_BUNDLE or the
        profile's ``ca_bundle``): the message path uses the same."""
        o = self.options
        session = boto3.session.Session(
            profile_name=o.profile, region_name=o.region, aws_access_key_id=o.aws_access_key_id,
            aws_secret_access_key=o.aws_secret_access_key, aws_session_token=o.aws_session_token,
        )
        keys: dict[str, str] = {}
        credentials = session.get_credentials()
        if o.endpoint_url and credentials is None:
            # Local SQS-compatible servers (ElasticMQ) accept any signature but botocore needs one.
            keys = {"aws_access_key_id": "x", "aws_secret_access_key": "x"}
            credentials = botocore.credentials.Credentials("x", "x")
        region = session.region_name or ("us-east-1" if o.endpoint_url else None)
        if region is None:
            raise ConfigError("sqs: no region: add ?region=... to the URL or set AWS_REGION / a profile region")
        config = botocore.config.Config(
            max_pool_connections=2 * max(1, o.max_threads // 2),
            retries={"mode": "standard", "total_max_attempts": o.client_retries},
            connect_timeout=5, read_timeout=o.wait_time + 30,
            parameter_validation=False,  # the adapter builds every request itself
        )
        client = session.client("sqs", region_name=region, endpoint_url=o.endpoint_url, config=config, **keys)
        return client, credentials, session._session.get_config_variable("ca_bundle")

    async def close(self) -> None:
        """Polls in flight are not waited for: their threads finish (and release what they got) on
        their own connections; idle connections are closed now."""
        self._io.shutdown(wait=False)
        self._polls.shutdown(wait=False)
        if self._wire is not None:
            self._wire.close()

    async def call(self, operation: str, /, **kwargs: Any) -> Any:
        """Run one boto3 client call in the I/O pool."""
        fn = getattr(self._client, operation)
        return await asyncio.get_running_loop().run_in_executor(self._io, functools.partial(fn, **kwargs))

    @property
    def wire(self) -> Wire:
        """The message path (blocking calls: run them in a pool)."""
        if self._wire is None:
            raise Closed("sqs: the broker is not connected")
        return self._wire

    def hook(self, operation: str, params: dict[str, Any]) -> None:
        """Hooks registered on :attr:`native` for ``before-parameter-build`` see sends, deletes and
        visibility changes too (~3 µs per call); not the long polls, which run all the time."""
        model = self._models.get(operation)
        if model is None:
            model = self._models[operation] = self._client.meta.service_model.operation_model(operation)
        self._client.meta.events.emit(f"before-parameter-build.sqs.{operation}", params=params, model=model,
                                      context={})

    async def send(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        """One message-path call (``SendMessageBatch``...) in the I/O pool."""
        wire = self.wire
        self.hook(operation, params)
        return await asyncio.get_running_loop().run_in_executor(self._io, wire.call, operation, params)

    async def poll(self, fn: Callable[[], T]) -> T:
        """Run a long poll in its own pool."""
        return await asyncio.get_running_loop().run_in_executor(self._polls, fn)

    # -- queues -------------------------------------------------------------------------------

    async def queue_url(self, destination: str, create: bool | None = None) -> str:
        """The queue's URL, looked up once. A missing queue is NotFound unless created."""
        name = self.queue_name(destination)
        url = self._urls.get(name)
        if url is not None:
            return url
        try:
            url = (await self.call("get_queue_url", QueueName=name))["QueueUrl"]
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) not in _NOT_FOUND:
                raise
            if not (self.options.auto_create if create is None else create):
                raise NotFound(
                    f"sqs: queue {name!r} does not exist. Call broker.ensure({destination!r}) first, "
                    "or connect with ?auto_create=true"
                ) from exc
            url = await self._create(name, self._base_attributes(name))
        self._urls[name] = url
        return url

    def _base_attributes(self, name: str) -> dict[str, str]:
        return {"FifoQueue": "true"} if name.endswith(".fifo") else {}

    async def _create(self, name: str, attributes: dict[str, str]) -> str:
        """CreateQueue, or update the attributes of an existing queue (ensure is idempotent)."""
        try:
            url: str = (await self.call("create_queue", QueueName=name, Attributes=attributes))["QueueUrl"]
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) not in _EXISTS:
                raise
            url = (await self.call("get_queue_url", QueueName=name))["QueueUrl"]
            mutable = {k: v for k, v in attributes.items() if k != "FifoQueue"}
            if mutable:
                await self.call("set_queue_attributes", QueueUrl=url, Attributes=mutable)
        self._urls[name] = url
        return url

    async def ensure(self, destination: str, spec: DestinationSpec) -> None:
        """Create (or update) the queue and its dead-letter queue; ``max_deliveries`` becomes the
        RedrivePolicy (SQS moves a message past it, for every consumer)."""
        name = self.queue_name(destination)
        if spec.fifo is False and name.endswith(".fifo"):
            raise ConfigError(f"sqs: ensure({destination!r}, fifo=False): a '.fifo' name is a FIFO queue")
        if spec.max_deliveries is not None and not spec.dead_letter:
            raise ConfigError("sqs: max_deliveries= needs dead_letter=True (SQS moves, it never drops)")
        attributes = self._base_attributes(name)
        if spec.lock_timeout is not None:
            attributes["VisibilityTimeout"] = str(math.ceil(spec.lock_timeout.total_seconds()))
        if spec.retention is not None:
            seconds = int(spec.retention.total_seconds())
            if seconds < MIN_RETENTION:
                raise CapabilityError(f"sqs cannot honour retention={seconds}s: SQS keeps messages 60 s to 14 days")
            attributes["MessageRetentionPeriod"] = str(seconds)
        if spec.dead_letter:
            dlq_name = self.queue_name(self.dead_letter_destination(destination))
            dlq_url = await self._create(dlq_name, {**attributes, "MessageRetentionPeriod": str(MAX_RETENTION)})
            if spec.max_deliveries is not None:
                arn = (await self.call("get_queue_attributes", QueueUrl=dlq_url,
                                       AttributeNames=["QueueArn"]))["Attributes"]["QueueArn"]
                attributes["RedrivePolicy"] = json.dumps(
                    {"deadLetterTargetArn": arn, "maxReceiveCount": str(spec.max_deliveries)})
        await self._create(name, attributes)

    async def delete(self, destination: str) -> None:
        for dest in (destination, self.dead_letter_destination(destination)):
            name = self.queue_name(dest)
            try:
                url = await self.queue_url(dest, create=False)
                await self.call("delete_queue", QueueUrl=url)
            except NotFound:
                pass
            except botocore.exceptions.ClientError as exc:
                if error_code(exc) not in _NOT_FOUND:
                    raise
            self._urls.pop(name, None)

    async def destinations(self) -> list[str]:
        names: list[str] = []
        token: str | None = None
        while True:
            page = await self.call("list_queues", MaxResults=1000, **({"NextToken": token} if token else {}))
            names += [url.rsplit("/", 1)[-1] for url in page.get("QueueUrls", [])]
            token = page.get("NextToken")
            if not token:
                return sorted(names)

    async def stats(self, destination: str, group: str | None) -> Stats:
        if group is not None:
            raise NotFound(f"sqs: queues have no groups; stats({destination!r}, group=None)")
        attrs = await self._depths(await self.queue_url(destination, create=False))
        try:
            dlq = await self._depths(await self.queue_url(self.dead_letter_destination(destination), create=False))
            dead = dlq["ApproximateNumberOfMessages"] + dlq["ApproximateNumberOfMessagesNotVisible"]
        except NotFound:
            dead = 0
        return Stats(
            destination=destination, depth=attrs["ApproximateNumberOfMessages"]
            + attrs["ApproximateNumberOfMessagesDelayed"],
            in_flight=attrs["ApproximateNumberOfMessagesNotVisible"], dead_letter_depth=dead,
            detail={"approximate": True, **attrs},
        )

    async def _depths(self, url: str) -> dict[str, int]:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                 "ApproximateNumberOfMessagesDelayed"]
        attrs = (await self.call("get_queue_attributes", QueueUrl=url, AttributeNames=names))["Attributes"]
        return {n: int(attrs.get(n, 0)) for n in names}

    # -- messages -----------------------------------------------------------------------------

    async def publish(self, destination: str, messages: Sequence[Message]) -> Sequence[BaseException | None]:
        url = await self.queue_url(destination)
        fifo = self.is_fifo(destination)
        opts = self.options
        if len(messages) == 1:
            return [await self._send_one(url, destination, messages[0], fifo)]
        results: list[BaseException | None] = [None] * len(messages)
        batches: list[list[tuple[int, dict[str, Any]]]] = []
        batch: list[tuple[int, dict[str, Any]]] = []
        batch_bytes = 0
        for i, message in enumerate(messages):
            try:
                entry, size = mapping.encode(message, fifo=fifo, default_group=opts.default_group_id,
                                             max_bytes=opts.max_message_bytes)
            except UnimqError as exc:
                results[i] = exc
                continue
            if batch and (len(batch) == MAX_BATCH or batch_bytes + size > opts.max_message_bytes):
                batches.append(batch)
                batch, batch_bytes = [], 0
            entry["Id"] = str(i)
            batch.append((i, entry))
            batch_bytes += size
        if batch:
            batches.append(batch)
        if fifo or len(batches) == 1:
            for b in batches:
                await self._send_batch(url, destination, b, results)
        else:
            await asyncio.gather(*(self._send_batch(url, destination, b, results) for b in batches))
        return results

    async def _send_one(self, url: str, destination: str, message: Message, fifo: bool) -> BaseException | None:
        """One message as SendMessage: less to serialise and parse than a batch of one."""
        opts = self.options
        try:
            entry, _ = mapping.encode(message, fifo=fifo, default_group=opts.default_group_id,
                                      max_bytes=opts.max_message_bytes)
        except UnimqError as exc:
            return exc
        try:
            await self.send("SendMessage", {"QueueUrl": url, **entry})
        except Exception as exc:
            return self.map_error(exc, f"publish to {destination}")
        return None

    async def _send_batch(
        self, url: str, destination: str, batch: list[tuple[int, dict[str, Any]]], results: list[BaseException | None]
    ) -> None:
        try:
            response = await self.send("SendMessageBatch", {"QueueUrl": url, "Entries": [e for _, e in batch]})
        except Exception as exc:
            error = self.map_error(exc, f"publish to {destination}")
            for i, _ in batch:
                results[i] = error
            return
        for failed in response.get("Failed", ()):
            results[int(failed["Id"])] = entry_error(failed, f"publish to {destination}")

    def subscription(self, destination: str, group: str | None, settings: ReceiveSettings) -> Subscription:
        from unimq_sqs.subscription import SqsSubscription

        return SqsSubscription(self, destination, settings)
