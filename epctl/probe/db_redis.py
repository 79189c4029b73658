"""Redis role query over redis-py's asyncio Connection (a single connection, not a pool).

``ROLE`` answers ``master`` or ``slave`` with the replication state; a replica whose link is not
``connected`` asks ``INFO replication`` for ``master_link_down_since_seconds`` (its lag bound). Redis
has no order among masters, so two masters are never told apart (roles.arbitrate publishes none).
"""

from __future__ import annotations

import ssl
from typing import Any

from redis import exceptions
from redis.asyncio.connection import Connection

from epctl.api.spec import DatabaseProbe
from epctl.probe.credentials import Credentials, DatabaseError
from epctl.probe.roles import PRIMARY, REPLICA, RoleAnswer


class _Connection(Connection):
    """redis-py's connection with our SSLContext (verification and server name, database.tls_context)."""

    def __init__(self, *, tls: ssl.SSLContext | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tls = tls

    def _connection_arguments(self) -> dict[str, Any]:
        arguments = dict(super()._connection_arguments())
        if self.tls is not None:
            arguments["ssl"] = self.tls
            arguments["server_hostname"] = self.host
        return arguments


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisSession:
    def __init__(self, connection: _Connection) -> None:
        self.connection = connection

    async def _call(self, *args: str) -> Any:
        try:
            await self.connection.send_command(*args)
            return await self.connection.read_response()
        except exceptions.ResponseError as err:
            text = str(err).split(" ", 1)[0]
            raise DatabaseError(f"{args[0]} refused ({text})") from None
        except exceptions.ConnectionError:
            raise DatabaseError("connection lost") from None

    async def role(self) -> RoleAnswer:
        answer = await self._call("ROLE")
        kind = _text(answer[0])
        if kind == "master":
            return RoleAnswer(PRIMARY)
        if kind != "slave":
            raise DatabaseError(f"not a data node (ROLE says {kind[:20]})")
        state = _text(answer[3])
        if state == "connected":
            return RoleAnswer(REPLICA, lag=0.0)
        info = _text(await self._call("INFO", "replication"))
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        down = fields.get("master_link_down_since_seconds", "")
        lag = float(down) if down.lstrip("-").isdigit() and int(down) >= 0 else None
        return RoleAnswer(REPLICA, lag=lag, link=f"link {state[:20]}")

    async def close(self) -> None:
        await self.connection.disconnect()


async def connect(address: str, port: int, creds: Credentials, probe: DatabaseProbe,
                  context: ssl.SSLContext | None, database: str) -> RedisSession:
    connection = _Connection(tls=context, host=address, port=port, username=creds.username or None,
                             password=creds.password or None, socket_timeout=None, socket_connect_timeout=None,
                             retry_on_timeout=False, client_name="epctl-probe")
    try:
        await connection.connect()  # type: ignore[no-untyped-call]
    except exceptions.AuthenticationError:
        raise DatabaseError("authentication failed") from None
    except exceptions.ResponseError as err:
        raise DatabaseError(f"server refused the connection ({str(err).split(' ', 1)[0]})") from None
    except exceptions.ConnectionError as err:
        cause = err.__cause__ or err.__context__
        if isinstance(cause, OSError):
            raise cause from None
        raise DatabaseError("connection failed") from None
    return RedisSession(connection)
