"""Supervised processes: started (or adopted) once, restarted when they die, stopped on request.

A ``SupervisedProcess`` watches one process at a time through a handle:

* ``ChildProcess``: a child we started (own session, so a Ctrl-C in the
  terminal reaches only us and children are stopped in order). Its exit is
  seen by ``wait()``, which also reaps it.
* ``AdoptedProcess``: a process a previous run of the control plane started
  and left running when it was killed. It is not our child, so we cannot
  ``wait()`` for it: its exit is seen through a pidfd becoming readable
  (``os.pidfd_open`` + ``poll``), or, where pidfds are unavailable, by polling
  ``/proc/<pid>/stat`` for the same start time.

Invariants:

* A pid is signalled only through a handle that proves it still names the
  process we identified: ``pidfd_send_signal`` on a pidfd, or (fallback) a
  start-time check just before ``os.kill``. A reused pid is never signalled.
* After every exit (expected or not) the ``cleanup`` callback runs, so the
  leftovers of a crashed process (for Triton: backend stub processes and
  /dev/shm regions) are removed before the next start. After the exit of a
  child the rest of its process group is killed too; an adopted process's
  group is not (its pid may be reused by then), cleanup covers what it left.
* A restart is always a child of ours, whatever the first process was.
* With ``user``/``group`` the child runs as that user with that group and no
  supplementary groups (only root can ask for it); its log file is ours,
  mode 0600, and only inherited as an open descriptor.

Concurrency: one monitor thread per supervised process waits on it and
restarts it with exponential backoff; ``stop()`` may be called from any thread
and wins over a pending restart (``_spawn`` checks the stop flag under the
same lock ``stop()`` reads the current handle with). Pidfds are closed only by
``stop()`` after the monitor has finished, so no thread ever uses a closed
(possibly reused) descriptor number.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from controlplane.errors import StartupFailed
from controlplane.procfs import PROC, read_cmdline, read_stat

log = logging.getLogger(__name__)


class ProcessHandle(Protocol):
    """What supervision needs of a running process, child or adopted."""

    @property
    def pid(self) -> int:
        """The process id."""
        ...

    def running(self) -> bool:
        """Whether the process has not exited yet."""
        ...

    def wait(self, timeout: float | None) -> bool:
        """Block until it exits or ``timeout`` passes; True when it has exited."""
        ...

    def send(self, sig: int) -> None:
        """Send ``sig`` if it still runs; never reaches another process with the same pid."""
        ...

    def exit_status(self) -> int | None:
        """``Popen.returncode`` style status, or None when unknown (still running, or not our child)."""
        ...

    def close(self) -> None:
        """Release what the handle holds (a pidfd); call once, after the last use."""
        ...


class ChildProcess:
    """A child process of ours (``subprocess.Popen``)."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen

    @property
    def pid(self) -> int:
        """The child's pid."""
        return self.popen.pid

    def running(self) -> bool:
        """Whether the child has not exited (reaps it when it has)."""
        return self.popen.poll() is None

    def wait(self, timeout: float | None) -> bool:
        """Wait for (and reap) the child; False if still running after ``timeout``."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def send(self, sig: int) -> None:
        """Signal the child unless it has been reaped (Popen refuses that itself)."""
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(sig)

    def exit_status(self) -> int | None:
        """The child's return code (negative: killed by that signal)."""
        return self.popen.returncode

    def close(self) -> None:
        """Nothing to release: Popen owns no descriptor once the child is reaped."""


