"""Generated inputs (hypothesis) for the hardening classes of issue 22, on every scheme.

- Secrets in every position of a URL (userinfo with reserved characters, raw or percent-encoded;
  secret query options with reserved characters; Service Bus connection strings, raw or encoded;
  the NATS token form), with and without a bad port or an unknown option: the secret never shows
  in an error, ``repr``/``str``/``redacted()`` of the URL and the options, a log record, or the
  CLI's stderr; every error is a one-line UnimqError.
- Unicode digits in ports, database paths and connection-string ports: a ConfigError.
- Values a codec cannot encode: a one-line ConfigError, through the codec and through send().
- Compressed bodies: decompressed exactly, or MessageTooLarge past the bound.

No network: everything is checked before a driver opens a connection. The example counts are
set so that the whole module runs in well under a minute (docs/reliability.md, "Generated tests").
"""

from __future__ import annotations

import gzip
import logging
import math
import uuid
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import unimq
from unimq import registry
from unimq.cli import main
from unimq.codecs import Compressed, JsonCodec, ModelCodec, MsgpackCodec, RawCodec, compress, decompress
from unimq.errors import ConfigError, MessageTooLarge, UnimqError
from unimq.url import is_secret_option, parse_options, parse_url

FIRST_PARTY = ("memory", "amqp", "amqps", "rabbitmq", "kafka", "sqs", "redis", "rediss", "nats", "tls", "servicebus")
#: Every first-party scheme, and any other installed adapter's.
SCHEMES = tuple(sorted(set(FIRST_PARTY) | set(registry.installed())))
#: A secret query option per scheme: the first the adapter declares, else 'password' (an unknown option).
SECRET_OPTION = {scheme: next((k for k in registry.load(scheme).Options.model_fields if is_secret_option(k)),
                              "password") for scheme in registry.installed()}
RESERVED = "/?#&;@ +=%:"
#: Examples per test: 400 URLs + 5 tests x 150 = 1,150 generated inputs per CI run (10-20 s).
URL_EXAMPLES = 400
SMALL_EXAMPLES = 150

slow_ok = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                         HealthCheck.too_slow])


def test_every_scheme_is_installed() -> None:
    """The generated URL tests cover every first-party scheme, so each must be importable here."""
    assert set(FIRST_PARTY) <= set(registry.installed())


# Secrets ----------------------------------------------------------------------------------------

#: Pieces no error text contains by itself: upper-case consonants and digits.
_chunk = st.text("BCDFGHJKLMNPQRSTVWXZ23456789", min_size=5, max_size=9)


