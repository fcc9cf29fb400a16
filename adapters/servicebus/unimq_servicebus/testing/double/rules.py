"""Subscription rules: which messages a topic copies into a subscription.

A subscription starts with the rule ``$Default`` (the TrueFilter: everything). A message sent to
the topic is copied into a subscription when any of its rules matches, once however many match
(rule actions are not modelled). The filter is evaluated when the topic fans the message out: at
send, or for a scheduled message when it becomes due; changing the rules later does not move
messages already in the subscription.

SQL filters: only the subset the driver writes (``mapping.rule_sql``) is implemented, strictly:

* ``<property> = '<string>'`` and ``<property> LIKE '<pattern>' [ESCAPE '<c>']`` (``%`` any run of
  characters, ``_`` one; the escape character makes the next one literal);
* predicates joined by ``AND`` (keywords in any case);
* properties as delimited identifiers ``[name]`` (``]]`` for a ``]``): application properties
  (user scope), names compared case-insensitively as on Service Bus;
* string constants in single quotes (``''`` for a quote).

A property that is missing, or not a string, makes its predicate false (Service Bus: unknown,
which AND turns into no match). Anything else (OR, NOT, IN, numbers, ``sys.`` properties, ...) is
refused (``ValueError`` naming what was found; an argument error to the client) rather than
evaluated wrongly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

DEFAULT_RULE = "$Default"
#: Service Bus's cap on a SQL filter's length.
MAX_SQL = 1024

Predicate = Callable[[Mapping[str, Any]], bool]
_EXPECTED = {"identifier": "a [property]", "string": "a 'string'"}

_TOKEN = re.compile(r"\s*(?:(?P<identifier>\[(?:[^\]]|\]\])*\])|(?P<string>'(?:[^']|'')*')|(?P<equals>=)"
                    r"|(?P<word>[A-Za-z]+)|(?P<other>\S))")


class SqlFilter:
    """A parsed SQL filter: ``matches(application_properties)``. ``sql=None`` is the TrueFilter."""

    def __init__(self, sql: str | None) -> None:
        self.sql = sql
        self._predicates: list[Predicate] = [] if sql is None else _parse(sql)

    def matches(self, properties: Mapping[Any, Any] | None) -> bool:
        if not self._predicates:
            return True
        folded = {str(k).lower(): v for k, v in (properties or {}).items()}
        return all(predicate(folded) for predicate in self._predicates)


def _refuse(sql: str, what: str) -> ValueError:
    return ValueError(f"SQL filter {sql!r}: {what}; the double implements only [property] = 'string' and "
                      "[property] LIKE 'pattern' [ESCAPE 'c'] joined by AND")


def _tokens(sql: str) -> list[tuple[str, str]]:
    found = []
    position = 0
    while position < len(sql.rstrip()):
        match = _TOKEN.match(sql, position)
        assert match is not None and match.lastgroup is not None  # '\S' takes any character left
        kind = match.lastgroup
        found.append((kind, match.group(kind)))
        position = match.end()
    return found


def _parse(sql: str) -> list[Predicate]:
    if len(sql) > MAX_SQL:
        raise _refuse(sql[:40] + "...", f"longer than {MAX_SQL} characters")
    tokens = _tokens(sql)
    predicates: list[Predicate] = []
    index = 0

    def take(kind: str, word: str | None = None) -> str:
        nonlocal index
        expected = word or _EXPECTED[kind]
        if index >= len(tokens):
            raise _refuse(sql, f"it ends where {expected} was expected")
        found_kind, text = tokens[index]
        if found_kind != kind or (word is not None and text.upper() != word):
            raise _refuse(sql, f"found {text!r} where {expected} was expected")
        index += 1
        return text

    while True:
        name = take("identifier")[1:-1].replace("]]", "]").lower()
        if index < len(tokens) and tokens[index][0] == "equals":
            index += 1
            predicates.append(_equals(name, _string(take("string"))))
        else:
            take("word", "LIKE")
            pattern = _string(take("string"))
            escape = None
            if index < len(tokens) and tokens[index][0] == "word" and tokens[index][1].upper() == "ESCAPE":
                index += 1
                escape = _string(take("string"))
                if len(escape) != 1:
                    raise _refuse(sql, f"the ESCAPE character must be one character, not {escape!r}")
            predicates.append(_like(name, _like_regex(sql, pattern, escape)))
        if index == len(tokens):
            return predicates
        take("word", "AND")


def _string(token: str) -> str:
    return token[1:-1].replace("''", "'")


def _like_regex(sql: str, pattern: str, escape: str | None) -> re.Pattern[str]:
    out = []
    characters = iter(pattern)
    for character in characters:
        if character == escape:
            literal = next(characters, None)
            if literal is None:
                raise _refuse(sql, "the LIKE pattern ends with its escape character")
            out.append(re.escape(literal))
        elif character == "%":
            out.append(".*")
        elif character == "_":
            out.append(".")
        else:
            out.append(re.escape(character))
    return re.compile("".join(out), re.DOTALL)


def _equals(name: str, value: str) -> Predicate:
    return lambda properties: properties.get(name) == value


def _like(name: str, regex: re.Pattern[str]) -> Predicate:
    def predicate(properties: Mapping[str, Any]) -> bool:
        value = properties.get(name)
        return isinstance(value, str) and regex.fullmatch(value) is not None

    return predicate
