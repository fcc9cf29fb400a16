"""Object stores for the claim-check: a directory, S3 (or any S3-compatible server), Azure Blob.

A store keeps bodies under keys it chooses and names each object by a URI that holds no secret
(``file:///…``, ``s3://bucket/key``, ``azblob://account/container/key``), so a reference can be
resolved by any client with its own credentials. ``open()`` checks that the store answers, so a
wrong endpoint or credential fails at start-up (:class:`~unimq.errors.BrokerConnectionError`,
:class:`~unimq.errors.AuthenticationError`, :class:`~unimq.errors.NotFound`) rather than on the
first large message. Every secret given to a store (S3 secret key, connection string, account
key) is masked in every unimq error and scrubbed logger, and never appears in a ``repr``.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets as _random
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, unquote

from unimq.errors import (
    AuthenticationError,
    BrokerConnectionError,
    ConfigError,
    NotFound,
    PermissionDenied,
    Secrets,
    UnimqError,
    enter_scope,
    scrub_loggers,
)
from unimq.url import parse_url

#: Keys a store makes: an optional prefix, then 32 hex digits. A reference naming any other key is
#: refused, so a forged reference cannot read outside the store (``../``, another prefix).
_PREFIX = re.compile(r"(?:[A-Za-z0-9_-][A-Za-z0-9._-]*/)*")
_KEY = re.compile(_PREFIX.pattern + "[0-9a-f]{32}")


class ObjectMissing(NotFound):
    """The referenced object is not in the store (deleted, expired by a lifecycle rule, never written)."""


class Store(ABC):
    """Where claim-checked bodies live. Subclasses implement the four object calls."""

    scheme = ""

    def __init__(self, prefix: str = "") -> None:
        if prefix and not _PREFIX.fullmatch(prefix if prefix.endswith("/") else prefix + "/"):
            raise ConfigError(f"store prefix {prefix!r} must be path segments of letters, digits, '.', '_' or '-'")
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self._secrets = Secrets()
        enter_scope(self._secrets)

    def _secret(self, value: str | None) -> None:
        """Mask ``value`` in every unimq error and scrubbed log line while this store lives."""
        self._secrets.add(value)

    def new_key(self) -> str:
        return f"{self.prefix}{_random.token_hex(16)}"

    def check_key(self, key: object) -> str:
        if not isinstance(key, str) or not _KEY.fullmatch(key) or not key.startswith(self.prefix):
            raise ConfigError(f"claim-check key {str(key)[:80]!r} is not one this store ({self.location}) makes")
        return key

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the store is, as a URI without secrets (``s3://bucket/prefix``)."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """The object's URI (no secret): what a plain client fetches."""

    async def open(self) -> Store:
        """Check that the store answers with these credentials; raise a unimq error saying what to fix."""
        return self

    async def close(self) -> None:  # noqa: B027 - a store without connections has nothing to release
        """Release connections."""

    @abstractmethod
    async def put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    async def get(self, key: str) -> bytes:
        """The object's bytes; :class:`ObjectMissing` if it is not there."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Delete the object; a missing one is not an error."""

    async def __aenter__(self) -> Store:
        return await self.open()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.location}>"


class FileStore(Store):
    """A directory (local disk or a shared mount). Writes are atomic: temp file, then rename."""

    scheme = "file"

    def __init__(self, root: str | os.PathLike[str], prefix: str = "") -> None:
        super().__init__(prefix)
        self.root = Path(root).resolve()

    @property
    def location(self) -> str:
        return f"file://{quote(str(self.root / self.prefix))}"

    def uri(self, key: str) -> str:
        return f"file://{quote(str(self.root / key))}"

    async def open(self) -> FileStore:
        if not self.root.is_dir():
            raise ConfigError(f"file store: {self.root} is not a directory; create it or pass another root")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise PermissionDenied(f"file store: {self.root} is not writable by this process")
        return self

    def _path(self, key: str) -> Path:
        return self.root / self.check_key(key)

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._write, self._path(key), data)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise ObjectMissing(f"claim-check object {self.uri(key)} is missing") from None

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, True)


