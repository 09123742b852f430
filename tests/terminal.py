"""Run a `dualwrite` command on a pseudo-terminal and answer its [y/N] question: what an operator sees."""

from __future__ import annotations

import os
import pty
import select as fdselect
import subprocess
import sys
import time


def run_on_terminal(args: list[str], answer: str, timeout: float = 120) -> tuple[str, int]:
    """(everything printed, exit code) of `python -m dualwrite *args` with stdin/stdout on a pty."""
    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.Popen(
        [sys.executable, "-m", "dualwrite", *args], stdin=slave, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    return pty_output(master, proc, timeout, answer), proc.returncode


def pty_output(master: int, proc: subprocess.Popen, timeout: float, answer: str | None = None) -> str:  # type: ignore[type-arg]
    """Everything `proc` printed on the pty whose end is `master`, until it exits (its first [y/N] question
    answered with `answer`, if given); `master` is closed afterwards."""
    out = b""
    answered = answer is None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = fdselect.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
            if not answered and b"[y/N]" in out:
                os.write(master, answer.encode())  # type: ignore[union-attr]
                answered = True
        elif proc.poll() is not None:
            break
    proc.wait(timeout=30)
    os.close(master)
    return out.decode(errors="replace")
