"""The store in DuckDB: the ``experiences`` view and helper views, and read-only SQL.

``connect(home)`` opens an in-memory DuckDB database over every Parquet record file under one
``XLOG_HOME``: the local store (``records/``) and every pulled mirror (``remotes/*/data/``).
``experiences`` reads them all with ``union_by_name`` (older schema versions lack columns, newer
ones may add some), always has at least the current schema's columns (an empty store gives zero
rows with those columns), and keeps one row per ``record_id`` (a local copy wins over a pulled
one; duplicates are found once, at connect). The helper views come from ``schema/views.sql``.

The connection is locked down before it is returned: DuckDB may only read files inside the
store, may not install or load extensions, and its configuration is locked. ``query`` /
``relation`` / ``to_pandas`` also accept only one SELECT (or WITH ... SELECT, or EXPLAIN)
statement, and raise ``ReadOnlyQueryError`` for anything else.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from xlog import schema as S
from xlog.store import LocalStore, iter_parquet_files

REMOTES_DIR = "remotes"
_ALLOWED = {"SELECT", "EXPLAIN"}
_footer_ok: dict[tuple[str, int, int], bool] = {}  # (path, mtime_ns, size) -> readable, per process


class ReadOnlyQueryError(ValueError):
    """A statement given to ``xsearch sql`` would write, attach, install, or read outside the store."""


def _readable(path: Path) -> bool:
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _footer_ok:
        try:
            pq.read_metadata(path)
            _footer_ok[key] = True
        except Exception:
            _footer_ok[key] = False
    return _footer_ok[key]


def record_files(home: str | os.PathLike | None = None) -> tuple[list[Path], list[Path]]:
    """(local files, pulled files) with a readable Parquet footer; unreadable local files are
    quarantined (pulled ones were validated when they arrived and are only skipped)."""
    store = LocalStore(home)
    local: list[Path] = []
    for p in iter_parquet_files(store.records_dir):
        try:
            if _readable(p):
                local.append(p)
            else:
                store.quarantine(p, "unreadable Parquet file (bad footer)")
        except FileNotFoundError:
            continue
    pulled: list[Path] = []
    remotes = store.root / REMOTES_DIR
    if remotes.is_dir():
        for mirror in sorted(d for d in remotes.iterdir() if d.is_dir() and not d.name.startswith(".")):
            pulled.extend(p for p in iter_parquet_files(mirror / "data") if _readable(p))
    return local, pulled


def _sql_list(paths: list[Path]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def views_sql() -> str:
    return resources.files("xlog.schema_files").joinpath("views.sql").read_text(encoding="utf-8")


def connect(home: str | os.PathLike | None = None, lock: bool = True) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with ``experiences`` and the helper views (module docstring)."""
    store = LocalStore(home)
    root = store.root.resolve()
    local, pulled = record_files(root)
    con = duckdb.connect(":memory:")
    # The empty table typed with the current schema guarantees its columns exist in the view.
    con.register("_xlog_empty", pa.table({n: pa.array([], type=f.type) for n, f in
                                          zip(S.arrow_schema().names, S.arrow_schema())}))
    parts = ["SELECT *, 2 AS _origin, '' AS _file FROM _xlog_empty"]
    for origin, files in ((0, local), (1, pulled)):
        if files:
            parts.append(f"SELECT * EXCLUDE (filename), {origin} AS _origin, filename AS _file "
                         f"FROM read_parquet({_sql_list(files)}, union_by_name = true, filename = true)")
    con.execute("CREATE VIEW _xlog_all AS\n" + "\nUNION ALL BY NAME\n".join(parts))
    # Dedup once here, not in every query: duplicates are rare (a record both local and pulled),
    # so list the losing (record_id, file) copies in a small table and anti-join it. A window
    # over every row in the view would cost each query a sort of the whole store.
    con.execute("""CREATE TEMP TABLE _xlog_dup AS
        SELECT record_id, _file FROM (
            SELECT record_id, _file, row_number() OVER (PARTITION BY record_id ORDER BY _origin, _file) AS rn
            FROM _xlog_all WHERE record_id IN (
                SELECT record_id FROM _xlog_all GROUP BY record_id HAVING count(*) > 1))
        WHERE rn > 1""")
    con.execute("""CREATE VIEW experiences AS
        SELECT * EXCLUDE (_origin, _file) FROM _xlog_all a
        WHERE NOT EXISTS (SELECT 1 FROM _xlog_dup d WHERE d.record_id = a.record_id AND d._file = a._file)""")
    con.execute(views_sql())
    if lock:
        con.execute(f"SET allowed_directories = ['{str(root).rstrip('/')}/']")
        con.execute("SET enable_external_access = false")
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET autoload_known_extensions = false")
        con.execute("SET lock_configuration = true")
    return con


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise ``ReadOnlyQueryError`` unless ``sql`` is exactly one SELECT/EXPLAIN statement."""
    try:
        stmts = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise ReadOnlyQueryError(f"cannot parse the query: {exc}") from exc
    if len(stmts) != 1:
        raise ReadOnlyQueryError(f"give exactly one statement (got {len(stmts)}); xsearch sql is read-only")
    kind = str(stmts[0].type).rsplit(".", 1)[-1]
    if kind not in _ALLOWED:
        raise ReadOnlyQueryError(f"{kind} statements are refused: xsearch sql is read-only (SELECT, WITH ... "
                                 "SELECT and EXPLAIN only; no writes, COPY, ATTACH, INSTALL/LOAD or SET)")


def relation(sql: str, home: str | os.PathLike | None = None,
             con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyRelation:
    """A DuckDB relation for a read-only query over the store."""
    con = con or connect(home)
    check_read_only(con, sql)
    try:
        return con.sql(sql)
    except duckdb.PermissionException as exc:
        raise ReadOnlyQueryError(f"refused: the query reads files outside the store or needs an extension "
                                 f"({exc})") from exc


def query(sql: str, home: str | os.PathLike | None = None,
          con: duckdb.DuckDBPyConnection | None = None) -> pa.Table:
    """Run a read-only query; returns an Arrow table."""
    rel = relation(sql, home, con)
    try:
        return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()
    except duckdb.PermissionException as exc:
        raise ReadOnlyQueryError(f"refused: the query reads files outside the store ({exc})") from exc


def to_pandas(sql: str, home: str | os.PathLike | None = None, con: duckdb.DuckDBPyConnection | None = None):
    """Run a read-only query; returns a pandas DataFrame."""
    return query(sql, home, con).to_pandas()
