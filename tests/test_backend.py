"""The one choice point of the backend: what it builds from the settings, and that no
other module asks which backend it runs on."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from ragline import Settings, ThreadBridge
from ragline.backend import Directory, build_backend
from ragline.providers import Records
from ragline.providers.coordination import ActivityLog, NoticeBus, RunLog
from ragline.providers.feedback import FeedbackStore

SRC = Path(__file__).parent.parent / "src" / "ragline"
CLASS_NAMES = re.compile(r"\b(Postgres|Sqlite|InProcess)[A-Z]\w*")


def test_embedded_by_default_and_postgresql_with_a_database_url(tmp_path: Path) -> None:
    embedded = build_backend(Settings(data_dir=str(tmp_path)), ThreadBridge())
    shared = build_backend(
        Settings(data_dir=str(tmp_path), database_url="postgresql://u@127.0.0.1:9/db"),
        ThreadBridge(),
    )
    for backend in (embedded, shared):
        assert isinstance(backend.records, Records)
        assert isinstance(backend.runs, RunLog)
        assert isinstance(backend.activities, ActivityLog)
        assert isinstance(backend.bus, NoticeBus)
        assert isinstance(backend.directory, Directory)
        assert isinstance(backend.feedback, FeedbackStore)
    assert (embedded.records.shared, shared.records.shared) == (False, True)
    # Only the principals', conversations' and feedback's files open at start; the
    # records' with ingestion.
    assert embedded.built == [embedded.directory, embedded.conversations, embedded.feedback]
    assert len(shared.built) == 1  # one pool that every PostgreSQL store is composed on
    assert "u@127.0.0.1" in repr(shared.records)
    assert not list(tmp_path.iterdir())  # built, not opened: no file yet


def test_no_module_outside_the_providers_and_the_choice_point_names_a_backend() -> None:
    named = {
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if CLASS_NAMES.search(path.read_text(encoding="utf-8"))
    }
    assert named, "the pattern finds the implementations"
    assert {n for n in named if not n.startswith("providers/")} == {"backend.py"}


def test_importing_ragline_loads_no_database_driver() -> None:
    drivers = "{'psycopg', 'psycopg_pool', 'procrastinate', 'pymilvus'}"
    code = (
        "import sys, ragline, ragline.backend\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {drivers}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
