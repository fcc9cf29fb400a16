"""Broker URLs: parsing, validation of query options, and redaction.

``kafka://h1:9092,h2:9092?client_id=x`` → :class:`BrokerURL`; the query (plus keyword options
given to ``connect``) validates into the adapter's pydantic ``Options`` model, and any error
becomes a :class:`ConfigError` naming the parameter and the valid ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from pydantic import BaseModel, ValidationError

from unimq.errors import REDACTED, ConfigError, register_secret, scrub

OptionsT = TypeVar("OptionsT", bound=BaseModel)


@dataclass(frozen=True)
class BrokerURL:
    """A parsed broker URL. The password never appears in ``repr`` or ``str``."""

    scheme: str
    hosts: tuple[tuple[str, int | None], ...] = ()
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    path: str = ""
    query: dict[str, str] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return self.hosts[0][0] if self.hosts else ""

    @property
    def port(self) -> int | None:
        return self.hosts[0][1] if self.hosts else None

    def netloc(self, with_password: bool = False) -> str:
        hosts = ",".join(
            (f"[{h}]" if ":" in h else h) + (f":{p}" if p is not None else "") for h, p in self.hosts
        )
        if self.username is None and self.password is None:
            return hosts
        user = quote(self.username or "", safe="")
        if self.password is not None:
            user += ":" + (quote(self.password, safe="") if with_password else REDACTED)
        return f"{user}@{hosts}"

    def redacted(self) -> str:
        """The URL with its password and secret query values masked: safe to print."""
        text = f"{self.scheme}://{self.netloc()}{self.path}"
        if self.query:
            text += "?" + "&".join(f"{k}={v}" for k, v in self.query.items())
        return scrub(text)

    def __str__(self) -> str:
        return self.redacted()

    def __repr__(self) -> str:
        return f"BrokerURL({self.redacted()!r})"


def parse_url(url: str) -> BrokerURL:
    """Parse a broker URL; never raises anything but :class:`ConfigError`."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"not a broker URL: {_show(url)!r}; expected SCHEME://..., e.g. memory:// or kafka://host:9092")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"cannot parse broker URL {_show(url)!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if not scheme:
        raise ConfigError(f"broker URL {_show(url)!r} has no scheme")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if userinfo or "@" in parts.netloc:
        user, sep, pw = userinfo.partition(":")
        username = unquote(user)
        password = unquote(pw) if sep else None
        register_secret(password)
    hosts = tuple(_parse_host(h, url) for h in hostlist.split(",") if h) if hostlist else ()
    query: dict[str, str] = {}
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False)
    except ValueError as exc:
        raise ConfigError(f"cannot parse the query of {_show(url)!r}: {exc}") from None
    for key, value in pairs:
        query[key] = value
        if any(word in key.lower() for word in ("password", "secret", "token", "key", "connection_string", "creds")):
            register_secret(value)
    return BrokerURL(scheme, hosts, username, password, unquote(parts.path), query)


def _parse_host(text: str, url: str) -> tuple[str, int | None]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.partition(":")
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"invalid port {port_text!r} in broker URL {_show(url)!r}; expected 1-65535")
    return host, int(port_text)


def _show(url: object) -> str:
    """A URL safe to put in an error: userinfo masked before parsing could register it."""
    text = str(url)
    if "@" in text and "://" in text:
        scheme, _, rest = text.partition("://")
        userinfo, _, tail = rest.rpartition("@")
        if ":" in userinfo:
            text = f"{scheme}://{userinfo.split(':', 1)[0]}:{REDACTED}@{tail}"
    return scrub(text[:200])


def parse_options(model: type[OptionsT], backend: str, values: dict[str, object]) -> OptionsT:
    """Validate query parameters and keyword options into ``model``, or raise a ConfigError naming them."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        valid = ", ".join(sorted(model.model_fields)) or "(none)"
        problems = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "?"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown option '{name}'")
            else:
                problems.append(f"option '{name}': {err['msg']}")
        raise ConfigError(f"{backend}: {'; '.join(problems)}. Valid options: {valid}") from None


class NoOptions(BaseModel):
    """For adapters without query options: any parameter is an error."""

    model_config = {"extra": "forbid"}
