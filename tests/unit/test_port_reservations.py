"""Free ports are handed out once per machine for a while, so that processes side by side never share one."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.runtime import ports


@pytest.fixture
def reservations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "controlplane-ports"
    monkeypatch.setattr(ports, "reservations_file", lambda: path)
    return path


class _ScriptedSocket:
    """A socket whose ``bind(("", 0))`` gets the next port of a script, as the kernel would pick it."""

    script: Iterator[int]

    def __init__(self, *_args: object) -> None:
        self.port = 0

    def bind(self, address: tuple[str, int]) -> None:
        self.port = next(self.script)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def close(self) -> None:
        pass


def _kernel_picks(monkeypatch: pytest.MonkeyPatch, *picks: int) -> None:
    _ScriptedSocket.script = iter(picks)
    monkeypatch.setattr(ports.socket, "socket", _ScriptedSocket)


def _held(path: Path) -> dict[int, float]:
    return {int(p): float(u) for p, u in (line.split() for line in path.read_text().splitlines())}


def test_ports_handed_out_are_recorded_as_held_for_the_hold_time(reservations: Path) -> None:
    before = time.time()
    handed = ports.free_ports(3)
    held = _held(reservations)
    assert set(held) == set(handed)
    # Written with millisecond precision.
    earliest, latest = before + ports.HOLD_SECONDS - 0.001, time.time() + ports.HOLD_SECONDS + 0.001
    assert all(earliest <= until <= latest for until in held.values())


def test_a_port_held_for_another_caller_is_skipped_even_when_the_kernel_offers_it(
    reservations: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reservations.write_text(f"40001 {time.time() + 60:.3f}\n")
    _kernel_picks(monkeypatch, 40001, 40002, 40003)
    assert ports.free_ports(2) == [40002, 40003]
    assert set(_held(reservations)) == {40001, 40002, 40003}


def test_a_hold_that_ran_out_frees_the_port_again_and_is_forgotten(
    reservations: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reservations.write_text(f"40001 {time.time() - 1:.3f}\n40009 {time.time() + 60:.3f}\n")
    _kernel_picks(monkeypatch, 40001)
    assert ports.free_ports(1) == [40001]
    assert set(_held(reservations)) == {40001, 40009}


def test_excluded_ports_are_skipped_and_too_few_free_ones_is_an_error(
    reservations: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _kernel_picks(monkeypatch, 40001, 40002)
    assert ports.free_ports(1, exclude={40001}) == [40002]
    _kernel_picks(monkeypatch, *([40001] * 40))
    with pytest.raises(OSError, match="could not find 2 free ports"):
        ports.free_ports(2, exclude={40001})


def test_a_garbled_reservations_file_is_read_past(reservations: Path) -> None:
    reservations.write_text("not a line\n12 x\n\n")
    assert len(ports.free_ports(2)) == 2
    assert len(_held(reservations)) == 2


def test_without_a_usable_reservations_file_ports_are_still_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ports, "reservations_file", lambda: tmp_path / "missing-dir" / "ports")
    found = ports.free_ports(3)
    assert len(set(found)) == 3
    assert all(ports.port_is_free(port) for port in found)


def test_another_process_is_never_given_the_ports_this_one_holds(reservations: Path) -> None:
    mine = set(ports.free_ports(20))
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from controlplane.runtime import ports; "
            "ports.reservations_file = lambda: Path(sys.argv[1]); "
            "print(*ports.free_ports(200))",
            str(reservations),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    theirs = {int(p) for p in child.stdout.split()}
    assert len(theirs) == 200
    assert not mine & theirs
    assert set(_held(reservations)) == mine | theirs


def test_a_port_in_use_is_not_free() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert not ports.port_is_free(listener.getsockname()[1])
