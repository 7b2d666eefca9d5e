"""Compile a :class:`~eventwire_security._policy.Policy` into nats-server user permissions.

The server enforces what an agent's NATS user may publish and subscribe to, so a client that
skips the SDK is refused too. What it can and cannot express:

* Publish: the policy's allowed publish patterns (``<root>.`` prefixed) and its explicit
  denies are exact server rules (the server also lets a deny win over an allow).
* Consume: events reach an agent through pull consumers, delivered to the agent's reply inbox,
  so a subscribe permission cannot limit them. Consume is enforced by *which consumers exist*:
  an admin creates, for each pattern of :func:`consumer_filters`, a durable consumer named
  :func:`consumer_name` with that filter, and the agent may only pull from and ack its own
  consumers. A deny narrower than an allow (allow ``knowledge.>``, deny
  ``knowledge.secret.*``) cannot be expressed by a consumer filter (filters only include), so
  those events are delivered and the SDK's consume check must refuse them.
* NATS wildcards are whole tokens only: ``summarizer-*`` is a literal, not a prefix. Each
  consumer the agent may use is therefore listed by name in the JetStream API permissions.
* No ``$JS.API.>``: an agent cannot create consumers, read streams (``STREAM.MSG.GET``,
  ``DIRECT.GET``) or pull from another agent's consumer (SECURITY.md).
* With the shared ``_INBOX.>`` prefix (the NATS default) any agent of the account may
  subscribe to every inbox and so read other agents' deliveries and replies, and publish fake
  replies. ``private_inbox=True`` (the default) gives each agent its own prefix
  (:func:`private_inbox_prefix`, to pass as ``eventwire.connect(inbox_prefix=...)``) and
  replaces the ``_INBOX.>`` publish right by ``allow_responses`` (one reply to each request
  the agent received).
* Everything else the SDK does on an agent's behalf (replay claims, idempotency records,
  dead letters, audit records, registry entries) is granted under names that start with the
  agent's consumer names or its agent name; see :func:`_jetstream_rights`. The SDK then runs
  with ``connect(..., provision=False)``: it binds to what an admin created and creates
  nothing.
* Workflows: only an actor holding the role :data:`ORCHESTRATOR_ROLE` (``"orchestrator"``,
  ``roles`` of the agent in the deployment, ``role:orchestrator`` in the policy) may append
  to workflow histories (``<root>.custom.es.workflow.>``) and schedule timers
  (``<root>.wftimer.at.>``), and it binds to the timers stream's consumer ``wf-timers``. Every
  other actor gets both as explicit publish denies, which win over any policy allow (e.g.
  ``custom.>``): the server refuses a forged history event or timer; the signature check on
  load (only trusted orchestrators' events) stays as the second line of defence.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from ._errors import SecurityError
from ._keys import check_name
from ._layout import (
    DEFAULT_ROOT,
    SHARED_INBOX,
    TIMERS_CONSUMER,
    audit_stream_name,
    audit_subject,
    consumer_name,
    direct_subject,
    dlq_stream_name,
    dlq_subject,
    events_stream_name,
    inbox_prefix,
    is_name,
    keyed_publish_pattern,
    keyring_bucket,
    kv_stream_name,
    processed_bucket,
    registry_bucket,
    seen_bucket,
    to_wire,
    wftimer_subjects,
    wftimers_stream_name,
    workflow_history_subjects,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._policy import Actor, Policy

__all__ = [
    "DEFAULT_ROOT",
    "ORCHESTRATOR_ROLE",
    "Permissions",
    "ServerConfigError",
    "ServerOptions",
    "SubjectPermissions",
    "compile_permissions",
    "consumer_filters",
    "consumer_name",
    "private_inbox_prefix",
    "render_server_config",
]

ORCHESTRATOR_ROLE = "orchestrator"  # the role that may advance workflows
_UNQUOTABLE = re.compile(r'["\\\x00-\x1f\x7f]')
_PASSWORD = re.compile(r"\A[\x21\x23-\x5b\x5d-\x7e]{1,256}\Z")  # printable ASCII, no " \ space


class ServerConfigError(SecurityError, ValueError):
    """An input to the permission compiler or config renderer is unusable; ``field`` says which."""

    def __init__(self, detail: str, *, field: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.detail = detail
        self.field = field


class SubjectPermissions(TypedDict):
    allow: list[str]
    deny: list[str]


class Permissions(TypedDict):
    """nats-server user permissions (the config / JSON shape)."""

    publish: SubjectPermissions
    subscribe: SubjectPermissions
    allow_responses: NotRequired[bool]


def consumer_filters(policy: Policy, actor: Actor, *, root: str | None = None) -> list[str]:
    """The filter subjects of the consumers an admin creates for ``actor``.

    These are the actor's allowed consume patterns (logical, or wire subjects when ``root``
    is given), dropping only exact duplicates, patterns another allowed pattern contains, and
    patterns an explicit deny covers entirely. A deny *narrower* than an allow cannot be
    expressed as a consumer filter: those events are delivered, and the SDK's consume check
    refuses them.
    """
    allowed = policy.grants(actor, "consume").allow
    if root is None:
        return list(allowed)
    check_name("root", root)
    return [to_wire(root, pattern) for pattern in allowed]


def private_inbox_prefix(actor: Actor) -> str:
    """The agent's own inbox prefix, used with ``compile_permissions(private_inbox=True)``."""
    return inbox_prefix(actor.agent)


