"""Privacy of records: scrubbing free text and user-given names before they enter a record, and
the check that every boundary runs again (``LocalStore.write``, ``xlog validate``, push, pull).

Records never hold raw text, absolute or relative paths, user or host names, e-mail addresses,
URLs or tokens. One set of rules does both jobs: a value *leaks* exactly when scrubbing would
change it, so what the scrubber produces always passes the check, and the check never flags
what the scrubber keeps."""
from __future__ import annotations

import getpass
import os
import re
import socket
import warnings
from functools import lru_cache
from typing import Any, Iterable, Mapping

MAX_MESSAGE_CHARS = 2000


class PrivacyWarning(UserWarning):
    """A user-given string looked like private data and was scrubbed before it entered a record."""


_TOKEN_RES = [
    re.compile(r"\bhf_[A-Za-z0-9]{8,}\b"),                   # Hugging Face tokens
    re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}\b"),               # OpenAI-style keys
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{16,}\b"),           # GitHub tokens
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),                     # AWS access key ids
    re.compile(r"\b(?:eyJ[A-Za-z0-9_\-]{8,}\.){2}[A-Za-z0-9_\-]{8,}\b"),  # JWTs
]
# Secrets named as such: the value goes, the name stays ("password=<token>"). Separated by a
# space only after "bearer", or when the value looks generated (long, with a digit): "token
# indices" or a task called "token classification" are not secrets.
_SECRET_WORDS = r"(?:token|api[_-]?key|access[_-]?key|secret[_-]?key|client[_-]?secret|password|passwd|secret)"
_NAMED_SECRET_RES = [
    re.compile(r"(?i)\b(bearer\s+)(?!<)[^\s,;'\"]{6,}"),
    re.compile(r"(?i)\b(" + _SECRET_WORDS + r"[\"']?\s*[=:]\s*[\"']?)(?!<)[^\s,;'\"]{6,}"),
    re.compile(r"(?i)\b(" + _SECRET_WORDS + r"\s+)(?!<)(?=[^\s,;'\"]*\d)[^\s,;'\"]{12,}"),
]
# E-mail addresses and user@host (an ssh login names a person and a machine).
# Every pattern starts only where a run of its characters starts (a look-behind or \b): a
# 10 MB string is scanned in linear time, never quadratic.
_EMAIL_RE = re.compile(r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@[A-Za-z][A-Za-z0-9\-]*(?:\.[A-Za-z0-9\-]+)*")
_URL_RE = re.compile(r"(?<![\w+.\-])([A-Za-z][\w+.\-]*://)(?!<url>)[^\s'\"<>]+")
# Absolute POSIX paths (two or more components), Windows drive paths and home-relative paths.
_POSIX_PATH_RE = re.compile(r"(?<![\w.])/(?:[^\s/'\"():,;]+/)+[^\s/'\"():,;]*")
_WIN_PATH_RE = re.compile(r"\b[A-Za-z]:\\(?:[^\s\\'\"]+\\)*[^\s\\'\"]*")
_HOME_RE = re.compile(r"(?<![\w.])~[/\\][^\s'\"():,;]*")
# Relative paths: ./x and ../x at any depth, and a/b/c with three or more components (two
# components stay: Hub ids such as org/model look the same as a relative path a/b).
_DOT_PATH_RE = re.compile(r"(?<![\w.~/\\<>-])\.{1,2}[/\\][^\s'\"():,;<>]*")
_DEEP_PATH_RE = re.compile(r"(?<![\w.~/\\<>:@%-])[\w.\-]+(?:/[\w.\-]+){2,}/?")
_LONG_HEX_RE = re.compile(r"\b[0-9a-fA-F]{32,}\b")
# Long base64 runs with upper case, lower case and digits (secret keys, signed blobs).
_BASE64_RE = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{40,}={0,2}(?![A-Za-z0-9+/=])")
_PLACEHOLDER_RE = re.compile(r"(?:(?<![\w+.\-])[A-Za-z][\w+.\-]*://)?<(?:path|url|email|token|hex|secret|redacted)>")


@lru_cache(maxsize=1)
def _identity_words() -> tuple[str, ...]:
    """User and host names of this machine, longest first (so substrings go after)."""
    words = set()
    for getter in (getpass.getuser, socket.gethostname, socket.getfqdn):
        try:
            w = getter()
        except Exception:  # no passwd entry in containers, no resolver, ...
            continue
        if w:
            words.add(w)
            words.add(w.split(".")[0])
    for var in ("USER", "LOGNAME", "USERNAME", "HOSTNAME"):
        if os.environ.get(var):
            words.add(os.environ[var])
    # Generic names identify nobody; matching is on word boundaries so short names stay safe.
    return tuple(sorted((w for w in words if len(w) >= 2 and w.lower() not in {"root", "localhost", "user"}),
                        key=len, reverse=True))


def _identity_re(word: str) -> re.Pattern:
    return re.compile(r"(?<![A-Za-z0-9])" + re.escape(word) + r"(?![A-Za-z0-9])", re.IGNORECASE)


def _path_repl(m: re.Match) -> str:
    # Keep only the file name: it helps diagnosis and identifies nobody.
    base = re.split(r"[/\\]", m.group(0).rstrip("/\\"))[-1]
    return f"<path>/{base}" if base and base not in (".", "..", "~") else "<path>"


def _deep_path_repl(m: re.Match) -> str:
    # a/b/c is a path when it has letters; 1/2/2025 is a date, 3/4/5 a ratio.
    return _path_repl(m) if re.search(r"[A-Za-z]", m.group(0)) else m.group(0)


def _base64_repl(m: re.Match) -> str:
    s = m.group(0)
    mixed = re.search(r"[a-z]", s) and re.search(r"[A-Z]", s) and re.search(r"\d", s)
    return "<secret>" if mixed else s


# (kind of private data, pattern, replacement string or function), applied in this order.
_RULES: list[tuple[str, re.Pattern, Any]] = (
    [("token", rx, "<token>") for rx in _TOKEN_RES]
    + [("token", rx, r"\1<token>") for rx in _NAMED_SECRET_RES]
    + [("URL", _URL_RE, r"\1<url>"),  # URLs can name internal hosts and carry credentials
       ("e-mail address", _EMAIL_RE, "<email>"),
       ("secret", _LONG_HEX_RE, "<hex>"),
       ("secret", _BASE64_RE, _base64_repl),  # before paths: base64 has slashes
       ("path", _WIN_PATH_RE, _path_repl),
       ("path", _HOME_RE, _path_repl),
       ("path", _POSIX_PATH_RE, _path_repl),
       ("path", _DOT_PATH_RE, _path_repl),
       ("path", _DEEP_PATH_RE, _deep_path_repl)])


def _apply_rules(s: str, identity: bool, secrets: tuple[str, ...] = ()) -> tuple[str, tuple[str, ...]]:
    """``s`` scrubbed, and the kinds of private data that were removed (empty: nothing leaked)."""
    kinds: list[str] = []

    def note(kind: str) -> None:
        if kind not in kinds:
            kinds.append(kind)
    for secret in secrets:
        if secret and len(secret) >= 3 and secret in s:
            s = s.replace(secret, "<redacted>")
            note("a secret you named")
    for kind, rx, repl in _RULES:
        new = rx.sub(repl, s)
        if new != s:
            s = new
            note(kind)
    if identity:
        for w in _identity_words():
            new = _identity_re(w).sub("<redacted>", s)
            if new != s:
                s = new
                note("user or host name")
    return s, tuple(kinds)


def scrub_text(text: str | None, extra_secrets: tuple[str, ...] = ()) -> str | None:
    """Remove secrets, paths, e-mail addresses, user and host names from free text."""
    if text is None:
        return None
    s, _ = _apply_rules(str(text), True, tuple(extra_secrets))
    if len(s) > MAX_MESSAGE_CHARS:
        s = s[: MAX_MESSAGE_CHARS - 12] + " [truncated]"
    return s


def scrub_name(name: str | None) -> str | None:
    """A model/dataset name safe to publish: Hub ids stay, local paths become their base name."""
    if not name:
        return None
    name = str(name)
    if os.path.isabs(name) or name.startswith(("~", "./", "../")) or "\\" in name or os.path.exists(name):
        name = os.path.basename(os.path.normpath(os.path.expanduser(name)))
    return scrub_text(name)


# ---- fields of a record ---------------------------------------------------------------------
# How a string field is scrubbed: "message" (free text: error messages), "json" (a JSON document:
# scrubbed inside its strings, never truncated), "name" (a name: a path-like name becomes its
# base name; a name that was nothing but private data becomes null), "text" (list items, metric
# names, columns this version does not know: free text that is never nulled).

def _looks_like_path(s: str) -> bool:
    return (s.startswith(("/", "~", "./", "../", ".\\", "..\\")) or "\\" in s
            or re.match(r"^[A-Za-z]:[\\/]", s) is not None
            or (s.count("/") >= 2 and "://" not in s and not re.search(r"\s", s)
                and re.search(r"[A-Za-z]", s) is not None))


def _scrub_name_value(s: str, identity: bool, secrets: tuple[str, ...]) -> tuple[str | None, tuple[str, ...]]:
    kinds: tuple[str, ...] = ()
    if _looks_like_path(s):
        base = re.split(r"[/\\]", s.rstrip("/\\"))[-1]
        s = "" if base in (".", "..", "~") else base
        kinds = ("path",)
    out, more = _apply_rules(s, identity, secrets)
    kinds += tuple(k for k in more if k not in kinds)
    if kinds and not re.search(r"[A-Za-z0-9]", _PLACEHOLDER_RE.sub("", out)):
        return None, kinds  # nothing public is left
    return out, kinds


@lru_cache(maxsize=1 << 16)
def _scrub_cached(how: str, s: str, identity: bool) -> tuple[str | None, tuple[str, ...]]:
    return _scrub_uncached(how, s, identity, ())


def _scrub_uncached(how: str, s: str, identity: bool, secrets: tuple[str, ...]) -> tuple[str | None, tuple[str, ...]]:
    if how == "name":
        return _scrub_name_value(s, identity, secrets)
    return _apply_rules(s, identity, secrets)


def _scrub_string(how: str, s: str, identity: bool,
                  secrets: tuple[str, ...] = ()) -> tuple[str | None, tuple[str, ...]]:
    # Values repeat across records (model names, hardware, versions): cache the short ones.
    if not secrets and len(s) <= 512:
        return _scrub_cached(how, s, identity)
    return _scrub_uncached(how, s, identity, secrets)


@lru_cache(maxsize=1)
def _field_info() -> dict[str, tuple[str | None, int | None, bool]]:
    """field -> (how it is scrubbed or None, its maximum length, whether it is required)."""
    from . import schema as S
    out: dict[str, tuple[str | None, int | None, bool]] = {}
    for f in S.fields():
        if f.json_type == "string":
            if f.enum is not None or f.fmt in ("date-time", "uuid"):
                how = None  # the schema admits only fixed values or a strict format here
            elif f.name == "error_message":
                how = "message"
            elif f.name.endswith("_json"):
                how = "json"
            else:
                how = "name"
            out[f.name] = (how, f.max_length, f.required)
        elif f.json_type in ("array", "object"):
            out[f.name] = ("text", f.item_max_length or f.key_max_length, f.required)
    return out


def _info(field: str) -> tuple[str | None, int | None, bool]:
    return _field_info().get(field, ("text", None, False))  # a column of a newer version: free text


def scrub_value(field: str, value: Any, *, identity: bool = True,
                secrets: tuple[str, ...] = ()) -> tuple[Any, tuple[str, ...]]:
    """The value of a record field with private data removed, and the kinds removed (empty when
    the value is clean; then it is returned unchanged). Lists are scrubbed item by item and
    mappings (metrics) name by name. ``identity``: also remove this machine's user and host
    names (off when checking records that come from elsewhere)."""
    how, max_len, required = _info(field)
    if how is None or value is None:
        return value, ()
    if isinstance(value, str):
        out, kinds = _scrub_string(how, value, identity, secrets)
        if not kinds:
            return value, ()
        if out is None and required:
            out = "<redacted>"
        if how == "message" and out is not None and max_len is not None and len(out) > max_len:
            out = out[: max_len - 12] + " [truncated]"  # as scrub_text does
        return out, kinds
    if isinstance(value, (list, tuple)):
        kinds: tuple[str, ...] = ()
        items = []
        for x in value:
            if isinstance(x, Mapping) and isinstance(x.get("name"), str):  # a learning-curve point
                name, k = _scrub_string("text", x["name"], identity, secrets)
                y = {**x, "name": name} if k else x
            else:
                y, k = (_scrub_string("text", x, identity, secrets) if isinstance(x, str) else (x, ()))
            items.append(y)
            kinds += tuple(a for a in k if a not in kinds)
        return (items if kinds else value), kinds
    if isinstance(value, Mapping):
        kinds = ()
        pairs = {}
        for k, x in value.items():
            k2, kk = _scrub_string("text", k, identity, secrets) if isinstance(k, str) else (k, ())
            pairs[k2] = x
            kinds += tuple(a for a in kk if a not in kinds)
        return (pairs if kinds else value), kinds
    return value, ()


def leak_message(field: str, kinds: Iterable[str]) -> str:
    return f"{field}: looks like private data ({', '.join(kinds)})"


def scrub_record(rec: Mapping[str, Any], *, identity: bool = True,
                 secrets: tuple[str, ...] = ()) -> tuple[dict, list[str]]:
    """A copy of ``rec`` with every string field scrubbed, and one line per field that changed
    (naming the field and what kind of private data it held)."""
    out = dict(rec)
    problems = []
    for name, v in rec.items():
        if v is None:
            continue
        new, kinds = scrub_value(name, v, identity=identity, secrets=secrets)
        if kinds:
            out[name] = new
            problems.append(leak_message(name, kinds))
    return out, problems


def record_leaks(rec: Mapping[str, Any], *, identity: bool = True) -> list[str]:
    """The fields of a record that hold private data (empty when it is clean)."""
    return scrub_record(rec, identity=identity)[1]


def table_leaks(table: Any, *, identity: bool = True, limit: int = 50) -> list[str]:
    """The private data in an Arrow table of records, one line per (row, field), naming the row
    and record id. Each distinct value is checked once (values repeat across rows)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from . import schema as S
    problems: list[str] = []
    ids = table.column("record_id").to_pylist() if "record_id" in table.column_names else None
    for name in table.column_names:
        how = _info(name)[0]
        if how is None:
            continue
        col = table.column(name).combine_chunks()
        typ = col.type
        if pa.types.is_string(typ) or pa.types.is_large_string(typ):
            values, rows = col, None
        elif (pa.types.is_list(typ) or pa.types.is_large_list(typ)) and (
                pa.types.is_string(typ.value_type) or pa.types.is_large_string(typ.value_type)):
            values, rows = pc.list_flatten(col), pc.list_parent_indices(col)
        elif (pa.types.is_list(typ) or pa.types.is_large_list(typ)) and pa.types.is_struct(typ.value_type) \
                and typ.value_type.get_field_index("name") >= 0:
            values, rows = pc.struct_field(pc.list_flatten(col), "name"), pc.list_parent_indices(col)
        elif pa.types.is_map(typ):
            values, rows = pc.list_flatten(pc.map_keys(col)), pc.list_parent_indices(col)
        else:
            continue
        for v in pc.unique(values).to_pylist():
            if not isinstance(v, str):
                continue
            how_v = how if rows is None else "text"
            kinds = _scrub_string(how_v, v, identity)[1]
            if not kinds:
                continue
            i = pc.index(values, v).as_py()
            row = i if rows is None else rows[i].as_py()
            problems.append(f"{S.row_label(row, ids[row] if ids else None)}: {leak_message(name, kinds)}")
            if len(problems) >= limit:
                return problems + ["(more not shown)"]
    return problems


def scrub_user_value(field: str, value: str | None) -> str | None:
    """A user-given string (task name, domain, language, contributor, ...) made safe to store:
    scrubbed like the field is at every boundary, cut to the schema's maximum length; a
    ``PrivacyWarning`` says what changed. Returns None when nothing public is left."""
    if value is None or value == "":
        return None
    value = str(value)
    out, kinds = scrub_value(field, value)
    if kinds:
        warnings.warn(f"xlog: {field}={value[:80]!r} looks like private data ({', '.join(kinds)}); "
                      + (f"stored as {out!r}" if out is not None else "stored as null (nothing public was left)"),
                      PrivacyWarning, stacklevel=3)
    max_len = _info(field)[1]
    if out is not None and max_len is not None and len(out) > max_len:
        warnings.warn(f"xlog: {field} is {len(out)} characters long; stored cut to the maximum {max_len}",
                      PrivacyWarning, stacklevel=3)
        out = out[:max_len]
    return out


def find_leaks(value: object, secrets: tuple[str, ...] = ()) -> list[str]:
    """Descriptions of privacy leaks in a (nested) value: ``where: kind``. Free-text rules apply to
    every string (a record's fields are better checked with ``record_leaks``)."""
    leaks: list[str] = []
    secrets = tuple(s for s in secrets if s)

    def visit(v: object, where: str) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                visit(k, where)
                visit(x, f"{where}.{k}")
        elif isinstance(v, (list, tuple)):
            for x in v:
                visit(x, where)
        elif isinstance(v, str):
            for kind in _scrub_string("text", v, True, secrets)[1]:
                leaks.append(f"{where}: {kind}")
    visit(value, "record")
    return leaks


__all__ = ["MAX_MESSAGE_CHARS", "PrivacyWarning", "scrub_text", "scrub_name", "scrub_value", "scrub_record",
           "record_leaks", "table_leaks", "scrub_user_value", "find_leaks", "leak_message"]
