"""What an operator does around the extension: dump and restore a database, drop and re-create
the extension while applications stay connected. Each test uses its own scratch database."""

from __future__ import annotations

import os
import subprocess

import psycopg
import pytest

from helpers import APP, PG_BIN, Client, cluster_port, connect, uid



@pytest.fixture
def scratch_db(database):
    """A throw-away database with the extension; dropped afterwards."""
    made = []

    def make() -> str:
        name = uid("api_key_scratch")
        with connect("postgres", "postgres") as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return name

    yield make
    with connect("postgres", "postgres") as admin:
        for name in made:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.skipif(not os.path.exists(f"{PG_BIN}/pg_dump"), reason="pg_dump not installed")
def test_dump_and_restore_keeps_keys(scratch_db, tmp_path):
    src, dst = scratch_db(), scratch_db()
    with connect("postgres", src) as c:
        c.execute("CREATE EXTENSION api_key")
        c.execute("SELECT * FROM api_key_config_create(id => 'live', prefix => 'lk_')")
        c.execute("INSERT INTO api_key.organizations (id) VALUES ('org_dump')")
        c.execute("INSERT INTO api_key.members (organization_id, user_id, role) VALUES ('org_dump', 'u1', 'owner')")
        key = c.execute("SELECT * FROM api_key_create(reference_id => 'org_dump', reference_type => 'organization', "
                        "config_id => 'live', remaining => 7)").fetchone()
        before = c.execute("SELECT (SELECT count(*) FROM api_key.keys) k, (SELECT count(*) FROM api_key.key_secrets) s, "
                           "(SELECT count(*) FROM api_key.configs) c, (SELECT count(*) FROM api_key.members) m, "
                           "(SELECT count(*) FROM api_key.audit_log) a").fetchone()
    dump = tmp_path / "db.dump"
    common = ["-h", "127.0.0.1", "-p", str(cluster_port()), "-U", "postgres"]
    subprocess.run([f"{PG_BIN}/pg_dump", *common, "-Fc", "-f", str(dump), src], check=True, capture_output=True)
    subprocess.run([f"{PG_BIN}/pg_restore", *common, "-d", dst, str(dump)], capture_output=True)
    with connect("postgres", dst) as c:
        after = c.execute("SELECT (SELECT count(*) FROM api_key.keys) k, (SELECT count(*) FROM api_key.key_secrets) s, "
                          "(SELECT count(*) FROM api_key.configs) c, (SELECT count(*) FROM api_key.members) m, "
                          "(SELECT count(*) FROM api_key.audit_log) a").fetchone()
        assert after == before
        r = c.execute("SELECT code, remaining FROM api_key_verify(%s)", [key["key"]]).fetchone()
        assert (r["code"], r["remaining"]) == ("VALID", 6)


def test_verify_after_the_extension_is_recreated(scratch_db):
    db = scratch_db()
    with connect("postgres", db) as su:
        su.execute("CREATE EXTENSION api_key")
        app = Client(APP, db)
        try:
            assert app.val("SELECT code FROM api_key_verify('sk_nope')") == "NOT_FOUND"
            su.execute("DROP EXTENSION api_key")
            su.execute("CREATE EXTENSION api_key")
            key = su.execute("SELECT key FROM api_key_create(reference_id => 'u1')").fetchone()["key"]
            try:
                assert app.val("SELECT code FROM api_key_verify('sk_nope')") == "NOT_FOUND"
                assert app.val("SELECT code FROM api_key_verify(%s)", [key]) == "VALID"
            except psycopg.Error as e:
                assert e.sqlstate != "XX000"
                raise
        finally:
            app.close()