def _consumer_names(policy: Policy, actor: Actor, consumers: Sequence[str] | None) -> list[str]:
    if consumers is None:
        return [consumer_name(actor.agent, pattern) for pattern in consumer_filters(policy, actor)]
    if isinstance(consumers, str):
        raise ServerConfigError("expected a sequence of names, not a string", field="consumers")
    for name in consumers:
        if not is_name(name):
            raise ServerConfigError(f"{name!r} is not a consumer name", field="consumers")
    return list(dict.fromkeys(consumers))


def _jetstream_rights(actor: Actor, root: str, consumers: Sequence[str]) -> list[str]:
    """The JetStream subjects an agent's SDK needs in bind-only mode: no more (never
    ``$JS.API.>``). Per consumer of its own: bind, pull and ack on the events stream; claim
    ids in the replay bucket and read claims back, record and look up handled ids in the
    idempotency bucket, and dead-letter, all under keys that start with the consumer's
    name. The registry and the keyring buckets are readable by the whole tenant (an agent
    lists live agents and follows the keyring); the audit stream can be appended to and
    its head read.
    """
    stream, audit = events_stream_name(root), audit_stream_name(root)
    seen, processed = seen_bucket(root), processed_bucket(root)
    rights = [f"$JS.API.STREAM.INFO.{name}" for name in (stream, dlq_stream_name(root), audit)]
    rights += [f"$JS.API.STREAM.INFO.{kv_stream_name(name)}" for name in (seen, processed)]
    for name in consumers:
        rights += [
            f"$JS.API.CONSUMER.INFO.{stream}.{name}",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}",
            f"$JS.ACK.{stream}.{name}.>",
            f"$KV.{seen}.{name}.>",
            f"$JS.API.DIRECT.GET.KV_{seen}.$KV.{seen}.{name}.>",
            f"$KV.{processed}.{name}.>",
            f"$JS.API.DIRECT.GET.{kv_stream_name(processed)}.$KV.{processed}.{name}.>",
            dlq_subject(root, name),
        ]
    # Audit: append a record after the head it read (hash chain); no delete, no purge.
    rights += [audit_subject(root), f"$JS.API.STREAM.MSG.GET.{audit}"]
    for bucket in (registry_bucket(root), keyring_bucket(root)):
        rights += _readable_bucket(bucket)
    # Registry: put (or purge) its own entries only, keyed <agent>.<instance>.
    rights.append(f"$KV.{registry_bucket(root)}.{actor.agent}.>")
    return rights


