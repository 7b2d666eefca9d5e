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
from ._bus import DEFAULT_REPLAY_WINDOW, Bus, connect
from ._calls import Caller
from ._choose import Candidate, Choice, Chooser, Load, NobodyServing, Strategy
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
from ._outbox import Outbox, OutboxBusy, OutboxFull, OutboxUnwritable, PublishUnreachable
from ._partitions import PartitionedSubscription
from ._phi import FailureDetectors, PhiAccrualDetector, PhiSettings, Suspicion
from ._priority import Priority, PriorityGate
from ._projection_errors import ProjectionOnError, ProjectionStats
from ._projections import Feed, Projection, ProjectionFailed
from ._registry import AgentInfo
from ._resiliency import Resiliency, ResiliencySpecError, TargetPolicy
from ._resource import ResourceState
from ._retry import DEFAULT_RETRY, RetryPolicy
from ._rules import InvalidRule, Route, RuleFailed, Rules
from ._runner import run_agents, serve_agents
from ._sending import PublishAck
from ._server import EmbeddedServer, find_nats_server
from ._start import FromSequence, FromTime, LastN
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
from ._vclock import Clock, compare_clocks
from ._work import WorkStatus, broadcast_subject, work_subject

if TYPE_CHECKING:
    from ._anomaly import (
        Anomaly,
        AnomalyDetector,
        AnomalySettings,
    )
    from ._asyncapi import (
        asyncapi_document,
    )
    from ._audit_log import AuditCorrupted, AuditLog, AuditLogError, AuditWriteFailed
    from ._audit_report import AuditFinding, AuditReport, FindingKind
    from ._cache import (
        CacheStats,
        EventCache,
    )
    from ._certs import CertificateError, CertificateFiles, ClientCertificate, init_certificates
    from ._choreography import (
        ChoreographyTracker,
        TrackerStats,
    )
    from ._choreography_events import (
        FlowRecovered,
        FlowStuck,
        StuckStep,
        read_stuck,
    )
    from ._choreography_flow import (
        Choreography,
        FlowStep,
        InvalidChoreography,
    )
    from ._choreography_state import (
        FlowProgress,
    )
    from ._cluster import EmbeddedCluster
    from ._health import (
        Health,
        HealthSettings,
        HealthSignal,
        Reason,
        agents_health,
        combine_health,
    )
    from ._healthz import (
        HealthServer,
        serve_health,
    )
    from ._inspect import (
        EventReader,
        Flow,
        FlowNode,
        StoredEvent,
        read_events,
        trace_flow,
    )
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
    from ._metrics import use_meter_provider
    from ._ordering import (
        EventTimeOrder,
        LatePolicy,
        OrderStats,
    )
    from ._ordering_causal import (
        CausalOrder,
        CausalStats,
        CausalTimeout,
    )
    from ._patterns import (
        Absence,
        Pattern,
        Sequence,
        Step,
        Threshold,
    )
    from ._patterns_detector import (
        MATCHED,
        PatternDetector,
        PatternMatch,
    )
    from ._patterns_feed import (
        ProcessingCounters,
        ProcessingStopped,
    )
    from ._projection_admin import (
        ProjectionInfo,
        projection_info,
        projection_infos,
        reset_projection,
    )
    from ._provision import provision_agent
    from ._windows import (
        Aggregation,
        Window,
    )
    from ._windows_stream import (
        WINDOW_CLOSED,
        WindowedStream,
        WindowResult,
    )
    from ._workflow_context import WorkflowContext
    from ._workflow_control import WorkflowHandle, Workflows, WorkflowStatus
    from ._workflow_defs import (
        StepFailed,
        StepRetry,
        UntrustedHistory,
        WaitTimedOut,
        WorkflowAlreadyStarted,
        WorkflowDefinition,
        WorkflowError,
        WorkflowFinished,
        WorkflowNotFound,
        workflow,
    )
    from ._workflow_history import TimelineEntry
    from ._workflow_runner import Orchestrator
    from ._workflow_steps import StepRejected, StepWorker
