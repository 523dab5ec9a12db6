"""The worker/scheduler boundary: a worker never loads the database layer.

Workers hold only Redis and blob storage (docs/architecture.md, the trust boundary). So every
module a worker process loads (what `workers/` imports anywhere, even inside a function, the
agent's PRELOAD list, and the queue package with the report protocol), plus what it does
before its first job (read the settings, build the agent class), must leave `sqlalchemy` and
the store out of `sys.modules`. Checked in a fresh interpreter, as a worker starts.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("sqlalchemy", "alembic", "orchestrator.store.db", "orchestrator.store.models")


def worker_modules() -> list[str]:
    """Every module workers/*.py imports, at the top or in a function, that is ours or RQ's,
    and every module of the queue package."""
    found = {f"workers.{p.stem}" for p in (ROOT / "workers").glob("*.py")}
    found |= {f"orchestrator.queue.{p.stem}" for p in (ROOT / "orchestrator/queue").glob("*.py")}
    for path in (ROOT / "workers").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            found |= {n for n in names if n.split(".")[0] in ("orchestrator", "workers", "rq")}
    return sorted(m.removesuffix(".__init__") for m in found)


PROBE = """
import importlib, json, sys
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
from workers import agent
for name in agent.PRELOAD:
    importlib.import_module(name)
from orchestrator.settings import Settings
Settings.load()
agent.agent_class()
print(json.dumps(sorted(sys.modules)))
"""


def test_a_worker_never_loads_the_database_layer() -> None:
    modules = worker_modules()
    assert "orchestrator.queue.reports" in modules and "workers.job" in modules
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(modules)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    leaked = [m for m in loaded if m.startswith(FORBIDDEN)]
    assert leaked == [], f"a worker loads the database layer: {leaked[:10]}"


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, at the top, in a function or for type checking only."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return found


def test_the_queue_package_imports_neither_the_store_nor_the_scheduler() -> None:
    """queue/ is the protocol and the RQ adapter; ingestion lives in scheduler/ and imports
    queue/, never the other way round (type-only imports count too)."""
    for path in sorted((ROOT / "orchestrator/queue").glob("*.py")):
        bad = {m for m in imports_of(path) if m.startswith((
            "orchestrator.store", "orchestrator.scheduler", "orchestrator.tasks.service",
            "orchestrator.models", "sqlalchemy"))}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_store_migrations_do_not_import_the_store_back() -> None:
    """db.py runs migrate.py; migrate.py is handed an engine and imports nothing of db.py."""
    assert "orchestrator.store.migrate" in imports_of(ROOT / "orchestrator/store/db.py")
    bad = {m for m in imports_of(ROOT / "orchestrator/store/migrate.py")
           if m.startswith("orchestrator.store.db")}
    assert not bad, f"orchestrator/store/migrate.py imports {sorted(bad)}"


def test_workers_build_reports_only_with_the_protocol() -> None:
    """No report written by hand in workers/: a dict with a "kind" key is one."""
    for path in sorted((ROOT / "workers").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict):
                keys = [k.value for k in node.keys if isinstance(k, ast.Constant)]
                assert "kind" not in keys, (
                    f"{path.relative_to(ROOT)}:{node.lineno} builds a report by hand; "
                    "use orchestrator.queue.reports"
                )