def _readable_bucket(bucket: str) -> list[str]:
    """Bind to a KV bucket, get keys and list or watch them (an ordered consumer)."""
    stream = kv_stream_name(bucket)
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def _workflow_rights(actor: Actor, root: str, partitioned: bool) -> tuple[list[str], list[str]]:
    """(publish allows, publish denies) of workflows: an orchestrator appends to histories,
    schedules timers and pulls the due ones; anyone else is denied both subjects."""
    history, timers = workflow_history_subjects(root), wftimer_subjects(root)
    keyed = [keyed_publish_pattern(root, "custom.es.workflow.>")] if partitioned else []
    if ORCHESTRATOR_ROLE not in actor.roles:
        return [], [history, *keyed, timers]
    stream = wftimers_stream_name(root)
    allow = [
        history, *keyed, f"{root}.wftimer.at.>",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.CONSUMER.INFO.{stream}.{TIMERS_CONSUMER}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{TIMERS_CONSUMER}",
        f"$JS.ACK.{stream}.{TIMERS_CONSUMER}.>",
    ]  # fmt: skip
    return allow, []


def compile_permissions(
    policy: Policy,
    actor: Actor,
    *,
    root: str = DEFAULT_ROOT,
    consumers: Sequence[str] | None = None,
    private_inbox: bool = True,
    partitioned: bool = False,
) -> Permissions:
    """The nats-server permissions of ``actor``'s NATS user under ``policy``.

    ``consumers``: the durable consumers the agent may pull from and ack (default: one per
    :func:`consumer_filters` pattern, named by :func:`consumer_name`). ``private_inbox``
    (the default) confines the agent to its own inbox prefix; ``False`` grants the shared
    ``_INBOX.>``, which lets agents of the account read each other's deliveries.
    ``partitioned``: the events stream partitions keyed events (``connect(partitions=n)``):
    every publish rule and deny also covers the keyed layout ``<root>.keyed.*.<pattern>``.
    Workflow histories and timers: only for the role :data:`ORCHESTRATOR_ROLE`, denied to
    every other actor whatever the policy allows.
    """
    check_name("root", root)
    names = _consumer_names(policy, actor, consumers)
    publish, consume = policy.grants(actor, "publish"), policy.grants(actor, "consume")
    inbox = private_inbox_prefix(actor) if private_inbox else SHARED_INBOX
    publish_allow = _on_wire(root, publish.allow, partitioned)
    publish_allow.append(to_wire(root, direct_subject(actor.tenant, "*")))
    if not private_inbox:
        publish_allow.append(f"{SHARED_INBOX}.>")
    publish_allow += _jetstream_rights(actor, root, names)
    workflow_allow, workflow_deny = _workflow_rights(actor, root, partitioned)
    publish_deny = [*_on_wire(root, publish.deny, partitioned), *workflow_deny]
    permissions: Permissions = {
        "publish": {
            "allow": list(dict.fromkeys([*publish_allow, *workflow_allow])),
            "deny": list(dict.fromkeys(publish_deny)),
        },
        "subscribe": {
            "allow": [f"{inbox}.>", to_wire(root, direct_subject(actor.tenant, actor.agent))],
            "deny": [to_wire(root, pattern) for pattern in consume.deny],
        },
    }
    if private_inbox:
        permissions["allow_responses"] = True
    return permissions


def _on_wire(root: str, patterns: Sequence[str], partitioned: bool) -> list[str]:
    """``patterns`` under ``root``, each followed by its keyed layout when ``partitioned``."""
    wire: list[str] = []
    for pattern in patterns:
        wire.append(to_wire(root, pattern))
        if partitioned:
            wire.append(keyed_publish_pattern(root, pattern))
    return wire


