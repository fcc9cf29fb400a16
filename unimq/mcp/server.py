"""``unimq mcp URL``: queue tools for AI assistants, on any backend, over the official MCP SDK.

The tools are thin wrappers of :mod:`unimq.inspect`. A :class:`Policy` decides what they may do:
read-only unless ``allow_write`` (a read-only server does not list the write tools at all), an
allow-list of destination globs, and limits on body size, counts and waits. Every failure is a
tool error (``is_error``) with a one-line, scrubbed message; an argument a tool does not take is
an error, not silently dropped.
"""

from __future__ import annotations

import fnmatch
import inspect as pyinspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.types import CallToolResult, InputRequiredResult, ToolAnnotations
from pydantic import BaseModel, Field, ValidationError

from unimq import __version__, inspect
from unimq.broker import Broker, connect
from unimq.errors import scrub
from unimq.inspect import DestinationProperties, JsonBody, MessageView, SendResult, SettleAction, SettleResult
from unimq.mcp import ops_tools, payload_tools

T = TypeVar("T")

WRITE_TOOLS = ("send_message", "receive_messages", "settle_message", "request_reply")


class Policy(BaseModel):
    """What the tools may do. The defaults are safe: read-only, small bodies, short waits."""

    allow_write: bool = Field(False, description="enable send_message, receive_messages, settle_message, request_reply")
    allow_destinations: tuple[str, ...] = Field((), description="glob patterns; empty = every destination")
    max_body_bytes: int = Field(256 * 1024, ge=1, description="largest body sent, and shown per message")
    max_count: int = Field(50, ge=1, description="most messages per peek or receive")
    max_wait: float = Field(60.0, gt=0, description="longest wait of receive_messages and request_reply, seconds")
    create_destinations: bool = Field(False, description="let send_message and request_reply create missing ones")
    lock_seconds: float = Field(60.0, gt=0, description="how long a lock handle of receive_messages lives")
    max_held: int = Field(100, ge=1, description="most messages held for settle_message at once")
    allow_purge: bool = Field(False, description="enable the purge tool (its own switch: purged messages are gone)")


class ReplyResult(BaseModel):
    request: SendResult
    reply: MessageView


