"""Session setup: a fresh database with the extension, and login roles that are NOT superusers
(superusers and table owners bypass row-level security, so a test run as one proves nothing).

The cluster is found from PGHOST/PGPORT, else 127.0.0.1 and .build/$API_KEY_TEST_CLUSTER/port
(API_KEY_TEST_CLUSTER defaults to "test"; start it with scripts/cluster.sh start test)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import APP, DBNAME, NOBODY, SERVICE, Client, connect  # noqa: E402


def _retry(fn, attempts: int = 5):
    """The extension may be reinstalled under us now and then: retry 'could not load' errors."""
    for i in range(attempts):
        try:
            return fn()
        except psycopg.Error as e:
            if i == attempts - 1 or "could not" not in str(e).lower():
                raise
            time.sleep(1 + i)


def create_roles(conn: psycopg.Connection):
    for role in (APP, SERVICE, NOBODY):
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
        if not exists:
            conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute(f'ALTER ROLE "{role}" LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB NOBYPASSRLS')
    conn.execute(f'GRANT api_key_user TO "{APP}"')
    conn.execute(f'GRANT api_key_admin TO "{SERVICE}"')
    conn.execute(f'REVOKE api_key_admin FROM "{APP}"')
    conn.execute(f'REVOKE api_key_user, api_key_admin FROM "{NOBODY}"')
    conn.execute(f'REVOKE api_key_user FROM "{SERVICE}"')


def fresh_database(dbname: str) -> None:
    with connect("postgres", "postgres") as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{dbname}"')
    with connect("postgres", dbname) as db:
        _retry(lambda: db.execute("CREATE EXTENSION api_key"))
        create_roles(db)
        # Schemas the application and the service own, as they would in a real deployment.
        db.execute(f'CREATE SCHEMA app AUTHORIZATION "{APP}"')
        db.execute(f'CREATE SCHEMA svc AUTHORIZATION "{SERVICE}"')
        db.execute(f'GRANT USAGE ON SCHEMA app TO "{SERVICE}"')


@pytest.fixture(scope="session")
def database() -> str:
    try:
        fresh_database(DBNAME)
    except psycopg.OperationalError as e:
        pytest.exit(f"cannot reach the test cluster ({e}); start it with scripts/cluster.sh start <name>", 2)
    return DBNAME


@pytest.fixture(scope="session")
def su(database) -> Client:
    """Superuser: for setup and for looking behind RLS. Not for the assertions that matter."""
    c = Client("postgres", database)
    yield c
    c.close()


@pytest.fixture(scope="session")
def app(database) -> Client:
    """An application role granted api_key_user: acts only through api_key.actor."""
    c = Client(APP, database)
    yield c
    c.close()


@pytest.fixture(scope="session")
def service(database) -> Client:
    """A role granted api_key_admin: the service when no actor is set."""
    c = Client(SERVICE, database)
    yield c
    c.close()


@pytest.fixture(scope="session")
def nobody(database) -> Client:
    """A login role with no grant at all."""
    c = Client(NOBODY, database)
    yield c
    c.close()


@pytest.fixture
def new_client(database):
    """Fresh connections as any role, closed at the end of the test."""
    made = []

    def make(role: str) -> Client:
        c = Client(role, database)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
