"""The git command, run with a fixed argument vector (never a shell), a timeout and a plain environment."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import BinaryIO

from controlplane.errors import ControlPlaneError

DEFAULT_TIMEOUT = 60.0
# Reading a large blob to a file may take longer than asking git a question.
BLOB_TIMEOUT = 600.0


class GitFailed(ControlPlaneError):
    """git could not answer (a repository being rewritten, a lock, a timeout); the next poll asks again."""

    code = "git_failed"
    retryable = True


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    # Reads must not take the index lock of someone committing, prompt for anything, or translate messages.
    env.update({"GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"})
    return env


class Git:
    """git commands on the repository at ``repo``."""

    def __init__(self, repo: Path, *, executable: str = "git", timeout: float = DEFAULT_TIMEOUT) -> None:
        self.repo = repo
        self.executable = executable
        self.timeout = timeout

    def _argv(self, args: tuple[str, ...]) -> list[str]:
        # fsmonitor is a command the repository's config may name; nothing here needs it.
        return [self.executable, "-C", str(self.repo), "-c", "core.fsmonitor=false", *args]

    def run(self, *args: str, ok_codes: tuple[int, ...] = (0,)) -> tuple[int, bytes]:
        """Run ``git args`` and return (exit code, stdout); GitFailed for any other exit code."""
        try:
            done = subprocess.run(
                self._argv(args),
                capture_output=True,
                timeout=self.timeout,
                env=_environment(),
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError:
            raise GitFailed(
                f"the git command ({self.executable}) is not installed", code="git_missing", retryable=False
            ) from None
        except subprocess.TimeoutExpired:
            raise GitFailed(f"git {args[0]} did not answer within {self.timeout:g} s") from None
        if done.returncode not in ok_codes:
            raise GitFailed(f"git {args[0]} failed in {self.repo}: {_first_line(done.stderr)}")
        return done.returncode, done.stdout

    def output(self, *args: str) -> bytes:
        """Stdout of ``git args``, which must succeed."""
        return self.run(*args)[1]

    def blob_to(self, oid: str, out: BinaryIO) -> None:
        """Write the content of blob ``oid`` to ``out`` (streamed: a model file may be large)."""
        try:
            done = subprocess.run(
                self._argv(("cat-file", "blob", oid)),
                stdout=out,
                stderr=subprocess.PIPE,
                timeout=max(self.timeout, BLOB_TIMEOUT),
                env=_environment(),
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise GitFailed(f"git cat-file of {oid} did not finish within {BLOB_TIMEOUT:g} s") from None
        if done.returncode != 0:
            raise GitFailed(f"git cat-file {oid} failed: {_first_line(done.stderr)}")


def _first_line(stderr: bytes) -> str:
    text = stderr.decode("utf-8", "replace").strip()
    return text.splitlines()[0] if text else "no message"
