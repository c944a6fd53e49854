"""Keys verify on a hot standby (streaming replication from a primary made with pg_basebackup):
keys without usage limits exactly as on the primary; rate limits per node when the library is
preloaded; credits only on the primary, with a clear error on the standby; last_used_at is not
written by verifications on a standby (docs/usage-control.md, Replicas).

Runs its own two clusters (.build/replica-primary-NN, .build/replica-standby-NN)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import psycopg
import pytest
from psycopg.rows import dict_row

from helpers import PG_BIN, PG_VERSION, ROOT
from test_preloaded import _can_run_clusters

pytestmark = pytest.mark.skipif(not _can_run_clusters(), reason="scripts/cluster.sh needs root (sudo -u postgres)")

PRIMARY, STANDBY = f"replica-primary-{PG_VERSION}", f"replica-standby-{PG_VERSION}"
SCRIPT = ROOT / "scripts" / "cluster.sh"
PRELOAD = "-c shared_preload_libraries=api_key"


def cluster(cmd: str, name: str) -> str:
    env = {**os.environ, "API_KEY_PG": PG_VERSION, "PG_EXTRA_OPTS": PRELOAD}
    out = subprocess.run(["bash", str(SCRIPT), cmd, name], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, f"cluster.sh {cmd} {name}: {out.stdout}{out.stderr}"
    return out.stdout.strip()


def as_postgres(*args: str) -> None:
    cmd = list(args) if os.geteuid() != 0 else ["sudo", "-u", "postgres", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{args}: {out.stdout}{out.stderr}"


def connect(port: int) -> psycopg.Connection:
    return psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True,
                           row_factory=dict_row, connect_timeout=10)


@pytest.fixture(scope="module")
def nodes():
    for name in (STANDBY, PRIMARY):
        cluster("stop", name)
        shutil.rmtree(ROOT / ".build" / name, ignore_errors=True)
    primary_port = int(cluster("start", PRIMARY))
    with connect(primary_port) as p:
        p.execute("CREATE EXTENSION api_key")
    standby_dir = ROOT / ".build" / STANDBY
    standby_dir.mkdir(parents=True)
    shutil.chown(standby_dir, "postgres")
    as_postgres(f"{PG_BIN}/pg_basebackup", "-h", "127.0.0.1", "-p", str(primary_port), "-U", "postgres",
                "-D", str(standby_dir / "data"), "-R", "-X", "stream")
    standby_port = int(cluster("start", STANDBY))
    try:
        with connect(primary_port) as primary, connect(standby_port) as standby:
            assert standby.execute("SELECT pg_is_in_recovery() AS r").fetchone()["r"]
            yield {"primary": primary, "standby": standby}
    finally:
        cluster("stop", STANDBY)
        cluster("stop", PRIMARY)


def replayed(nodes) -> None:
    """Waits until the standby has replayed everything the primary wrote so far."""
    lsn = nodes["primary"].execute("SELECT pg_current_wal_lsn() AS l").fetchone()["l"]
    deadline = time.monotonic() + 30
    while nodes["standby"].execute("SELECT pg_last_wal_replay_lsn() >= %s AS done", [lsn]).fetchone()["done"] is not True:
        assert time.monotonic() < deadline, "the standby did not catch up"
        time.sleep(0.05)


def key(conn, **kw) -> dict:
    args = "".join(f", {k} => %({k})s" for k in kw)
    return conn.execute(f"SELECT id, key FROM api_key_create('replica_user'{args})", kw).fetchone()


def verify(conn, k: str, **kw) -> dict:
    args = "".join(f", {k_} => %({k_})s" for k_ in kw)
    return conn.execute(f"SELECT code, remaining, rate_limit_remaining FROM api_key_verify(%(key)s{args})",
                        {"key": k, **kw}).fetchone()


def test_keys_without_usage_limits_answer_as_on_the_primary(nodes):
    primary, standby = nodes["primary"], nodes["standby"]
    plain = key(primary, permissions='{"files": ["read"]}')
    disabled = key(primary)
    primary.execute("SELECT api_key_update(%s, enabled => false)", [disabled["id"]])
    expired = key(primary, expires_in="1 second")
    revoked = key(primary)
    primary.execute("SELECT api_key_revoke(%s)", [revoked["id"]])
    replayed(nodes)
    time.sleep(1.1)
    cases = [(plain["key"], {}), (plain["key"], {"permissions": '{"files": ["write"]}'}), (disabled["key"], {}),
             (expired["key"], {}), (revoked["key"], {}), ("sk_not_a_key", {})]
    for k, kw in cases:
        assert verify(standby, k, **kw) == verify(primary, k, **kw)
    assert [verify(standby, k, **kw)["code"] for k, kw in cases] == [
        "VALID", "INSUFFICIENT_PERMISSIONS", "DISABLED", "EXPIRED", "NOT_FOUND", "NOT_FOUND"]


def test_rate_limits_count_per_node(nodes):
    primary, standby = nodes["primary"], nodes["standby"]
    limited = key(primary, rate_limit_max=2, rate_limit_window="1 hour")
    replayed(nodes)
    assert [verify(standby, limited["key"])["code"] for _ in range(3)] == ["VALID", "VALID", "RATE_LIMITED"]
    # The primary's window is its own.
    assert [verify(primary, limited["key"])["code"] for _ in range(3)] == ["VALID", "VALID", "RATE_LIMITED"]


def test_credits_are_spent_on_the_primary_only(nodes):
    primary, standby = nodes["primary"], nodes["standby"]
    metered = key(primary, remaining=5)
    replayed(nodes)
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as info:
        verify(standby, metered["key"])
    assert "read-write" in str(info.value) and info.value.diag.message_hint
    assert verify(primary, metered["key"])["remaining"] == 4


def test_uses_on_a_standby_do_not_write_last_used_at(nodes):
    primary, standby = nodes["primary"], nodes["standby"]
    used = key(primary)
    replayed(nodes)
    standby.execute("SET api_key.last_used_precision = 1")
    assert verify(standby, used["key"])["code"] == "VALID"
    time.sleep(1.2)
    assert verify(standby, used["key"])["code"] == "VALID"   # a later verification would flush, if it could
    standby.execute("SELECT 1")
    assert primary.execute("SELECT last_used_at FROM api_key.keys WHERE id = %s", [used["id"]]
                           ).fetchone()["last_used_at"] is None
