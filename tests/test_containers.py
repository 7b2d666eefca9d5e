"""The docker backend's containers as testcontainers hands them to docker-py, checked
without a daemon: testcontainers' own ``start`` runs against a recording client. (Running
them needs Docker: ``EVENTWIRE_TEST_BACKEND=docker pytest``.)"""

from __future__ import annotations

import io
import tarfile
from typing import Any

import pytest

from eventwire import ServerError
from tests import _containers

pytest.importorskip("testcontainers", reason="the docker extra is not installed")


class RecordingClient:
    """Stands in for testcontainers' DockerClient: records ``create``, starts nothing."""

    created: list[dict[str, Any]]

    def __init__(self, **_: Any) -> None:
        self.created = []
        self.client = self

    def create(self, image: str, **kwargs: Any) -> RecordedContainer:
        self.created.append({"image": image, **kwargs})
        return RecordedContainer()

    def start(self, container: RecordedContainer) -> None:
        container.started = True

    def close(self) -> None:
        pass


class RecordedContainer:
    short_id = "recorded"

    def __init__(self) -> None:
        self.started = False
        self.files: dict[str, bytes] = {}

    def put_archive(self, path: str, data: bytes) -> bool:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                extracted = tar.extractfile(member)
                assert extracted is not None
                self.files[f"{path.rstrip('/')}/{member.name.lstrip('/')}"] = extracted.read()
        return True


class FakeNetwork:
    name = "eventwire-test-net"


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[RecordingClient]:
    """Every DockerClient testcontainers makes, recording instead of reaching Docker."""
    clients: list[RecordingClient] = []

    def make(**kwargs: Any) -> RecordingClient:
        clients.append(RecordingClient(**kwargs))
        return clients[-1]

    from testcontainers.core.config import testcontainers_config

    monkeypatch.setattr("testcontainers.core.container.DockerClient", make)
    # _describe turns Ryuk off (it would start a container); restore the setting after.
    monkeypatch.setattr(
        testcontainers_config, "_ryuk_disabled", testcontainers_config._ryuk_disabled
    )
    return clients


def test_compose_image_and_config_are_the_ones_of_compose_yaml() -> None:
    assert _containers.compose_image() == "nats:2.12-alpine"
    single = _containers.single_node_config().decode()
    assert 'store_dir: "/data"' in single
    assert "cluster {" not in single
    assert "routes" not in single
    assert _containers.NODE_CONF.read_text().startswith(single.rstrip())


def test_a_server_container_publishes_its_client_port_on_loopback_only(
    recorded: list[RecordingClient],
) -> None:
    server = _containers.single_server()
    server._port = 40000
    container = server._describe().start()
    (created,) = recorded[0].created
    assert created["image"] == "nats:2.12-alpine"
    assert created["command"] == ["nats-server", "--config", "/etc/nats/eventwire.conf"]
    assert created["environment"] == {"SERVER_NAME": "n1"}
    assert created["ports"] == {"4222/tcp": ("127.0.0.1", 40000)}
    assert created["labels"] == {"eventwire.test": "n1"}
    assert "network" not in created
    wrapped = container.get_wrapped_container()
    assert isinstance(wrapped, RecordedContainer)
    assert wrapped.started
    assert wrapped.files == {"/etc/nats/eventwire.conf": _containers.single_node_config()}


def test_a_cluster_node_runs_node_conf_under_its_compose_name(
    recorded: list[RecordingClient],
) -> None:
    node_conf = _containers.NODE_CONF.read_bytes()
    node = _containers.NatsContainer(name="n2", config=node_conf, network=FakeNetwork())  # type: ignore[arg-type]
    node._port = 40001
    container = node._describe().start()
    (created,) = recorded[0].created
    assert created["environment"] == {"SERVER_NAME": "n2"}
    assert created["ports"] == {"4222/tcp": ("127.0.0.1", 40001)}
    assert created["network"] == "eventwire-test-net"
    assert created["networking_config"]["eventwire-test-net"]["Aliases"] == ["n2"]
    wrapped = container.get_wrapped_container()
    assert isinstance(wrapped, RecordedContainer)
    assert wrapped.files == {"/etc/nats/eventwire.conf": node_conf}


async def test_container_monitoring_is_read_inside_the_container() -> None:
    cluster = _containers.ContainerCluster()
    with pytest.raises(ServerError, match="only inside each container"):
        cluster.monitor_url(0)
    assert await _containers.NatsContainer(name="n1", config=b"").monitor_get("/healthz") == (
        0,
        "container not created",
    )
