"""Releases are forever: a released upgrade script is never edited, and the SQL of a released
version never changes under the same version number (docs/releasing.md)."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

from test_upgrade import EXTDIR, RELEASES, ROOT, VERSION

HASHES = ROOT / "tests" / "upgrade" / "released.sha256"


def test_released_upgrade_scripts_are_never_edited():
    for line in HASHES.read_text().splitlines():
        digest, name = line.split()
        path = ROOT / name
        assert path.exists(), f"{name} was released and must stay"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, (
            f"{name} was released: fix forward in the next release's script, never edit it")


def test_every_upgrade_script_of_an_older_version_is_released():
    released = {line.split()[1] for line in HASHES.read_text().splitlines()}
    for script in (ROOT / "sql").glob("api_key--*--*.sql"):
        target = script.stem.split("--")[2]
        if target != VERSION:
            assert f"sql/{script.name}" in released, f"{script.name} leads to a released version: record its hash"


def test_a_released_versions_sql_does_not_change_under_its_number(tmp_path):
    """If this version was released, the install script of the package built now is the one
    released: a change to the SQL needs a new version and an upgrade script. (The package's,
    not what is installed: `cargo pgrx test` installs a build with its test functions.)"""
    if VERSION not in RELEASES:
        return
    frozen = ROOT / "tests" / "upgrade" / f"api_key--{VERSION}.sql"
    deb = ROOT / ".build" / "packages" / f"postgresql-15-api-key_{VERSION}_amd64.deb"
    assert deb.exists(), f"{deb} is missing: run scripts/package.sh 15 first"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    built = tmp_path / EXTDIR.relative_to("/") / f"api_key--{VERSION}.sql"
    assert statements(built.read_text()) == statements(frozen.read_text()), (
        f"the SQL of {VERSION} changed after its release: bump the version and write an upgrade script")


def statements(script: str) -> list[str]:
    """The script's objects in a stable order, without comments: pgrx orders them by a
    dependency graph and notes the Rust source line of each, which a refactor moves without
    changing any SQL."""
    blocks = []
    for block in script.split("/* <begin connected objects> */"):
        block = re.sub(r"/\*.*?\*/", "", block, flags=re.S)
        lines = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("--")]
        blocks.append("\n".join(lines))
    return sorted(blocks)