else:
    # Names for admin tools and tests, imported on first use (PEP 562) so that
    # ``import eventwire`` stays light; type checkers see the imports above.
    _LAZY = {
        "ChoreographyTracker": "_choreography",
        "TrackerStats": "_choreography",
        "FlowRecovered": "_choreography_events",
        "FlowStuck": "_choreography_events",
        "StuckStep": "_choreography_events",
        "read_stuck": "_choreography_events",
        "Choreography": "_choreography_flow",
        "FlowStep": "_choreography_flow",
        "InvalidChoreography": "_choreography_flow",
        "FlowProgress": "_choreography_state",
        "Anomaly": "_anomaly",
        "AnomalyDetector": "_anomaly",
        "AnomalySettings": "_anomaly",
        "asyncapi_document": "_asyncapi",
        "CacheStats": "_cache",
        "EventCache": "_cache",
        "Health": "_health",
        "HealthSettings": "_health",
        "HealthSignal": "_health",
        "Reason": "_health",
        "agents_health": "_health",
        "combine_health": "_health",
        "HealthServer": "_healthz",
        "serve_health": "_healthz",
        "EventReader": "_inspect",
        "Flow": "_inspect",
        "FlowNode": "_inspect",
        "StoredEvent": "_inspect",
        "read_events": "_inspect",
        "trace_flow": "_inspect",
        "EventTimeOrder": "_ordering",
        "LatePolicy": "_ordering",
        "OrderStats": "_ordering",
        "CausalOrder": "_ordering_causal",
        "CausalStats": "_ordering_causal",
        "CausalTimeout": "_ordering_causal",
        "Absence": "_patterns",
        "Pattern": "_patterns",
        "Sequence": "_patterns",
        "Step": "_patterns",
        "Threshold": "_patterns",
        "MATCHED": "_patterns_detector",
        "PatternDetector": "_patterns_detector",
        "PatternMatch": "_patterns_detector",
        "ProcessingCounters": "_patterns_feed",
        "ProcessingStopped": "_patterns_feed",
        "ProjectionInfo": "_projection_admin",
        "projection_info": "_projection_admin",
        "projection_infos": "_projection_admin",
        "reset_projection": "_projection_admin",
        "Aggregation": "_windows",
        "Window": "_windows",
        "WINDOW_CLOSED": "_windows_stream",
        "WindowedStream": "_windows_stream",
        "WindowResult": "_windows_stream",
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
        "WorkflowHandle": "_workflow_control",
        "WorkflowStatus": "_workflow_control",
        "Workflows": "_workflow_control",
        "WorkflowContext": "_workflow_context",
        "StepFailed": "_workflow_defs",
        "StepRetry": "_workflow_defs",
        "UntrustedHistory": "_workflow_defs",
        "WaitTimedOut": "_workflow_defs",
        "WorkflowAlreadyStarted": "_workflow_defs",
        "WorkflowDefinition": "_workflow_defs",
        "WorkflowError": "_workflow_defs",
        "WorkflowFinished": "_workflow_defs",
        "WorkflowNotFound": "_workflow_defs",
        "workflow": "_workflow_defs",
        "TimelineEntry": "_workflow_history",
        "Orchestrator": "_workflow_runner",
        "StepRejected": "_workflow_steps",
        "StepWorker": "_workflow_steps",
        "use_meter_provider": "_metrics",
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
    "MATCHED",
    "SIGNATURE_HEADER",
    "TLS",
    "WINDOW_CLOSED",
    "Absence",
    "Actor",
    "Agent",
    "AgentExists",
    "AgentFailed",
    "AgentInfo",
    "AgentLifecycle",
    "Aggregate",
    "AggregateCorrupted",
    "AggregateStore",
    "Aggregation",
    "Anomaly",
    "AnomalyDetector",
    "AnomalySettings",
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
    "CacheStats",
    "Caller",
    "Candidate",
    "CausalOrder",
    "CausalStats",
    "CausalTimeout",
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
    "Clock",
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
    "EventCache",
    "EventData",
    "EventReader",
    "EventTimeOrder",
    "EventTooLarge",
    "EventwireError",
    "Failure",
    "FailureDetectors",
    "FailureWatch",
    "Feed",
    "FindingKind",
    "Flow",
    "FlowNode",
    "FlowProgress",
    "FlowRecovered",
    "FlowStep",
    "FlowStuck",
    "Forbidden",
    "FromSequence",
    "FromTime",
    "Health",
    "HealthServer",
    "HealthSettings",
    "HealthSignal",
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
    "LastN",
    "LatePolicy",
    "Load",
    "Loaded",
    "MetricsServer",
    "NoResponders",
    "NobodyServing",
    "NotFound",
    "NotProvisioned",
    "NotRunning",
    "OperationTimeout",
    "Orchestrator",
    "OrderStats",
    "Outbox",
    "OutboxBusy",
    "OutboxFull",
    "OutboxUnwritable",
    "PartitionedSubscription",
    "Pattern",
    "PatternDetector",
    "PatternMatch",
    "PhiAccrualDetector",
    "PhiSettings",
    "Policy",
    "Principal",
    "Priority",
    "PriorityGate",
    "ProcessingCounters",
    "ProcessingStopped",
    "Projection",
    "ProjectionFailed",
    "ProjectionInfo",
    "ProjectionOnError",
    "ProjectionStats",
    "PublishAck",
    "PublishFailed",
    "PublishUnreachable",
    "Publishable",
    "Reason",
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
    "Sequence",
    "ServerError",
    "ServerGone",
    "ServerRejected",
    "ServerUnavailable",
    "SnapshotPolicy",
    "StatusUpdate",
    "Step",
    "StepFailed",
    "StepRejected",
    "StepRetry",
    "StepWorker",
    "StoredEvent",
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
    "Threshold",
    "TimelineEntry",
    "TimeoutPolicy",
    "TrackerStats",
    "TransportError",
    "TrustedKey",
    "UnknownTenant",
    "Unprocessable",
    "UntrustedHistory",
    "WaitTimedOut",
    "Window",
    "WindowResult",
    "WindowedStream",
    "WorkStatus",
    "WorkflowAlreadyStarted",
    "WorkflowContext",
    "WorkflowDefinition",
    "WorkflowError",
    "WorkflowFinished",
    "WorkflowHandle",
    "WorkflowNotFound",
    "WorkflowStatus",
    "Workflows",
    "WrongTenant",
    "__version__",
    "agents_health",
    "asyncapi_document",
    "broadcast_subject",
    "combine_health",
    "compare_clocks",
    "connect",
    "failure_msg_id",
    "find_nats_server",
    "init_certificates",
    "keyring_bucket",
    "keyring_of_entries",
    "projection_info",
    "projection_infos",
    "provision_agent",
    "publish_keyring",
    "read_events",
    "read_key_entry",
    "read_keyring_file",
    "read_keyring_token",
    "read_stuck",
    "reset_projection",
    "run_agents",
    "serve_agents",
    "serve_health",
    "serve_metrics",
    "trace_flow",
    "use_meter_provider",
    "work_subject",
    "workflow",
    "write_key_entry",
    "write_keyring_file",
]
