"""examples/documents.sql, run as written, then used the way an application would: an ordinary
login role authenticates with an organization's key and sees and writes only that
organization's documents, as far as the key's permissions allow."""

from __future__ import annotations

import psycopg
import pytest

from helpers import ROOT, connect, expect_error

DB = "api_key_example"


@pytest.fixture(scope="module")
def example():
    with connect("postgres", "postgres") as su:
        su.execute(f"DROP DATABASE IF EXISTS {DB}")
        su.execute(f"CREATE DATABASE {DB}")
    with connect("postgres", DB) as su:
        su.execute("CREATE EXTENSION api_key")
        su.execute((ROOT / "examples" / "documents.sql").read_text())
        keys = {}
        for name, org, perms in [("acme_rw", "acme", '{"documents": ["read", "write"]}'),
                                 ("acme_ro", "acme", '{"documents": ["read"]}'),
                                 ("globex_rw", "globex", '{"documents": ["read", "write"]}')]:
            keys[name] = su.execute(
                "SELECT key FROM api_key_create(reference_type => 'organization', reference_id => %s, "
                "permissions => %s)", [org, perms]).fetchone()["key"]
        su.execute("INSERT INTO documents (organization_id, title) VALUES ('acme', 'a1'), ('acme', 'a2'), "
                   "('globex', 'g1')")
    yield keys
    with connect("postgres", "postgres") as su:
        su.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")


def as_app(key: str, sql: str, params=None):
    """One request: authenticate, run, commit, on a connection of the example's role."""
    with connect("documents_app", DB, autocommit=False) as conn:
        with conn.transaction():
            conn.execute("SELECT api_key_authenticate(%s)", [key])
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []


def test_each_organization_sees_its_own_documents(example):
    assert sorted(r["title"] for r in as_app(example["acme_ro"], "SELECT title FROM documents")) == ["a1", "a2"]
    assert [r["title"] for r in as_app(example["globex_rw"], "SELECT title FROM documents")] == ["g1"]


def test_writing_needs_the_write_permission(example):
    as_app(example["acme_rw"], "INSERT INTO documents (organization_id, title) VALUES ('acme', 'a3')")
    expect_error("42501", as_app, example["acme_ro"],
                 "INSERT INTO documents (organization_id, title) VALUES ('acme', 'a4')")


def test_no_writing_into_another_organization(example):
    expect_error("42501", as_app, example["acme_rw"],
                 "INSERT INTO documents (organization_id, title) VALUES ('globex', 'stolen')")


def test_without_authentication_nothing_is_visible(example):
    with connect("documents_app", DB) as conn:
        assert conn.execute("SELECT count(*) AS n FROM documents").fetchone()["n"] == 0


def test_a_bad_key_is_refused(example):
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
        as_app("sk_not_a_real_key_at_all_0000000000000000", "SELECT 1")