@st.composite
def secrets(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A secret made of distinctive chunks joined by reserved characters, and its chunks."""
    chunks = draw(st.lists(_chunk, min_size=1, max_size=4))
    seps = draw(st.lists(st.sampled_from(RESERVED), min_size=len(chunks) - 1, max_size=len(chunks) - 1))
    text = chunks[0] + "".join(s + c for s, c in zip(seps, chunks[1:], strict=True))
    return text, chunks


_bad_port = st.sampled_from(["", "", ":5", ":99999", ":0", ":²", ":٩٠٩٢", ":abc", ":-1"])
_tail = st.sampled_from(["", "", "&bogus_option=1", "&client_id=x", "&bogus"])


@st.composite
def secret_urls(draw: st.DrawFn) -> tuple[str, str, list[str]]:
    """(scheme, URL, secret chunks) with the secret in one of the positions a URL can hold one."""
    scheme = draw(st.sampled_from(SCHEMES))
    secret, chunks = draw(secrets())
    port = draw(_bad_port)
    host = "127.0.0.1" if scheme != "sqs" else ""
    host_port = host + port if host else ""
    form = draw(st.sampled_from(["password-raw", "password-encoded", "query-raw", "query-encoded",
                                 "connection-string-raw", "connection-string-encoded", "token"]))
    if form == "token" and scheme not in ("nats", "tls"):
        form = "password-raw"  # user@host is a token only in the NATS convention
    option = SECRET_OPTION.get(scheme, "password")
    tail = draw(_tail)
    if form == "password-raw":
        url = f"{scheme}://alice:{secret}@{host_port}/0"
    elif form == "password-encoded":
        url = f"{scheme}://alice:{quote(secret, safe='')}@{host_port}/0"
    elif form.startswith("query"):
        value = secret if form == "query-raw" else quote(secret, safe="")
        url = f"{scheme}://{host_port}?{option}={value}{tail}"
    elif form.startswith("connection-string"):
        conn = (f"Endpoint=sb://ns.servicebus.windows.net{port}/;SharedAccessKeyName=RootManageSharedAccessKey;"
                f"SharedAccessKey={secret}")
        value = conn if form.endswith("raw") else quote(conn, safe="")
        url = f"{scheme}://{host_port}?connection_string={value}{tail}"
    else:
        # A raw ':' would make the token a user:password pair: that one must be encoded.
        raw = ":" not in secret and draw(st.booleans())
        url = f"{scheme}://{secret if raw else quote(secret, safe='')}@{host_port}"
    return scheme, url, chunks


def _leaks(texts: list[str], chunks: list[str]) -> list[str]:
    return [t for t in texts for c in chunks if c in t]


def _one_line(exc: BaseException) -> None:
    assert isinstance(exc, UnimqError), f"{type(exc).__name__}: {exc}"
    assert "\n" not in str(exc), str(exc)


@settings(slow_ok, max_examples=URL_EXAMPLES)
@given(case=secret_urls())
def test_a_secret_never_shows_whatever_its_position(case: tuple[str, str, list[str]],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    _, url, chunks = case
    seen: list[str] = []
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        try:
            parsed = parse_url(url)
            seen += [repr(parsed), str(parsed), parsed.redacted()]
            driver_cls = registry.load(parsed.scheme)
            options = parse_options(driver_cls.Options, driver_cls.name, dict(parsed.query))
            seen += [repr(options), str(options)]
            driver = driver_cls(parsed, options)
            seen += [repr(driver)]
        except Exception as exc:
            _one_line(exc)
            seen += [str(exc), repr(exc)]
    seen += [r.getMessage() for r in caplog.records]
    assert not _leaks(seen, chunks), f"{url!r} leaked: {_leaks(seen, chunks)[0][:300]}"


@settings(slow_ok, max_examples=SMALL_EXAMPLES)
@given(case=secret_urls())
def test_the_cli_never_prints_a_secret(case: tuple[str, str, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    """``unimq capabilities URL&bogus_option=1``: refused in one line without the secret (memory:// may run)."""
    scheme, url, chunks = case
    url += ("&" if "?" in url else "?") + "bogus_option=1"
    try:
        parse_url(url)
        valid = True
    except UnimqError:
        valid = False
    assume(scheme == "memory" or not valid)  # no test may try to reach a broker
    code = main(["capabilities", url])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    if code != 0:
        lines = captured.err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("unimq: "), captured.err
    assert not _leaks([captured.err, captured.out], chunks), captured.err


@settings(slow_ok, max_examples=SMALL_EXAMPLES)
@given(st.sampled_from(SCHEMES), secrets(), secrets())
def test_masking_is_structural_and_does_not_over_reach(scheme: str, first: tuple[str, list[str]],
                                                       second: tuple[str, list[str]]) -> None:
    """A password that is a prefix of another secret, or an everyday word, masks only what it should."""
    password = first[0]
    url = parse_url(f"{scheme}://queue:{quote(password, safe='')}@{'' if scheme == 'sqs' else 'host'}"
                    f"?{SECRET_OPTION.get(scheme, 'password')}={quote(password + second[0], safe='')}")
    shown = url.redacted()
    assert not _leaks([shown, repr(url)], first[1] + second[1]), shown
    assert "queue:***@" in shown  # the user name stays, even when it equals a common word
    error = UnimqError(f"no destination 'orders' for user queue on {url}: SharedAccessKeyName=Root failed")
    assert "'orders'" in str(error) and "SharedAccessKeyName=Root" in str(error)


# Unicode digits -----------------------------------------------------------------------------------

_unicode_digits = st.text(st.characters(categories=["Nd", "No"]).filter(lambda c: c.isdigit() and not c.isascii()),
                          min_size=1, max_size=5)


@settings(slow_ok, max_examples=SMALL_EXAMPLES)
@given(st.sampled_from(SCHEMES), _unicode_digits, st.sampled_from(["port", "path", "connection-string"]))
def test_unicode_digits_are_config_errors(scheme: str, digits: str, where: str) -> None:
    if where == "port":
        url = f"{scheme}://127.0.0.1:{digits}"
    elif where == "path":
        url = f"{scheme}://127.0.0.1/{digits}"
    else:
        conn = f"Endpoint=sb://ns:{digits}/;SharedAccessKeyName=Root;SharedAccessKey=KEYKEYKEY"
        url = f"servicebus://?connection_string={quote(conn, safe='')}"
    with pytest.raises(ConfigError) as caught:
        parsed = parse_url(url)
        driver_cls = registry.load(parsed.scheme)
        driver_cls(parsed, parse_options(driver_cls.Options, driver_cls.name, dict(parsed.query)))
    _one_line(caught.value)
    assert "KEYKEYKEY" not in str(caught.value)
    assert "digit" in str(caught.value) or "port" in str(caught.value)


# Codec encode failures -------------------------------------------------------------------------------


class Order(BaseModel):
    id: int
    amount: float


_lone_surrogate = st.builds(lambda a, s, b: a + s + b, st.text(max_size=5),
                            st.characters(categories=["Cs"]), st.text(max_size=5))
_json_bad = st.one_of(
    st.builds(set, st.lists(st.integers(), max_size=3)),
    st.complex_numbers(allow_nan=False, allow_infinity=False),
    st.sampled_from([math.nan, math.inf, -math.inf, b"bytes", object()]),
    _lone_surrogate,
    st.dictionaries(st.text(max_size=3), st.sampled_from([math.nan, {1, 2}, b"x"]), min_size=1, max_size=3),
)
_msgpack_bad = st.one_of(st.integers(min_value=2**64), st.integers(max_value=-(2**63) - 1),
                         st.sampled_from([object(), {1, 2}, 1j]), _lone_surrogate)
_order_bad = st.one_of(
    st.fixed_dictionaries({"id": st.text(st.characters(categories=["Lu", "Ll"]), min_size=1, max_size=5),
                           "amount": st.floats()}),
    st.fixed_dictionaries({"amount": st.floats(allow_nan=False)}),
    st.integers(), st.text(max_size=5), st.none(),
)


@st.composite
def unencodable(draw: st.DrawFn) -> tuple[Any, Any]:
    kind = draw(st.sampled_from(["json", "msgpack", "model", "raw", "compressed"]))
    if kind == "json":
        return JsonCodec(), draw(_json_bad)
    if kind == "msgpack":
        return MsgpackCodec(), draw(_msgpack_bad)
    if kind == "model":
        return ModelCodec(Order), draw(_order_bad)
    if kind == "raw":
        return RawCodec(), draw(st.one_of(_lone_surrogate, st.integers(), st.none(), st.lists(st.integers())))
    return Compressed(JsonCodec(), "gzip"), draw(_json_bad)


@settings(slow_ok, max_examples=SMALL_EXAMPLES)
@given(unencodable())
async def test_values_a_codec_cannot_encode_are_one_line_config_errors(case: tuple[Any, Any]) -> None:
    codec, value = case
    with pytest.raises(ConfigError) as direct:
        codec.encode(value)
    _one_line(direct.value)
    async with unimq.connect(f"memory://gen-{uuid.uuid4().hex[:6]}") as broker:
        await broker.ensure("q")
        producer = (broker.producer("q", schema=Order) if isinstance(codec, ModelCodec)
                    else broker.producer("q", codec=codec))
        with pytest.raises(ConfigError) as sent:
            await producer.send(value)
        _one_line(sent.value)
        assert await broker.peek("q") == []


# Decompression bound -----------------------------------------------------------------------------------


@settings(max_examples=SMALL_EXAMPLES, deadline=None)
@given(st.sampled_from(["gzip", "zstd"]), st.integers(0, 300_000), st.integers(1, 200_000),
       st.sampled_from([b"\0", b"ab", b"x" * 7]))
def test_decompression_stops_at_the_bound(encoding: str, size: int, bound: int, unit: bytes) -> None:
    body = (unit * (size // len(unit) + 1))[:size]
    data = compress(body, encoding)
    if size > bound:
        with pytest.raises(MessageTooLarge):
            decompress(data, encoding, bound)
    else:
        assert decompress(data, encoding, bound) == body
    assert decompress(data, encoding) == body


def test_a_gzip_bomb_is_refused_without_inflating_it() -> None:
    """~1000:1: 64 MiB of zeros in ~64 KiB; refused at 1 MiB (the stream stops there)."""
    bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
    assert len(bomb) < 100_000
    with pytest.raises(MessageTooLarge):
        decompress(bomb, "gzip", 1 << 20)
