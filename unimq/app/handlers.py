"""How a decorated handler is called: which parameter gets the payload, the Delivery, the Message.

The analysis runs once, at decoration time, so a handler that cannot be called with what its
subscriber delivers is a :class:`~unimq.errors.ConfigError` at import, not a dead-lettered message
at run time.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from unimq.errors import ConfigError
from unimq.message import Delivery, Message

Source = Literal["payload", "delivery", "message"]
#: How the payload parameter is fed: the schema's model, the body as bytes, as text, or parsed JSON.
PayloadKind = Literal["model", "bytes", "text", "json"]


@dataclass(frozen=True)
class HandlerSpec:
    """The result of analysing a handler: its argument sources, payload kind and schema."""

    name: str
    sources: tuple[Source, ...]
    payload_kind: PayloadKind
    schema: type[BaseModel] | None
    is_async: bool


def handler_name(func: Callable[..., Any]) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)


def hints(func: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(func)
    except Exception:  # an unresolvable forward reference: fall back to the raw annotations
        return dict(getattr(func, "__annotations__", {}))


def _is_model(annotation: Any) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, BaseModel)


def analyse(func: Callable[..., Any], schema: type[BaseModel] | None, where: str) -> HandlerSpec:
    """Map ``func``'s parameters to what a delivery provides; check them against ``schema``.

    A parameter annotated ``Delivery`` (or unannotated and named ``delivery``) gets the Delivery,
    one annotated ``Message`` gets the Message; the first other parameter gets the payload: the
    schema's model (given by ``schema=`` or inferred from a pydantic annotation), ``bytes``,
    ``str``, or ``dict``/``list`` for plain JSON.
    """
    name = handler_name(func)
    if not callable(func):
        raise ConfigError(f"{where}: the handler must be a function, got {type(func).__name__}")
    annotations = hints(func)
    sources: list[Source] = []
    payload_kind: PayloadKind = "model" if schema is not None else "bytes"
    for param in inspect.signature(func).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = annotations.get(param.name, inspect.Parameter.empty)
        if annotation is Delivery or (annotation is inspect.Parameter.empty and param.name == "delivery"):
            sources.append("delivery")
        elif annotation is Message:
            sources.append("message")
        elif "payload" not in sources:
            payload_kind, schema = _payload(annotation, schema, f"{where}: handler {name}({param.name})")
            sources.append("payload")
        elif param.default is not inspect.Parameter.empty:
            break
        else:
            raise ConfigError(f"{where}: handler {name} has a parameter {param.name!r} unimq cannot fill; "
                              "a handler takes the payload, and optionally a Delivery or a Message")
        if param.kind is param.KEYWORD_ONLY:
            raise ConfigError(f"{where}: handler {name}: make {param.name!r} positional (drop the '*')")
    return HandlerSpec(name, tuple(sources), payload_kind, schema, inspect.iscoroutinefunction(func))


def _payload(
    annotation: Any, schema: type[BaseModel] | None, where: str
) -> tuple[PayloadKind, type[BaseModel] | None]:
    empty = annotation is inspect.Parameter.empty or annotation is Any
    if schema is not None:
        if empty or (inspect.isclass(annotation) and issubclass(schema, annotation)):
            return "model", schema
        shown = getattr(annotation, "__name__", repr(annotation))
        raise ConfigError(f"{where} is typed {shown} but the subscriber declares schema={schema.__name__}; "
                          f"annotate it {schema.__name__}, or change schema=")
    if _is_model(annotation):
        return "model", annotation
    if empty or annotation is bytes:
        return "bytes", None
    if annotation is str:
        return "text", None
    if annotation in (dict, list) or typing.get_origin(annotation) in (dict, list):
        return "json", None
    shown = getattr(annotation, "__name__", repr(annotation))
    raise ConfigError(f"{where} is typed {shown}; a payload is a pydantic model, bytes, str, dict or list")
