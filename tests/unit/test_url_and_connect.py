"""URLs, options and connect(): any input gives a broker or a ConfigError, never a leaked secret."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import unimq
from unimq.errors import ConfigError, scrub
from unimq.url import parse_url

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


url_like = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda scheme, user, host, port, query: f"{scheme}://{user}:{SECRET}@{host}:{port}/?{query}",
        st.sampled_from(["memory", "bogus", "MEMORY", "", "mem ory"]),
        st.text(max_size=8),
        st.text(max_size=12),
        st.one_of(st.integers(-5, 70000).map(str), st.text(max_size=4)),
        st.text(max_size=20),
    ),
)


@settings(max_examples=300, deadline=None)
@given(url_like)
async def test_any_string_gives_a_broker_or_a_config_error(url: str) -> None:
    try:
        broker = await unimq.connect(url)
    except ConfigError as exc:
        assert SECRET not in str(exc)
    else:
        assert SECRET not in repr(broker) and SECRET not in broker.url
        await broker.close()
