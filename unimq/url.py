"""Broker URLs: parsing, validation of query options, and structural redaction.

``kafka://h1:9092,h2:9092?client_id=x`` → :class:`BrokerURL`; the query (plus keyword options
given to ``connect``) validates into the adapter's pydantic ``Options`` model, and any error
becomes a :class:`ConfigError` naming the parameter and the valid ones.

Redaction is structural: the parser knows which parts of *this* URL are secret (the password,
a NATS token, the values of secret query options, the key inside a connection string) and
:meth:`BrokerURL.redacted` rebuilds the URL with exactly those parts masked. Error messages
about a URL never echo text that could be part of a secret.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import quote, unquote, unquote_plus

from pydantic import BaseModel, ValidationError

from unimq.errors import REDACTED, ConfigError, Secrets, enter_scope

OptionsT = TypeVar("OptionsT", bound=BaseModel)

#: A query option whose name contains one of these holds a secret value.
_SECRET_WORDS = ("password", "passwd", "pwd", "secret", "token", "connection_string", "sharedaccess",
                 "sas_key", "nkey_seed")
#: Schemes whose ``user@host`` form (no password) carries a token: the NATS convention.
TOKEN_SCHEMES = frozenset({"nats", "tls"})
_PORT = re.compile(r"[0-9]{1,5}")
_CONN_SECRET = re.compile(r"(?i)(SharedAccessKey|SharedAccessSignature|AccountKey)=([^;]*)")
_OPTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_QUERY_IN_USERINFO = re.compile(r"[?&][A-Za-z_][A-Za-z0-9_]*=")


def is_secret_option(name: str) -> bool:
    """Whether the query option ``name`` holds a credential (its value is masked everywhere)."""
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def _non_ascii_digit(text: str) -> bool:
    return any(ch.isdigit() and not ("0" <= ch <= "9") for ch in text)


@dataclass(frozen=True)
class BrokerURL:
    """A parsed broker URL. Secret parts never appear in ``repr`` or ``str``."""

    scheme: str
    hosts: tuple[tuple[str, int | None], ...] = ()
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    path: str = ""
    query: dict[str, str] = field(default_factory=dict)
    #: The secret values of this URL; errors raised while it is alive are scrubbed of them.
    secrets: Secrets = field(default_factory=Secrets, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.secrets.add(self.password)
        for key, value in self.query.items():
            if is_secret_option(key):
                self.secrets.add(value)
                for _, inner in _CONN_SECRET.findall(value):
                    self.secrets.add(inner)
        enter_scope(self.secrets)

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
        text = f"{self.scheme}://{self.netloc()}{quote(self.path, safe='/')}"
        if self.query:
            text += "?" + "&".join(
                f"{quote(k, safe='')}={REDACTED if is_secret_option(k) else quote(v, safe=':/@,')}"
                for k, v in self.query.items()
            )
        return text

    def __str__(self) -> str:
        return self.redacted()

    def __repr__(self) -> str:
        return f"BrokerURL({self.redacted()!r})"


@dataclass
class _Split:
    """The raw text of each part of a URL, before any decoding."""

    scheme: str
    userinfo: str | None
    hostlist: str
    path: str
    query: str
    fragment: str


def _split(url: str) -> _Split:
    """RFC 3986 split (like ``urlsplit``, but never raises and keeps the raw text of each part)."""
    scheme, _, rest = url.partition("://")
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    tail, _, fragment = tail.partition("#")
    path, _, query = tail.partition("?")
    userinfo, at, hostlist = netloc.rpartition("@")
    return _Split(scheme, userinfo if at else None, hostlist, path, query, fragment)


def _split_raw_userinfo(url: str) -> _Split | None:
    """The split of a URL whose password holds a raw ``/``, ``?`` or ``#`` (base64 SAS keys do).

    Tried only when an ``@`` follows the standard authority. The userinfo ends at the last ``@``
    after which the text reads as a host list and before which nothing looks like a query
    (``?name=``), so a password may hold ``@`` as well.
    """
    scheme, _, rest = url.partition("://")
    end = len(rest)
    while (at := rest.rfind("@", 0, end)) >= 0:
        end = at
        userinfo, after = rest[:at], rest[at + 1:]
        if _QUERY_IN_USERINFO.search(userinfo):
            continue
        candidate = _split(f"{scheme}://{after}")
        if (candidate.userinfo is None and candidate.hostlist and _hosts_ok(candidate.hostlist)
                and not _suspect(candidate)):
            return _Split(scheme, userinfo, candidate.hostlist, candidate.path, candidate.query, candidate.fragment)
    return None


def _hosts_ok(hostlist: str) -> bool:
    try:
        _parse_hosts(hostlist, "")
    except ConfigError:
        return False
    return True


def _suspect(parts: _Split) -> bool:
    """Whether the standard split may have cut a password at a raw ``/``, ``?`` or ``#``."""
    if "@" in parts.path or "@" in parts.fragment:
        return True
    after_secret = False
    for piece in parts.query.split("&") if parts.query else ():
        name, eq, _ = piece.partition("=")
        if after_secret and (not eq or not _OPTION_NAME.fullmatch(unquote_plus(name))):
            continue  # the rest of a secret value with a raw '&' (see _parse_query)
        if "@" in name:
            return True
        after_secret = bool(eq) and is_secret_option(unquote_plus(name))
    return parts.userinfo is None and "@" in parts.query and not _hosts_ok(parts.hostlist)