class AdoptedProcess:
    """A running process we did not start: watched through a pidfd or ``/proc``, never waited for."""

    def __init__(
        self,
        pid: int,
        *,
        start_time: int,
        pidfd: int | None,
        proc: Path = PROC,
        poll_interval: float = 0.1,
    ) -> None:
        self._pid = pid
        self.start_time = start_time
        self.pidfd = pidfd
        self._proc = proc
        self.poll_interval = poll_interval
        self._closed = False

    @classmethod
    def open(cls, pid: int, *, proc: Path = PROC, use_pidfd: bool = True) -> AdoptedProcess | None:
        """A handle on the live process ``pid``, or None when there is none (zombies count as none).

        The pidfd is opened before anything is read from ``/proc``: from then
        on it names one process, and ``running()`` tells whether what was read
        can still be attributed to it.
        """
        pidfd: int | None = None
        if use_pidfd and hasattr(os, "pidfd_open"):
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                return None
            except OSError:
                pidfd = None  # kernel without pidfd (ENOSYS) or a sandbox refusing it
        stat = read_stat(pid, proc)
        if stat is None or stat.exited:
            if pidfd is not None:
                os.close(pidfd)
            return None
        handle = cls(pid, start_time=stat.start_time, pidfd=pidfd, proc=proc)
        if not handle.running():
            handle.close()
            return None
        return handle

    @property
    def pid(self) -> int:
        """The adopted process's pid (meaningful only while ``running()``)."""
        return self._pid

    def cmdline(self) -> list[str] | None:
        """The process's argv, or None if it exited meanwhile (then the text read may be another's)."""
        argv = read_cmdline(self._pid, self._proc)
        # Checked after reading: if it still runs now, the pid cannot have been reused in between.
        if argv is None or not self.running():
            return None
        return argv

    def running(self) -> bool:
        """Whether the process this handle names has not exited."""
        if self.pidfd is not None:
            return not self._pidfd_readable(0)
        stat = read_stat(self._pid, self._proc)
        return stat is not None and stat.start_time == self.start_time and not stat.exited

    def _pidfd_readable(self, timeout: float | None) -> bool:
        assert self.pidfd is not None
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))

    def wait(self, timeout: float | None) -> bool:
        """Block until the process exits (True) or ``timeout`` passes (False)."""
        if self.pidfd is not None:
            return self._pidfd_readable(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(self.poll_interval)
        return True

    def send(self, sig: int) -> None:
        """Signal the process; a no-op once it has exited, whoever holds its pid now."""
        if self.pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, sig)
            return
        # Without a pidfd a tiny window remains between this check and kill().
        if self.running():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self._pid, sig)

    def exit_status(self) -> int | None:
        """Always None: only a parent learns the exit status of a process."""
        return None

    def close(self) -> None:
        """Close the pidfd (idempotent)."""
        if self.pidfd is not None and not self._closed:
            self._closed = True
            os.close(self.pidfd)


def terminate(handle: ProcessHandle, *, stop_signal: int = signal.SIGTERM, timeout: float = 10.0) -> bool:
    """Send ``stop_signal``, wait ``timeout``, then SIGKILL; True when the process is gone."""
    if not handle.running():
        return True
    handle.send(stop_signal)
    if handle.wait(timeout):
        return True
    log.warning("pid %s did not stop in %.0f s; killing it", handle.pid, timeout)
    handle.send(signal.SIGKILL)
    return handle.wait(timeout)


