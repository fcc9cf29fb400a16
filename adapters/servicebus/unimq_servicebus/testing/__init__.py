"""Test support shipped with the Service Bus adapter: the AMQP 1.0 test double (``double``)."""