class Tools:
    """The tool implementations: policy checks, then :mod:`unimq.inspect`, errors as ToolError."""

    def __init__(self, broker: Broker, policy: Policy) -> None:
        self.broker = broker
        self.policy = policy
        self.receiver = inspect.Receiver(broker, policy.lock_seconds, policy.max_held)

    async def send_message(
        self,
        destination: Annotated[str, Field(description="destination (queue / topic / stream) name")],
        body: Annotated[JsonBody, Field(description="text is sent as UTF-8; an object or array as JSON")],
        key: Annotated[str | None, Field(description="partition / session / ordering key")] = None,
        headers: Annotated[dict[str, str] | None, Field(description="application headers (user properties)")] = None,
        correlation_id: str | None = None,
        reply_to: Annotated[str | None, Field(description="destination the receiver should reply to")] = None,
        ttl: Annotated[float | None, Field(gt=0, le=inspect.MAX_SECONDS, allow_inf_nan=False,
                                           description="seconds before the message expires")] = None,
        delay: Annotated[float | None, Field(gt=0, le=inspect.MAX_SECONDS, allow_inf_nan=False,
                                             description="seconds before the message is delivered")] = None,
        priority: Annotated[int | None, Field(ge=0)] = None,
        message_id: Annotated[str | None, Field(min_length=1, max_length=128, description=(
            "your id for the message: retrying a timed-out call with the same id lets consumers drop the "
            "duplicate"))] = None,
        content_type: Annotated[str | None, Field(description="MIME type; default text/plain or application/json "
                                                              "from the body")] = None,
        session_id: Annotated[str | None, Field(description=(
            "Service Bus session; on every backend it is the message key (same key, same order)"))] = None,
    ) -> SendResult:
        """Send one message to a destination. Returns its message_id."""
        self._writable("send_message")
        self._allowed(destination, reply_to)
        if session_id is not None and key is not None and session_id != key:
            raise ToolError("send_message: session_id is the key; give one of them, or the same value")
        data, derived = self._body(body)
        return await self._run(inspect.send(
            self.broker, destination, data, content_type=content_type or derived, key=key or session_id,
            headers=headers, correlation_id=correlation_id, reply_to=reply_to, ttl=ttl, delay=delay,
            priority=priority, message_id=message_id, create=self.policy.create_destinations,
        ))

    async def peek_messages(
        self,
        destination: str,
        count: Annotated[int | None, Field(ge=1, description="how many messages from the head; default 10")] = None,
    ) -> list[MessageView]:
        """Read waiting messages without consuming them (where the backend can peek)."""
        self._allowed(destination)
        count = min(10, self.policy.max_count) if count is None else count
        self._count(count)
        return await self._run(inspect.peek(self.broker, destination, count, max_bytes=self.policy.max_body_bytes))

    async def receive_messages(
        self,
        destination: str,
        group: Annotated[str | None, Field(description="consumer group / subscription; omit for the default")] = None,
        count: Annotated[int, Field(ge=1)] = 1,
        wait: Annotated[float, Field(ge=0, allow_inf_nan=False, description="seconds to wait for messages")] = 5.0,
        settle: Annotated[Literal["ack", "later"], Field(
            description="'ack' removes the messages now; 'later' returns lock handles for settle_message")] = "ack",
    ) -> list[MessageView]:
        """Receive (consume) messages. With settle='later', settle each handle before its lock expires."""
        self._writable("receive_messages")
        self._allowed(destination)
        self._count(count)
        self._wait(wait)
        return await self._run(self.receiver.receive(destination, group, count, wait, settle,
                                                     max_bytes=self.policy.max_body_bytes))

    async def settle_message(
        self,
        handle: Annotated[str, Field(description="a handle from receive_messages(settle='later')")],
        action: Annotated[SettleAction, Field(
            description="complete: done, remove it; abandon: redeliver it; dead_letter: move it to the DLQ")],
        reason: Annotated[str, Field(description="why, for dead_letter")] = "",
    ) -> SettleResult:
        """Settle a message held by receive_messages(settle='later')."""
        self._writable("settle_message")
        return await self._run(self.receiver.settle(handle, action, reason))

    async def request_reply(
        self,
        destination: str,
        body: Annotated[JsonBody, Field(description="text is sent as UTF-8; an object or array as JSON")],
        reply_to: Annotated[str | None, Field(description="a shared destination the responder replies to; omit "
                                                          "for a private reply path of this server's own")] = None,
        wait: Annotated[float, Field(gt=0, allow_inf_nan=False, description="seconds to wait for the reply")] = 30.0,
        correlation_id: Annotated[str | None, Field(description="generated when omitted")] = None,
        reply_group: Annotated[str | None, Field(description="group to read reply_to in; omit for the default")] = None,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        ttl: Annotated[float | None, Field(gt=0, le=inspect.MAX_SECONDS, allow_inf_nan=False)] = None,
    ) -> ReplyResult:
        """Send a request with correlation_id and reply_to, and wait for the correlated reply."""
        self._writable("request_reply")
        self._allowed(destination, *([reply_to] if reply_to else []))
        self._wait(wait)
        data, content_type = self._body(body)
        request, reply = await self._run(inspect.request_reply(
            self.broker, destination, data, reply_to=reply_to, wait=wait, reply_group=reply_group,
            content_type=content_type, correlation_id=correlation_id, key=key, headers=headers, ttl=ttl,
            max_held=self.policy.max_held, max_bytes=self.policy.max_body_bytes,
            create=self.policy.create_destinations,
        ))
        return ReplyResult(request=request, reply=reply)

    async def destination_properties(self, destination: str, group: str | None = None) -> DestinationProperties:
        """Depth, in-flight, dead-letter depth, lag and capabilities of a destination."""
        self._allowed(destination)
        return await self._run(inspect.destination_properties(self.broker, destination, group))

    async def list_destinations(self) -> list[str]:
        """The destinations on this broker (those the server's allow-list permits)."""
        names = await self._run(inspect.list_destinations(self.broker))
        return [n for n in names if self._permits(n)]

    async def close(self) -> None:
        await self.receiver.close()

    def _writable(self, tool: str) -> None:
        if not self.policy.allow_write:
            raise ToolError(f"{tool} is disabled: this MCP server is read-only (start it with --allow-write)")

    def _permits(self, destination: str) -> bool:
        patterns = self.policy.allow_destinations
        return not patterns or any(fnmatch.fnmatchcase(destination, p) for p in patterns)

    def _allowed(self, *destinations: str | None) -> None:
        for name in destinations:
            if name is not None and not self._permits(name):
                raise ToolError(f"destination {name!r} is not in this server's allow-list "
                                f"({', '.join(self.policy.allow_destinations)})")

    def _count(self, count: int) -> None:
        if count > self.policy.max_count:
            raise ToolError(f"count {count} is over this server's limit of {self.policy.max_count} (--max-count)")

    def _wait(self, wait: float) -> None:
        if wait > self.policy.max_wait:
            raise ToolError(f"wait {wait:g}s is over this server's limit of {self.policy.max_wait:g}s (--max-wait)")

    def _body(self, body: JsonBody) -> tuple[bytes, str]:
        data, content_type = inspect.encode_body(body)
        if len(data) > self.policy.max_body_bytes:
            raise ToolError(f"body is {len(data)} bytes; this server accepts at most "
                            f"{self.policy.max_body_bytes} (--max-body-bytes)")
        return data, content_type

    @staticmethod
    async def _run(operation: Awaitable[T]) -> T:
        """Await ``operation``; any failure becomes a one-line, credential-free tool error."""
        try:
            return await operation
        except ToolError:
            raise
        except Exception as exc:
            raise ToolError(_one_line(scrub(f"{type(exc).__name__}: {exc}"))) from exc


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _validation_line(tool: str, exc: ValidationError) -> str:
    """A tool's argument errors on one line: the argument names and what is wrong, not the values."""
    problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(arguments)'}: {err['msg']}"
                         for err in exc.errors()[:5])
    return _one_line(f"{tool}: invalid arguments: {problems}")


