"""eventwire: signed, durable events between AI agents over NATS JetStream."""

import logging

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
from ._audit_log import AuditCorrupted, AuditLog, AuditLogError, AuditWriteFailed
from ._audit_report import AuditFinding, AuditReport, FindingKind
from ._batches import Batch
from ._bus import DEFAULT_REPLAY_WINDOW, Bus, PublishAck, connect
from ._cluster import EmbeddedCluster
from ._codec import SIGNATURE_HEADER, Rejection, SecurityStats
from ._consumer import Subscription, SubscriptionStats
from ._dlq import DeadLetter, DeadLetterQueue
from ._errors import (
    ConfigError,
    ConnectionFailed,
    DeadLetterError,
    EventTooLarge,
    EventwireError,
    Forbidden,
    InvalidEvent,
    NoResponders,
    NotProvisioned,
    NotRunning,
    PublishFailed,
    RemoteError,
    ReplyRejected,
    RequestFailed,
    RequestTimeout,
    SealedForOthers,
    ServerError,
    StreamConfigError,
    Unprocessable,
    WrongTenant,
)
from ._event import Event, Publishable
from ._keyring_store import KeyringError, KeyringRefusal, KeyringWatcher, publish_keyring
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
from ._partitions import PartitionedSubscription
from ._provision import provision_agent
from ._registry import AgentInfo
from ._retry import DEFAULT_RETRY, RetryPolicy
from ._server import EmbeddedServer

__version__ = "0.1.0"

# A library logs; the application decides where logs go.
logging.getLogger("eventwire").addHandler(logging.NullHandler())

__all__ = [
    "DEFAULT_REPLAY_WINDOW",
    "DEFAULT_RETRY",
    "SIGNATURE_HEADER",
    "Actor",
    "Agent",
    "AgentInfo",
    "AgentLifecycle",
    "AuditCorrupted",
    "AuditFinding",
    "AuditLog",
    "AuditLogError",
    "AuditReport",
    "AuditWriteFailed",
    "Batch",
    "Bus",
    "ConfigError",
    "ConnectionFailed",
    "CustomEvent",
    "DeadLetter",
    "DeadLetterError",
    "DeadLetterQueue",
    "EmbeddedCluster",
    "EmbeddedServer",
    "ErrorReported",
    "Event",
    "EventData",
    "EventTooLarge",
    "EventwireError",
    "FindingKind",
    "Forbidden",
    "HelpRequested",
    "Identity",
    "InvalidEvent",
    "Keyring",
    "KeyringError",
    "KeyringRefusal",
    "KeyringWatcher",
    "KnowledgeShared",
    "NoResponders",
    "NotProvisioned",
    "NotRunning",
    "PartitionedSubscription",
    "Policy",
    "Principal",
    "PublishAck",
    "PublishFailed",
    "Publishable",
    "RecipientKey",
    "Rejection",
    "RemoteError",
    "ReplyRejected",
    "RequestFailed",
    "RequestTimeout",
    "RetryPolicy",
    "SealedForOthers",
    "SealingKey",
    "SecurityStats",
    "ServerError",
    "StatusUpdate",
    "StreamConfigError",
    "Subscription",
    "SubscriptionStats",
    "TaskCompleted",
    "TrustedKey",
    "Unprocessable",
    "WrongTenant",
    "__version__",
    "connect",
    "provision_agent",
    "publish_keyring",
]
