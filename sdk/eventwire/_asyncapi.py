"""The AsyncAPI 3.0 document of an eventwire application.

Channels come from the subject table (the events stream's families, direct requests, the
dead-letter and audit streams; see :mod:`eventwire._subjects`) and from the agents'
handlers: each pattern an agent consumes is a channel with a ``receive`` operation of that
agent, each capability's one-of-N work a shared channel, and an agent with an
``on_request`` handler a direct-request channel with a reply. Messages are structured-mode
CloudEvents (the payload is the CloudEvents JSON document, ``data`` the JSON Schema of the
event kind from pydantic) with the ``Ew-Signature`` header; the security schemes describe
the Ed25519 JWS signature and the NATS user credentials (and TLS client certificates).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from eventwire_security._layout import tokens_intersect

from ._codec import CLOUDEVENTS_JSON, MSG_ID_HEADER, SIGNATURE_HEADER
from ._errors import InvalidArgument
from ._kinds import KINDS
from ._subjects import DEFAULT_ROOT, FAMILIES, check_pattern, check_token, direct_subject
from ._work import work_pattern, work_subject

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from ._agent import Agent
    from ._kinds import EventData

__all__ = ["asyncapi_document"]

ASYNCAPI_VERSION = "3.0.0"
_SCHEMAS = "#/components/schemas/"
_REF_TEMPLATE = _SCHEMAS + "{model}"
# The subject patterns of the built-in kinds (the README's event table).
KIND_PATTERNS: dict[str, str] = {
    "io.eventwire.knowledge.shared": "knowledge.>",
    "io.eventwire.help.requested": "capability.*.help",
    "io.eventwire.task.completed": "task.*.completed",
    "io.eventwire.error.reported": "error.*",
    "io.eventwire.status.update": "status.*",
    "io.eventwire.agent.lifecycle": "agent.lifecycle.*",
}
_ID = re.compile(r"[^\w.\-]")
_TEXT = {"type": "string", "minLength": 1}
REQUIRED = (
    "specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data",
    "tenant", "root", "iat", "correlationid",
)  # fmt: skip


def _text(max_chars: int, description: str) -> dict[str, Any]:
    return {**_TEXT, "maxLength": max_chars, "description": description}


def envelope_schema() -> dict[str, Any]:
    """The CloudEvents 1.0 JSON document of wire format v1 (structured mode), with
    eventwire's extensions; ``data`` is refined per message."""
    seconds = {"type": "integer", "minimum": 0, "maximum": 2**53}
    return {
        "type": "object",
        "description": "A CloudEvents 1.0 event in structured mode (the message body is this "
        "JSON document, signed byte for byte by the Ew-Signature header). No other members.",
        "additionalProperties": False,
        "required": list(REQUIRED),
        "properties": {
            "specversion": {"const": "1.0"},
            "id": _text(256, "Event id, a UUIDv7 when eventwire makes it."),
            "source": _text(129, "<tenant>/<agent>: the signing key's owner."),
            "type": _text(256, "CloudEvents type, e.g. io.eventwire.knowledge.shared."),
            "subject": _text(1039, "The logical subject, without the root."),
            "time": {"type": "string", "format": "date-time", "description": "RFC 3339."},
            "datacontenttype": {
                "enum": ["application/json", "application/jose+json"],
                "description": "application/jose+json when data is sealed (a JWE).",
            },
            "data": {"description": "The event kind's data (or a JWE when sealed)."},
            "tenant": _text(64, "The tenant (NATS account) it was published in."),
            "root": _text(64, "The subject root it was published under."),
            "iat": {**seconds, "description": "When it was signed (seconds since the epoch)."},
            "exp": {**seconds, "description": "Optional expiry (seconds since the epoch)."},
            "correlationid": _text(256, "The flow's id (the first event's id)."),
            "causationid": _text(256, "The id of the event this one reacts to."),
            "traceparent": _text(512, "W3C trace context of the publisher."),
            "partitionkey": _text(256, "Partition key (ordering per key)."),
        },
    }