class S3Store(Store):
    """An S3 bucket through boto3 (calls run in threads). ``endpoint_url`` selects an S3-compatible
    server; without keys the standard AWS credential chain applies (environment, profile, role)."""

    scheme = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(prefix)
        if not isinstance(bucket, str) or not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            raise ConfigError(f"S3 bucket name {str(bucket)[:70]!r} is not valid "
                              "(3-63 lowercase letters, digits, '.', '-')")
        if (access_key_id is None) != (secret_access_key is None):
            raise ConfigError("S3 store: pass both access_key_id and secret_access_key, or neither (AWS chain)")
        self._secret(secret_access_key)
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        try:
            import boto3  # type: ignore[import-untyped]
            from botocore.config import Config  # type: ignore[import-untyped]
        except ImportError:
            raise ConfigError("the S3 store needs boto3: pip install 'unimq[s3]'") from None
        scrub_loggers("botocore")
        scrub_loggers("boto3")
        config = Config(connect_timeout=timeout, read_timeout=max(timeout, 30.0), retries={"max_attempts": 3},
                        request_checksum_calculation="when_required", response_checksum_validation="when_required")
        self._client: Any = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region, aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key, config=config)

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _error(self, exc: Exception, doing: str) -> UnimqError:
        from botocore.exceptions import (  # type: ignore[import-untyped]
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
        )

        where = f"S3 store {self.location}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")
        if isinstance(exc, NoCredentialsError):
            return AuthenticationError(f"{where}: no AWS credentials found; set them in the environment or "
                                       "pass access_key_id/secret_access_key")
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AuthorizationHeaderMalformed"):
                return AuthenticationError(f"{where}: the credentials were refused ({code}); check the access key")
            if code in ("AccessDenied", "403"):
                return PermissionDenied(f"{where}: access denied while trying to {doing}; grant s3:GetObject, "
                                        "s3:PutObject and s3:DeleteObject on the bucket")
            if code in ("NoSuchBucket", "404") and doing == "check the bucket":
                return NotFound(f"{where}: bucket {self.bucket!r} does not exist; create it or fix the name")
            return BrokerConnectionError(f"{where}: could not {doing}: {code}")
        if isinstance(exc, EndpointConnectionError | OSError):
            return BrokerConnectionError(f"{where}: cannot reach the endpoint to {doing}; check endpoint_url/region")
        return BrokerConnectionError(f"{where}: could not {doing}: {type(exc).__name__}")

    async def _call(self, doing: str, method: str, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(getattr(self._client, method), **kwargs)
        except Exception as exc:
            raise self._error(exc, doing) from None

    async def open(self) -> S3Store:
        from botocore.exceptions import ClientError

        try:
            await asyncio.to_thread(self._client.head_bucket, Bucket=self.bucket)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) != "403":
                raise self._error(exc, "check the bucket") from None
            # A HEAD answer has no body to tell bad credentials from a missing permission: ask
            # for an object that does not exist, whose error says which (NoSuchKey: all is well).
            try:
                await asyncio.to_thread(self._client.get_object, Bucket=self.bucket, Key=self.new_key())
            except ClientError as probe:
                if probe.response.get("Error", {}).get("Code") != "NoSuchKey":
                    raise self._error(probe, "check the bucket") from None
        except Exception as exc:
            raise self._error(exc, "check the bucket") from None
        return self

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)

    async def put(self, key: str, data: bytes) -> None:
        await self._call("upload", "put_object", Bucket=self.bucket, Key=self.check_key(key), Body=data)

    async def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            def read() -> bytes:
                body = self._client.get_object(Bucket=self.bucket, Key=self.check_key(key))["Body"]
                with body:
                    return bytes(body.read())
            return await asyncio.to_thread(read)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise ObjectMissing(f"claim-check object {self.uri(key)} is missing") from None
            raise self._error(exc, "download") from None
        except UnimqError:
            raise
        except Exception as exc:
            raise self._error(exc, "download") from None

    async def delete(self, key: str) -> None:
        await self._call("delete", "delete_object", Bucket=self.bucket, Key=self.check_key(key))


