"""Shared helpers for the client-level tests: connections as ordinary roles, actors, error
assertions, and a Python copy of the key format (to craft keys with a valid checksum)."""

from __future__ import annotations

import os
import string
import subprocess
import uuid
import zlib
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = os.environ.get("API_KEY_TEST_CLUSTER", "test")
# The PostgreSQL version under test (scripts/cluster.sh reads the same variable) and its programs.
PG_VERSION = os.environ.get("API_KEY_PG", "15")
PG_BIN = subprocess.run([subprocess.run([str(ROOT / "scripts" / "postgres-versions.sh"), "pg_config", PG_VERSION],
                                        capture_output=True, text=True, check=True).stdout.strip(), "--bindir"],
                        capture_output=True, text=True, check=True).stdout.strip()
DBNAME = os.environ.get("API_KEY_TEST_DB", "api_key_pytest")

# Login roles the suite creates (cluster-wide, created when absent).
APP = "akt_app"          # granted api_key_user: an application
SERVICE = "akt_service"  # granted api_key_admin: the service
NOBODY = "akt_nobody"    # no grant at all

STATES_OK = {
    "22023", "22004", "42501", "P0002", "42704", "23505", "2BP01", "42703", "42P01",
    "28000", "22P02", "22007", "22008", "22003", "22001", "25006",
}


def cluster_port(cluster: str = CLUSTER) -> int:
    if os.environ.get("PGPORT"):
        return int(os.environ["PGPORT"])
    return int((ROOT / ".build" / cluster / "port").read_text().strip())


def conninfo(user: str, dbname: str = DBNAME, host: str | None = None, port: int | None = None) -> str:
    host = host or os.environ.get("PGHOST", "127.0.0.1")
    port = port or cluster_port()
    return psycopg.conninfo.make_conninfo(host=host, port=port, user=user, dbname=dbname,
                                          application_name="api_key_pytest", connect_timeout=10)


def connect(user: str, dbname: str = DBNAME, autocommit: bool = True, **kw) -> psycopg.Connection:
    return psycopg.connect(conninfo(user, dbname, **kw), autocommit=autocommit, row_factory=dict_row)


def uid(prefix: str = "x") -> str:
    """A fresh identifier, so that tests sharing the database never see each other's rows."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


class Client:
    """One connection as one database role. Each call runs in its own transaction, with the
    actor set by SET LOCAL semantics (set_config(..., true)) when one is given."""

    def __init__(self, role: str, dbname: str = DBNAME):
        self.role = role
        self.conn = connect(role, dbname)

    def close(self):
        self.conn.close()

    def rows(self, sql: str, params=None, actor: str | None = None) -> list[dict]:
        with self.conn.transaction():
            if actor is not None:
                self.conn.execute("SELECT set_config('api_key.actor', %s, true)", [actor])
            cur = self.conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def one(self, sql: str, params=None, actor: str | None = None) -> dict:
        rows = self.rows(sql, params, actor)
        assert len(rows) == 1, f"expected exactly one row, got {len(rows)}: {rows!r}"
        return rows[0]

    def val(self, sql: str, params=None, actor: str | None = None):
        row = self.one(sql, params, actor)
        assert len(row) == 1, row
        return next(iter(row.values()))

    @contextmanager
    def tx(self, actor: str | None = None):
        """An explicit transaction; yields the connection."""
        with self.conn.transaction():
            if actor is not None:
                self.conn.execute("SELECT set_config('api_key.actor', %s, true)", [actor])
            yield self.conn


def expect_error(sqlstate: str | set[str], fn, *args, secrets: tuple[str, ...] = (), **kw) -> psycopg.Error:
    """Run fn, expect a database error with the given SQLSTATE (never XX000), and check that
    no secret appears in any part of the error."""
    with pytest.raises(psycopg.Error) as info:
        fn(*args, **kw)
    err = info.value
    wanted = {sqlstate} if isinstance(sqlstate, str) else set(sqlstate)
    assert err.sqlstate != "XX000", f"internal error for a user mistake: {err}"
    assert err.sqlstate in wanted, f"SQLSTATE {err.sqlstate} (wanted {sorted(wanted)}): {err}"
    text = error_text(err)
    for s in secrets:
        if s:
            assert s not in text, "a secret appears in the error"
    return err


def error_text(err: psycopg.Error) -> str:
    d = err.diag
    return "\n".join(str(x) for x in (err, d.message_primary, d.message_detail, d.message_hint,
                                       d.context, d.internal_query, d.statement_position) if x)


# The key format: <prefix><base62 body><base62 CRC32 of prefix+body, 6 characters>.
BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase


def base62(n: int, width: int = 6) -> str:
    out = ["0"] * width
    i = width
    while n > 0 and i > 0:
        i -= 1
        out[i] = BASE62[n % 62]
        n //= 62
    return "".join(out)


def checksum(head: str) -> str:
    return base62(zlib.crc32(head.encode()) & 0xFFFFFFFF)


def with_checksum(head: str) -> str:
    return head + checksum(head)


def random_body(n: int) -> str:
    import secrets as s
    return "".join(s.choice(BASE62) for _ in range(n))


VERIFY_COLUMNS = ["valid", "code", "key_id", "reference_type", "reference_id", "config_id", "name",
                  "permissions", "metadata", "remaining", "rate_limit_remaining", "retry_after_ms",
                  "expires_at", "reset_at"]


def verify(client: Client, key, permissions=None, cost=None, config_id=None, actor=None) -> dict:
    """api_key_verify: asserts exactly one row with the contract's columns."""
    args, params = ["key => %s"], [key]
    if permissions is not None:
        args.append("permissions => %s::jsonb")
        params.append(permissions)
    if cost is not None:
        args.append("cost => %s")
        params.append(cost)
    if config_id is not None:
        args.append("config_id => %s")
        params.append(config_id)
    rows = client.rows(f"SELECT * FROM api_key_verify({', '.join(args)})", params, actor=actor)
    assert len(rows) == 1, rows
    assert list(rows[0].keys()) == VERIFY_COLUMNS
    return rows[0]


def create(client: Client, actor: str | None = None, **kw) -> dict:
    """api_key_create with named arguments; values are bound parameters."""
    args, params = [], []
    for name, value in kw.items():
        cast = {"permissions": "::jsonb", "metadata": "::jsonb", "expires_in": "::interval",
                "refill_interval": "::interval", "rate_limit_window": "::interval",
                "refill_anchor": "::timestamptz"}.get(name, "")
        args.append(f"{name} => %s{cast}")
        params.append(value)
    return client.one(f"SELECT * FROM api_key_create({', '.join(args)})", params, actor=actor)


def counts(su: Client) -> dict:
    """Row counts that a refused call must leave unchanged."""
    return su.one("""SELECT (SELECT count(*) FROM api_key.keys) AS keys,
                            (SELECT count(*) FROM api_key.key_secrets) AS secrets,
                            (SELECT count(*) FROM api_key.audit_log) AS audit,
                            (SELECT count(*) FROM api_key.configs) AS configs,
                            (SELECT count(*) FROM api_key.reference_types) AS reference_types,
                            (SELECT count(*) FROM api_key.membership_source) AS membership_source""")
