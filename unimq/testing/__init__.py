"""Testing support shipped with unimq: the conformance suite (a pytest plugin), broker
provisioning for tests, a fault-injecting TCP proxy and the Service Bus test double."""

from unimq.testing.app import TestApp as TestApp