class _Server(MCPServer[Any]):
    """The SDK server, stricter: unknown arguments are refused and every tool error is one line."""

    def __init__(self, *args: Any, arguments: dict[str, frozenset[str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._arguments = arguments

    async def call_tool(self, name: str, arguments: dict[str, Any],
                        context: Context[Any, Any] | None = None) -> CallToolResult | InputRequiredResult:
        known = self._arguments.get(name)
        unknown = sorted(set(arguments) - known) if known is not None else []
        if unknown:
            raise ToolError(_one_line(f"{name}: unknown argument(s) {', '.join(repr(u[:40]) for u in unknown)}; "
                                      f"it takes {', '.join(sorted(known or ())) or 'none'}"))
        try:
            result = await super().call_tool(name, arguments, context)
        except UnexpectedToolError:
            raise
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError):
                raise ToolError(_validation_line(name, exc.__cause__)) from exc.__cause__
            raise ToolError(_one_line(str(exc))) from exc.__cause__
        return result


_READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=True)
_WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=True)
#: Tools that consume or settle: what they take off a queue does not come back by itself.
_DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=True)


def build_server(broker: Broker, policy: Policy | None = None) -> MCPServer[Any]:
    """An MCP server exposing the queue tools over ``broker``; it closes the held consumers on exit."""
    tools = Tools(broker, policy or Policy())

    @asynccontextmanager
    async def lifespan(_: MCPServer[Any]) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await tools.close()

    registered: list[tuple[Callable[..., Awaitable[Any]], ToolAnnotations]] = [
        (tools.list_destinations, _READ_ONLY), (tools.destination_properties, _READ_ONLY),
        (tools.peek_messages, _READ_ONLY),
    ]
    if tools.policy.allow_write:
        registered += [(tools.send_message, _WRITE), (tools.receive_messages, _DESTRUCTIVE),
                       (tools.settle_message, _DESTRUCTIVE), (tools.request_reply, _WRITE)]
    registered += ops_tools.tools(tools)
    registered += payload_tools.tools(tools)
    server = _Server(
        "unimq", version=__version__, log_level="WARNING", lifespan=lifespan,
        arguments={fn.__name__: frozenset(pyinspect.signature(fn).parameters) for fn, _ in registered},
        instructions=(f"Message queue tools on {broker.backend} ({broker.url}). "
                      "Use list_destinations and destination_properties first; capabilities say what the "
                      "backend supports. "
                      + ("Write tools are enabled." if tools.policy.allow_write else
                         "This server is read-only: it was started without --allow-write.")),
    )
    for fn, hints in registered:
        server.add_tool(fn, description=(fn.__doc__ or "").strip(), annotations=hints)
    return server


async def serve(url: str | None, policy: Policy, *, http: bool = False, host: str = "127.0.0.1",
                port: int = 8765) -> None:
    """Connect to ``url`` and serve the tools on stdio, or on streamable HTTP at ``http://host:port/mcp``."""
    async with connect(url) as broker:
        server = build_server(broker, policy)
        if http:
            await server.run_streamable_http_async(host=host, port=port)
        else:
            await server.run_stdio_async()
