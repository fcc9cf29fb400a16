"""URLs, options and connect(): any input gives a broker or a ConfigError, never a leaked secret."""

import gc
import weakref
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import unimq
from unimq import registry
from unimq.errors import ConfigError, Secrets, UnimqError, scrub
from unimq.url import parse_options, parse_url

SECRET = "s3cr3t-PASSWORD-42"


def test_parse_multi_host_and_userinfo() -> None:
    url = parse_url(f"kafka://alice:{SECRET}@h1:9092,h2:9093,[::1]:9094/path?client_id=x")
    assert url.hosts == (("h1", 9092), ("h2", 9093), ("::1", 9094))
    assert url.username == "alice" and url.password == SECRET
    assert url.query == {"client_id": "x"}
    assert SECRET not in repr(url) and SECRET not in str(url) and SECRET not in url.redacted()
    assert "alice:***@h1:9092,h2:9093,[::1]:9094" in url.redacted()


@pytest.mark.parametrize("bad", ["", "localhost:9092", "kafka://h:99999", "kafka://h:port", 42])
def test_bad_urls_are_config_errors(bad: object) -> None:
    with pytest.raises(ConfigError):
        parse_url(bad)  # type: ignore[arg-type]


def test_secret_query_values_are_scrubbed() -> None:
    url = parse_url(f"redis://h:6379/0?password={SECRET}&token=tok-{SECRET}")
    assert SECRET not in url.redacted()
    assert SECRET not in scrub(f"failed: password={SECRET}")


async def test_unknown_scheme_lists_installed_and_extra() -> None:
    with pytest.raises(ConfigError, match=r"Installed schemes: .*memory://"):
        await unimq.connect("bogus://x")


async def test_unknown_option_names_it_and_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown option 'nope'.*lock_timeout"):
        await unimq.connect("memory://x?nope=1")
    with pytest.raises(ConfigError, match="option 'lock_timeout'"):
        await unimq.connect("memory://x?lock_timeout=-1")


async def test_keyword_options_override_query(monkeypatch: pytest.MonkeyPatch) -> None:
    async with unimq.connect("memory://kw?max_message_bytes=10", max_message_bytes=20) as broker:
        assert broker.capabilities.max_message_bytes == 20
    monkeypatch.setenv("UNIMQ_URL", "memory://from-env")
    async with unimq.connect() as broker:
        assert broker.url == "memory://from-env"


def _without(chars: str, size: int) -> st.SearchStrategy[str]:
    return st.text(st.characters(exclude_characters=chars), max_size=size)


#: Any text, or a URL with SECRET as its password. Redaction is structural, so around the password
#: the parts hold no character that would move it elsewhere (a user with ':' or a host with '@').
any_text = st.text(max_size=60)
password_urls = st.builds(
    lambda scheme, user, host, port, query: f"{scheme}://{user}:{SECRET}@{host}:{port}/?{query}",
    st.sampled_from(["memory", "bogus", "MEMORY", "", "mem ory"]),
    _without(":/?#@%", 8),
    _without("@/?#", 12),
    st.one_of(st.integers(-5, 70000).map(str), _without("@/?#", 4)),
    _without("@#", 20),
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(any_text.map(lambda u: (u, False)), password_urls.map(lambda u: (u, True))))
async def test_any_string_gives_a_broker_or_a_config_error(case: tuple[str, bool]) -> None:
    """Any text: a broker or a ConfigError; SECRET in the password position never shows."""
    url, secret_is_password = case
    shown: list[str] = []
    try:
        broker = await unimq.connect(url)
    except ConfigError as exc:
        shown.append(str(exc))
    else:
        shown += [repr(broker), broker.url]
        await broker.close()
    assert not secret_is_password or all(SECRET not in text for text in shown), shown


# Structural redaction (issue 22) -------------------------------------------------------------------

SCHEMES = ("memory", "amqp", "amqps", "rabbitmq", "kafka", "sqs", "redis", "rediss", "nats", "tls", "servicebus")
SAS_KEY = "Kq9/Zt+Wm3Xr7Lp2Bv5Nc8Hd4Fg1Js6Ty0Ue=="


