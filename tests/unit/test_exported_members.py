"""The public surface is pinned: adding or removing a name from ``unimq.__all__`` is a deliberate act."""

import unimq

EXPECTED = {
    "App", "AuthenticationError", "Broker", "BrokerConnectionError", "Capabilities", "CapabilityError", "Closed",
    "Codec", "Compressed", "ConfigError", "ConnectionError", "Consumer", "Delivery", "DestinationSpec", "Feature",
    "HandlerTimeout", "KillSwitch", "Reject",
    "JsonCodec", "Message", "MessageTooLarge", "ModelCodec", "NotFound", "PermissionDenied", "Producer",
    "PublishError", "RawCodec", "Retry", "Router", "Stats", "Support", "Throttled", "Timeout", "UnimqError", "connect",
}


def test_all_is_pinned() -> None:
    assert set(unimq.__all__) == EXPECTED


def test_every_exported_name_exists_and_is_public() -> None:
    for name in unimq.__all__:
        member = getattr(unimq, name)
        module = getattr(member, "__module__", "unimq")
        assert module.startswith("unimq"), f"{name} comes from {module}"


def test_connection_error_is_a_deprecated_alias_that_does_not_shadow_the_builtin() -> None:
    assert unimq.ConnectionError is unimq.BrokerConnectionError
    assert not issubclass(unimq.BrokerConnectionError, ConnectionError)
    assert issubclass(unimq.AuthenticationError, unimq.ConfigError)