def _check_users(accounts: Mapping[str, Sequence[tuple[str, str, Mapping[str, Any]]]]) -> None:
    seen: set[str] = set()
    for account, users in accounts.items():
        check_name("account", account)
        for user, password, permissions in users:
            check_name("user", user)
            if user in seen:
                raise ServerConfigError(f"user {user!r} appears twice", field="user")
            seen.add(user)
            if not isinstance(password, str) or not _PASSWORD.match(password):
                raise ServerConfigError(
                    f"password of {user!r} must be 1-256 printable ASCII characters "
                    'without space, " or \\',
                    field="password",
                )
            if not isinstance(permissions, Mapping):
                raise ServerConfigError(
                    f"permissions of {user!r} must be a mapping", field="permissions"
                )


def _quoted(value: str, field: str) -> str:
    if not isinstance(value, str) or not value or _UNQUOTABLE.search(value):
        raise ServerConfigError(
            f"{value!r} must be a non-empty string without quotes, "
            "backslashes or control characters",
            field=field,
        )
    return f'"{value}"'


class ServerOptions(TypedDict, total=False):
    """The keyword options of :func:`render_server_config` beyond the store and the port,
    for callers that pass them through (``Deployment.render(**options)``)."""

    host: str
    tls_cert: str | None
    tls_key: str | None
    tls_ca: str | None
    tls_verify: bool
    server_name: str | None
    cluster_name: str | None
    cluster_port: int | None
    routes: Sequence[str]
    monitor_port: int | None


def render_server_config(
    accounts: Mapping[str, Sequence[tuple[str, str, Mapping[str, Any]]]],
    *,
    store_dir: str,
    port: int = -1,
    host: str = "127.0.0.1",
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_ca: str | None = None,
    tls_verify: bool = False,
    server_name: str | None = None,
    cluster_name: str | None = None,
    cluster_port: int | None = None,
    routes: Sequence[str] = (),
    monitor_port: int | None = None,
) -> str:
    """A nats-server config: one JetStream-enabled account per tenant, its users and rights.

    ``accounts`` maps a tenant to ``(user, password, permissions)`` entries (permissions as
    :func:`compile_permissions` returns them). ``port=-1`` lets the server pick a free port
    (read it from ``--ports_file_dir``). Values are written as JSON, which the nats-server
    config format accepts. Passwords may be bcrypt hashes (``$2a$...``); the text holds
    secrets, so write it with mode 0600.

    TLS: with ``tls_cert`` and ``tls_key`` (PEM files, paths as the server sees them)
    clients must use TLS; ``tls_ca`` with ``tls_verify`` also requires a client certificate
    signed by that CA. Cluster: ``server_name`` (unique per node), ``cluster_name``,
    ``cluster_port`` (listening on ``host``) and ``routes`` (``nats-route://HOST:PORT`` of
    the other nodes). With TLS, routes use it too, both ways verified against ``tls_ca``
    (which is then required), so only nodes holding a certificate of that CA join.
    ``monitor_port``: the HTTP monitoring endpoint (``/healthz``), on 127.0.0.1 only.
    """
    _check_users(accounts)
    body = {
        name: {
            "jetstream": "enabled",
            "users": [
                {"user": user, "password": password, "permissions": dict(permissions)}
                for user, password, permissions in users
            ],
        }
        for name, users in accounts.items()
    }
    lines = [
        "# nats-server config generated by eventwire_security.render_server_config",
        f"host: {_quoted(host, 'host')}",
        f"port: {_port(port, 'port', free=True)}",
        f"jetstream: {{store_dir: {_quoted(store_dir, 'store_dir')}}}",
    ]
    if server_name is not None:
        lines.append(f"server_name: {_quoted(_server_name(server_name), 'server_name')}")
    if monitor_port is not None:
        lines.append(f'http: "127.0.0.1:{_port(monitor_port, "monitor_port")}"')
    tls = _tls_block(tls_cert, tls_key, tls_ca, tls_verify)
    if tls:
        lines.append(f"tls: {tls}")
    lines += _cluster_lines(
        cluster_name, host=host, port=cluster_port, routes=routes, ca=tls_ca, tls=tls,
        server_name=server_name,
    )  # fmt: skip
    lines.append(f"accounts: {json.dumps(body, indent=2, ensure_ascii=False)}")
    return "\n".join(lines) + "\n"


