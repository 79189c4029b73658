"""PostgreSQL role query over asyncpg (one connection, no pool: the prober keeps it).

Primary: ``pg_is_in_recovery()`` is false; its timeline (the first 8 hex digits of the current WAL
file name) orders primaries, since a promoted standby always starts a new, higher timeline.
Replica: lag is 0 while everything received is replayed, else the age of the last replayed
transaction; a standby with no WAL receiver is "not streaming" (its lag is unknown). The receiver
row is visible to any user (its details need pg_monitor, which the query does not use).
"""

from __future__ import annotations

import ssl

import asyncpg

from epctl.api.spec import DatabaseProbe
from epctl.probe.credentials import Credentials, DatabaseError
from epctl.probe.roles import PRIMARY, REPLICA, RoleAnswer

ROLE_QUERY = """
SELECT pg_is_in_recovery() AS standby,
       CASE WHEN NOT pg_is_in_recovery()
            THEN ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END AS timeline,
       CASE WHEN NOT pg_is_in_recovery() THEN NULL
            WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0.0
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END AS lag,
       EXISTS (SELECT 1 FROM pg_stat_wal_receiver) AS streaming
"""


class PostgresSession:
    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection

    async def role(self) -> RoleAnswer:
        try:
            row = await self.connection.fetchrow(ROLE_QUERY)
        except (asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError):
            raise DatabaseError("connection lost") from None
        except asyncpg.PostgresError as err:
            raise DatabaseError(f"role query failed ({err.sqlstate})") from None
        if row is None:  # pragma: no cover - the query always returns one row
            raise DatabaseError("empty answer to the role query")
        if not row["standby"]:
            return RoleAnswer(PRIMARY, generation=int(row["timeline"]))
        if not row["streaming"]:
            return RoleAnswer(REPLICA, link="not streaming")
        lag = row["lag"]
        return RoleAnswer(REPLICA, lag=max(0.0, float(lag)) if lag is not None else None)

    async def close(self) -> None:
        await self.connection.close(timeout=1)


async def connect(address: str, port: int, creds: Credentials, probe: DatabaseProbe,
                  context: ssl.SSLContext | None, database: str) -> PostgresSession:
    try:
        connection = await asyncpg.connect(
            host=address, port=port, user=creds.username or "postgres", password=creds.password or None,
            database=database or "postgres", ssl=context or False, timeout=60, statement_cache_size=0,
            server_settings={"application_name": "epctl-probe"})
    except asyncpg.InvalidAuthorizationSpecificationError as err:
        raise DatabaseError(f"authentication failed ({err.sqlstate})") from None
    except asyncpg.InvalidPasswordError:
        raise DatabaseError("authentication failed (password)") from None
    except asyncpg.InvalidCatalogNameError:
        raise DatabaseError("database does not exist") from None
    except asyncpg.PostgresError as err:
        raise DatabaseError(f"server refused the connection ({err.sqlstate})") from None
    return PostgresSession(connection)