def headers_schema() -> dict[str, Any]:
    """The NATS headers of a stored event: only the signature is trusted."""
    return {
        "type": "object",
        "required": [SIGNATURE_HEADER],
        "properties": {
            SIGNATURE_HEADER: {
                "type": "string",
                "pattern": r"^[A-Za-z0-9_-]+\.\.[A-Za-z0-9_-]+$",
                "description": "Detached JWS (RFC 7515 appendix F, unencoded payload RFC "
                '7797): BASE64URL(protected) ".." BASE64URL(signature); protected header '
                '{"alg":"Ed25519","b64":false,"crit":["b64"],"kid":"<RFC 7638 thumbprint>"}, '
                "signing the exact body bytes.",
            },
            "content-type": {"const": CLOUDEVENTS_JSON, "description": "A hint, not checked."},
            MSG_ID_HEADER: {
                "type": "string",
                "description": "De-duplication id: BASE64URL(SHA-256(signature part)).",
            },
        },
    }


def security_schemes() -> dict[str, Any]:
    return {
        "eventSignature": {
            "type": "asymmetricEncryption",
            "description": "Every event is signed with its agent's Ed25519 key (RFC 8032; "
            "fully-specified alg Ed25519, RFC 9864) as a detached JWS in the Ew-Signature "
            "header. Receivers verify it against a keyring before parsing, then check "
            "source, tenant, subject, time window and replay; sealed data is a JWE "
            "(ECDH-ES+A256KW, A256GCM) to chosen recipients.",
        },
        "natsUser": {
            "type": "userPassword",
            "description": "NATS user credentials of the tenant's account (one account per "
            "tenant; permissions compiled from the eventwire policy).",
        },
        "natsTls": {
            "type": "X509",
            "description": "TLS client certificate (eventwire tls init), where the "
            "deployment requires one.",
        },
    }


def channel_id(pattern: str) -> str:
    """A channel or operation id (``[\\w.-]``) for a logical pattern: ``*`` is ``any``,
    ``>`` is ``all``."""
    named = ".".join({"*": "any", ">": "all"}.get(token, token) for token in pattern.split("."))
    return _ID.sub("_", named)


def _summary(kind: type[EventData]) -> str:
    return (kind.__doc__ or kind.__name__).strip().splitlines()[0]


