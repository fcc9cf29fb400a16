"""NATS header and subject mapping, without a server: trailing newlines must not pass as plain
(a ``$`` regex anchor matches before a final newline; hypothesis found ``{"0": "\\n"}`` arriving as ``""``)."""

from __future__ import annotations

import pytest
from unimq_nats.mapping import check_subject, to_headers, to_message

from unimq.errors import ConfigError
from unimq.message import Message


@pytest.mark.parametrize("headers", [{"0": "\n"}, {"a": "x\n"}, {"k\n": "v"}, {"k": " lead"}, {"k": "é"}])
def test_headers_round_trip_exactly(headers: dict[str, str]) -> None:
    wire = to_headers(Message(b"x", headers=headers), dedup=False)
    assert all("\n" not in k and "\n" not in v for k, v in wire.items()), wire
    assert to_message(b"x", wire, "id", None).headers == headers


@pytest.mark.parametrize("subject", ["orders\n", "orders.\n", "a b"])
def test_a_subject_with_whitespace_is_refused(subject: str) -> None:
    with pytest.raises(ConfigError):
        check_subject(subject)
