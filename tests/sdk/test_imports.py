"""``import eventwire`` stays light: what it must not load, and the names loaded on first use."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

import eventwire

# Loaded only by what needs them: key files and sealing (cryptography), policy files
# (tomllib), the command line (typer, rich), admin tools and tests (the rest).
NOT_AT_IMPORT = (
    "cryptography",
    "tomllib",
    "typer",
    "rich",
    "eventwire._audit_log",
    "eventwire._certs",
    "eventwire._cluster",
    "eventwire._keyring_store",
    "eventwire._provision",
    "eventwire.cli",
)
LAZY = {
    "AuditCorrupted": "eventwire._audit_log",
    "AuditLog": "eventwire._audit_log",
    "AuditLogError": "eventwire._audit_log",
    "AuditWriteFailed": "eventwire._audit_log",
    "AuditFinding": "eventwire._audit_report",
    "AuditReport": "eventwire._audit_report",
    "FindingKind": "eventwire._audit_report",
    "CertificateError": "eventwire._certs",
    "CertificateFiles": "eventwire._certs",
    "ClientCertificate": "eventwire._certs",
    "init_certificates": "eventwire._certs",
    "EmbeddedCluster": "eventwire._cluster",
    "KeyringError": "eventwire._keyring_store",
    "KeyringRefusal": "eventwire._keyring_store",
    "KeyringWatcher": "eventwire._keyring_store",
    "publish_keyring": "eventwire._keyring_store",
    "keyring_bucket": "eventwire._keyring_store",
    "keyring_of_entries": "eventwire._keyring_store",
    "read_key_entry": "eventwire._keyring_store",
    "read_keyring_file": "eventwire._keyring_store",
    "read_keyring_token": "eventwire._keyring_store",
    "write_keyring_file": "eventwire._keyring_store",
    "provision_agent": "eventwire._provision",
}


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}; import sys, json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out))


def test_import_loads_none_of_the_heavy_modules() -> None:
    loaded = _modules_after("import eventwire")
    assert "eventwire._bus" in loaded
    heavy = sorted(m for m in loaded if any(m == p or m.startswith(f"{p}.") for p in NOT_AT_IMPORT))
    assert heavy == []


@pytest.mark.parametrize("name", sorted(LAZY))
def test_lazy_name_loads_its_module_on_first_use(name: str) -> None:
    loaded = _modules_after(f"from eventwire import {name}")
    assert LAZY[name] in loaded
    assert getattr(eventwire, name) is getattr(importlib.import_module(LAZY[name]), name)


def test_star_import_and_dir_cover_all_names() -> None:
    namespace: dict[str, object] = {}
    exec("from eventwire import *", namespace)
    assert set(eventwire.__all__) <= set(namespace)
    assert set(eventwire.__all__) <= set(dir(eventwire))


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        _ = eventwire.Nope  # type: ignore[attr-defined]
