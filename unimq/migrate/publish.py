"""Producers for a migration: dual-publish to old and new, and a canary split between them.

Both take two ordinary :class:`unimq.Producer` objects (from any two backends) and send the same
:class:`Message` — same ``message_id``, key and headers — so consumers on either side, and the
merged consumer, see one logical stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from unimq.broker import Producer
from unimq.capabilities import Capabilities, check_message, intersect
from unimq.errors import PublishError, UnimqError
from unimq.message import Message
from unimq.migrate.journal import Journal

log = logging.getLogger("unimq.migrate")


class Policy(StrEnum):
    BOTH = "both"  # the send fails unless both sides accept
    PRIMARY = "primary"  # the old side decides; new-side failures are journaled and replayed
    SHADOW = "shadow"  # the new side is best-effort; failures are counted


@dataclass
class DualStats:
    sent: int = 0
    new_failures: int = 0
    journaled: int = 0
    replayed: int = 0


class DualProducer:
    """Publishes every message to ``old`` and ``new`` concurrently (latency of the slower side).

    With ``policy="primary"`` a ``journal`` directory is required: a message the new side refuses
    is written there before ``send`` returns, and :meth:`replay` (or the background replayer
    started by ``async with``) retries it until it lands — across process restarts too.
    """

    def __init__(
        self,
        old: Producer,
        new: Producer,
        policy: Policy | str = Policy.BOTH,
        journal: Journal | str | os.PathLike[str] | None = None,
        replay_every: float = 1.0,
    ) -> None:
        self.old = old
        self.new = new
        self.policy = Policy(policy)
        if self.policy is Policy.PRIMARY and journal is None:
            raise ValueError("policy 'primary' needs journal=<directory> so new-side failures survive a restart")
        self.journal = journal if journal is None or isinstance(journal, Journal) else Journal(journal)
        self.capabilities: Capabilities = intersect(old.capabilities, new.capabilities)
        self.stats = DualStats()
        self._replay_every = replay_every
        self._replayer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> DualProducer:
        if self.journal is not None:
            self._replayer = asyncio.create_task(self._replay_forever())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._replayer is not None:
            self._replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replayer
        if self.journal is not None:
            await self.replay()

    async def send(self, body: Any, **options: Any) -> Message:
        message = self.old.message(body, **options)
        check_message(self.capabilities, message)
        await self._dual([message])
        return message

    async def send_many(self, items: Iterable[Any]) -> list[Message]:
        messages = [self.old.message(item) for item in items]
        for message in messages:
            check_message(self.capabilities, message)
        await self._dual(messages)
        return messages

    async def _dual(self, messages: list[Message]) -> None:
        # Each side gets its own header dicts: telemetry and drivers may add headers in place.
        copies = [replace(m, headers=dict(m.headers)) for m in messages]
        old_result, new_result = await asyncio.gather(
            _send(self.old, messages), _send(self.new, copies), return_exceptions=True
        )
        if isinstance(old_result, BaseException) and not isinstance(old_result, UnimqError):
            raise old_result
        if isinstance(new_result, BaseException) and not isinstance(new_result, UnimqError):
            raise new_result
        self.stats.sent += len(messages)
        failed_new = _failed_ids(messages, new_result)
        self.stats.new_failures += len(failed_new)
        if self.policy is Policy.BOTH:
            if isinstance(old_result, UnimqError):
                raise old_result
            if isinstance(new_result, UnimqError):
                raise PublishError(f"dual publish: the new backend refused {len(failed_new)} messages: {new_result}",
                                   messages=messages, results=_results(messages, new_result)) from new_result
            return
        if isinstance(old_result, UnimqError):
            raise old_result
        if self.policy is Policy.PRIMARY and failed_new:
            assert self.journal is not None
            for message in copies:
                if message.message_id in failed_new:
                    self.journal.append(self.new.destination, message)
            self.stats.journaled += len(failed_new)
            log.warning("dual publish: %d messages journaled for the new backend: %s", len(failed_new), new_result)

    async def replay(self) -> int:
        """Send journaled messages to the new backend; return how many landed."""
        assert self.journal is not None
        landed = 0
        for destination, message in self.journal.pending():
            if destination != self.new.destination:
                continue
            try:
                await self.new.send(message)
            except UnimqError as exc:
                log.info("journal replay: %s not yet accepted: %s", message.message_id, exc)
                break
            self.journal.remove(message.message_id)
            landed += 1
        self.stats.replayed += landed
        return landed

    async def _replay_forever(self) -> None:
        while True:
            await asyncio.sleep(self._replay_every)
            try:
                await self.replay()
            except Exception:  # the replayer must outlive any single failure
                log.exception("journal replay failed; will retry")


async def _send(producer: Producer, messages: list[Message]) -> None:
    if len(messages) == 1:
        await producer.send(messages[0])
    else:
        await producer.send_many(messages)


def _failed_ids(messages: list[Message], result: BaseException | None) -> set[str]:
    if result is None:
        return set()
    if isinstance(result, PublishError) and result.results and len(result.results) == len(messages):
        return {m.message_id for m, r in zip(messages, result.results, strict=True) if r is not None}
    return {m.message_id for m in messages}


def _results(messages: list[Message], result: UnimqError) -> list[BaseException | None]:
    failed = _failed_ids(messages, result)
    return [result if m.message_id in failed else None for m in messages]


def stable_share(key: str) -> float:
    """A key's fixed position in [0, 1): the same key always routes the same way."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class CanaryProducer:
    """Routes a stable share of messages — by key (message_id when there is none) — to ``new``.

    ``share`` can change at run time (``set_share``); a key moves to the new side once and stays
    there while the share grows, and ``set_share(0)`` rolls everything back to the old side.
    """

    def __init__(self, old: Producer, new: Producer, share: float = 0.0) -> None:
        self.old = old
        self.new = new
        self.capabilities = intersect(old.capabilities, new.capabilities)
        self.set_share(share)

    def set_share(self, share: float) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError("share must be within [0, 1]")
        self.share = share

    def route(self, message: Message) -> Producer:
        return self.new if stable_share(message.key or message.message_id) < self.share else self.old

    async def send(self, body: Any, **options: Any) -> Message:
        message = self.old.message(body, **options)
        check_message(self.capabilities, message)
        return await self.route(message).send(message)

    async def send_many(self, items: Iterable[Any]) -> list[Message]:
        messages = [self.old.message(item) for item in items]
        old = [m for m in messages if self.route(m) is self.old]
        new = [m for m in messages if self.route(m) is self.new]
        await asyncio.gather(*(p.send_many(batch) for p, batch in ((self.old, old), (self.new, new)) if batch))
        return messages


