"""Components that don't know each other, talking through an in-process bus.

* The order service creates orders on request (``orders.create``), announces each one as a
  typed ``OrderCreated`` event, keeps a retained summary on ``orders.stats`` and answers
  ``orders.get``.
* Billing charges every order. It runs as two workers in the queue group ``billing``, so each
  order is charged exactly once, by one of them.
* The dashboard reads the retained summary (it arrives at once, although it was published
  before the dashboard subscribed) and asks the order service about one order.

Each component knows topics and event types, never another component: each takes an
``EventChannel``, so it would run unchanged against a broker. Only ``main`` wires them up.

Run: ``python examples/two_components.py``
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import trio

from trio_realtime import event_type, open_bus

if TYPE_CHECKING:
    from trio_realtime import Event, EventChannel


@event_type("orders.created")
@attrs.frozen(kw_only=True)
class OrderCreated:
    """An order was placed."""

    order_id: int
    customer: str
    total: float


async def order_service(
    channel: EventChannel, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Create orders on request; announce them; keep a retained summary."""
    orders: dict[int, OrderCreated] = {}

    async def create(request: Event) -> int:
        order = OrderCreated(
            order_id=len(orders) + 1,
            customer=request.data["customer"],
            total=request.data["total"],
        )
        orders[order.order_id] = order
        await channel.publish(order)
        summary = {"orders": len(orders), "revenue": sum(o.total for o in orders.values())}
        await channel.publish("orders.stats", summary, retain=True)
        return order.order_id

    def get(request: Event) -> dict[str, Any]:
        return attrs.asdict(orders[request.data])

    async with channel.serve("orders.create", create), channel.serve("orders.get", get):
        task_status.started()
        await trio.sleep_forever()


async def billing_worker(
    channel: EventChannel,
    name: str,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Charge each order this worker is given, and announce the charge."""
    async with channel.subscribe(OrderCreated, group="billing") as orders:
        task_status.started()
        async for event in orders:
            order: OrderCreated = event.data
            print(f"{name}: charged order {order.order_id} for {order.customer}: {order.total:.2f}")
            await channel.publish(
                "billing.charged", {"order_id": order.order_id, "amount": order.total}
            )


async def dashboard(channel: EventChannel) -> None:
    """Show the retained order summary and the details of order 2."""
    async with channel.subscribe("orders.stats") as stats:
        summary = (await stats.receive()).data  # the retained summary, delivered at once
    print(f"dashboard: {summary['orders']} orders, {summary['revenue']:.2f} in total")
    reply = await channel.request("orders.get", 2)
    print(f"dashboard: order 2 is {reply.data['customer']}'s, {reply.data['total']:.2f}")


async def main() -> None:
    """Wire the components to one bus, place three orders, then show the dashboard."""
    async with open_bus(source="shop") as bus, trio.open_nursery() as nursery:
        await nursery.start(order_service, bus)
        await nursery.start(billing_worker, bus, "billing-1")
        await nursery.start(billing_worker, bus, "billing-2")

        async with bus.subscribe("billing.charged") as charged:
            for customer, total in [("alice", 25.0), ("bob", 12.5), ("carol", 43.0)]:
                await bus.request("orders.create", {"customer": customer, "total": total})
                # Wait until the order is billed before placing the next one, so that the
                # workers' lines come out in a fixed order.
                await charged.receive()

        await dashboard(bus)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
