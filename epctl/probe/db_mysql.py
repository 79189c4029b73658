"""MySQL and MariaDB role query over asyncmy (one connection, no pool: the prober keeps it).

Primary: writable (``read_only`` off; MySQL's ``super_read_only`` implies it) and not configured as
a replica. Replica: ``read_only`` on or a replication channel configured (``SHOW REPLICA STATUS``,
MySQL 8.0.22+ and MariaDB 10.5+, falling back to ``SHOW SLAVE STATUS``); its lag is
``Seconds_Behind_Master`` (unknown while a replication thread is stopped). The probe user needs
``REPLICATION CLIENT`` (MariaDB: ``SLAVE MONITOR`` or ``REPLICA MONITOR``) for the replica status;
without it the role follows ``read_only`` alone. MySQL has no order among writable hosts: two are
never told apart (roles.arbitrate publishes none).
"""

from __future__ import annotations

import ssl
from typing import Any

import asyncmy
from asyncmy import errors

from epctl.api.spec import DatabaseProbe
from epctl.probe.credentials import Credentials, DatabaseError
from epctl.probe.roles import PRIMARY, REPLICA, RoleAnswer

_ACCESS_DENIED = 1045
_NO_PRIVILEGE = (1227, 1044, 1142)


class MySQLSession:
    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.status_query: str | None = "SHOW REPLICA STATUS"

    async def _replica_status(self, cursor: Any) -> dict[str, Any] | None:
        while self.status_query is not None:
            try:
                await cursor.execute(self.status_query)
            except errors.ProgrammingError:  # a server before SHOW REPLICA STATUS
                self.status_query = "SHOW SLAVE STATUS" if self.status_query == "SHOW REPLICA STATUS" else None
                continue
            except errors.OperationalError as err:
                if err.args and err.args[0] in _NO_PRIVILEGE:
                    self.status_query = None  # read_only alone decides from now on
                    return None
                raise
            row = await cursor.fetchone()
            return dict(row) if row else None
        return None

    async def role(self) -> RoleAnswer:
        try:
            return await self._role()
        except errors.OperationalError as err:
            code = err.args[0] if err.args else 0
            raise DatabaseError("connection lost" if code in (2006, 2013) else f"role query failed ({code})") from None

    async def _role(self) -> RoleAnswer:
        async with self.connection.cursor(asyncmy.cursors.DictCursor) as cursor:
            await cursor.execute("SELECT @@global.read_only AS ro")
            row = await cursor.fetchone()
            read_only = bool(int(row["ro"])) if row else False
            status = await self._replica_status(cursor)
        if status is None:
            return RoleAnswer(REPLICA, link="no replication configured") if read_only else RoleAnswer(PRIMARY)
        io = str(status.get("Replica_IO_Running", status.get("Slave_IO_Running", "")))
        sql = str(status.get("Replica_SQL_Running", status.get("Slave_SQL_Running", "")))
        behind = status.get("Seconds_Behind_Source", status.get("Seconds_Behind_Master"))
        if io != "Yes" or sql != "Yes":
            return RoleAnswer(REPLICA, link="replication stopped" if io != "Connecting" else "link connecting")
        return RoleAnswer(REPLICA, lag=float(behind) if behind is not None else None)

    async def close(self) -> None:
        self.connection.close()


async def connect(address: str, port: int, creds: Credentials, probe: DatabaseProbe,
                  context: ssl.SSLContext | None, database: str) -> MySQLSession:
    try:
        connection = await asyncmy.connect(host=address, port=port, user=creds.username or "root",
                                           password=creds.password, db=database or None, ssl=context,
                                           connect_timeout=60, autocommit=True)
    except errors.OperationalError as err:
        code = err.args[0] if err.args else 0
        if code == _ACCESS_DENIED:
            raise DatabaseError("authentication failed") from None
        if isinstance(err.__cause__, OSError):  # TLS verification, refused, unreachable: the real reason
            raise err.__cause__ from None
        if code in (2003, 2013):
            raise DatabaseError("connection refused" if code == 2003 else "connection lost") from None
        raise DatabaseError(f"server refused the connection ({code})") from None
    return MySQLSession(connection)
