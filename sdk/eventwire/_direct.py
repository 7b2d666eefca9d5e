"""Direct request-reply between agents over core NATS, signed both ways.

A request is an event signed by the caller on ``direct.<tenant>.<target>``; the reply is an
event signed by the target on ``direct.<tenant>.<target>.reply`` whose ``causationid`` is the
request's id. The caller accepts a reply only from the target it asked.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import nats.errors

from eventwire_security import Principal

from ._codec import Rejection
from ._errors import (
    InvalidEvent,
    NoResponders,
    RemoteError,
    ReplyRejected,
    RequestTimeout,
    checked_name,
)
from ._kinds import ErrorReported
from ._observe import current_traceparent, observed_request, observed_responder
from ._subjects import direct_subject, reply_subject, to_wire

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription as NatsSubscription

    from eventwire_security import Identity

    from ._codec import Codec
    from ._event import Event, Publishable

    RequestHandler = Callable[[Event], Awaitable[Publishable]]

log = logging.getLogger("eventwire.direct")
REFUSED = "refused"
HANDLER_FAILED = "handler-failed"


@observed_request
async def request(
    nc: Client,
    codec: Codec,
    identity: Identity,
    target: str,
    item: Publishable,
    *,
    timeout: float,
) -> Event:
    """Send ``item`` to ``target`` and return its verified reply."""
    checked_name("target", target)
    tenant = codec.tenant
    signed = codec.sign(
        item, identity, subject=direct_subject(tenant, target), traceparent=current_traceparent()
    )
    try:
        msg = await nc.request(
            signed.wire_subject, signed.body, timeout=timeout, headers=signed.headers
        )
    except nats.errors.NoRespondersError:
        raise NoResponders("no instance is serving requests", target=target) from None
    except nats.errors.TimeoutError:
        raise RequestTimeout(f"no reply within {timeout}s", target=target) from None
    reply = codec.open(msg.data, msg.headers, to_wire(codec.root, reply_subject(tenant, target)))
    codec.record(reply)
    if isinstance(reply, Rejection):
        raise ReplyRejected(reply.detail, target=target, reason=reply.reason)
    if reply.source != Principal(tenant, target).source:
        raise _refuse(codec, "wrong-responder", f"signed by {reply.source}", target)
    error = _remote_error(reply)
    if error is not None and (reply.causationid in (signed.event_id, None)):
        raise RemoteError(error.message, target=target, code=error.code)
    if reply.causationid != signed.event_id:
        raise _refuse(codec, "wrong-request", "reply is for another request", target)
    return reply


def _refuse(codec: Codec, reason: str, detail: str, target: str) -> ReplyRejected:
    """Count a verified reply that is still not acceptable, and build the error to raise."""
    wire = to_wire(codec.root, reply_subject(codec.tenant, target))
    codec.record(Rejection(reason, detail, wire))
    return ReplyRejected(detail, target=target, reason=reason)


def _remote_error(reply: Event) -> ErrorReported | None:
    if reply.type != ErrorReported.event_type:
        return None
    try:
        return reply.parse(ErrorReported)
    except InvalidEvent:
        return None


async def serve_requests(
    nc: Client, codec: Codec, identity: Identity, handler: RequestHandler
) -> NatsSubscription:
    """Answer requests to ``identity``'s agent; instances share the work (queue group)."""
    handler = observed_responder(handler)
    principal = identity.principal
    wire = to_wire(codec.root, direct_subject(principal.tenant, principal.agent))

    async def on_request(msg: Msg) -> None:
        if not msg.reply:
            return
        request_event = codec.open(msg.data, msg.headers, msg.subject)
        codec.record(request_event)
        if isinstance(request_event, Rejection):
            answer: Publishable = ErrorReported(
                severity="warning",
                message="request refused",
                code=REFUSED,
                details={"reason": request_event.reason},
            )
            causation, correlation = None, None
        else:
            causation, correlation = request_event.id, request_event.correlationid
            try:
                answer = await handler(request_event)
            except Exception as exc:
                log.exception("request handler of %s failed", principal.source)
                answer = ErrorReported(
                    severity="error", message=f"{type(exc).__name__}: {exc}", code=HANDLER_FAILED
                )
        reply = codec.sign(
            answer,
            identity,
            subject=reply_subject(principal.tenant, principal.agent),
            causation_id=causation,
            correlation_id=correlation,
        )
        # not msg.respond(): nats-py would send the request's headers with the reply
        await nc.publish(msg.reply, reply.body, headers=reply.headers)

    sub = await nc.subscribe(wire, queue=principal.agent, cb=on_request)
    # Make sure the server has the subscription before callers are told we serve. One
    # flush is not enough with nats-py 2.16: its PING can overtake the buffered SUB.
    await nc.flush()
    await nc.flush()
    return sub
