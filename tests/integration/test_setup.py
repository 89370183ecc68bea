"""setup(): the bundled migrations applied by the Python client, alongside `supabase db push`.

Each test gets its own database in the stack's cluster (the ``new_database`` fixture), with
only the Supabase compatibility bootstrap, unless it says otherwise.
"""

from __future__ import annotations

import shutil
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import psycopg
from helpers_process import ROOT, SUPABASE, run

from ducto import CreditManager, SetupResult
from ducto._migrations import bundled, latest_version
from ducto.interface import HttpxSupabaseStore, PostgresStore

VERSIONS = tuple(m.version for m in bundled())


def setup(url: str) -> SetupResult:
    store = PostgresStore(url, max_size=1)
    try:
        return CreditManager(store).setup()
    finally:
        store.close()


def scalar(url: str, query: str) -> object:
    with psycopg.connect(url) as conn:
        row = conn.execute(query).fetchone()
    return None if row is None else row[0]


def test_setup_applies_every_migration_once(new_database: Callable[..., str]) -> None:
    url = new_database()
    first = setup(url)
    assert first == SetupResult(VERSIONS, (), latest_version())
    assert setup(url) == SetupResult((), VERSIONS, latest_version())
    store = PostgresStore(url, max_size=1)
    manager = CreditManager(store)
    assert manager.add_credits("setup-user", 7).balance_after == 7
    assert manager.verify_ledger() == []
    store.close()
    # its own record, never the CLI's history
    assert scalar(url, "select count(*) from credit_private.schema_migrations") == len(VERSIONS)
    assert scalar(url, "select to_regclass('supabase_migrations.schema_migrations')") is None


def test_concurrent_setups_apply_each_migration_once(new_database: Callable[..., str]) -> None:
    url = new_database()
    results: list[SetupResult] = []
    start = threading.Barrier(4)

    def worker() -> None:
        start.wait()
        results.append(setup(url))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(len(r.applied) for r in results) == [0, 0, 0, len(VERSIONS)]
    assert scalar(url, "select count(*) from credit_private.schema_migrations") == len(VERSIONS)


def test_setup_after_db_push_is_a_no_op(new_database: Callable[..., str]) -> None:
    url = new_database(migrated=True)
    assert setup(url) == SetupResult((), VERSIONS, latest_version())


def test_db_push_of_the_projects_own_migrations_works_after_setup(
    new_database: Callable[..., str], tmp_path: Path
) -> None:
    url = new_database()
    setup(url)
    project = tmp_path / "app"
    (project / "supabase" / "migrations").mkdir(parents=True)
    shutil.copy(ROOT / "supabase" / "config.toml", project / "supabase" / "config.toml")
    (project / "supabase" / "migrations" / "20270101000000_orders.sql").write_text(
        "create table public.orders (id bigint primary key);\n"
    )
    run(
        [str(SUPABASE), "db", "push", "--db-url", url, "--yes"],
        cwd=project,
    )
    assert scalar(url, "select to_regclass('public.orders')::text") == "orders"


def test_setup_from_a_built_wheel_in_a_clean_virtualenv(
    new_database: Callable[..., str], tmp_path: Path
) -> None:
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)])
    (wheel,) = tmp_path.glob("ducto-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)])
    url = new_database()
    script = (
        "import ducto, sys\n"
        "from ducto import CreditManager\n"
        "from ducto.interface import PostgresStore\n"
        "assert ducto.__file__.startswith(sys.prefix), ducto.__file__\n"
        f"print(CreditManager(PostgresStore({url!r})).setup().applied)\n"
    )
    out = run(
        [
            str(
                venv / "bin" / "python",
            ),
            "-c",
            script,
        ],
        cwd=tmp_path,
    )
    assert out.strip() == str(VERSIONS)


def test_http_setup_checks_the_installed_version(supabase_url: str, service_role_key: str) -> None:
    store = HttpxSupabaseStore(supabase_url, service_role_key)
    try:
        assert CreditManager(store).setup() == SetupResult((), (), latest_version())
    finally:
        store.close()
