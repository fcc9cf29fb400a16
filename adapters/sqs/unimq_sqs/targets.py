"""SQS's conformance targets (entry point ``unimq.targets``): ElasticMQ, standard and FIFO queues."""

from __future__ import annotations

from unimq.testing.brokers import Image, Target, Timing

_URL = "sqs://?endpoint_url=http://127.0.0.1:9324&region=us-east-1"
_IMAGE = Image("softwaremill/elasticmq-native:1.7.1", 9324)


def targets() -> list[Target]:
    return [
        Target("sqs", _URL, "sqs", Timing(quiet=1.0), container=_IMAGE,
               matrix=(("sqs", "orders"), ("sqs FIFO", "orders.fifo"))),
        Target("sqs-fifo", _URL + "&fifo=true", "sqs", Timing(quiet=1.0), container=_IMAGE),
    ]
