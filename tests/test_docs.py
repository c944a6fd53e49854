"""Every SQL example in README.md and docs/ runs, as written, in CI (doc tests).

Each ```sql block of a document runs, in order, in one fresh database (with the extension created
first unless the document creates it; databases and roles it creates are dropped afterwards), through psql as the superuser (the examples say when they switch role). Blocks fenced without a language
(signatures) are not run. A statement that is meant to fail says so in a comment on its last
line, `-- ERROR 42501` (the SQLSTATE); every other statement must succeed. Roles a document
creates are dropped before and after it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from helpers import ROOT, cluster_port, connect

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```sql\s*\n(.*?)^```", re.S | re.M)
EXPECTED = re.compile(r"--\s*ERROR\s+([0-9A-Z]{5})")
PSQL_ERROR = re.compile(r"^psql:[^:]+:(\d+): ERROR:\s+([0-9A-Z]{5})", re.M)


def blocks(doc: Path) -> list[str]:
    return FENCE.findall(doc.read_text())


def created_roles(script: str) -> list[str]:
    return sorted(set(re.findall(r"CREATE ROLE\s+(\w+)", script, re.I)))


def created_databases(script: str) -> list[str]:
    return sorted(set(re.findall(r"CREATE DATABASE\s+(\w+)", script, re.I)))


def drop_databases(admin, databases: list[str]) -> None:
    for name in databases:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def drop_roles(roles: list[str]) -> None:
    if not roles:
        return
    with connect("postgres", "postgres") as admin:
        for role in roles:
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')


@pytest.mark.parametrize("doc", [d for d in DOCS if blocks(d)], ids=lambda d: d.name)
def test_sql_examples_run_as_written(doc, tmp_path, database):
    script = "\n".join(blocks(doc))
    db = "doc_" + re.sub(r"\W", "_", doc.stem.lower())
    roles = created_roles(script)
    databases = created_databases(script)
    with connect("postgres", "postgres") as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        drop_databases(admin, databases)
        drop_roles(roles)
        admin.execute(f'CREATE DATABASE "{db}"')
    path = tmp_path / f"{doc.stem}.sql"
    # Start each document as a fresh psql session would; errors show their SQLSTATE.
    setup = "" if re.search(r"^\s*CREATE EXTENSION api_key", script, re.M) else "CREATE EXTENSION api_key;\n"
    path.write_text("\\set VERBOSITY sqlstate\n" + setup + script + "\n")
    try:
        out = subprocess.run(
            ["psql", "-X", "-h", "127.0.0.1", "-p", str(cluster_port()), "-U", "postgres", "-d", db,
             "-v", "ON_ERROR_STOP=0", "-f", str(path)],
            capture_output=True, text=True, timeout=300)
    finally:
        with connect("postgres", "postgres") as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            drop_databases(admin, databases)
        drop_roles(roles)
    lines = path.read_text().splitlines()
    got = {int(line): state for line, state in PSQL_ERROR.findall(out.stderr)}
    # psql reports an error at the statement's last line; the expectation is written there.
    wanted = {i + 1: m.group(1) for i, line in enumerate(lines) if (m := EXPECTED.search(line))}
    unexpected = {n: (s, lines[n - 1].strip()) for n, s in got.items() if wanted.get(n) != s}
    missing = {n: (s, lines[n - 1].strip()) for n, s in wanted.items() if got.get(n) != s}
    assert not unexpected and not missing, (
        f"{doc.name}: errors not announced: {unexpected}; announced but not raised: {missing}\n{out.stderr[-3000:]}")
    assert "FATAL" not in out.stderr and "could not" not in out.stderr, out.stderr