def parse_url(url: str) -> BrokerURL:
    """Parse a broker URL; never raises anything but :class:`ConfigError`."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"not a broker URL: {_show_raw(url)!r}; expected SCHEME://..., "
                          "e.g. memory:// or kafka://host:9092")
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError("a broker URL must be valid text: this one holds a lone surrogate "
                          "(e.g. bytes that are not UTF-8 on the command line)") from None
    parts = _split(url)
    if _suspect(parts):
        raw = _split_raw_userinfo(url)
        if raw is None:
            _parse_hosts(parts.hostlist, _show_raw(url), suspect=True)
            raise ConfigError(f"cannot tell where the user and password of broker URL {_show_raw(url)} end: "
                              "percent-encode '/', '?', '#' and '@' in them")
        parts = raw
    scheme = parts.scheme.lower()
    if not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme):
        raise ConfigError(f"broker URL '{_show_raw(url)}' has no valid scheme; expected SCHEME://..., "
                          "e.g. memory:// or kafka://host:9092")
    username = password = None
    if parts.userinfo is not None:
        user, sep, pw = parts.userinfo.partition(":")
        username = unquote(user)
        password = unquote(pw) if sep else None
    query = _parse_query(scheme, parts.query, parts.fragment)
    if scheme in TOKEN_SCHEMES and username and password is None:
        if "token" in query:
            raise ConfigError(f"{scheme}: the URL gives a token twice (as TOKEN@host and as ?token=); keep one")
        query["token"], username = username, None
    secrets = Secrets()
    safe = BrokerURL(scheme, (), username, password, "", query, secrets)
    _, mark, query_text = safe.redacted().partition("?")
    hosts = _parse_hosts(parts.hostlist, f"{scheme}://{safe.netloc()}{parts.hostlist[:100]}{mark}{query_text}")
    path = unquote(parts.path)
    if _non_ascii_digit(path):
        raise ConfigError(f"the path of broker URL {safe.redacted()} contains a non-ASCII digit; "
                          "use ASCII digits 0-9")
    return BrokerURL(scheme, hosts, username, password, path, query, secrets)


def _parse_query(scheme: str, text: str, fragment: str) -> dict[str, str]:
    """Parse the query; a secret value keeps raw ``+`` (base64) and may hold a raw ``#``.

    A piece without ``=`` after a secret is taken as the rest of that secret (a raw ``&`` in
    it); any other doubt is an error that names the secret option, never the doubtful text.
    """
    query: dict[str, str] = {}
    last_secret: str | None = None
    known = _known_options(scheme) if "&" in text else None
    for piece in text.split("&") if text else ():
        name, eq, value = piece.partition("=")
        key = unquote_plus(name)
        if last_secret is not None and (not eq or not _OPTION_NAME.fullmatch(key)):
            query[last_secret] += "&" + unquote(piece)
            continue
        if last_secret is not None and known is not None and key not in known and not is_secret_option(key):
            raise ConfigError(f"{scheme}: the value of '{last_secret}' seems to hold a raw '&', or an unknown "
                              "option follows it: percent-encode '&' as %26 inside secret values")
        if not _OPTION_NAME.fullmatch(key):
            if any(is_secret_option(k) for k in query):
                raise ConfigError(f"{scheme}: a query parameter after a secret option is not a valid name: "
                                  "percent-encode '&', '#' and '+' inside secret values")
            raise ConfigError(f"{scheme}: query parameter {key[:40]!r} is not a valid option name "
                              "(letters, digits and '_')")
        if key in query:
            raise ConfigError(f"{scheme}: option '{key}' is given twice in the URL")
        secret = is_secret_option(key)
        query[key] = unquote(value) if secret else unquote_plus(value)
        last_secret = key if secret else None
    if fragment:
        if last_secret is None:
            raise ConfigError(f"{scheme}: a broker URL has no '#' part; percent-encode '#' as %23 "
                              "where it is part of a value")
        query[last_secret] += "#" + unquote(fragment)
    return query


def _known_options(scheme: str) -> set[str] | None:
    """The option names of the scheme's adapter, or None when it is not installed."""
    from unimq import registry

    try:
        return set(registry.load(scheme).Options.model_fields)
    except Exception:
        return None