class _Document:
    """Collects channels, operations, messages and schemas; :meth:`render` the result."""

    def __init__(self, root: str, tenant: str, kinds: Mapping[type[EventData], str]) -> None:
        self.root = root
        self.tenant = tenant
        self.kinds = kinds
        self.channels: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, dict[str, Any]] = {}
        self.schemas: dict[str, Any] = {
            "CloudEvent": envelope_schema(),
            "EventwireHeaders": headers_schema(),
        }
        self._message("CustomEvent", "Any event: a CustomEvent or a kind of your own.", None)

    def _message(self, name: str, summary: str, kind: type[EventData] | None) -> None:
        refined: dict[str, Any] = {"type": "object", "properties": {}}
        if kind is not None:
            schema = kind.model_json_schema(ref_template=_REF_TEMPLATE)
            self.schemas.update(schema.pop("$defs", {}))
            self.schemas[name] = schema
            refined["properties"] = {
                "type": {"const": kind.event_type},
                "data": {"$ref": _SCHEMAS + name},
            }
        self.messages[name] = {
            "name": name,
            "title": name,
            "summary": summary,
            "contentType": CLOUDEVENTS_JSON,
            "headers": {"$ref": _SCHEMAS + "EventwireHeaders"},
            "payload": {"allOf": [{"$ref": _SCHEMAS + "CloudEvent"}, refined]},
            "correlationId": {
                "description": "The flow: every event of a flow carries its first event's id.",
                "location": "$message.payload#/correlationid",
            },
        }

    def add_kinds(self) -> None:
        for kind in self.kinds:
            self._message(kind.__name__, _summary(kind), kind)

    def channel(self, pattern: str, description: str, *, address: str | None = None) -> str:
        """The channel of a logical pattern (made once), with the messages that may travel
        on it: each kind whose subjects meet the pattern, and any custom event."""
        ident = channel_id(pattern)
        if ident not in self.channels:
            names = [
                kind.__name__
                for kind, kind_pattern in self.kinds.items()
                if tokens_intersect(pattern.split("."), kind_pattern.split("."))
            ]
            self.channels[ident] = {
                "address": address or f"{self.root}.{pattern}",
                "title": pattern,
                "description": description,
                "messages": {
                    name: {"$ref": f"#/components/messages/{name}"}
                    for name in [*names, "CustomEvent"]
                },
            }
        return ident

    def operation(self, ident: str, action: str, channel: str, summary: str) -> dict[str, Any]:
        keys = self.channels[channel]["messages"]
        op: dict[str, Any] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": summary,
            "messages": [{"$ref": f"#/channels/{channel}/messages/{key}"} for key in keys],
            "security": [{"$ref": "#/components/securitySchemes/eventSignature"}],
        }
        self.operations[_ID.sub("_", ident)] = op
        return op

    def add_subject_table(self) -> None:
        """A channel per family of the events stream, and the DLQ and audit streams."""
        for family in FAMILIES:
            self.channel(
                f"{family}.>",
                f"Every {family} event, stored in the events stream {self.root}-events.",
            )
        self.channel(
            "dlq.>", f"Dead letters (stream {self.root}-dlq): the original event with "
            "its headers as Ew-Original-*, the reason in Ew-Dlq-* headers.",
        )  # fmt: skip
        audit = f"{self.root}.audit.log"
        self.channels[channel_id("audit.log")] = {
            "address": audit,
            "title": "audit.log",
            "description": f"The hash-chained audit log (stream {self.root}-audit): compact "
            "JWS records of refusals and key and policy changes.",
            "messages": {"AuditRecord": {"$ref": "#/components/messages/AuditRecord"}},
        }
        self.messages["AuditRecord"] = {
            "name": "AuditRecord",
            "contentType": "application/jose",
            "payload": {"type": "string", "description": "A compact JWS (Ed25519)."},
        }

    def add_agent(self, agent: Agent) -> None:
        name = agent.name
        for pattern in agent.patterns():
            check_pattern(pattern)
            ident = self.channel(pattern, f"Events matching {pattern}.")
            self.operation(
                f"{name}.receive.{ident}", "receive", ident,
                f"{name} handles {pattern} (a durable consumer of its own).",
            )  # fmt: skip
        for capability in agent.capabilities:
            pattern = work_pattern(capability)
            ident = self.channel(
                pattern, f"One-of-N work of capability {capability}: each event is handled "
                "by exactly one live agent with it (publish(..., deliver='one')).",
            )  # fmt: skip
            self.operation(
                f"{name}.work.{capability}", "receive", ident,
                f"{name} serves {capability}'s work through the consumer it shares.",
            )  # fmt: skip
        if getattr(agent, "_on_request", None) is not None:
            self._direct(agent)
        self._sends(agent)

    def _sends(self, agent: Agent) -> None:
        """What the SDK publishes for the agent: its lifecycle, and its routes' events."""
        name = agent.name
        lifecycle = self.channel("agent.lifecycle.*", "Events matching agent.lifecycle.*.")
        self.operation(
            f"{name}.lifecycle", "send", lifecycle,
            f"{name} announces itself (agent.lifecycle.started / stopped; failed for a "
            "silent peer it detected).",
        )  # fmt: skip
        routes: Mapping[str, Any] = getattr(agent, "_routes", {})
        for pattern, rules in routes.items():
            for route in rules.routes:
                target = work_subject(route.to) if route.deliver == "one" else route.to
                ident = self.channel(target, f"Events routed to {target}.")
                self.operation(
                    f"{name}.route.{ident}", "send", ident,
                    f"{name} re-publishes {pattern} events where {route.when} holds "
                    f"(signed by {name}, the original as cause).",
                )  # fmt: skip

    def _direct(self, agent: Agent) -> None:
        logical = direct_subject(agent.tenant, agent.name)
        ident = self.channel(
            logical, f"Direct requests to {agent.name} (core NATS request-reply, not stored).",
        )  # fmt: skip
        reply = f"{ident}.reply"
        self.channels[reply] = {
            "address": None,
            "title": f"{logical} replies",
            "description": "The requester's inbox (the NATS reply subject); the reply is "
            f"signed by {agent.name} for {logical}.reply and names the request as its cause.",
            "messages": {"CustomEvent": {"$ref": "#/components/messages/CustomEvent"}},
        }
        op = self.operation(
            f"{agent.name}.request", "receive", ident, f"{agent.name} answers direct requests."
        )
        op["reply"] = {
            "channel": {"$ref": f"#/channels/{reply}"},
            "messages": [{"$ref": f"#/channels/{reply}/messages/CustomEvent"}],
        }

    def render(self, title: str, version: str, server: str) -> dict[str, Any]:
        url = urlsplit(server if "://" in server else f"nats://{server}")
        return {
            "asyncapi": ASYNCAPI_VERSION,
            "info": {
                "title": title,
                "version": version,
                "description": f"Signed CloudEvents over NATS JetStream (eventwire), tenant "
                f"{self.tenant!r}, subject root {self.root!r}. Patterns use NATS wildcards: "
                "* one token, > the rest.",
            },
            "defaultContentType": CLOUDEVENTS_JSON,
            "servers": {
                "nats": {
                    "host": url.netloc.rpartition("@")[2] or "127.0.0.1:4222",
                    "protocol": url.scheme or "nats",
                    "description": "NATS with JetStream; one account per tenant.",
                    "security": [
                        {"$ref": "#/components/securitySchemes/natsUser"},
                        {"$ref": "#/components/securitySchemes/natsTls"},
                    ],
                }
            },
            "channels": self.channels,
            "operations": self.operations,
            "components": {
                "schemas": self.schemas,
                "messages": self.messages,
                "securitySchemes": security_schemes(),
            },
        }


