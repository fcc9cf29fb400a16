"""``servicebus://`` URL options, how a URL becomes an SDK client, and the capability declaration."""

from __future__ import annotations

import ipaddress
import re
import warnings
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from unimq.capabilities import Capabilities, emulated, native, none
from unimq.errors import ConfigError, Secrets
from unimq.url import BrokerURL

#: Standard tier: 256 KiB per message (body + properties). Premium namespaces allow more.
STANDARD_MAX_MESSAGE = 262_144
#: Body bytes declared by default: the Standard limit less 1 KiB for properties and headers.
DEFAULT_MAX_BYTES = STANDARD_MAX_MESSAGE - 1024
#: Messages per native batch the core hands the driver; the driver also splits by size.
MAX_BATCH = 500
#: Longest lock Service Bus grants (lock duration is 5 s to 5 min per entity).
MAX_LOCK = 300
#: Duplicate detection window allowed by Azure: 20 s to 7 days.
MAX_DEDUP_WINDOW = 7 * 24 * 3600
#: nack(delay) holds the message's lock; beyond an hour that is the wrong tool.
MAX_NACK_DELAY = 3600
#: Shortest AutoDeleteOnIdle Azure accepts (5 minutes); the in-repo double takes any positive value.
MIN_AUTO_DELETE = 300.0
#: Session ids are at most 128 characters.
MAX_SESSION_ID = 128
#: The session of messages sent without a key to a session entity (read back as key=None).
DEFAULT_SESSION = "unimq-default"
#: Sessions one consumer holds at once unless max_sessions says otherwise.
DEFAULT_MAX_SESSIONS = 8
DEFAULT_SUFFIX = ".servicebus.windows.net"
EMULATOR_KEY_NAME = "RootManageSharedAccessKey"
EMULATOR_KEY = "SAS_KEY_VALUE"
#: Why an endpoint without management lacks what ensure() provides.
UNMANAGED = ("entities on this endpoint (the official emulator, or the double in static mode) come from "
             "the emulator's Config.json")
_CONN_KEY = re.compile(r"(?i)(?:SharedAccessKey|SharedAccessSignature)=([^;]+)")


class ServiceBusOptions(BaseModel):
    """Query parameters of ``servicebus://`` URLs."""

    model_config = ConfigDict(extra="forbid")

    emulator: bool = Field(False, description="the official emulator or the unimq double: plain AMQP, no TLS; "
                                              "entities managed through the double's $unimq-control node")
    connection_string: str | None = Field(None, description="a full connection string (URL-encoded in the query)",
                                          repr=False)
    credential: Literal["default"] | None = Field(None, description="'default': azure-identity "
                                                                    "DefaultAzureCredential (extra 'identity')")
    receive_mode: Literal["peek_lock", "receive_and_delete"] = "peek_lock"
    prefetch: int | None = Field(None, ge=0, description="SDK prefetch_count; default: the consumer's prefetch")
    lock_renewal: float = Field(0.0, ge=0, description="seconds to keep renewing the lock of each received "
                                                       "message automatically (AutoLockRenewer); 0 = off")
    transport: Literal["amqp", "amqp_ws"] = Field("amqp", description="amqp_ws: AMQP over WebSockets (port 443)")
    max_message_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1024, le=100 * 1024 * 1024,
                                   description="largest body accepted; raise it for Premium namespaces")
    sessions: bool = Field(False, description="ensure() makes session entities (requires_session): per-key "
                                              "order, key → session id. Existing session entities are "
                                              "detected without it")
    default_session_id: str = Field(DEFAULT_SESSION, max_length=MAX_SESSION_ID,
                                    description="session id of messages sent without a key to a session "
                                                "entity; empty: such a send is refused")
    max_sessions: int | None = Field(None, ge=1, le=256, description="sessions a consumer holds at once; "
                                                                     f"default: its prefetch, at most "
                                                                     f"{DEFAULT_MAX_SESSIONS}")
    session_idle: float = Field(1.0, gt=0, le=300, description="seconds without a message after which a "
                                                               "consumer releases a session for the next one")
    temporary_idle: float = Field(MIN_AUTO_DELETE, gt=0,
                                  description="seconds of idleness after which Service Bus deletes an entity "
                                              "made by ensure(temporary=True) (AutoDeleteOnIdle); at least "
                                              "300 on Azure, any positive value on the in-repo double")
    operation_timeout: float = Field(30.0, gt=0, le=600, description="seconds one SDK call may take (opening a "
                                                                     "link, a send, a settlement, a lock renewal, a "
                                                                     "management request) before it fails with "
                                                                     "Timeout naming the entity")


