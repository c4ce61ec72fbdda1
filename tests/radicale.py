"""A real Radicale CalDAV server for tests, run as a subprocess on a free local port.

Radicale 3.5+ refuses every login by default (``auth type = denyall``): ``users=None`` sets
``none`` (any username and password log in, each username being its own account), a dict
sets an htpasswd file with plain-text passwords. Every account starts with the calendars
named in ``calendars`` (Radicale's ``predefined_collections``), created at its first login.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_radicale(
    folder: Path,
    *,
    users: dict[str, str] | None = None,
    calendars: tuple[str, ...] = ("Incidents",),
    timeout: float = 20.0,
) -> Iterator[str]:
    """Start Radicale with its storage in ``folder``; yield its URL once it answers HTTP."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    predefined = {
        f"calendar-{index}": {
            "tag": "VCALENDAR",
            "D:displayname": name,
            "C:supported-calendar-component-set": "VEVENT",
        }
        for index, name in enumerate(calendars)
    }
    auth = "type = none"
    if users is not None:
        htpasswd = folder / "users"
        htpasswd.write_text("".join(f"{user}:{password}\n" for user, password in users.items()))
        auth = f"type = htpasswd\nhtpasswd_filename = {htpasswd}\nhtpasswd_encryption = plain"
    config = folder / "config"
    config.write_text(
        f"[server]\nhosts = 127.0.0.1:{port}\n\n"
        # No delay after a failed login: the bad-password test needs no brute-force brake.
        f"[auth]\n{auth}\ndelay = 0\n\n"
        "[rights]\ntype = owner_only\n\n"
        f"[storage]\nfilesystem_folder = {folder / 'collections'}\n"
        f"predefined_collections = {json.dumps(predefined)}\n\n"
        "[web]\ntype = none\n\n"
        "[logging]\nlevel = warning\n"
    )
    log_path = folder / "radicale.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "radicale", "--config", str(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_answering(url, process, log_path, timeout)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_answering(
    url: str, process: subprocess.Popen, log_path: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"Radicale exited ({process.returncode}): {log_path.read_text()}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer means it is serving
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Radicale did not answer at {url} within {timeout} s: {log_path.read_text()}"
                ) from None
            time.sleep(0.1)
