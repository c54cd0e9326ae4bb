"""The store in DuckDB: the ``experiences`` view and helper views, and read-only SQL.

``connect(home)`` opens an in-memory DuckDB database over every Parquet record file under one
``XLOG_HOME``: the local store (``records/``) and every pulled mirror (``remotes/*/data/``).
``experiences`` reads them all with ``union_by_name`` (older schema versions lack columns, newer
ones may add some), always has at least the current schema's columns (an empty store gives zero
rows with those columns), and keeps one row per ``record_id``, chosen as a reader must (the
issue of trust): a local copy (your own record) wins over a pulled one; among pulled copies the
first committed stands (the mirror's order of arrival, which ``xlog pull`` makes first committed
first; across mirrors, the earlier commit date); never a file's name. Two pulled copies with other
content (``xlog.intake.content_hash``, from the mirror's index) are a conflict, listed in the
``conflicts`` view; identical copies are one record. Duplicates are found once, at connect, row by
row (a record twice in one file is still one record, never none).

Provenance: every row of ``experiences`` says where it came from: ``source_remote`` (``local`` for
the local store), ``source_file`` (the path in the remote, or in the store), ``source_commit``,
``source_pr`` and ``source_date`` (where the remote knows them). ``exclude_sources`` leaves out
the files of matching sources before deduplication (so another copy of a record can stand).
The helper views come from ``schema/views.sql``.
Local files are validated before they enter the views, each file once
(``xlog.store.validated_record_files``): an invalid one is quarantined, as ``xlog ls`` and push do.
Pulled files were validated when they arrived.

Read-only by construction, in two independent layers:

* the connection: a fresh in-memory database whose views are created first; then DuckDB may open
  exactly the record files the views name (``allowed_paths``, and no directory, so no other file, in
  the store or outside it, can be read, written, created or globbed), external access is off,
  extensions cannot be installed or loaded, spilling to disk is off, and the configuration is locked;
* the statement: ``query`` / ``relation`` / ``to_pandas`` accept exactly one SELECT statement
  (``WITH ... SELECT``, ``FROM ...``, ``DESCRIBE``, ``SUMMARIZE`` included), or ``EXPLAIN`` /
  ``EXPLAIN ANALYZE`` of one, judged by DuckDB's own parser, and raise ``ReadOnlyQueryError``
  for anything else (this is also what keeps the record files themselves from being written).

Bounded: ``query`` / ``to_pandas`` stop a query after ``timeout_s`` (default 30 s) and the connection
has a ``memory_limit`` (default 1 GB); both raise ``QueryLimitError``, and the connection stays usable.
"""
from __future__ import annotations

import fnmatch
import os
import threading
from importlib import resources
from pathlib import Path
from typing import Sequence

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xlog import schema as S
from xlog.store import LocalStore, iter_parquet_files, validated_record_files

__all__ = ["DEFAULT_MEMORY_LIMIT", "DEFAULT_TIMEOUT_S", "QueryLimitError", "ReadOnlyQueryError", "check_read_only",
           "connect", "query", "record_files", "relation", "source_matches", "sources", "to_pandas", "views_sql"]

REMOTES_DIR = "remotes"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MEMORY_LIMIT = "1GB"
_footer_ok: dict[tuple[str, int, int], bool] = {}  # (path, mtime_ns, size) -> readable, per process


class ReadOnlyQueryError(ValueError):
    """A statement given to ``xsearch sql`` would write, attach, install, or read outside the store."""


class QueryLimitError(RuntimeError):
    """A query ran past its time limit or needed more memory than its limit, and was stopped."""


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
    """(local files, pulled files) that the views read. Local files are validated (once per file:
    ``xlog.store.validated_record_files``) and invalid ones quarantined; pulled ones were validated
    when they arrived and are only skipped when their Parquet footer is unreadable."""
    store = LocalStore(home)
    local = validated_record_files(store)
    pulled: list[Path] = []
    remotes = store.root / REMOTES_DIR
    if remotes.is_dir():
        for mirror in sorted(d for d in remotes.iterdir() if d.is_dir() and not d.name.startswith(".")):
            for p in iter_parquet_files(mirror / "data"):
                try:
                    if _readable(p):
                        pulled.append(p)
                except FileNotFoundError:
                    continue
    return local, pulled