class AzureBlobStore(Store):
    """An Azure Blob container through ``azure-storage-blob``'s async client, from a connection
    string (Azurite's development one works) or an account URL with a credential.
    ``client_options`` go to the client (e.g. ``retry_total=``)."""

    scheme = "azblob"

    def __init__(
        self,
        container: str,
        prefix: str = "",
        *,
        connection_string: str | None = None,
        account_url: str | None = None,
        credential: Any = None,
        **client_options: Any,
    ) -> None:
        super().__init__(prefix)
        if not isinstance(container, str) or not re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{1,61})[a-z0-9]", container):
            raise ConfigError(f"Azure container name {str(container)[:70]!r} is not valid "
                              "(3-63 lowercase letters, digits and '-')")
        if (connection_string is None) == (account_url is None):
            raise ConfigError("Azure Blob store: pass one of connection_string= or account_url= (with credential=)")
        try:
            from azure.storage.blob.aio import BlobServiceClient
        except ImportError:
            raise ConfigError("the Azure Blob store needs azure-storage-blob: pip install 'unimq[azure]'") from None
        scrub_loggers("azure")
        self._secret(connection_string)
        if connection_string is not None:
            for part in connection_string.split(";"):
                name, _, value = part.partition("=")
                if name.strip().lower() in ("accountkey", "sharedaccesssignature"):
                    self._secret(value.strip())
            try:
                self._service = BlobServiceClient.from_connection_string(connection_string, **client_options)
            except Exception:
                raise ConfigError("Azure Blob store: the connection string does not parse; copy it again from "
                                  "the portal (AccountName=...;AccountKey=...)") from None
        else:
            if isinstance(credential, str):
                self._secret(credential)
            self._service = BlobServiceClient(str(account_url), credential=credential, **client_options)
        self.container = container
        self.account = self._service.account_name or "account"
        self._client = self._service.get_container_client(container)

    @property
    def location(self) -> str:
        return f"azblob://{self.account}/{self.container}/{self.prefix}"

    def uri(self, key: str) -> str:
        return f"azblob://{self.account}/{self.container}/{key}"

    def _error(self, exc: Exception, doing: str) -> UnimqError:
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

        where = f"Azure Blob store {self.location}"
        code = str(getattr(getattr(exc, "error_code", None), "value", None) or getattr(exc, "error_code", "") or "")
        # Azure says AuthenticationFailed; Azurite says AuthorizationFailure "failed to authenticate".
        if isinstance(exc, ClientAuthenticationError) or code == "AuthenticationFailed" or (
                code == "AuthorizationFailure" and "failed to authenticate" in str(getattr(exc, "reason", ""))):
            return AuthenticationError(f"{where}: the credentials were refused; check the account key or SAS")
        if isinstance(exc, HttpResponseError) and exc.status_code == 403:
            return PermissionDenied(f"{where}: access denied while trying to {doing}; grant the Storage Blob "
                                    "Data Contributor role or a SAS with read/write/delete")
        if isinstance(exc, HttpResponseError) and exc.status_code == 404 and doing == "check the container":
            return NotFound(f"{where}: container {self.container!r} does not exist; create it or fix the name")
        if isinstance(exc, ServiceRequestError | OSError):
            return BrokerConnectionError(f"{where}: cannot reach the endpoint to {doing}; check the account URL")
        return BrokerConnectionError(f"{where}: could not {doing}: {code or type(exc).__name__}")

    async def open(self) -> AzureBlobStore:
        try:
            await self._client.get_container_properties()
        except Exception as exc:
            raise self._error(exc, "check the container") from None
        return self

    async def close(self) -> None:
        await self._service.close()

    async def put(self, key: str, data: bytes) -> None:
        try:
            await self._client.upload_blob(self.check_key(key), data, overwrite=True)
        except UnimqError:
            raise
        except Exception as exc:
            raise self._error(exc, "upload") from None

    async def get(self, key: str) -> bytes:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            stream = await self._client.download_blob(self.check_key(key))
            return bytes(await stream.readall())
        except ResourceNotFoundError:
            raise ObjectMissing(f"claim-check object {self.uri(key)} is missing") from None
        except UnimqError:
            raise
        except Exception as exc:
            raise self._error(exc, "download") from None

    async def delete(self, key: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            await self._client.delete_blob(self.check_key(key))
        except ResourceNotFoundError:
            return
        except UnimqError:
            raise
        except Exception as exc:
            raise self._error(exc, "delete") from None


async def open_store(url: str, **options: Any) -> Store:
    """Open the store at ``url`` and check that it answers.

    ``file:///srv/payloads``, ``s3://[KEY_ID:SECRET@]bucket/prefix?endpoint_url=…&region=…``,
    ``azblob://container/prefix?connection_string=…`` (or ``$AZURE_STORAGE_CONNECTION_STRING``).
    ``options`` go to the store's constructor.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError("a store URL looks like file:///dir, s3://bucket/prefix or azblob://container/prefix")
    scheme = url.split("://", 1)[0].lower()
    store: Store
    if scheme == "file":
        store = FileStore(unquote(url.split("://", 1)[1]), **options)
        return await store.open()
    parsed = parse_url(url)
    query = dict(parsed.query)
    prefix = parsed.path.strip("/")
    if scheme == "s3":
        store = S3Store(parsed.host, prefix, endpoint_url=query.pop("endpoint_url", None),
                        region=query.pop("region", None), access_key_id=parsed.username,
                        secret_access_key=parsed.password, **options)
    elif scheme == "azblob":
        connection = query.pop("connection_string", None) or os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if connection is None:
            raise ConfigError("azblob:// store: pass ?connection_string=... or set AZURE_STORAGE_CONNECTION_STRING")
        store = AzureBlobStore(parsed.host, prefix, connection_string=connection, **options)
    else:
        raise ConfigError(f"unknown store scheme {scheme!r}: use file://, s3:// or azblob://")
    if query:
        await store.close()
        raise ConfigError(f"store URL: unknown option(s) {', '.join(sorted(query))}; "
                          "s3:// takes endpoint_url and region, azblob:// takes connection_string")
    try:
        return await store.open()
    except BaseException:
        await store.close()
        raise
