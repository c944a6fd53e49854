"""With shared_preload_libraries = 'api_key', rate-limit windows live in shared memory. They
follow the calendar, belong to a database (a restored copy in the same cluster counts its own
windows), and stay exact when the slots run out. What both storages must answer alike (bursts,
give-backs) is in test_rate_limit_storages.py.

Runs its own cluster (.build/preload), started with the library preloaded."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import psycopg
import pytest
from psycopg.rows import dict_row

from helpers import PG_BIN, PG_VERSION, ROOT

CLUSTER = f"preload-{PG_VERSION}"
SCRIPT = ROOT / "scripts" / "cluster.sh"


def _can_run_clusters() -> bool:
    import pwd
    return os.geteuid() == 0 or pwd.getpwuid(os.geteuid()).pw_name == "postgres"


pytestmark = pytest.mark.skipif(not _can_run_clusters(), reason="scripts/cluster.sh needs root (sudo -u postgres)")


def cluster(cmd: str) -> str:
    # The fewest slots there can be (16 partitions of 64), so that tests can fill them.
    env = {**os.environ, "PG_EXTRA_OPTS": "-c shared_preload_libraries=api_key -c api_key.rate_limit_slots=1024"}
    out = subprocess.run(["bash", str(SCRIPT), cmd, CLUSTER], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, f"cluster.sh {cmd} {CLUSTER}: {out.stdout}{out.stderr}"
    return out.stdout.strip()


@pytest.fixture(scope="module")
def port():
    cluster("stop")
    port = int(cluster("start"))
    try:
        yield port
    finally:
        cluster("stop")


def connect(port: int, dbname: str, **kw) -> psycopg.Connection:
    return psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname=dbname, autocommit=True,
                           row_factory=dict_row, connect_timeout=10, **kw)


def fresh_database(port: int, dbname: str) -> None:
    """Creates `dbname` afresh on the cluster at `port`, with the extension."""
    with connect(port, "postgres") as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{dbname}"')
    with connect(port, dbname) as c:
        c.execute("CREATE EXTENSION api_key")


def database_on(preloaded: bool, dbname: str):
    """A function that opens a superuser connection to a database where the library is preloaded
    (`dbname`, created afresh on this module's cluster, started now: stop it after) or not (the
    main test database). Checks which it got."""
    from helpers import DBNAME, cluster_port
    if preloaded:
        if not _can_run_clusters():
            pytest.skip("scripts/cluster.sh needs root (sudo -u postgres)")
        cluster("stop")
        port = int(cluster("start"))
        fresh_database(port, dbname)
    else:
        port, dbname = cluster_port(), DBNAME
    opened = lambda: connect(port, dbname)  # noqa: E731
    with opened() as c:
        libraries = c.execute("SHOW shared_preload_libraries").fetchone()["shared_preload_libraries"]
    assert ("api_key" in libraries) == preloaded
    return opened


@pytest.fixture
def db(port):
    made = []

    def make(name: str, extension: bool = True) -> psycopg.Connection:
        with connect(port, "postgres") as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        c = connect(port, name)
        if extension:
            c.execute("CREATE EXTENSION api_key")
        return c

    yield make
    with connect(port, "postgres") as admin:
        for name in made:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def code(c, key: str) -> dict:
    return c.execute("SELECT code, rate_limit_remaining, retry_after_ms, remaining FROM api_key_verify(%s)",
                     [key]).fetchone()


def test_windows_are_counted_in_shared_memory(port, db):
    c = db("preload_shm")
    assert "api_key" in c.execute("SHOW shared_preload_libraries").fetchone()["shared_preload_libraries"]
    key = c.execute("SELECT key FROM api_key_create('u', rate_limit_max => 2, rate_limit_window => '1 hour')"
                    ).fetchone()["key"]
    assert [code(c, key)["code"] for _ in range(3)] == ["VALID", "VALID", "RATE_LIMITED"]
    assert c.execute("SELECT count(*) FROM api_key.rate_limit_windows").fetchone()["count"] == 0


def test_a_restored_copy_counts_its_own_windows(port, db, tmp_path):
    source = db("preload_source")
    copy = db("preload_copy", extension=False)
    key = source.execute("SELECT key FROM api_key_create('u', rate_limit_max => 2, rate_limit_window => '1 hour')"
                         ).fetchone()["key"]
    dump = tmp_path / "db.dump"
    common = ["-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
    subprocess.run([f"{PG_BIN}/pg_dump", *common, "-Fc", "-f", str(dump), "preload_source"], check=True,
                   capture_output=True)
    subprocess.run([f"{PG_BIN}/pg_restore", *common, "-d", "preload_copy", str(dump)], capture_output=True)
    assert [code(source, key)["code"] for _ in range(3)] == ["VALID", "VALID", "RATE_LIMITED"]
    # Same key id, another database: a window of its own.
    assert [code(copy, key)["code"] for _ in range(3)] == ["VALID", "VALID", "RATE_LIMITED"]


def test_a_monthly_window_is_a_calendar_month(port, db):
    c = db("preload_month")
    key = c.execute("SELECT key FROM api_key_create('u', rate_limit_max => 1, rate_limit_window => '1 month')"
                    ).fetchone()["key"]
    code(c, key)
    retry = code(c, key)["retry_after_ms"]
    expected = c.execute("SELECT extract(epoch FROM ((now() AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC'"
                         " - now())) * 1000 AS ms").fetchone()["ms"]
    assert abs(retry - float(expected)) < 5_000


@pytest.fixture
def full(db):
    """Shared memory filled with 3-second windows (1,600 keys for 1,024 slots)."""
    c = db("preload_full")
    fillers = [r["key"] for r in c.execute(
        "SELECT (api_key_create(reference_id => 'filler', rate_limit_max => 1, rate_limit_window => '3 seconds')).key"
        " FROM generate_series(1, 1600)").fetchall()]
    victim = c.execute("SELECT key FROM api_key_create('victim', rate_limit_max => 3, rate_limit_window => '1 hour')"
                       ).fetchone()["key"]
    for key in fillers:
        code(c, key)
    return {"conn": c, "victim": victim}


def test_a_key_counted_in_the_table_stays_there_for_its_window(full):
    """Without a free slot a key is counted in the table; when slots free up, its window
    does not start again in shared memory (it would admit more than max in one window)."""
    c, victim = full["conn"], full["victim"]
    assert [code(c, victim)["code"] for _ in range(4)] == ["VALID", "VALID", "VALID", "RATE_LIMITED"]
    assert c.execute("SELECT count(*) FROM api_key.rate_limit_windows").fetchone()["count"] >= 1
    time.sleep(3.5)  # the fillers' windows end: slots are free again
    assert [code(c, victim)["code"] for _ in range(3)] == ["RATE_LIMITED"] * 3


def test_without_a_slot_a_read_only_verification_is_refused_not_an_error(full):
    c, victim = full["conn"], full["victim"]
    with c.transaction():
        c.execute("SET TRANSACTION READ ONLY")
        row = code(c, victim)
    assert row["code"] == "RATE_LIMITED" and row["retry_after_ms"] > 0


def test_while_slots_free_up_no_window_is_counted_twice(port, full):
    """Keys counted in the table for want of a slot, verified in parallel while the fillers'
    windows end and slots free up: each window still admits exactly max, never once in the
    table and once more in shared memory."""
    c = full["conn"]
    victims = [r["key"] for r in c.execute(
        "SELECT (api_key_create(reference_id => 'victim', rate_limit_max => 5, rate_limit_window => '1 hour')).key"
        " FROM generate_series(1, 12)").fetchall()]
    admitted = {key: 0 for key in victims}
    lock = threading.Lock()

    def worker(seed: int):
        import random
        rng = random.Random(seed)
        with connect(port, "preload_full") as w:
            deadline = time.monotonic() + 4.5  # past the fillers' 3-second windows
            while time.monotonic() < deadline:
                key = rng.choice(victims)
                if code(w, key)["code"] == "VALID":
                    with lock:
                        admitted[key] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(admitted.values()) == {5}
