"""The proxy under attack: two real tritonservers behind a real haproxy, the model loaded on both.

Blue has the traffic (weight 1), green stays warm at weight 0, as in
production. The stack is the one of ``tests/integration/haproxy_stack.py``.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import pytest
from haproxy_stack import Stack, running_stack

STRIPPED_HEADER = "Triton-Admin-Key"


@pytest.fixture(scope="module")
def proxy_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Module-scoped stack; the tests must leave it serving."""
    with running_stack(
        tmp_path_factory.mktemp("proxy_attacks"),
        weights={"blue": 1, "green": 0},
        load_model=True,
        strip_request_headers=(STRIPPED_HEADER,),
    ) as stack:
        yield stack


def live_state(stack: Stack) -> dict[str, object]:
    """What a refused request must not change: pids, weights, each Triton's log settings and shm regions."""
    state: dict[str, object] = {
        "pids": {name: t.proc.pid for name, t in stack.tritons.items()},
        "alive": {name: t.proc.poll() is None for name, t in stack.tritons.items()},
        "weights": {(s.backend, s.name): (s.weight, s.admin) for s in stack.runtime.servers_state()},
    }
    for name, triton in stack.tritons.items():
        base = f"http://127.0.0.1:{triton.http_port}"
        for what, path in (
            ("logging", "/v2/logging"),
            ("shm", "/v2/systemsharedmemory/status"),
            ("trace", "/v2/trace/setting"),
            ("ready", "/v2/models/identity/ready"),
        ):
            with urllib.request.urlopen(base + path, timeout=5) as answer:
                body = answer.read()
                state[f"{name}:{what}"] = json.loads(body) if body else answer.status
    return state
