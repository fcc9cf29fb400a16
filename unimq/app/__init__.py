"""The application layer: decorated handlers, routers, middlewares, a runner, AsyncAPI and FastAPI.

    app = unimq.App("memory://")

    @app.subscriber("orders", group="billing", schema=Order)
    @app.publisher("invoices")
    async def bill(order: Order) -> Invoice: ...
"""

from unimq.app.core import App, AppProducer, Publisher, Router, Subscriber
from unimq.app.middleware import Middleware

__all__ = ["App", "AppProducer", "Middleware", "Publisher", "Router", "Subscriber"]
