"""AsyncAPI 3.0 export, validated against the official AsyncAPI 3.0.0 JSON schema.

``asyncapi-3.0.0-schema.json.gz`` is ``schemas/3.0.0-without-$id.json`` of
github.com/asyncapi/spec-json-schemas (Apache-2.0, commit 7dd3990), gzipped: the complete schema,
bindings included, not a subset. No PyPI package ships it.
"""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from pydantic import BaseModel

from unimq.app import App, Router

SCHEMA = json.loads(gzip.decompress((Path(__file__).parent / "asyncapi-3.0.0-schema.json.gz").read_bytes()))


class Address(BaseModel):
    street: str
    city: str


class Order(BaseModel):
    id: int
    ship_to: Address
    note: str | None = None


class Invoice(BaseModel):
    order_id: int
    total: float


def make_app() -> App:
    app = App("memory://", title="shop", version="1.2.3", description="orders in, invoices out")

    @app.subscriber("orders", group="billing", schema=Order)
    @app.publisher("invoices")
    async def bill(order: Order) -> Invoice:
        """Bill an order."""
        return Invoice(order_id=order.id, total=1)

    @app.subscriber("orders", group="audit")
    async def audit(body: bytes) -> None: ...

    shipping = Router()

    @shipping.subscriber("invoices", group="shipping", schema=Invoice)
    def ship(invoice: Invoice) -> None: ...

    app.include_router(shipping)
    app.publisher("alerts", description="operator alerts")
    return app


def validate(doc: dict[str, Any]) -> None:
    jsonschema.Draft7Validator(SCHEMA).validate(doc)


URLS = [
    "memory://",
    "kafka://127.0.0.1:9092",
    "amqp://guest:guest@127.0.0.1:5672/shop",
    "sqs://?endpoint_url=http://127.0.0.1:9324&region=elasticmq",
    "redis://127.0.0.1:6379/0",
    "nats://127.0.0.1:4222",
    "servicebus://ns.servicebus.windows.net?sas_key_name=k&sas_key=c2VjcmV0",
]


@pytest.mark.parametrize("url", URLS)
def test_the_document_is_valid_asyncapi_3_on_every_backend(url: str) -> None:
    doc = make_app().asyncapi(url)
    validate(doc)
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"] == {"title": "shop", "version": "1.2.3", "description": "orders in, invoices out"}
    assert set(doc["channels"]) == {"orders", "invoices", "alerts"}
    assert doc["channels"]["orders"]["x-unimq-groups"] == ["audit", "billing"]
    ops = doc["operations"]
    assert {k: v["action"] for k, v in ops.items()} == {
        "orders.receive.billing": "receive", "orders.receive.audit": "receive",
        "invoices.receive.shipping": "receive", "invoices.send": "send", "alerts.send": "send",
    }
    assert ops["orders.receive.billing"]["summary"] == "make_app.<locals>.bill"
    assert ops["orders.receive.billing"]["description"] == "Bill an order."
    # Payload schemas: nested models are components, referenced.
    schemas = doc["components"]["schemas"]
    assert set(schemas) >= {"Order", "Address", "Invoice"}
    assert schemas["Order"]["properties"]["ship_to"] == {"$ref": "#/components/schemas/Address"}
    assert doc["components"]["messages"]["Invoice"]["payload"] == {"$ref": "#/components/schemas/Invoice"}
    assert "c2VjcmV0" not in json.dumps(doc) and "guest:guest" not in json.dumps(doc)


def test_bindings_follow_the_backend() -> None:
    kafka = make_app().asyncapi("kafka://127.0.0.1:9092")
    assert kafka["servers"]["kafka"]["protocol"] == "kafka"
    assert kafka["channels"]["orders"]["bindings"]["kafka"]["topic"] == "orders"
    assert kafka["operations"]["orders.receive.billing"]["bindings"]["kafka"]["groupId"]["enum"] == ["billing"]

    amqp = make_app().asyncapi("amqp://guest:guest@127.0.0.1:5672/shop")
    assert amqp["channels"]["orders"]["bindings"]["amqp"]["exchange"]["vhost"] == "shop"

    sqs = make_app().asyncapi("sqs://?endpoint_url=http://127.0.0.1:9324&region=elasticmq")
    binding = sqs["channels"]["orders"]["bindings"]["sqs"]
    assert binding["queue"]["name"] == "orders"
    assert binding["deadLetterQueue"]["name"] == sqs["channels"]["orders"]["x-unimq-dead-letter"]

    nats = make_app().asyncapi("nats://127.0.0.1:4222")
    assert nats["operations"]["invoices.receive.shipping"]["bindings"]["nats"]["queue"] == "shipping"

    redis = make_app().asyncapi("redis://127.0.0.1:6379/0")
    assert redis["channels"]["orders"]["x-unimq-dead-letter"] == "orders:dlq"


def test_the_validator_rejects_a_broken_document() -> None:
    """The schema check is live: a receive operation without its action is refused."""
    doc = make_app().asyncapi("kafka://127.0.0.1:9092")
    broken = copy.deepcopy(doc)
    del broken["operations"]["orders.receive.billing"]["action"]
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)
    wrong_binding = copy.deepcopy(doc)
    wrong_binding["channels"]["orders"]["bindings"]["kafka"]["partitions"] = "many"
    with pytest.raises(jsonschema.ValidationError):
        validate(wrong_binding)
