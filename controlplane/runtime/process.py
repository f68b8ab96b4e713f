"""A supervised child process: started in its own session, restarted when it dies.

Concurrency: one monitor thread per process waits on it; ``stop()`` may be
called from any thread and wins over a pending restart. After every exit
(expected or not) the ``cleanup`` callback runs, so leftovers of a crashed
child (for Triton: backend stub processes and /dev/shm regions) are removed
before the next start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)


class SupervisedProcess:
    """Runs ``argv`` and keeps it running until ``stop()``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        log_path: Path,
        cwd: Path | None = None,
        cleanup: Callable[[], None] | None = None,
        on_restart: Callable[[], None] | None = None,
        stop_signal: int = signal.SIGTERM,
        stop_timeout: float = 10.0,
        max_backoff: float = 10.0,
        pid_file: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.cleanup = cleanup
        self.on_restart = on_restart
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        self.max_backoff = max_backoff
        self.pid_file = pid_file
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._monitor: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the process and its monitor thread."""
        self._spawn()
        self._monitor = threading.Thread(target=self._watch, name=f"supervise-{self.name}", daemon=True)
        self._monitor.start()

    def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self._stopping.is_set():
                return
            logfile = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it open
            try:
                self._proc = subprocess.Popen(
                    self.argv,
                    env=self.env,
                    cwd=self.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=logfile,
                    stderr=subprocess.STDOUT,
                    # Own session: a Ctrl-C in the terminal reaches only us, and we stop children in order.
                    start_new_session=True,
                )
            finally:
                logfile.close()
            if self.pid_file is not None:
                self.pid_file.write_text(f"{self._proc.pid}\n")
        log.info("%s started (pid %s)", self.name, self._proc.pid)

    def _watch(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            proc = self._proc
            if proc is None:
                return
            started = time.monotonic()
            code = proc.wait()
            self._kill_group(proc.pid)
            self._run_cleanup()
            if self._stopping.is_set():
                return
            if time.monotonic() - started > 30:
                backoff = 0.5
            log.warning("%s exited with %s; restarting in %.1f s", self.name, code, backoff)
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, self.max_backoff)
            self.restarts += 1
            self._spawn()
            if self.on_restart is not None and not self._stopping.is_set():
                threading.Thread(target=self.on_restart, name=f"restarted-{self.name}", daemon=True).start()

    def _run_cleanup(self) -> None:
        if self.cleanup is None:
            return
        try:
            self.cleanup()
        except Exception:  # a failed cleanup must not stop supervision
            log.exception("cleanup after %s failed", self.name)

    @staticmethod
    def _kill_group(pgid: int) -> None:
        # Children left in the process group (backend stubs ignore SIGTERM) go with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    def stop(self) -> int | None:
        """Stop for good: signal, wait ``stop_timeout``, then kill the whole group; run cleanup."""
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self.stop_signal)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", self.name, self.stop_timeout)
                proc.kill()
                proc.wait()
        self._kill_group(proc.pid)
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join(timeout=5)
        self._run_cleanup()
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)
        return proc.returncode