@dataclass(frozen=True)
class Endpoint:
    """How to reach the namespace: a connection string, or a namespace host plus a credential."""

    namespace: str
    connection_string: str | None = None
    credential: Any = None
    emulator: bool = False
    port: int | None = None
    #: The URL's secret scope, kept alive as long as this endpoint carries the key.
    secrets: Secrets | None = None

    def __repr__(self) -> str:
        return f"Endpoint(namespace={self.namespace!r}, emulator={self.emulator})"


def endpoint(url: BrokerURL, options: ServiceBusOptions) -> Endpoint:
    """Resolve the URL's auth mode; the SAS key joins the URL's secrets before anything can print it."""
    if options.connection_string:
        text = options.connection_string
        url.secrets.add(text)
        for key in _CONN_KEY.findall(text):
            url.secrets.add(key)
        fields = dict(part.split("=", 1) for part in text.split(";") if "=" in part)
        lowered = {k.lower(): v for k, v in fields.items()}
        host = lowered.get("endpoint", "").split("://", 1)[-1].strip("/")
        if not host:
            raise ConfigError("servicebus: option 'connection_string' has no Endpoint=sb://...")
        if not lowered.get("sharedaccesssignature"):
            for part in ("SharedAccessKeyName", "SharedAccessKey"):
                if not lowered.get(part.lower()):
                    raise ConfigError(f"servicebus: option 'connection_string' has no {part}=...; use the "
                                      "connection string of a shared access policy, as the portal shows it")
        emulator = options.emulator or lowered.get("usedevelopmentemulator") == "true"
        name, _, port_text = host.partition(":")
        if emulator:
            _warn_if_remote(name)
        if port_text and not (re.fullmatch(r"[0-9]{1,5}", port_text) and 0 < int(port_text) < 65536):
            raise ConfigError(f"servicebus: the Endpoint of option 'connection_string' has an invalid port "
                              f"(host {name!r}); expected 1-65535 in ASCII digits")
        return Endpoint(name, connection_string=text, emulator=emulator,
                        port=int(port_text) if port_text else None, secrets=url.secrets)
    host = url.host
    if options.emulator:
        name = url.username or EMULATOR_KEY_NAME
        key = url.password or EMULATOR_KEY
        host = host or "localhost"
        _warn_if_remote(host)
        port = url.port or 5672
        text = (f"Endpoint=sb://{host}:{port};SharedAccessKeyName={name};SharedAccessKey={key};"
                "UseDevelopmentEmulator=true")
        return Endpoint(host, connection_string=text, emulator=True, port=port, secrets=url.secrets)
    if not host:
        raise ConfigError("servicebus: the URL needs a namespace host (servicebus://KEYNAME:KEY@NAMESPACE), "
                          "?connection_string=..., or ?emulator=true")
    if "." not in host:
        host += DEFAULT_SUFFIX
    if options.credential == "default":
        try:
            from azure.identity.aio import DefaultAzureCredential  # type: ignore[import-untyped]
        except ImportError:
            raise ConfigError("servicebus: credential=default needs azure-identity: "
                              "pip install 'unimq-servicebus[identity]'") from None
        return Endpoint(host, credential=DefaultAzureCredential(), secrets=url.secrets)
    if url.username and url.password:
        from azure.core.credentials import AzureNamedKeyCredential

        return Endpoint(host, credential=AzureNamedKeyCredential(url.username, url.password), secrets=url.secrets)
    raise ConfigError("servicebus: no credentials: put the SAS policy and key in the URL "
                      "(servicebus://KEYNAME:KEY@NAMESPACE), or pass ?credential=default or ?connection_string=...")


