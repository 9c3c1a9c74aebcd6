"""
C{twistd} children running the ethtwisted under test: its environment and command line,
eth-client started in the background or run to a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import ethtwisted
from tests.helpers import TIMEOUT


def twistd_environ() -> dict[str, str]:
    """
    The environment of a child twistd: this one without ETH_* variables, with the ethtwisted
    under test importable.
    """
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ETH_")}
    package_root = str(Path(ethtwisted.__file__).resolve().parent.parent)
    environ["PYTHONPATH"] = os.pathsep.join(
        [package_root, *filter(None, [environ.get("PYTHONPATH")])]
    )
    return environ


TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def twistd_client(log: Path, *args: str) -> subprocess.Popen[bytes]:
    """
    C{twistd -n eth-client} as a child process, running the ethtwisted under test.
    """
    return subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", f"--logfile={log}", "eth-client", *args],
        env=twistd_environ(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def twistd_client_fails(*args: str, twistd_args: Sequence[str] = ()) -> list[str]:
    """
    Run C{twistd -n eth-client} to its end, which must be a failure; return its stderr lines
    after checking there is no traceback.
    """
    result = subprocess.run(
        [*TWISTD, *twistd_args, "-n", "--pidfile=", "eth-client", *args],
        env=twistd_environ(),
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert b"Traceback" not in result.stdout + result.stderr
    return result.stderr.decode().strip().splitlines()
