"""The unimq conformance suite: behavioural tests every backend runs, gated by its capabilities.

Run it against any broker URL (a third-party adapter's too):

    pytest --pyargs unimq.testing.conformance --unimq-url=URL

Every test uses the public API only. See docs/conformance.md for the catalogue and the rules.
"""
