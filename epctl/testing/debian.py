"""The real servers the test suite runs, from Debian's packages: installed when missing, never skipped.

The README's test command (``pytest``) must work on a fresh machine, and the database role probe
tests and the Prometheus test run the real PostgreSQL, MariaDB, Redis and Prometheus. So the suite
installs what is missing before it starts (``tests/conftest.py``), the way ``.ci/run`` would: as root
with apt-get (refreshing the package lists only when the first attempt fails), or with ``sudo -n``.
Elsewhere it stops with one line saying what to install.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

# package -> how to tell it is there
SERVERS: dict[str, tuple[str, ...]] = {
    "prometheus": ("prometheus", "promtool"),
    "postgresql": ("/usr/lib/postgresql/*/bin/postgres",),
    "redis-server": ("redis-server",),
    "mariadb-server": ("mariadbd|/usr/sbin/mariadbd",),
}


def _present(probe: str) -> bool:
    for alternative in probe.split("|"):
        if alternative.startswith("/") and (glob.glob(alternative) or os.path.exists(alternative)):
            return True
        if not alternative.startswith("/") and shutil.which(alternative):
            return True
    return False


def missing() -> list[str]:
    return [package for package, probes in SERVERS.items() if not all(_present(p) for p in probes)]


def ensure_installed() -> None:
    """Install the missing server packages, or raise RuntimeError saying what to install."""
    need = missing()
    if not need:
        return
    if shutil.which("apt-get") is None:
        raise RuntimeError(f"the test suite runs real servers: install {', '.join(need)} (Debian package names)")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", *need]
    if subprocess.run(install, env=env, check=False).returncode != 0:
        subprocess.run([*sudo, "apt-get", "update", "-q"], env=env, check=False)  # a fresh image has no lists
        if subprocess.run(install, env=env, check=False).returncode != 0:
            raise RuntimeError(f"could not install {', '.join(need)}: install them (Debian package names) and rerun")
    still = missing()
    if still:
        raise RuntimeError(f"installed, but still not found: {', '.join(still)}")