class SupervisedProcess:
    """Runs ``argv`` (or adopts a process that runs it) and keeps it running until ``stop()``."""

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
        user: int | None = None,
        group: int | None = None,
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
        self.user = user
        self.group = group
        self.restarts = 0
        self._proc: ProcessHandle | None = None
        self._adopted: AdoptedProcess | None = None
        self._stopping = threading.Event()
        self._restart_requested = threading.Event()
        self._lock = threading.Lock()
        self._monitor: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """Pid of the current process (child or adopted), None before start."""
        return self._proc.pid if self._proc else None

    @property
    def adopted(self) -> bool:
        """Whether the current process is the adopted one (not a child of ours)."""
        proc = self._proc
        return proc is not None and proc is self._adopted

    def is_running(self) -> bool:
        """Whether the current process has not exited."""
        proc = self._proc
        return proc is not None and proc.running()

    def start(self) -> None:
        """Start the process and its monitor thread."""
        self._spawn()
        self._start_monitor()

    def adopt(self, process: AdoptedProcess) -> None:
        """Supervise ``process``, left running by an earlier run, instead of starting one.

        When it dies, cleanup runs and ``argv`` is started as our child, with
        the usual backoff and ``on_restart``, exactly as after a child's death.
        """
        with self._lock:
            self._proc = process
            self._adopted = process
            self._write_pid_file(process.pid)
        log.info("%s adopted (pid %s, left running by a previous control plane)", self.name, process.pid)
        self._start_monitor()

    def _start_monitor(self) -> None:
        self._monitor = threading.Thread(target=self._watch, name=f"supervise-{self.name}", daemon=True)
        self._monitor.start()

    def _write_pid_file(self, pid: int) -> None:
        if self.pid_file is not None:
            self.pid_file.write_text(f"{pid}\n")

    def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self._stopping.is_set():
                return
            fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.fchmod(fd, 0o600)  # an older file may have been created wider
            logfile = os.fdopen(fd, "ab")
            try:
                popen = subprocess.Popen(
                    self.argv,
                    env=self.env,
                    cwd=self.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=logfile,
                    stderr=subprocess.STDOUT,
                    # Own session: a Ctrl-C in the terminal reaches only us, and we stop children in order;
                    # it also lets the child outlive a kill -9 of the control plane, to be adopted later.
                    start_new_session=True,
                    user=self.user,
                    group=self.group,
                    extra_groups=[] if self.user is not None else None,
                )
            finally:
                logfile.close()
            self._proc = ChildProcess(popen)
            self._write_pid_file(popen.pid)
        log.info("%s started (pid %s)", self.name, popen.pid)

    def _watch(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            proc = self._proc
            if proc is None:
                return
            started = time.monotonic()
            proc.wait(None)
            if isinstance(proc, ChildProcess):
                self._kill_group(proc.pid)
            self._run_cleanup()
            if self._stopping.is_set():
                return
            if time.monotonic() - started > 30:
                backoff = 0.5
            code = proc.exit_status()
            if self._restart_requested.is_set():
                # Asked for (a recycle): no backoff, and no count against the next crash's backoff.
                self._restart_requested.clear()
                log.info("%s stopped for a restart; starting it again", self.name)
            else:
                how = f"exited with {code}" if code is not None else "(adopted) exited"
                log.warning("%s %s; restarting in %.1f s", self.name, how, backoff)
                if self._stopping.wait(backoff):
                    return
                backoff = min(backoff * 2, self.max_backoff)
            self.restarts += 1
            self._spawn()
            if self.on_restart is not None and not self._stopping.is_set():
                threading.Thread(target=self.on_restart, name=f"restarted-{self.name}", daemon=True).start()

    def restart(self) -> None:
        """Replace the running process with a fresh one now; return once the new one has been started.

        The current process gets the stop signal (SIGKILL after
        ``stop_timeout``); the monitor starts the next one at once, with
        cleanup and ``on_restart`` as after any exit. StartupFailed if no new
        process appears within ``stop_timeout`` plus 10 s.
        """
        with self._lock:
            proc = self._proc
        if proc is None or self._stopping.is_set():
            raise StartupFailed(f"{self.name} is not running: nothing to restart")
        self._restart_requested.set()
        if proc.running():
            proc.send(self.stop_signal)
            if not proc.wait(self.stop_timeout):
                log.warning("%s did not stop in %.0f s; killing it", self.name, self.stop_timeout)
                proc.send(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self._proc is proc:
            if time.monotonic() > deadline or self._stopping.is_set():
                raise StartupFailed(f"{self.name} was stopped for a restart but did not start again")
            time.sleep(0.05)

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
        """Stop for good: signal, wait ``stop_timeout``, then SIGKILL; run cleanup.

        Returns the exit status, or None if nothing ran or the process was
        adopted (its status goes to its parent, not to us).
        """
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is None:
            return None
        if proc.running():
            proc.send(self.stop_signal)
            if not proc.wait(self.stop_timeout):
                log.warning("%s did not stop in %.0f s; killing it", self.name, self.stop_timeout)
                proc.send(signal.SIGKILL)
                if not proc.wait(30):
                    log.error("%s (pid %s) survived SIGKILL for 30 s", self.name, proc.pid)
        if isinstance(proc, ChildProcess):
            self._kill_group(proc.pid)
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join(timeout=5)
        self._run_cleanup()
        if self._adopted is not None and not (self._monitor is not None and self._monitor.is_alive()):
            self._adopted.close()
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)
        return proc.exit_status()
