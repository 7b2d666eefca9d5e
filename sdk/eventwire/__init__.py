"""eventwire: signed, durable events between AI agents over NATS JetStream."""

import logging
from typing import TYPE_CHECKING

from eventwire_security import (
    Actor,
    Identity,
    Keyring,
    Policy,
    Principal,
    RecipientKey,
    SealingKey,
    TrustedKey,
)

from ._agent import Agent
from ._aggregates import (
    Aggregate,
    AggregateCorrupted,
    AggregateStore,
    Change,
    ConcurrencyConflict,
    Loaded,
    SnapshotPolicy,
)
from ._batches import Batch
from ._breaker import (
    BreakerPolicy,
    Breakers,
    BreakerStatus,
    CircuitBreaker,
    CircuitOpen,
    CircuitState,
    TimeoutPolicy,
)
from ._bus import DEFAULT_REPLAY_WINDOW, Bus, PublishAck, connect
from ._calls import Caller
from ._choose import Candidate, Choice, Chooser, Load, NobodyServing, Strategy
from ._choreography import ChoreographyTracker, TrackerStats
from ._choreography_events import FlowRecovered, FlowStuck, StuckStep, read_stuck
from ._choreography_flow import Choreography, FlowStep, InvalidChoreography
from ._choreography_state import FlowProgress
from ._codec import SIGNATURE_HEADER, Rejection, SecurityStats
from ._consumer import Subscription, SubscriptionStats
from ._dlq import DeadLetter, DeadLetterQueue
from ._errors import (
    AuthenticationFailed,
    BusyResource,
    ClosedResource,
    ConfigError,
    ConnectionFailed,
    ConnectionRefused,
    ConnectTimeout,
    DeadLetterError,
    DeadLetterNotFound,
    EventTooLarge,
    EventwireError,
    Forbidden,
    HostNotFound,
    InvalidArgument,
    InvalidEvent,
    NoResponders,
    NotFound,
    NotProvisioned,
    NotRunning,
    OperationTimeout,
    PublishFailed,
    RemoteError,
    ReplyRejected,
    RequestFailed,
    RequestTimeout,
    ResourceFailed,
    SealedForOthers,
    ServerError,
    ServerRejected,
    ServerUnavailable,
    StreamConfigError,
    TransportError,
    Unprocessable,
    WrongTenant,
)
from ._event import Event, Publishable
from ._failures import AgentFailed, Beat, Failure, FailureWatch, failure_msg_id
from ._kinds import (
    AgentLifecycle,
    CustomEvent,
    ErrorReported,
    EventData,
    HelpRequested,
    KnowledgeShared,
    StatusUpdate,
    TaskCompleted,
)
from ._metrics import MetricsServer, serve_metrics
from ._options import DeliveryKeywords, SubscribeKeywords, SubscribeOptions
from ._partitions import PartitionedSubscription
from ._phi import FailureDetectors, PhiAccrualDetector, PhiSettings, Suspicion
from ._priority import Priority, PriorityGate
from ._projections import Feed, Projection, ProjectionFailed
from ._registry import AgentInfo
from ._resiliency import Resiliency, ResiliencySpecError, TargetPolicy
from ._resource import ResourceState
from ._retry import DEFAULT_RETRY, RetryPolicy
from ._rules import InvalidRule, Route, RuleFailed, Rules
from ._runner import run_agents, serve_agents
from ._server import EmbeddedServer, find_nats_server
from ._tenants import (
    AgentExists,
    Credentials,
    Deployment,
    DeploymentError,
    DeploymentSettings,
    ServerGone,
    TenantExists,
    TenantUser,
    UnknownTenant,
)
from ._tls import TLS, TLSFailed
from ._work import WorkStatus, broadcast_subject, work_subject

if TYPE_CHECKING:
    from ._audit_log import AuditCorrupted, AuditLog, AuditLogError, AuditWriteFailed
    from ._audit_report import AuditFinding, AuditReport, FindingKind
    from ._certs import CertificateError, CertificateFiles, ClientCertificate, init_certificates
    from ._cluster import EmbeddedCluster
    from ._keyring_store import (
        KeyringError,
        KeyringRefusal,
        KeyringWatcher,
        keyring_bucket,
        keyring_of_entries,
        publish_keyring,
        read_key_entry,
        read_keyring_file,
        read_keyring_token,
        write_key_entry,
        write_keyring_file,
    )
    from ._provision import provision_agent
else:
    # Names for admin tools and tests, imported on first use (PEP 562) so that
    # ``import eventwire`` stays light; type checkers see the imports above.
    _LAZY = {
        "AuditCorrupted": "_audit_log",
        "AuditLog": "_audit_log",
        "AuditLogError": "_audit_log",
        "AuditWriteFailed": "_audit_log",
        "AuditFinding": "_audit_report",
        "AuditReport": "_audit_report",
        "FindingKind": "_audit_report",
        "CertificateError": "_certs",
        "CertificateFiles": "_certs",
        "ClientCertificate": "_certs",
        "init_certificates": "_certs",
        "EmbeddedCluster": "_cluster",
        "KeyringError": "_keyring_store",
        "KeyringRefusal": "_keyring_store",
        "KeyringWatcher": "_keyring_store",
        "publish_keyring": "_keyring_store",
        "keyring_bucket": "_keyring_store",
        "keyring_of_entries": "_keyring_store",
        "read_key_entry": "_keyring_store",
        "read_keyring_file": "_keyring_store",
        "read_keyring_token": "_keyring_store",
        "write_key_entry": "_keyring_store",
        "write_keyring_file": "_keyring_store",
        "provision_agent": "_provision",
    }

    def __getattr__(name: str) -> object:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        from importlib import import_module

        value = getattr(import_module(f"{__name__}.{module}"), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *_LAZY})