def check_temporary_idle(options: ServiceBusOptions, ep: Endpoint) -> None:
    """Azure refuses an AutoDeleteOnIdle under 5 minutes: say so at connect rather than at the first ensure()."""
    if not ep.emulator and options.temporary_idle < MIN_AUTO_DELETE:
        raise ConfigError(f"servicebus: option 'temporary_idle' is {options.temporary_idle:g}s; Azure Service Bus "
                          f"deletes idle entities after at least {MIN_AUTO_DELETE:g}s: use temporary_idle="
                          f"{MIN_AUTO_DELETE:g} or more")


def _warn_if_remote(host: str) -> None:
    """Emulator mode talks plain AMQP: say so when the host is not on this machine or a private network."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        local = host.lower() == "localhost" or "." not in host  # a container or compose service name
    else:
        local = address.is_loopback or address.is_private or address.is_link_local
    if not local:
        warnings.warn(f"servicebus: emulator=true on {host!r}, which is not a loopback or private address: "
                      "emulator mode disables TLS (plain AMQP, key sent in clear); use it only for an "
                      "emulator on a trusted network", UserWarning, stacklevel=4)


def capabilities(options: ServiceBusOptions, sessions: bool, managed: bool = True) -> Capabilities:
    """The declaration, for session entities or not; receive_and_delete removes messages on receipt,
    so settlement features go. ``managed=False``: an endpoint where entities cannot be created or
    changed at run time (the official emulator, the double in static mode), so what needs ensure()
    goes."""
    locked = options.receive_mode == "peek_lock"
    gone = "receive_mode=receive_and_delete removes a message when it is received"
    unkeyed = (f"messages without a key share the session {options.default_session_id!r}"
               if options.default_session_id else "a message without a key is refused (default_session_id is empty)")
    return Capabilities(
        backend="servicebus",
        persistence=native(note="stored by Service Bus until settled "
                                "(the test double: snapshot to disk about every second)"),
        fanout=(native(note="ensure(dest, groups=...) makes dest a topic with one subscription per group")
                if managed else
                none(f"{UNMANAGED}: groups need subscriptions that ensure() cannot create; a subscription "
                     "declared there is read as the destination '<topic>/Subscriptions/<name>'")),
        competing_consumers=native(note="per session: a session is held by one consumer at a time"
                                   if sessions else ""),
        ordering="per_key" if sessions else "none",
        ordering_note=(
            f"sessions: key → session id; a consumer holds a session and gets its messages in order; {unkeyed}; "
            "a nack or a lock given up puts a message back at its place, but messages after it may already "
            "be in the consumer's hands"
            if sessions else
            "none without sessions (abandon and lock expiry reorder); per-key order: ?sessions=true or "
            "ensure(sessions=True), or any entity created with requires_session (detected)"
        ),
        delayed_delivery=native(note="scheduled enqueue time (x-opt-scheduled-enqueue-time)"),
        nack_delay=(
            emulated(limit=MAX_NACK_DELAY, note="the consumer keeps the lock (renewing it) for the delay, "
                                                "then abandons; if the consumer dies first the message "
                                                "returns when its lock expires (early, never lost)"
                                                + ("; later messages of its session are delivered meanwhile"
                                                   if sessions else ""))
            if locked else none(gone)
        ),
        dead_letter=(
            native(note="<dest>/$DeadLetterQueue; reason in DeadLetterReason/DeadLetterErrorDescription, "
                        "read back as x-unimq-dead-letter-reason")
            if locked else none(gone)
        ),
        priority=none("Service Bus has no priorities; use a destination per priority"),
        message_ttl=native(note="time-to-live in milliseconds; capped by the entity's default TTL"),
        deduplication=(native(limit=MAX_DEDUP_WINDOW,
                              note="duplicate detection by message_id on entities made by "
                                   "ensure(deduplication=window); window 20 s to 7 days")
                       if managed else
                       none(f"{UNMANAGED}: ensure(deduplication=) cannot turn it on; declare "
                            "RequiresDuplicateDetection on the entity there")),
        replay=none("a completed message is gone"),
        lock_extension=(
            (native(limit=MAX_LOCK, note="a session's messages share its lock: extend() renews the session "
                                         "lock; the consumer renews it while no message is held past the "
                                         "lock duration (ensure(lock_timeout=) or the consumer's lock_timeout)")
             if sessions else
             native(limit=MAX_LOCK, note="renew-lock: each extend() renews for the entity's lock duration "
                                         "(ensure(lock_timeout=), 5 s to 5 min)"))
            if locked else none(gone)
        ),
        peek=(none("the SDK peeks a session entity only one locked session at a time; peek its dead-letter "
                   "queue, or use stats()")
              if sessions else
              native(note="peek-message from the first sequence number; a topic is peeked per subscription "
                          "as 'topic/Subscriptions/name'")),
        batch_send=native(limit=MAX_BATCH, note="ServiceBusMessageBatch, split to fit the link's size limit"),
        headers=native(note="application properties (string values)"),
        transactions=none("the Python SDK has no transactions"),
        listing=(native(note="queues and topics (the administration client, or the double's control node)")
                 if managed else none(f"{UNMANAGED}: that file lists them")),
        sessions=(native(note="requires_session, set when the entity is created (not on an existing one)")
                  if managed else none(f"{UNMANAGED}: set RequiresSession there; ?sessions=true reads them")),
        retention=(native(note="the entity's default message time-to-live") if managed
                   else none(f"{UNMANAGED}: set DefaultMessageTimeToLive there")),
        lock_timeout=(native(limit=MAX_LOCK, note="the entity's lock duration, 5 s to 5 min") if managed
                      else none(f"{UNMANAGED}: set LockDuration there")),
        max_deliveries=(native(note="the entity's MaxDeliveryCount; then Service Bus dead-letters the message")
                        if managed else none(f"{UNMANAGED}: set MaxDeliveryCount there")),
        dead_letter_expired=(native(note="the entity's DeadLetteringOnMessageExpiration: Service Bus moves an "
                                         "expired message to the dead-letter subqueue (TTLExpiredException)")
                             if managed else none(f"{UNMANAGED}: set DeadLetteringOnMessageExpiration there")),
        temporary=(native(note=f"ensure(temporary=True) sets AutoDeleteOnIdle to temporary_idle "
                                f"({options.temporary_idle:g} s; at least 5 min on Azure): Service Bus deletes the "
                                "queue or topic once it has been idle that long (no send, receive, open receiver "
                                "or management operation), also after a crash; broker.temporary() deletes it "
                                "on exit as well")
                   if managed else
                   none(f"{UNMANAGED}: the driver cannot make a destination at run time, so there is none to "
                        "make temporary; declare AutoDeleteOnIdle on an entity there")),
        new_group_backlog=none("a subscription receives what is sent after it exists: create groups first "
                               "with ensure(dest, groups=[...])"),
        routing=(native(note="native on topic subscriptions: a consumer of a group with subject= and/or headers= "
                             "leaves its subscription one SQL rule (LIKE on x-unimq-subject, = per header), so "
                             "Service Bus copies in only what matches; one without a filter restores $Default. "
                             "Emulated on queues (group=None), in static mode and with a key without the Manage "
                             "claim: the core filters on receipt (it also does on subscriptions: LIKE is wider "
                             "than the pattern)")
                 if managed else
                 emulated(note=f"emulated (static mode): {UNMANAGED}, so no subscription rule is set; the core "
                               "filters on receipt, a group still receives what it does not want and acks it")),
        max_message_bytes=options.max_message_bytes,
    )
