"""What an admin creates so that agents can run with ``connect(..., provision=False)``.

Under the permissions ``eventwire_security.compile_permissions`` gives an agent's NATS user,
the agent may not create streams, buckets or consumers (a consumer is a read of the whole
stream, SECURITY.md). An admin connects with ``provision=True`` (which creates the streams
and buckets) and calls :func:`provision_agent` for each agent: the registry and keyring
buckets, and one durable consumer per pattern the policy lets the agent consume, named as
the agent's SDK looks for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import nats.js.errors

from eventwire_security import consumer_filters

from ._errors import ConfigError, StreamConfigError
from ._keyring_store import open_keyring_bucket
from ._options import consumer_config, durable_name, options_of
from ._partitions import consumer_plan

if TYPE_CHECKING:
    from typing import Unpack

    from eventwire_security import Actor, Policy

    from ._bus import Bus
    from ._options import DeliveryKeywords, SubscribeOptions


async def provision_agent(
    bus: Bus,
    actor: Actor,
    policy: Policy | None = None,
    *,
    options: SubscribeOptions | None = None,
    **keywords: Unpack[DeliveryKeywords],
) -> list[str]:
    """Create (or keep, if identical) ``actor``'s consumers on ``bus``'s events stream,
    and the registry and keyring buckets if absent.

    ``policy`` defaults to the bus's. The consumers are configured by ``options`` (with
    ``keywords`` applied, e.g. ``retry=...``, ``ack_wait=...``, ``start=...``): the agent
    must subscribe with the same ``retry`` and ``ack_wait``, and under its agent name as
    ``durable`` (what :class:`Agent` does): a bind-only subscription checks them. Returns
    the consumer names, which are the ones ``compile_permissions`` grants.
    """
    chosen = options_of(options, keywords)
    policy = policy if policy is not None else bus.policy
    if policy is None:
        raise ConfigError("provision_agent needs a policy (or a bus with one)")
    if not bus.provisions:
        raise ConfigError("provision consumers from a bus connected with provision=True")
    js, names = bus.jetstream, []
    await bus.registry()
    await open_keyring_bucket(js, bus.root, replicas=bus.replicas)
    for pattern in consumer_filters(policy, actor):
        plan = consumer_plan(
            bus.root, pattern, durable_name(actor.agent, pattern), bus.partitions, None
        )
        config = consumer_config(bus.root, pattern, plan, chosen, reserve=True)
        try:
            await js.add_consumer(bus.stream, config)
        except nats.js.errors.BadRequestError as exc:
            raise StreamConfigError(
                f"consumer {plan.name!r} exists with other settings: {exc.description}"
            ) from None
        names.append(plan.name)
    return names
