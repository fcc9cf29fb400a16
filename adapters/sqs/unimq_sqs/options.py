"""``sqs://`` URL options and the capability declarations of standard and FIFO queues."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from unimq.capabilities import Capabilities, emulated, native, none

#: SQS's hard limits.
MAX_DELAY = 900
MAX_VISIBILITY = 43200
DEDUP_WINDOW = 300
MAX_BATCH = 10
MIN_RETENTION = 60
MAX_RETENTION = 1_209_600
MAX_RECEIVE_COUNT = 1000
DEFAULT_MAX_BYTES = 262_144


class SqsOptions(BaseModel):
    """Query parameters of ``sqs://`` URLs. Credentials come from the standard AWS chain when absent."""

    model_config = ConfigDict(extra="forbid")

    region: str | None = Field(None, description="AWS region; default from the AWS config chain")
    endpoint_url: str | None = Field(None, description="e.g. http://127.0.0.1:9324 for ElasticMQ")
    profile: str | None = Field(None, description="a profile of ~/.aws/config")
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = Field(None, repr=False)
    aws_session_token: str | None = Field(None, repr=False)
    fifo: bool = Field(False, description="every destination is a FIFO queue ('.fifo' appended to names)")
    auto_create: bool = Field(False, description="create a missing queue on first publish/consume, not NotFound")
    wait_time: int = Field(2, ge=0, le=20, description="long-poll seconds per ReceiveMessage (also bounds close)")
    max_receives: int = Field(8, ge=1, le=64, description="ReceiveMessage calls in flight per consumer")
    max_threads: int = Field(128, ge=2, le=512, description="threads for blocking boto3 calls (two pools)")
    default_group_id: str = Field("unimq-default", min_length=1, max_length=128,
                                  description="FIFO MessageGroupId for messages without a key")
    max_message_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1024, le=1_048_576,
                                   description="body + attributes; AWS allows up to 1 MiB since 2025")
    client_retries: int = Field(1, ge=1, le=10, description="botocore attempts per call (unimq retries sends)")


def capabilities(options: SqsOptions, fifo: bool) -> Capabilities:
    """The declaration of one queue kind: standard queues and FIFO queues differ."""
    return Capabilities(
        backend="sqs-fifo" if fifo else "sqs",
        persistence=native(note="AWS stores messages redundantly across AZs (ElasticMQ: in memory)"),
        fanout=none("no SNS: a queue's consumers compete; pass group=None (one queue per subscriber)"),
        competing_consumers=native(),
        ordering="per_key" if fifo else "none",
        ordering_note=(
            f"key → MessageGroupId; messages without a key share the group {options.default_group_id!r}"
            if fifo else "standard queues are best-effort ordered; use a .fifo queue for per-key order"
        ),
        delayed_delivery=(
            none("FIFO queues only have a queue-wide DelaySeconds") if fifo
            else native(limit=MAX_DELAY, note="DelaySeconds per message, whole seconds")
        ),
        nack_delay=native(limit=MAX_VISIBILITY, note="ChangeMessageVisibility; 12 h max from first receive"),
        dead_letter=native(note=(
            f"'{'<name>-dlq.fifo' if fifo else '<name>-dlq'}', created by ensure(); max_deliveries: the "
            "RedrivePolicy moves the message; reject(): SQS has no reject call, the core sends a copy then deletes"
        )),
        priority=none("no priorities; use a queue per priority"),
        message_ttl=emulated(note=(
            "expiry in the 'unimq' attribute; the core deletes an expired message on receipt; "
            "queue-wide MessageRetentionPeriod (max 14 days) still applies"
        )),
        deduplication=(
            native(limit=DEDUP_WINDOW, note="message_id → MessageDeduplicationId; fixed 5-minute window")
            if fifo else none("standard queues are at-least-once; use a .fifo queue")
        ),
        replay=none("a deleted message is gone"),
        lock_extension=native(limit=MAX_VISIBILITY, note="ChangeMessageVisibility (visibility timeout)"),
        peek=none("a receive changes visibility and the receive count, so SQS has no peek"),
        batch_send=native(limit=MAX_BATCH, note="SendMessageBatch; also split to fit the size limit"),
        headers=native(limit=MAX_BATCH - 1, note="String MessageAttributes; 1 of SQS's 10 carries unimq's properties"),
        transactions=none(),
        listing=native(note="ListQueues"),
        partitions=none("SQS scales a queue by itself"),
        replication=none("AWS stores every queue across availability zones; not configurable"),
        fifo=(native(note="a '.fifo' queue: per-key order and de-duplication") if fifo
              else none("name the queue '<name>.fifo', or connect with ?fifo=true")),
        sessions=(native(note="message groups, always on in a FIFO queue: key → MessageGroupId, one group's "
                              "messages in order, one in flight at a time") if fifo
                  else none("message groups need a FIFO queue: a '.fifo' name or ?fifo=true")),
        retention=native(limit=MAX_RETENTION, note="MessageRetentionPeriod, 60 s to 14 days"),
        lock_timeout=native(limit=MAX_VISIBILITY, note="the queue's VisibilityTimeout, whole seconds; a "
                                                       "consumer's lock_timeout= overrides it per receive"),
        max_deliveries=native(limit=MAX_RECEIVE_COUNT, note="RedrivePolicy maxReceiveCount: SQS moves the message "
                                                            "to the dead-letter queue itself (needs dead_letter=True)"),
        new_group_backlog=native(note="no groups: a consumer of a queue reads what it holds, whenever it was sent"),
        dead_letter_expired=none("a queue has no attribute to record it; expired messages are deleted on receipt"),
        max_message_bytes=max_body(options.max_message_bytes),
    )


#: Wire bytes kept for the ``unimq`` attribute when computing the largest body that always fits.
ATTRIBUTE_RESERVE = 1024


def max_body(wire_limit: int) -> int:
    """The largest body that always fits: a binary body travels base64-encoded (4/3 larger).

    Text (UTF-8) bodies are sent as they are, but the declared limit must hold for any bytes.
    """
    return (wire_limit - ATTRIBUTE_RESERVE) * 3 // 4
