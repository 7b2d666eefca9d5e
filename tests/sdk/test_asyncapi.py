"""``eventwire asyncapi`` and ``asyncapi_document``: validated against the official AsyncAPI
3.0.0 JSON Schema (tests/data/asyncapi-3.0.0.json, source in tests/data/README.md)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
import pytest

from eventwire import Agent, Event, EventData, InvalidArgument, InvalidEvent, asyncapi_document
from tests.sdk.test_cli import cli

SCHEMA = json.loads((Path(__file__).parent.parent / "data" / "asyncapi-3.0.0.json").read_text())


def problems(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)
    return [
        f"{error.json_path}: {error.message[:200]}" for error in validator.iter_errors(document)
    ]


def dangling_refs(document: dict[str, Any]) -> list[str]:
    """Every local ``$ref`` of ``document`` that does not point at something in it."""
    found: list[str] = []

    def resolve(pointer: str) -> bool:
        node: Any = document
        for raw in pointer.removeprefix("#/").split("/"):
            part = raw.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and not resolve(ref):
                found.append(ref)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    return found


class Invoice(EventData):
    """An invoice was issued. Subject ``custom.billing.invoice``."""

    event_type: ClassVar[str] = "com.example.invoice"
    number: str
    cents: int

    def subject(self) -> str:
        return "custom.billing.invoice"


def app() -> list[Agent]:
    summarizer = Agent("summarizer", capabilities=["summarize"])
    billing = Agent("billing")

    @summarizer.on("knowledge.ml.>")
    async def learn(event: Event) -> None: ...

    @summarizer.on_request
    async def answer(event: Event) -> None: ...

    @billing.on("custom.billing.*")
    async def bill(event: Event) -> None: ...

    billing.route("custom.orders.*", when="data.cents > 100000", to="capability.audit.review",
                  deliver="one")  # fmt: skip

    return [summarizer, billing]


def test_the_document_validates_and_has_the_agents_channels() -> None:
    document = asyncapi_document(app(), root="acme", kinds={Invoice: "custom.billing.invoice"})

    assert problems(document) == []
    assert dangling_refs(document) == []
    channels, operations = document["channels"], document["operations"]
    assert channels["knowledge.ml.all"]["address"] == "acme.knowledge.ml.>"
    assert set(channels["knowledge.ml.all"]["messages"]) == {"KnowledgeShared", "CustomEvent"}
    assert channels["capability.summarize.any"]["address"] == "acme.capability.summarize.*"
    assert "HelpRequested" in channels["capability.summarize.any"]["messages"]
    assert (
        channels["capability.summarize.work.any"]["address"] == "acme.capability.summarize.work.*"
    )
    assert set(channels["custom.billing.any"]["messages"]) == {"Invoice", "CustomEvent"}
    assert channels["direct.default.summarizer"]["address"] == "acme.direct.default.summarizer"
    assert channels["direct.default.summarizer.reply"]["address"] is None
    for family in ("knowledge", "capability", "task", "error", "status", "agent", "system"):
        assert channels[f"{family}.all"]["address"] == f"acme.{family}.>"
    assert operations["summarizer.receive.knowledge.ml.all"]["action"] == "receive"
    assert operations["summarizer.work.summarize"]["channel"] == {
        "$ref": "#/channels/capability.summarize.work.any"
    }
    assert "reply" in operations["summarizer.request"]
    assert "billing.receive.custom.billing.any" in operations
    assert "billing.request" not in operations  # billing answers no direct requests
    assert operations["billing.lifecycle"]["action"] == "send"
    assert operations["billing.lifecycle"]["channel"] == {"$ref": "#/channels/agent.lifecycle.any"}
    routed = operations["billing.route.capability.audit.work.review"]
    assert routed["action"] == "send"
    assert (
        channels["capability.audit.work.review"]["address"] == "acme.capability.audit.work.review"
    )
    assert "data.cents > 100000" in routed["summary"]


def test_messages_carry_the_envelope_the_data_schema_and_the_signature_header() -> None:
    document = asyncapi_document(app())
    components = document["components"]
    knowledge = components["messages"]["KnowledgeShared"]
    assert knowledge["contentType"] == "application/cloudevents+json"
    envelope, refined = knowledge["payload"]["allOf"]
    assert envelope == {"$ref": "#/components/schemas/CloudEvent"}
    assert refined["properties"]["type"] == {"const": "io.eventwire.knowledge.shared"}
    data = components["schemas"]["KnowledgeShared"]
    assert data["required"] == ["topic", "content"]
    assert data["properties"]["confidence"]["anyOf"][0]["maximum"] == 1.0
    cloud_event = components["schemas"]["CloudEvent"]
    assert {"specversion", "id", "source", "correlationid", "iat"} <= set(cloud_event["required"])
    assert cloud_event["additionalProperties"] is False
    headers = components["schemas"]["EventwireHeaders"]
    assert headers["required"] == ["Ew-Signature"]
    assert "Ed25519" in headers["properties"]["Ew-Signature"]["description"]
    schemes = components["securitySchemes"]
    assert schemes["eventSignature"]["type"] == "asymmetricEncryption"
    assert "Ed25519" in schemes["eventSignature"]["description"]
    assert schemes["natsUser"]["type"] == "userPassword"
    assert document["servers"]["nats"]["protocol"] == "nats"


def test_the_validator_catches_a_broken_document() -> None:
    """The official schema really is applied: a v2-style action or a missing title fails."""
    document = asyncapi_document(app())
    document["operations"]["summarizer.work.summarize"]["action"] = "publish"
    del document["info"]["title"]
    found = problems(document)
    assert any("operations" in problem for problem in found)
    assert any("info" in problem for problem in found)


def test_bad_arguments_are_typed_errors() -> None:
    with pytest.raises(InvalidArgument) as not_agent:
        asyncapi_document(["summarizer"])  # type: ignore[list-item]  # the bad input
    assert not_agent.value.field == "agents"
    with pytest.raises(InvalidEvent):
        asyncapi_document(root="not a token")
    with pytest.raises(InvalidEvent):
        asyncapi_document(kinds={Invoice: "custom..x"})


async def test_the_command_writes_the_document_of_agents_in_a_module(tmp_path: Path) -> None:
    (tmp_path / "myapp.py").write_text(
        textwrap.dedent(
            """
            from eventwire import Agent

            researcher = Agent("researcher", capabilities=["research"])

            @researcher.on("task.*.completed")
            async def done(event): ...

            def agents():
                return [researcher, Agent("critic")]
            """
        )
    )
    out = tmp_path / "asyncapi.json"
    code, text = await cli(
        "asyncapi", "--agents", "myapp:agents", "--app-dir", str(tmp_path), "--out", str(out),
        "--root", "lab", "--title", "Lab",
    )  # fmt: skip
    assert code == 0, text
    document = json.loads(out.read_text())
    assert problems(document) == []
    assert document["info"]["title"] == "Lab"
    assert document["channels"]["task.any.completed"]["address"] == "lab.task.*.completed"
    assert "researcher.receive.task.any.completed" in document["operations"]
    assert "critic.receive.agent.lifecycle.any" in document["operations"]

    code, text = await cli("asyncapi", "--agents", "myapp:nothing", "--app-dir", str(tmp_path))
    assert code == 1
    assert text.startswith("error:")
    code, text = await cli("asyncapi", "--agents", "myapp", "--app-dir", str(tmp_path))
    assert code == 2
    assert "is not MODULE:ATTR" in text