__version__ = "0.1.0"

# A library logs; the application decides where logs go.
logging.getLogger("eventwire").addHandler(logging.NullHandler())

__all__ = [
    "DEFAULT_REPLAY_WINDOW",
    "DEFAULT_RETRY",
    "SIGNATURE_HEADER",
    "TLS",
    "Actor",
    "Agent",
    "AgentExists",
    "AgentFailed",
    "AgentInfo",
    "AgentLifecycle",
    "Aggregate",
    "AggregateCorrupted",
    "AggregateStore",
    "AuditCorrupted",
    "AuditFinding",
    "AuditLog",
    "AuditLogError",
    "AuditReport",
    "AuditWriteFailed",
    "AuthenticationFailed",
    "Batch",
    "Beat",
    "BreakerPolicy",
    "BreakerStatus",
    "Breakers",
    "Bus",
    "BusyResource",
    "Caller",
    "Candidate",
    "CertificateError",
    "CertificateFiles",
    "Change",
    "Choice",
    "Chooser",
    "Choreography",
    "ChoreographyTracker",
    "CircuitBreaker",
    "CircuitOpen",
    "CircuitState",
    "ClientCertificate",
    "ClosedResource",
    "ConcurrencyConflict",
    "ConfigError",
    "ConnectTimeout",
    "ConnectionFailed",
    "ConnectionRefused",
    "Credentials",
    "CustomEvent",
    "DeadLetter",
    "DeadLetterError",
    "DeadLetterNotFound",
    "DeadLetterQueue",
    "DeliveryKeywords",
    "Deployment",
    "DeploymentError",
    "DeploymentSettings",
    "EmbeddedCluster",
    "EmbeddedServer",
    "ErrorReported",
    "Event",
    "EventData",
    "EventTooLarge",
    "EventwireError",
    "Failure",
    "FailureDetectors",
    "FailureWatch",
    "Feed",
    "FindingKind",
    "FlowProgress",
    "FlowRecovered",
    "FlowStep",
    "FlowStuck",
    "Forbidden",
    "HelpRequested",
    "HostNotFound",
    "Identity",
    "InvalidArgument",
    "InvalidChoreography",
    "InvalidEvent",
    "InvalidRule",
    "Keyring",
    "KeyringError",
    "KeyringRefusal",
    "KeyringWatcher",
    "KnowledgeShared",
    "Load",
    "Loaded",
    "MetricsServer",
    "NoResponders",
    "NobodyServing",
    "NotFound",
    "NotProvisioned",
    "NotRunning",
    "OperationTimeout",
    "PartitionedSubscription",
    "PhiAccrualDetector",
    "PhiSettings",
    "Policy",
    "Principal",
    "Priority",
    "PriorityGate",
    "Projection",
    "ProjectionFailed",
    "PublishAck",
    "PublishFailed",
    "Publishable",
    "RecipientKey",
    "Rejection",
    "RemoteError",
    "ReplyRejected",
    "RequestFailed",
    "RequestTimeout",
    "Resiliency",
    "ResiliencySpecError",
    "ResourceFailed",
    "ResourceState",
    "RetryPolicy",
    "Route",
    "RuleFailed",
    "Rules",
    "SealedForOthers",
    "SealingKey",
    "SecurityStats",
    "ServerError",
    "ServerGone",
    "ServerRejected",
    "ServerUnavailable",
    "SnapshotPolicy",
    "StatusUpdate",
    "Strategy",
    "StreamConfigError",
    "StuckStep",
    "SubscribeKeywords",
    "SubscribeOptions",
    "Subscription",
    "SubscriptionStats",
    "Suspicion",
    "TLSFailed",
    "TargetPolicy",
    "TaskCompleted",
    "TenantExists",
    "TenantUser",
    "TimeoutPolicy",
    "TrackerStats",
    "TransportError",
    "TrustedKey",
    "UnknownTenant",
    "Unprocessable",
    "WorkStatus",
    "WrongTenant",
    "__version__",
    "broadcast_subject",
    "connect",
    "failure_msg_id",
    "find_nats_server",
    "init_certificates",
    "keyring_bucket",
    "keyring_of_entries",
    "provision_agent",
    "publish_keyring",
    "read_key_entry",
    "read_keyring_file",
    "read_keyring_token",
    "read_stuck",
    "run_agents",
    "serve_agents",
    "serve_metrics",
    "work_subject",
    "write_key_entry",
    "write_keyring_file",
]
