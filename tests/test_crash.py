"""Credits are durable: SIGKILL the whole server while threads spend credits, restart, and the
balance must account for every acknowledged verification (and at most the calls in flight).

Runs its own cluster (.build/crash), never the shared test cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from helpers import PG_VERSION, ROOT

CLUSTER = f"crash-{PG_VERSION}"
DB = "api_key_crash"
SCRIPT = ROOT / "scripts" / "cluster.sh"
THREADS = 4
CREDITS = 100_000

def _can_run_clusters() -> bool:
    import pwd
    return os.geteuid() == 0 or pwd.getpwuid(os.geteuid()).pw_name == "postgres"


pytestmark = pytest.mark.skipif(not _can_run_clusters(), reason="scripts/cluster.sh needs root (sudo -u postgres)")


# Server options of the current run: credits spent in the verifying transaction (not preloaded),
# or by the credit writer (preloaded).
OPTS = {"in_transaction": "", "credit_writer": "-c shared_preload_libraries=api_key"}
current_opts = [""]


def cluster(cmd: str) -> str:
    env = {**os.environ, "PG_EXTRA_OPTS": current_opts[0]}
    out = subprocess.run(["bash", str(SCRIPT), cmd, CLUSTER], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, f"cluster.sh {cmd} {CLUSTER}: {out.stdout}{out.stderr}"
    return out.stdout.strip()


def connect(port: int, dbname: str = DB, **kw) -> psycopg.Connection:
    return psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname=dbname, autocommit=True,
                           row_factory=dict_row, connect_timeout=10, **kw)


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may contain spaces, so split after the last ')'.
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            kids.append(int(entry.name))
    return kids


def crash_the_server() -> None:
    """SIGKILL the postmaster (scripts/cluster.sh kill) and then every process it started, as
    a machine losing power would: no backend gets to finish anything."""
    data = ROOT / ".build" / CLUSTER / "data"
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    kids = children_of(postmaster)
    cluster("kill")
    for pid in kids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in [postmaster, *kids]):
        time.sleep(0.05)


def start_and_wait() -> int:
    port = int(cluster("start"))
    deadline = time.time() + 60
    while True:
        try:
            with connect(port, "postgres") as c:
                c.execute("SELECT 1")
            return port
        except psycopg.OperationalError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module", params=list(OPTS))
def crash_port(request):
    cluster("stop")
    current_opts[0] = OPTS[request.param]
    port = start_and_wait()
    with connect(port, "postgres") as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {DB}")
    with connect(port) as c:
        for attempt in range(5):
            try:
                c.execute("CREATE EXTENSION api_key")
                break
            except psycopg.Error:
                if attempt == 4:
                    raise
                time.sleep(1 + attempt)
    try:
        yield port
    finally:
        cluster("stop")


def test_acknowledged_credits_survive_a_crash(crash_port):
    with connect(crash_port) as c:
        key = c.execute("SELECT * FROM api_key_create(reference_id => 'crash_user', remaining => %s)",
                        [CREDITS]).fetchone()
        limited = c.execute("SELECT * FROM api_key_create(reference_id => 'crash_user', rate_limit_max => 1000, "
                            "rate_limit_window => '1 hour')").fetchone()
        assert c.execute("SELECT code FROM api_key_verify(%s)", [limited["key"]]).fetchone()["code"] == "VALID"

    acknowledged = [0] * THREADS
    lowest = [CREDITS] * THREADS
    started = threading.Barrier(THREADS + 1)
    conns = [connect(crash_port) for _ in range(THREADS)]

    def spend(i: int):
        conn = conns[i]
        started.wait(timeout=30)
        try:
            while True:
                r = conn.execute("SELECT code, remaining FROM api_key_verify(%s)", [key["key"]]).fetchone()
                assert r["code"] == "VALID", r
                acknowledged[i] += 1
                lowest[i] = min(lowest[i], r["remaining"])
        except psycopg.OperationalError:
            return   # the server is gone: the call in flight was not acknowledged

    workers = [threading.Thread(target=spend, args=(i,), daemon=True) for i in range(THREADS)]
    for w in workers:
        w.start()
    started.wait(timeout=30)
    time.sleep(1.5)
    crash_the_server()
    for w in workers:
        w.join(timeout=30)
        assert not w.is_alive(), "a worker did not notice the crash"
    for c in conns:
        try:
            c.close()
        except Exception:  # noqa: BLE001
            pass

    acked = sum(acknowledged)
    assert acked > 100, f"only {acked} verifications before the crash: the test proved little"
    # The same cluster, restarted; on a port of its own again if another checkout's cluster took
    # the old one while it was down (scripts/cluster.sh moves it).
    port = start_and_wait()
    with connect(port) as c:
        remaining = c.execute("SELECT remaining FROM api_key.keys WHERE id = %s", [key["id"]]).fetchone()["remaining"]
        consumed = CREDITS - remaining
        assert acked <= consumed <= acked + THREADS, \
            f"acknowledged {acked}, consumed {consumed}: a crash lost or returned credits"
        assert remaining <= min(lowest)
        # The server is usable after recovery, rate-limited keys included (their windows may be forgotten).
        assert c.execute("SELECT code FROM api_key_verify(%s)", [key["key"]]).fetchone()["code"] == "VALID"
        assert c.execute("SELECT code FROM api_key_verify(%s)", [limited["key"]]).fetchone()["code"] == "VALID"