def _sql_list(paths: list[Path]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


_SOURCE_SCHEMA = pa.schema([("_file", pa.string()), ("_rank", pa.int64()), ("source_remote", pa.string()),
                            ("source_file", pa.string()), ("source_commit", pa.string()), ("source_pr", pa.int64()),
                            ("source_date", pa.string())])
_HASH_SCHEMA = pa.schema([("_file", pa.string()), ("record_id", pa.string()), ("_hash", pa.string())])


def source_matches(pattern: str, source: dict) -> bool:
    """Whether a file's provenance matches an ``--exclude-source`` pattern: a glob on the file's path
    (``data/v1/0000-00/*``) or on the remote (``file:///mnt/shared*``, ``local``), a commit id (or
    its first characters), or ``pr:N`` (the files merged from pull request N)."""
    commit = source.get("source_commit") or ""
    pr = source.get("source_pr")
    return (fnmatch.fnmatchcase(source.get("source_file") or "", pattern)
            or fnmatch.fnmatchcase(source.get("source_remote") or "", pattern)
            or (len(pattern) >= 7 and bool(commit) and commit.startswith(pattern))
            or (pr is not None and pattern.lower() in (f"pr:{pr}", f"#{pr}")))


def sources(home: str | os.PathLike | None = None, local: list[Path] | None = None,
            pulled: list[Path] | None = None) -> tuple[pa.Table, pa.Table]:
    """(provenance of each record file, content hashes of the pulled records): the first has one row
    per file (``_file`` as the views read it, ``_rank``: lower stands first, ``source_*``), the second
    the mirrors' indexes (``_file``, ``record_id``, ``_hash``)."""
    from xlog.remotes.sync import read_mirror
    store = LocalStore(home)
    if local is None or pulled is None:
        local, pulled = record_files(home)
    rows: list[dict] = [{"_file": str(p), "_rank": 0, "source_remote": "local",
                         "source_file": _relative(p, store.root), "source_commit": None, "source_pr": None,
                         "source_date": None} for p in local]
    by_mirror: dict[Path, list[Path]] = {}
    mirrors_dir = store.root / REMOTES_DIR
    for p in pulled:
        mirror = mirrors_dir / p.relative_to(mirrors_dir).parts[0]
        by_mirror.setdefault(mirror, []).append(p)
    pulled_rows = []
    hashes = []
    for mirror, files in sorted(by_mirror.items()):
        info = read_mirror(mirror)
        for p in files:
            rel = p.relative_to(mirror).as_posix()
            meta = info.files.get(rel) or {}
            when = meta.get("date") or meta.get("seen")
            order = (when or "~", info.remote, int(meta.get("seq") or 1 << 40), rel)  # first committed first
            pulled_rows.append(({"_file": str(p), "source_remote": info.remote, "source_file": rel,
                                 "source_commit": meta.get("commit"), "source_pr": _int(meta.get("pr")),
                                 "source_date": when}, order))
        if info.index.num_rows:
            idx = info.index
            hashes.append(pa.table({"_file": pc.binary_join_element_wise(str(mirror) + "/", idx.column("file"), ""),
                                    "record_id": idx.column("record_id"), "_hash": idx.column("content_hash")}))
    for rank, (row, _) in enumerate(sorted(pulled_rows, key=lambda x: x[1]), start=1):
        rows.append({**row, "_rank": rank})
    table = pa.Table.from_pylist(rows, schema=_SOURCE_SCHEMA)
    hash_table = pa.concat_tables([t.cast(_HASH_SCHEMA) for t in hashes]) if hashes else _HASH_SCHEMA.empty_table()
    return table, hash_table


def _relative(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.name


def _int(v: object) -> int | None:
    try:
        return int(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def views_sql() -> str:
    return resources.files("xlog.schema_files").joinpath("views.sql").read_text(encoding="utf-8")


def connect(home: str | os.PathLike | None = None, lock: bool = True, *,
            memory_limit: str = DEFAULT_MEMORY_LIMIT, threads: int | None = None,
            exclude_sources: Sequence[str] = ()) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with ``experiences`` and the helper views (module docstring).

    ``memory_limit`` (DuckDB syntax: ``"1GB"``, ``"512MB"``) bounds the memory DuckDB may use for a
    query; nothing spills to disk, so a query that needs more fails with ``QueryLimitError`` (through
    ``query``). ``threads`` is DuckDB's worker thread count (default: the machine's cores).
    ``exclude_sources``: leave out the files whose provenance matches one of these patterns
    (``source_matches``). ``lock=False`` leaves the connection unlocked: for trusted code only,
    never for user SQL."""
    store = LocalStore(home)
    root = store.root.resolve()
    local, pulled = record_files(root)
    src, hashes = sources(root, local, pulled)
    if exclude_sources:
        keep = [not any(source_matches(pat, r) for pat in exclude_sources) for r in src.to_pylist()]
        src = src.filter(pa.array(keep, pa.bool_()))
        wanted = set(src.column("_file").to_pylist())
        local = [p for p in local if str(p) in wanted]
        pulled = [p for p in pulled if str(p) in wanted]
    config: dict = {"memory_limit": str(memory_limit), "temp_directory": ""}
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        config["threads"] = int(threads)
    try:
        con = duckdb.connect(":memory:", config=config)
    except duckdb.Error as exc:
        raise ValueError(f"invalid DuckDB limits (memory_limit={memory_limit!r}, threads={threads!r}): {exc}") from exc
    # The empty table typed with the current schema guarantees its columns exist in the view.
    con.register("_xlog_empty", pa.table({n: pa.array([], type=f.type) for n, f in
                                          zip(S.arrow_schema().names, S.arrow_schema())}))
    con.register("_xlog_src_arrow", src)
    con.register("_xlog_hash_arrow", hashes)
    con.execute("CREATE TEMP TABLE _xlog_src AS SELECT * FROM _xlog_src_arrow")
    con.execute("CREATE TEMP TABLE _xlog_hash AS SELECT * FROM _xlog_hash_arrow")
    con.unregister("_xlog_src_arrow")
    con.unregister("_xlog_hash_arrow")
    parts = ["SELECT *, '' AS _file, -1::BIGINT AS _row FROM _xlog_empty"]
    if local or pulled:
        parts.append(f"SELECT * EXCLUDE (filename, file_row_number), filename AS _file, file_row_number AS _row "
                     f"FROM read_parquet({_sql_list(local + pulled)}, union_by_name = true, filename = true, "
                     "file_row_number = true)")
    con.execute("CREATE VIEW _xlog_all AS\n" + "\nUNION ALL BY NAME\n".join(parts))
    # Dedup once here, not in every query: duplicates are rare (a record both local and pulled, a
    # compacted file), so rank the copies of the repeated ids only, row by row, and anti-join the
    # losers. The copy that stands: the lowest source rank (local first, then first committed).
    con.execute("""CREATE TEMP TABLE _xlog_copies AS
        SELECT a.record_id, a._file, a._row, s._rank, h._hash,
               row_number() OVER w AS _n, first_value(h._hash) OVER w AS _first_hash,
               first_value(a._file) OVER w AS _first_file, first_value(s._rank) OVER w AS _first_rank
        FROM (SELECT record_id, _file, _row FROM _xlog_all WHERE record_id IN (
                SELECT record_id FROM _xlog_all GROUP BY record_id HAVING count(*) > 1)) a
        JOIN _xlog_src s USING (_file)
        LEFT JOIN _xlog_hash h ON h._file = a._file AND h.record_id = a.record_id
        WINDOW w AS (PARTITION BY a.record_id ORDER BY s._rank, a._file, a._row
                     ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)""")
    con.execute("CREATE TEMP TABLE _xlog_dup AS SELECT _file, _row FROM _xlog_copies WHERE _n > 1")
    con.execute("""CREATE VIEW experiences AS
        SELECT a.* EXCLUDE (_file, _row), s.source_remote, s.source_file, s.source_commit, s.source_pr,
               s.source_date
        FROM _xlog_all a LEFT JOIN _xlog_src s USING (_file)
        WHERE NOT EXISTS (SELECT 1 FROM _xlog_dup d WHERE d._file = a._file AND d._row = a._row)""")
    # Two pulled copies of one id with different content: the first committed stands (above); the
    # other is listed here. A local copy always stands (it is your own record): not a conflict.
    con.execute("""CREATE VIEW conflicts AS
        SELECT c.record_id, k.source_remote AS kept_remote, k.source_file AS kept_file,
               o.source_remote AS other_remote, o.source_file AS other_file, o.source_commit AS other_commit,
               o.source_pr AS other_pr
        FROM _xlog_copies c JOIN _xlog_src o ON o._file = c._file JOIN _xlog_src k ON k._file = c._first_file
        WHERE c._n > 1 AND c._first_rank > 0 AND c._hash IS DISTINCT FROM c._first_hash""")
    con.execute(views_sql())
    if lock:
        # Exactly the files the views read, no directory: DuckDB's allowed paths also allow writing,
        # so a directory here would let a statement that slipped through write into the store.
        con.execute(f"SET allowed_paths = {_sql_list(local + pulled)}")
        con.execute("SET allowed_directories = []")
        con.execute("SET enable_external_access = false")
        con.execute("SET python_enable_replacements = false")
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET autoload_known_extensions = false")
        con.execute("SET allow_community_extensions = false")
        con.execute("SET allow_persistent_secrets = false")
        con.execute("SET lock_configuration = true")
    return con


# ---- the statement check -------------------------------------------------------------------------
def _kind(statement) -> str:
    return str(statement.type).rsplit(".", 1)[-1]


def _explained(text: str) -> str:
    """The statement an ``EXPLAIN [ANALYZE] ...`` / ``EXPLAIN (options) ...`` wraps, cut out of ``text``
    with DuckDB's tokenizer (comments anywhere). Whatever the cut, the result must then parse as one
    SELECT on its own, so a wrong cut can only refuse a query, never let a write through."""
    every = duckdb.tokenize(text)
    spans = [(pos, end, kind) for (pos, kind), end in zip(every, [p for p, _ in every[1:]] + [len(text)])]
    tokens = [(pos, kind) for pos, _, kind in spans if kind != duckdb.token_type.comment]
    ends = [end for _, end, kind in spans if kind != duckdb.token_type.comment]

    def word(i: int) -> str:
        return text[tokens[i][0]:ends[i]].strip().upper()

    if not tokens or word(0) != "EXPLAIN":
        raise ReadOnlyQueryError("cannot tell which statement EXPLAIN wraps")
    i = 1
    if i < len(tokens) and word(i) in ("ANALYZE", "ANALYSE"):
        i += 1
    elif i < len(tokens) and word(i).startswith("("):  # an option list, or a parenthesized statement
        depth, j = 0, i
        while j < len(tokens):
            if tokens[j][1] == duckdb.token_type.operator:
                depth += word(j).count("(") - word(j).count(")")
            j += 1
            if depth <= 0:
                break
        rest = [k for k in range(j, len(tokens)) if word(k) != ";"]
        if rest:  # EXPLAIN (ANALYZE, FORMAT json) SELECT ...
            i = j
    if i >= len(tokens):
        raise ReadOnlyQueryError("EXPLAIN of nothing")
    return text[tokens[i][0]:]


def _check(con: duckdb.DuckDBPyConnection, sql: str, depth: int = 0) -> None:
    try:
        stmts = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise ReadOnlyQueryError(f"cannot parse the query: {exc}") from exc
    if len(stmts) != 1:
        raise ReadOnlyQueryError(f"give exactly one statement (got {len(stmts)}); xsearch sql is read-only")
    kind = _kind(stmts[0])
    if kind == "EXPLAIN" and depth < 3:
        try:
            return _check(con, _explained(stmts[0].query), depth + 1)
        except ReadOnlyQueryError as exc:
            raise ReadOnlyQueryError(f"EXPLAIN of a statement that is refused: {exc}") from exc
    if kind != "SELECT":
        raise ReadOnlyQueryError(f"{kind} statements are refused: xsearch sql is read-only (one SELECT, WITH ... "
                                 "SELECT, or EXPLAIN [ANALYZE] of one; no writes, COPY, ATTACH, INSTALL/LOAD, "
                                 "SET/RESET/PRAGMA or CALL)")


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise ``ReadOnlyQueryError`` unless ``sql`` is exactly one SELECT statement, or an EXPLAIN /
    EXPLAIN ANALYZE of one (DuckDB's parser decides; comments and CTEs are fine)."""
    _check(con, sql)


# ---- running a query -----------------------------------------------------------------------------
def relation(sql: str, home: str | os.PathLike | None = None,
             con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyRelation:
    """A DuckDB relation for a read-only query over the store. It runs when the caller fetches it,
    without ``query``'s time limit: give untrusted SQL to ``query`` instead."""
    con = con or connect(home)
    check_read_only(con, sql)
    try:
        return con.sql(sql)
    except duckdb.PermissionException as exc:
        raise ReadOnlyQueryError(f"refused: the query reads a file that is not one of the store's record files, "
                                 f"or needs an extension "
                                 f"({exc})") from exc


def _arrow(rel: duckdb.DuckDBPyRelation | None) -> pa.Table:
    if rel is None:
        return pa.table({})
    return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _stop(con: duckdb.DuckDBPyConnection, worker: threading.Thread) -> None:
    while worker.is_alive():  # interrupt again until it lands (a query may not have started yet)
        con.interrupt()
        worker.join(0.05)


def query(sql: str, home: str | os.PathLike | None = None, con: duckdb.DuckDBPyConnection | None = None, *,
          timeout_s: float | None = DEFAULT_TIMEOUT_S, memory_limit: str | None = None) -> pa.Table:
    """Run a read-only query; returns an Arrow table.

    The query runs in a worker thread and is interrupted after ``timeout_s`` seconds (None: no limit);
    ``memory_limit`` applies to the connection this call opens (default ``DEFAULT_MEMORY_LIMIT``): with
    ``con``, set it in ``connect``. Over either limit: ``QueryLimitError``, and ``con`` stays usable."""
    if timeout_s is not None and not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive (or None for no limit), not {timeout_s!r}")
    if con is not None and memory_limit is not None:
        raise ValueError("memory_limit is fixed when a connection opens: pass it to db.connect(), not with con=")
    if con is not None:
        return _run(con, sql, timeout_s)
    own = connect(home, memory_limit=memory_limit or DEFAULT_MEMORY_LIMIT)
    try:
        return _run(own, sql, timeout_s)
    finally:
        own.close()


def _run(con: duckdb.DuckDBPyConnection, sql: str, timeout_s: float | None) -> pa.Table:
    check_read_only(con, sql)
    box: dict = {}

    def work() -> None:
        try:
            box["table"] = _arrow(con.sql(sql))
        except BaseException as exc:  # handed to the calling thread
            box["error"] = exc

    worker = threading.Thread(target=work, name="xsearch-sql", daemon=True)
    worker.start()
    try:
        worker.join(timeout_s)
    except BaseException:  # Ctrl-C while waiting: stop the query too
        _stop(con, worker)
        raise
    timed_out = worker.is_alive()
    _stop(con, worker)
    if "table" in box:
        return box["table"]
    exc = box.get("error")
    if timed_out:
        raise QueryLimitError(f"the query was stopped at its time limit ({timeout_s:g} s); narrow it, or raise "
                              "the limit (xsearch sql --timeout SECONDS, db.query(timeout_s=...))") from exc
    if isinstance(exc, duckdb.InterruptException):
        raise QueryLimitError("the query was interrupted") from exc
    if isinstance(exc, duckdb.OutOfMemoryException):
        limit = con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
        raise QueryLimitError(f"the query needs more memory than its limit ({limit}) and was stopped; narrow it, "
                              "or raise the limit (xsearch sql --memory-limit SIZE, db.connect(memory_limit=...)): "
                              f"{_first_line(exc)}") from exc
    if isinstance(exc, duckdb.PermissionException):
        raise ReadOnlyQueryError(f"refused: the query reads a file that is not one of the store's record files "
                                 f"({_first_line(exc)})") from exc
    assert exc is not None
    raise exc


def to_pandas(sql: str, home: str | os.PathLike | None = None, con: duckdb.DuckDBPyConnection | None = None, *,
              timeout_s: float | None = DEFAULT_TIMEOUT_S, memory_limit: str | None = None):
    """Run a read-only query; returns a pandas DataFrame (limits as in ``query``)."""
    return query(sql, home, con, timeout_s=timeout_s, memory_limit=memory_limit).to_pandas()