def _error_of(url: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parsed = parse_url(url)
        driver_cls = registry.load(parsed.scheme)
        driver_cls(parsed, parse_options(driver_cls.Options, driver_cls.name, dict(parsed.query)))
    text = str(caught.value)
    assert "\n" not in text
    return text


def test_encoded_connection_string_and_a_bad_port_do_not_print_the_key() -> None:
    conn = quote(f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey={SAS_KEY}",
                 safe="")
    error = _error_of(f"servicebus://ns:99999?connection_string={conn}")
    assert "invalid port '99999'" in error
    assert SAS_KEY not in error and quote(SAS_KEY, safe="") not in error and "Kq9" not in error


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("char", ["/", "?", "#"])
def test_a_raw_reserved_character_in_the_password_is_not_an_invalid_port(scheme: str, char: str) -> None:
    password = f"Abc{char}Def123"
    host = "" if scheme == "sqs" else "127.0.0.1:5672"
    try:
        url = parse_url(f"{scheme}://user:{password}@{host}/0")
    except ConfigError as exc:
        assert "Abc" not in str(exc) and "Def123" not in str(exc), str(exc)
    else:
        assert url.password == password and url.hosts == ((("127.0.0.1", 5672),) if host else ())
        assert "Abc" not in url.redacted() and "Def123" not in repr(url)


@pytest.mark.parametrize(("scheme", "option"), [("kafka", "sasl_password"), ("nats", "token"),
                                                ("sqs", "aws_secret_access_key"), ("servicebus", "connection_string")])
@pytest.mark.parametrize("char", ["&", ";", "@", " ", "+", "#"])
def test_reserved_characters_in_a_query_secret_never_show(scheme: str, option: str, char: str) -> None:
    secret = f"Head{char}TailXYZ"
    for tail in ("", "&client_id=x", "&bogus=1"):
        try:
            url = parse_url(f"{scheme}://?{option}={secret}{tail}")
            driver_cls = registry.load(url.scheme)
            parse_options(driver_cls.Options, driver_cls.name, dict(url.query))
        except ConfigError as exc:
            assert "Head" not in str(exc) and "TailXYZ" not in str(exc), str(exc)
        else:
            assert url.query[option].startswith(f"Head{char}TailXYZ")
            assert "Head" not in repr(url) and "TailXYZ" not in url.redacted()


def test_a_raw_base64_key_keeps_its_plus() -> None:
    url = parse_url(f"kafka://h?sasl_password={SAS_KEY}")
    assert url.query["sasl_password"] == SAS_KEY


@pytest.mark.parametrize("scheme", ["nats", "tls"])
def test_the_nats_token_url_form_is_a_token(scheme: str) -> None:
    url = parse_url(f"{scheme}://s3cretTOKEN42@127.0.0.1:4222")
    assert url.query["token"] == "s3cretTOKEN42" and url.username is None
    assert "s3cretTOKEN42" not in repr(url) and url.redacted() == f"{scheme}://127.0.0.1:4222?token=***"
    with pytest.raises(ConfigError, match="token twice"):
        parse_url(f"{scheme}://a@127.0.0.1?token=b")


@pytest.mark.parametrize("url", ["kafka://localhost:²", "kafka://localhost:٩٠٩٢", "redis://localhost/²",
                                 "amqp://localhost:٥٦٧٢/", "servicebus://?connection_string=" + quote(
                                     "Endpoint=sb://ns:²/;SharedAccessKeyName=R;SharedAccessKey=k", safe="")])
def test_unicode_digits_are_refused_naming_the_part(url: str) -> None:
    error = _error_of(url)
    assert "port" in error or "path" in error


async def test_masking_does_not_over_reach() -> None:
    """The password 'queue' masks no destination called queue; the SAS key name and host stay."""
    async with unimq.connect("memory://guest:queue@x") as broker:
        assert broker.url == "memory://guest:***@x"
        error = UnimqError("no destination 'queue' for user guest")
        assert str(error) == "no destination 'queue' for user guest"
    url = parse_url(f"servicebus://RootManageSharedAccessKey:{quote(SAS_KEY, safe='')}@ns.servicebus.windows.net")
    assert url.redacted() == "servicebus://RootManageSharedAccessKey:***@ns.servicebus.windows.net"
    text = f"cannot reach ns.servicebus.windows.net as RootManageSharedAccessKey:{SAS_KEY}@ns"
    assert scrub(text, [url.secrets]) == "cannot reach ns.servicebus.windows.net as RootManageSharedAccessKey:***@ns"
    assert scrub("SharedAccessKeyName=Root;Endpoint=sb://ns/") == "SharedAccessKeyName=Root;Endpoint=sb://ns/"


def test_a_secret_that_is_a_prefix_of_another_leaves_no_tail() -> None:
    for order in ((SECRET, SECRET + "-TAIL"), (SECRET + "-TAIL", SECRET)):
        secrets = Secrets(order)
        assert scrub(f"a {SECRET}-TAIL b {SECRET} c", [secrets]) == "a *** b *** c"


def test_the_secret_scope_ends_with_its_url() -> None:
    """No process-wide registry: once a URL is gone, its password masks nothing."""
    url = parse_url("kafka://u:Gone-Pass-77@h")
    assert "Gone-Pass-77" not in UnimqError("x Gone-Pass-77 y").args[0]
    ref = weakref.ref(url.secrets)
    del url
    gc.collect()
    assert ref() is None
    assert UnimqError("x Gone-Pass-77 y").args[0] == "x Gone-Pass-77 y"


def test_the_key_value_pattern_masks_credentials_not_words() -> None:
    assert scrub("password=hunter2 and token=abc;") == "password=*** and token=***;"
    assert scrub("{'X-Amz-Security-Token': 'abc'}") == "{'X-Amz-Security-Token': '***'}"
    assert scrub("GET\nx-amz-security-token:abc\nhost:h") == "GET\nx-amz-security-token:***\nhost:h"
    for innocent in ("Token: expired", "the secret is out", "RootManageSharedAccessKey:K@host",
                     "SharedAccessKeyName=Root", "no token given", "passwords match"):
        assert scrub(innocent) == innocent
