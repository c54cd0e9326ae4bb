"""Scrubbing of free text (error messages, names) before it enters a record.

Records never hold raw text, absolute paths, user or host names, e-mail addresses or tokens."""
from __future__ import annotations

import getpass
import os
import re
import socket
from functools import lru_cache

MAX_MESSAGE_CHARS = 2000

_TOKEN_RES = [
    re.compile(r"\bhf_[A-Za-z0-9]{8,}\b"),                   # Hugging Face tokens
    re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}\b"),               # OpenAI-style keys
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{16,}\b"),           # GitHub tokens
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),                     # AWS access key ids
    re.compile(r"\b(?:eyJ[A-Za-z0-9_\-]{8,}\.){2}[A-Za-z0-9_\-]{8,}\b"),  # JWTs
    re.compile(r"(?i)\b(bearer|token|api[_-]?key|password|secret)(\s*[=:]\s*|\s+)[^\s,;'\"]{6,}"),
]
_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
_URL_RE = re.compile(r"\b([A-Za-z][\w+.\-]*://)[^\s'\"<>]+")
# Absolute POSIX paths (two or more components) and Windows drive paths.
_POSIX_PATH_RE = re.compile(r"(?<![\w.])/(?:[^\s/'\"():,;]+/)+[^\s/'\"():,;]*")
_WIN_PATH_RE = re.compile(r"\b[A-Za-z]:\\(?:[^\s\\'\"]+\\)*[^\s\\'\"]*")
_HOME_RE = re.compile(r"~[/\\][^\s'\"]*")
_LONG_HEX_RE = re.compile(r"\b[0-9a-fA-F]{32,}\b")


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
    return f"<path>/{base}" if base else "<path>"


def scrub_text(text: str | None, extra_secrets: tuple[str, ...] = ()) -> str | None:
    """Remove secrets, paths, e-mail addresses, user and host names from free text."""
    if text is None:
        return None
    s = str(text)
    for secret in extra_secrets:
        if secret and len(secret) >= 3:
            s = s.replace(secret, "<redacted>")
    for rx in _TOKEN_RES:
        s = rx.sub("<token>", s)
    s = _URL_RE.sub(r"\1<url>", s)  # URLs can name internal hosts and carry credentials
    s = _EMAIL_RE.sub("<email>", s)
    s = _WIN_PATH_RE.sub(_path_repl, s)
    s = _POSIX_PATH_RE.sub(_path_repl, s)
    s = _HOME_RE.sub("<path>", s)
    s = _LONG_HEX_RE.sub("<hex>", s)
    for w in _identity_words():
        s = _identity_re(w).sub("<redacted>", s)
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


def find_leaks(value: object, secrets: tuple[str, ...] = ()) -> list[str]:
    """Return descriptions of privacy leaks in a (nested) value; used by validate and tests."""
    leaks: list[str] = []

    def visit(v: object, where: str) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                visit(k, where)
                visit(x, f"{where}.{k}")
        elif isinstance(v, (list, tuple)):
            for x in v:
                visit(x, where)
        elif isinstance(v, str):
            if _POSIX_PATH_RE.search(v) or _WIN_PATH_RE.search(v):
                leaks.append(f"{where}: absolute path")
            if _EMAIL_RE.search(v):
                leaks.append(f"{where}: e-mail address")
            if any(rx.search(v) for rx in _TOKEN_RES):
                leaks.append(f"{where}: token")
            for w in _identity_words() + tuple(s for s in secrets if s):
                if _identity_re(w).search(v):
                    leaks.append(f"{where}: contains {w!r}")
    visit(value, "record")
    return leaks
