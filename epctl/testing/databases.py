"""Real PostgreSQL, Redis and MariaDB servers for tests and benchmarks: a primary and a replica each.

Started from the Debian packages' binaries on loopback, in a temporary directory, on one port and
two addresses (127.0.0.2 primary, 127.0.0.3 replica: one ClusterEndpoint port can list both).
PostgreSQL and MariaDB refuse to run as root: as root, the servers run as their package's system
user (``runuser``). Everything is fast and throwaway (fsync off, no persistence).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PRIMARY_ADDRESS, REPLICA_ADDRESS = "127.0.0.2", "127.0.0.3"
PASSWORD = "probe-s3cret-Pw"  # tests assert it never shows up in status, Events or logs
# Debian installs each major version side by side; the newest one runs the tests
MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"  # sbin: not on a non-root user's PATH
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), default=Path("/nonexistent"))


def free_port() -> int:
    """A port free on both addresses (bound and released; the servers take it right after)."""
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind((PRIMARY_ADDRESS, 0))
            port = a.getsockname()[1]
            try:
                b.bind((REPLICA_ADDRESS, port))
            except OSError:
                continue
            return int(port)
    raise RuntimeError("no free port on both loopback addresses")


def _as(user: str) -> list[str]:
    return ["runuser", "-u", user, "--"] if os.geteuid() == 0 else []


def _workdir(prefix: str, user: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(path, user, user)
    return path


def _run(cmd: list[str], **kwargs: object) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)  # type: ignore[call-overload]
    if done.returncode:
        raise RuntimeError(f"{cmd[0] if cmd[0] != 'runuser' else cmd[4]} failed ({done.returncode}): "
                           f"{done.stderr[-2000:] or done.stdout[-2000:]}")


def wait_port(address: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class PostgresPair:
    """A primary (127.0.0.2) and a streaming standby (127.0.0.3) of PostgreSQL; users postgres and
    probe (a plain login role), password ``PASSWORD`` over TCP (scram-sha-256)."""

    user = "postgres"

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = _workdir("epctl-pg-", self.user)
        self.primary, self.replica = self.dir / "primary", self.dir / "replica"

    def _ctl(self, *args: str) -> None:
        _run([*_as(self.user), str(PG_BIN / "pg_ctl"), *args])

    def _options(self, address: str, data: Path) -> str:
        return (f"-c port={self.port} -c listen_addresses={address} -c unix_socket_directories={data} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=16MB "
                "-c max_connections=30 -c wal_sender_timeout=5s -c wal_receiver_timeout=5s")

    def _start(self, data: Path, address: str) -> None:
        self._ctl("-D", str(data), "-o", self._options(address, data), "-l", f"{data}.log", "-w", "start")

    def start(self) -> PostgresPair:
        pwfile = self.dir / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, self.user, self.user)
        _run([*_as(self.user), str(PG_BIN / "initdb"), "-D", str(self.primary), "-U", "postgres", "--no-sync",
              "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"])
        self._start(self.primary, PRIMARY_ADDRESS)
        # the probe's user is a plain login role, no grants (the role query needs none)
        self.sql(self.primary, f"CREATE ROLE probe LOGIN PASSWORD '{PASSWORD}'")
        _run([*_as(self.user), str(PG_BIN / "pg_basebackup"), "-h", str(self.primary), "-p", str(self.port),
              "-U", "postgres", "-D", str(self.replica), "-R", "-X", "stream", "--no-sync", "-c", "fast"])
        for lock in self.replica.glob(".s.PGSQL.*"):  # the primary's socket lock, copied with the data
            lock.unlink()
        # the standby dials the primary over TCP (as a real one would), with the password
        with (self.replica / "postgresql.auto.conf").open("a") as conf:
            conf.write(f"primary_conninfo = 'host={PRIMARY_ADDRESS} port={self.port} user=postgres "
                       f"password={PASSWORD} application_name=replica'\n")
        self._start(self.replica, REPLICA_ADDRESS)
        return self

    def sql(self, data: Path, statement: str) -> str:
        """Run ``statement`` on the server of ``data`` over its Unix socket (trusted), as the server sees it."""
        done = subprocess.run([*_as(self.user), str(PG_BIN / "psql"), "-h", str(data), "-p", str(self.port),
                               "-U", "postgres", "-At", "-c", statement], capture_output=True, text=True, timeout=30)
        if done.returncode:
            raise RuntimeError(f"psql failed: {done.stderr[-1000:]}")
        return done.stdout.strip()

    def enable_tls(self, cert_pem: bytes, key_pem: bytes) -> None:
        """Serve TLS on the primary with this certificate (a reload, no restart)."""
        for name, content in (("server.crt", cert_pem), ("server.key", key_pem)):
            path = self.primary / name
            path.write_bytes(content)
            path.chmod(0o600)
            if os.geteuid() == 0:
                shutil.chown(path, self.user, self.user)
        self.sql(self.primary, "ALTER SYSTEM SET ssl = on")
        self.sql(self.primary, "SELECT pg_reload_conf()")

    def promote_replica(self) -> None:
        self._ctl("-D", str(self.replica), "-w", "promote")

    def stop_primary(self) -> None:
        self._ctl("-D", str(self.primary), "-m", "immediate", "-w", "stop")

    def close(self) -> None:
        for data in (self.replica, self.primary):
            with contextlib.suppress(Exception):
                if (data / "postmaster.pid").exists():
                    self._ctl("-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisTLS:
    """A lone Redis master speaking only TLS on 127.0.0.4 with a throw-away CA's certificate (it
    names localhost and 127.0.0.1, not 127.0.0.4: the server name is what verification checks)."""

    address = "127.0.0.4"

    def __init__(self) -> None:
        from epctl.testing.tls import serving_certs

        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="epctl-redis-tls-"))
        certs = serving_certs()
        for name, content in (("server.crt", certs.cert_pem), ("server.key", certs.key_pem), ("ca.crt", certs.ca_pem)):
            (self.dir / name).write_bytes(content)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisTLS:
        self.process = subprocess.Popen(
            ["redis-server", "--bind", self.address, "--port", "0", "--tls-port", str(self.port),
             "--tls-cert-file", str(self.dir / "server.crt"), "--tls-key-file", str(self.dir / "server.key"),
             "--tls-ca-cert-file", str(self.dir / "ca.crt"), "--tls-auth-clients", "no", "--save", "",
             "--appendonly", "no", "--requirepass", PASSWORD, "--dir", str(self.dir), "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.address, self.port)
        return self

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(30)
        shutil.rmtree(self.dir, ignore_errors=True)


class _ProcessPair:
    """A primary and a replica this process started (their server processes and their directory)."""

    dir: Path
    processes: dict[str, subprocess.Popen[bytes]]

    def stop_primary(self) -> None:
        process = self.processes.pop(PRIMARY_ADDRESS)
        process.kill()
        process.wait(30)

    def close(self) -> None:
        for process in self.processes.values():
            process.kill()
            process.wait(30)
        self.processes.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisPair(_ProcessPair):
    """A Redis master (127.0.0.2) and a replica of it (127.0.0.3); ``requirepass PASSWORD``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="epctl-redis-"))
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def _server(self, address: str, *extra: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            ["redis-server", "--bind", address, "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--requirepass", PASSWORD, "--masterauth", PASSWORD,
             "--repl-ping-replica-period", "1", "--repl-timeout", "5", "--daemonize", "no",
             "--logfile", str(self.dir / f"{address}.log"), *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> RedisPair:
        self.processes[PRIMARY_ADDRESS] = self._server(PRIMARY_ADDRESS)
        wait_port(PRIMARY_ADDRESS, self.port)
        self.processes[REPLICA_ADDRESS] = self._server(REPLICA_ADDRESS, "--replicaof", PRIMARY_ADDRESS,
                                                       str(self.port))
        wait_port(REPLICA_ADDRESS, self.port)
        return self

    def cli(self, address: str, *args: str) -> str:
        done = subprocess.run(["redis-cli", "-h", address, "-p", str(self.port), "--no-auth-warning",
                               "-a", PASSWORD, *args], capture_output=True, text=True, timeout=30, check=True)
        return done.stdout.strip()

    def promote_replica(self) -> None:
        self.cli(REPLICA_ADDRESS, "REPLICAOF", "NO", "ONE")



class MariaDBPair(_ProcessPair):
    """A MariaDB primary (127.0.0.2, binary log on) and a read-only replica of it (127.0.0.3); the probe
    user ``probe`` (password ``PASSWORD``, REPLICATION CLIENT + SLAVE MONITOR) comes to the replica
    through replication, as it would in production."""

    user = "mysql"

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = _workdir("epctl-mariadb-", self.user)
        self.primary, self.replica = self.dir / "primary", self.dir / "replica"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def _server(self, data: Path, address: str, server_id: int, *extra: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [MARIADBD, "--no-defaults", f"--datadir={data}", f"--port={self.port}", f"--bind-address={address}",
             f"--socket={data}/mysqld.sock", f"--pid-file={data}/mysqld.pid", f"--log-error={data}.log",
             f"--server-id={server_id}", "--log-bin=mysql-bin", "--skip-name-resolve", "--performance-schema=OFF",
             "--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M", "--innodb-flush-log-at-trx-commit=0",
             "--sync-binlog=0", "--skip-innodb-doublewrite", *(["--user=mysql"] if os.geteuid() == 0 else []),
             *extra], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def sql(self, data: Path, statement: str) -> str:
        done = subprocess.run(["mariadb", "--no-defaults", f"--socket={data}/mysqld.sock", "-u", "root", "-N", "-B",
                               "-e", statement], capture_output=True, text=True, timeout=60)
        if done.returncode:
            raise RuntimeError(f"mariadb failed: {done.stderr[-1000:]}")
        return done.stdout.strip()

    def _wait(self, data: Path, address: str) -> None:
        wait_port(address, self.port, timeout=60)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.sql(data, "SELECT 1")
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def start(self) -> MariaDBPair:
        from epctl.testing.tls import serving_certs  # localhost / 127.0.0.1 only: a server name is needed

        certs = serving_certs()
        for name, content in (("server.crt", certs.cert_pem), ("server.key", certs.key_pem)):
            (self.dir / name).write_bytes(content)
            if os.geteuid() == 0:
                shutil.chown(self.dir / name, self.user, self.user)
        _run(["mariadb-install-db", "--no-defaults", f"--datadir={self.primary}", "--skip-test-db",
              "--auth-root-authentication-method=normal", *(["--user=mysql"] if os.geteuid() == 0 else [])])
        shutil.copytree(self.primary, self.replica, symlinks=True)  # the same fresh system tables, fast
        if os.geteuid() == 0:
            _run(["chown", "-R", "mysql:mysql", str(self.replica)])
        self.processes[PRIMARY_ADDRESS] = self._server(self.primary, PRIMARY_ADDRESS, 1,
                                                       f"--ssl-cert={self.dir}/server.crt",
                                                       f"--ssl-key={self.dir}/server.key")
        self.processes[REPLICA_ADDRESS] = self._server(self.replica, REPLICA_ADDRESS, 2, "--read-only=ON")
        self._wait(self.primary, PRIMARY_ADDRESS)
        self.sql(self.primary, f"CREATE USER probe@'%' IDENTIFIED BY '{PASSWORD}'; "
                               "GRANT REPLICATION CLIENT, SLAVE MONITOR ON *.* TO probe@'%'; "
                               f"CREATE USER repl@'%' IDENTIFIED BY '{PASSWORD}'; "
                               "GRANT REPLICATION SLAVE ON *.* TO repl@'%';")
        self._wait(self.replica, REPLICA_ADDRESS)
        self.sql(self.replica, f"CHANGE MASTER TO MASTER_HOST='{PRIMARY_ADDRESS}', MASTER_PORT={self.port}, "
                               f"MASTER_USER='repl', MASTER_PASSWORD='{PASSWORD}', MASTER_USE_GTID=no, "
                               "MASTER_LOG_FILE='mysql-bin.000001', MASTER_LOG_POS=4, MASTER_CONNECT_RETRY=1; "
                               "START SLAVE;")
        self._wait_replicating()
        return self

    def _wait_replicating(self, timeout: float = 90.0) -> None:
        """Ready means replicating: both replication threads running and the probe user arrived (it
        comes by replication; a probe's first login before that is refused). Fails with the replica's
        own last errors rather than leaving a test to time out without a reason."""
        deadline = time.monotonic() + timeout
        while True:
            running = self.sql(self.replica, "SHOW GLOBAL STATUS LIKE 'Slave_running'").split()[-1:] == ["ON"]
            arrived = self.sql(self.replica, "SELECT COUNT(*) FROM mysql.user WHERE User = 'probe'") == "1"
            if running and arrived:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the MariaDB replica is not replicating after {timeout:.0f} s "
                                   f"(threads running: {running}, probe user arrived: {arrived}): "
                                   f"{self.sql(self.replica, 'SHOW SLAVE STATUS')[-1500:]}")
            time.sleep(0.1)

    def promote_replica(self) -> None:
        self.sql(self.replica, "STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = OFF;")

