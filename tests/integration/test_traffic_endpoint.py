"""GET /v1/traffic on a real stack: two tritonservers (blue live, green warm standby) behind HAProxy.

``local_services`` starts the stack and the services; ``mlp`` is pushed,
deployed on blue and loaded on green by the reconciler. Plain tritonclient
threads send requests through the proxy while the test polls the API's
/v1/traffic (token auth, the monitor ``local_services`` built) for a few
seconds: the live pool must show the traffic, the standby none.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from rollout_load import FIXED_INPUT, Load
from triton_helpers import load_examples_module, wait_until

from controlplane.api.app import ApiServices, create_app
from controlplane.api.auth import Authenticator
from controlplane.artifacts.archive import pack_directory
from controlplane.domain.auth import Role
from controlplane.domain.models import VersionMetadata
from controlplane.registry import token_store
from controlplane.runtime.ports import free_ports
from controlplane.runtime.wiring import Services, local_services
from controlplane.settings import Settings

pytestmark = pytest.mark.integration

examples = load_examples_module()


@dataclass
class Env:
    services: Services
    client: TestClient
    headers: dict[str, str]
    grpc_url: str
    outputs: dict[str, np.ndarray]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root: Path = tmp_path_factory.mktemp("traffic")
    api_port, grpc_port, http_port = free_ports(3)
    settings = Settings(state_dir=root / "state", api_port=api_port, grpc_port=grpc_port, http_port=http_port)
    with local_services(settings, pool_names=("blue", "green")) as (_stack, services):
        folder = examples.build_mlp(root / "v1", seed=1)
        outputs = {"v1": examples.reference_outputs(folder, {"INPUT0": FIXED_INPUT})["OUTPUT0"]}
        archive = pack_directory(folder, root / "v1.tar.gz")
        services.registry.push(model="mlp", archive=archive, metadata=VersionMetadata())
        services.deployer.deploy("mlp", 1)
        services.reconciler.run_once()  # green, the warm standby, loads the release too
        with services.db.transaction() as session:
            token, _info = token_store.create_token(session, name="console", role=Role.VIEWER, created_by="t")
        app = create_app(
            ApiServices(
                db=services.db,
                registry=services.registry,
                signing=services.signing,
                health=services.health,
                traffic=services.traffic,
            ),
            max_upload_bytes=settings.max_upload_bytes,
            auth=Authenticator(services.db),
        )
        wait_until(lambda: services.router.pool_up("blue"), timeout=10, what="blue up")
        with TestClient(app) as client:
            yield Env(
                services, client, {"Authorization": f"Bearer {token}"}, f"127.0.0.1:{grpc_port}", outputs
            )


def test_the_live_pool_shows_its_traffic_and_the_standby_none_while_clients_call_through_the_proxy(
    env: Env,
) -> None:
    answers: list[dict[str, Any]] = []
    with Load(env.grpc_url, env.outputs, threads=4) as load:
        first = env.client.get("/v1/traffic", headers=env.headers)
        since = first.json()["now"]
        deadline = time.monotonic() + 3.2
        while time.monotonic() < deadline:
            time.sleep(0.4)
            answer = env.client.get("/v1/traffic", params={"since": since}, headers=env.headers)
            assert answer.status_code == 200, answer.text
            answers.append(answer.json())
            since = max([since, *(p["at"] for p in answer.json()["points"])])

    assert first.status_code == 200, first.text
    points = [p for a in answers for p in a["points"]]
    blue = [p for p in points if p["pool"] == "blue"]
    green = [p for p in points if p["pool"] == "green"]
    # Rounds at most once a second, each giving one point per pool: about three in 3.2 s.
    assert 2 <= len(blue) <= 4, blue
    assert len(green) == len(blue)
    assert [p["at"] for p in points] == sorted(p["at"] for p in points)
    assert len({p["at"] for p in blue}) == len(blue), "a point was answered twice"
    for point in blue:
        assert point["requests_per_second"] > 0 and point["requests"] > 0, point
        assert point["error_rate"] == 0 and point["errors"] == 0, point
        assert point["p99_ms"] is not None and point["p99_ms"] > 0, point
        assert (point["weight"], point["release"]) == (100, {"mlp": 1})
    assert all(p["requests"] == 0 and p["requests_per_second"] == 0 for p in green), green
    assert all(p["weight"] == 0 and p["release"] == {"mlp": 1} for p in green)
    pools = {p["name"]: p for p in answers[-1]["pools"]}
    assert pools["blue"] == {"name": "blue", "weight": 100, "up": True, "release": {"mlp": 1}, "error": None}
    assert (pools["green"]["weight"], pools["green"]["up"], pools["green"]["error"]) == (0, True, None)
    assert load.failures == []
    # The points count what the clients saw answered over the same span, give or take what was in flight.
    start, end = (datetime.fromtimestamp(p["at"], UTC) for p in (blue[0], blue[-1]))
    answered = sum(1 for at, _kind in load.answers if start < at <= end)
    counted = sum(p["requests"] for p in blue[1:])
    assert abs(counted - answered) <= 0.1 * answered + 16, (counted, answered)
    rates = [round(p["requests_per_second"]) for p in blue]
    print(
        f"\n/v1/traffic over {len(blue)} rounds: blue {rates} req/s,"
        f" p99 {[p['p99_ms'] for p in blue]} ms; green {[p['requests'] for p in green]} requests"
    )