_SERVER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ROUTE = re.compile(r"nats-route://[A-Za-z0-9.-]{1,253}:\d{1,5}")
_TLS_TIMEOUT = 2  # seconds for a handshake (the server's default, 0.5 s, is tight on a busy host)


def _port(port: int, field: str, *, free: bool = False) -> int:
    low = -1 if free else 1
    if type(port) is not int or not low <= port <= 65535:
        hint = " (-1 for any free port)" if free else ""
        raise ServerConfigError(f"{port!r} is not a port{hint}", field=field)
    return port


def _server_name(name: str, field: str = "server_name") -> str:
    if not isinstance(name, str) or not _SERVER_NAME.fullmatch(name):
        raise ServerConfigError(f"{name!r} is not a name (1-64 of A-Z a-z 0-9 _ . -)", field=field)
    return name


def _tls_block(cert: str | None, key: str | None, ca: str | None, verify: bool) -> str:
    """The ``tls {...}`` value for the client port, or ``""`` without TLS."""
    if not isinstance(verify, bool):
        raise ServerConfigError(f"{verify!r} is not a bool", field="tls_verify")
    if cert is None and key is None:
        if ca is not None or verify:
            raise ServerConfigError("needs tls_cert and tls_key", field="tls_ca")
        return ""
    if cert is None or key is None:
        raise ServerConfigError("tls_cert and tls_key go together", field="tls_cert")
    if verify and ca is None:
        raise ServerConfigError("verifying clients needs tls_ca", field="tls_verify")
    parts = [f"cert_file: {_quoted(cert, 'tls_cert')}", f"key_file: {_quoted(key, 'tls_key')}"]
    if ca is not None:
        parts.append(f"ca_file: {_quoted(ca, 'tls_ca')}")
    parts += [f"verify: {'true' if verify else 'false'}", f"timeout: {_TLS_TIMEOUT}"]
    return "{" + ", ".join(parts) + "}"


def _cluster_lines(
    name: str | None,
    *,
    host: str,
    port: int | None,
    routes: Sequence[str],
    ca: str | None,
    tls: str,
    server_name: str | None,
) -> list[str]:
    """The ``cluster {...}`` block (``tls``: the client port's block), or nothing without
    ``name``."""
    if isinstance(routes, str):
        raise ServerConfigError("expected a sequence of route URLs", field="routes")
    if name is None:
        if port is not None or routes:
            raise ServerConfigError("routes and a cluster port need a name", field="cluster_name")
        return []
    if server_name is None:
        raise ServerConfigError("each node of a cluster needs its own name", field="server_name")
    if port is None:
        raise ServerConfigError("a cluster needs a port for its routes", field="cluster_port")
    for route in routes:
        if not isinstance(route, str) or not _ROUTE.fullmatch(route):
            raise ServerConfigError(f"{route!r} is not nats-route://HOST:PORT", field="routes")
    listen = f"{host}:{_port(port, 'cluster_port')}"
    lines = [
        "cluster: {",
        f"  name: {_quoted(_server_name(name, 'cluster_name'), 'cluster_name')}",
        f"  listen: {_quoted(listen, 'host')}",
        "  # clients list every node's URL; a node's own addresses may not be reachable",
        "  no_advertise: true",
        f"  routes: {json.dumps(list(routes))}",
    ]
    if tls:
        if ca is None:
            raise ServerConfigError("TLS routes verify their peers: needs tls_ca", field="tls_ca")
        route_tls = tls.replace("verify: false", "verify: true")
        lines.append(f"  tls: {route_tls}")
    return [*lines, "}"]