def _parse_hosts(hostlist: str, shown: str, suspect: bool = False) -> tuple[tuple[str, int | None], ...]:
    return tuple(_parse_host(h, shown, suspect) for h in hostlist.split(",") if h) if hostlist else ()


def _parse_host(text: str, shown: str, suspect: bool = False) -> tuple[str, int | None]:
    """``host[:port]``; when the split is in doubt (``suspect``) nothing of ``text`` is echoed."""
    hint = "; if the password holds '/', '?' or '#', percent-encode it" if suspect else ""
    where = "" if suspect else f" of host {text.rpartition(':')[0][:60]!r}"
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise ConfigError(f"malformed IPv6 host in broker URL {shown}; write [::1]:port{hint}")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":")
    if not port_text:
        return host, None
    if not _PORT.fullmatch(port_text) or not 0 < int(port_text) < 65536:
        what = (" (a non-ASCII digit)" if _non_ascii_digit(port_text) else
                "" if suspect else f" {port_text[:12]!r}")
        raise ConfigError(f"invalid port{what}{where} in broker URL {shown}; expected 1-65535 in ASCII "
                          f"digits{hint}")
    return host, int(port_text)


def _show_raw(url: object) -> str:
    """An unparsed URL safe to put in an error: with an ``@`` anywhere (userinfo, or a secret value
    holding one) nothing after the scheme is shown; otherwise query values are masked."""
    text = str(url)[:200]
    scheme, sep, rest = text.partition("://") if "://" in text else ("", "", text)
    if "@" in rest:
        return f"{scheme}{sep}{REDACTED}"
    rest, _, query = rest.partition("?")
    shown = f"{scheme}{sep}{rest}"
    if query:
        shown += "?" + "&".join(f"{p.partition('=')[0][:40]}={REDACTED}" if "=" in p else REDACTED
                                for p in query.split("&"))
    return shown


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
                shown = name if _OPTION_NAME.fullmatch(name) and len(name) <= 60 else "(not a valid name)"
                problems.append(f"unknown option '{shown}'")
            else:
                problems.append(f"option '{name}': {err['msg']}")
        raise ConfigError(f"{backend}: {'; '.join(problems)}. Valid options: {valid}") from None


class NoOptions(BaseModel):
    """For adapters without query options: any parameter is an error."""

    model_config = {"extra": "forbid"}