def _agents_of(agents: Iterable[object]) -> list[Agent]:
    from ._agent import Agent

    found = list(agents)
    for item in found:
        if not isinstance(item, Agent):
            raise InvalidArgument(f"not an Agent: {item!r}", field="agents")
    return found  # type: ignore[return-value]  # every item checked above


def asyncapi_document(  # noqa: PLR0913 - keywords only, each one part of the document
    agents: Iterable[Agent] = (),
    *,
    root: str = DEFAULT_ROOT,
    tenant: str = "default",
    title: str = "eventwire application",
    version: str = "1.0.0",
    server: str = "nats://127.0.0.1:4222",
    kinds: Mapping[type[EventData], str] | None = None,
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document (a JSON-ready dict) of an application made of ``agents``
    under subject ``root``: the subject table's channels, each agent's handlers,
    capabilities and direct requests as ``receive`` operations, messages with their
    kind's data schema, and the security schemes. ``kinds`` adds event kinds of your own
    (an :class:`EventData` subclass -> the logical pattern of its subjects)."""
    check_token(root, field="root")
    known: dict[type[EventData], str] = {KINDS[name]: p for name, p in KIND_PATTERNS.items()}
    for kind, pattern in (kinds or {}).items():
        known[kind] = check_pattern(pattern)
    document = _Document(root, tenant, known)
    document.add_kinds()
    document.add_subject_table()
    for agent in _agents_of(agents):
        document.add_agent(agent)
    return document.render(title, version, server)
