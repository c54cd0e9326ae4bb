"""A local Hugging Face Hub-compatible HTTP server for the tests and benchmarks.

It implements the part of the Hub HTTP API that the *unmodified* ``huggingface_hub`` client
calls for creating a dataset repo, committing files (``HfApi.create_commit``), listing a tree,
getting paths info and downloading files (``hf_hub_download`` / ``snapshot_download``):

    HEAD/GET /                                           home page (an endpoint that answers)
    GET  /api/whoami-v2
    POST /api/repos/create                               {name, organization, visibility|private, type}
    POST /api/validate-yaml                              (README.md front matter check)
    GET  /api/{type}s/{ns}/{name}[/revision/{rev}]       repo info
    POST /api/{type}s/{ns}/{name}/preupload/{rev}        upload mode per file
    POST /api/{type}s/{ns}/{name}/commit/{rev}           NDJSON commit (header, file, lfsFile, deletedFile)
    GET  /api/{type}s/{ns}/{name}/tree/{rev}[/{path}]    listing (recursive, paginated with Link)
    POST /api/{type}s/{ns}/{name}/paths-info/{rev}       info on given paths
    HEAD/GET /[{type}s/]{ns}/{name}/resolve/{rev}/{path} download (ETag, X-Repo-Commit, Range)
    POST /[{type}s/]{ns}/{name}.git/info/lfs/objects/batch + PUT /lfs-upload/{oid}  (git-LFS "basic")

Upload modes: ``preupload`` answers ``regular`` below ``lfs_threshold`` bytes (the file travels
base64 inside the commit, as the Hub does for small files) and ``lfs`` at or above it. The
server does not speak the Xet protocol: with ``lfs`` the client must take its HTTP LFS path,
which huggingface_hub 2.x does when ``HF_HUB_DISABLE_XET=1`` (the default threshold is so
high that the tests never need it).

Everything is in memory and guarded by one lock, so commits are serialised like on the Hub;
``parentCommit`` that is not the head answers 412. ``tokens`` (token -> user name) turns on
authentication: an unknown token answers 401 "Invalid credentials in Authorization header".
``inject()`` adds faults (a status with headers, or a dropped connection before or after the
request takes effect) so that the client's error handling is tested over real HTTP.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REPO_TYPES = ("model", "dataset", "space")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports as a file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Entry:
    data: bytes
    oid: str  # git blob sha1 (regular) or the LFS pointer's oid
    lfs_sha256: str | None = None


@dataclass
class Commit:
    oid: str
    parent: str | None
    summary: str
    tree: dict[str, Entry]
    date: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    owner: str
    created: str
    commits: list[Commit] = field(default_factory=list)

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def at(self, rev: str) -> Commit | None:
        if rev in ("main", "refs/heads/main", "HEAD"):
            return self.head
        for c in self.commits:
            if c.oid == rev:
                return c
        return None


@dataclass
class Fault:
    pattern: re.Pattern
    status: int | None  # None with drop set
    count: int
    headers: dict[str, str]
    drop: str | None  # "before" | "after" (close the connection without a response)


class HubState:
    def __init__(self, tokens: dict[str, str] | None, lfs_threshold: int):
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.tokens = tokens
        self.lfs_threshold = lfs_threshold
        self.faults: list[Fault] = []
        self.log: list[tuple[str, str, int]] = []


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class _Drop(Exception):
    """Close the connection without answering (a network failure seen by the client)."""


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, fmt: str, *args: Any) -> None:  # keep test output quiet
        pass

    # --- plumbing -------------------------------------------------------------------------
    @property
    def state(self) -> HubState:
        return self.server.state

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            return self.rfile.read(n)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json", head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and self.command != "HEAD":  # HTTP: a HEAD answer never carries a body
            self.wfile.write(body)
        with self.state.lock:
            self.state.log.append((self.command, self.path, status))

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _user(self, required: bool) -> str | None:
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else None
        if self.state.tokens is None:
            return "user"
        if token is None:
            if required:
                raise HubError(401, "You must be authenticated to perform this action")
            return None
        if token not in self.state.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.state.tokens[token]

    def _fault(self, when: str) -> None:
        key = f"{self.command} {self.path}"
        with self.state.lock:
            for f in self.state.faults:
                if f.count > 0 and f.pattern.search(key) and (f.drop or "before") == when:
                    f.count -= 1
                    if f.drop:
                        self.state.log.append((self.command, self.path, 0))
                        raise _Drop()
                    raise HubError(f.status or 500, f"injected fault {f.status}", headers=f.headers)

    def _dispatch(self) -> None:
        try:
            self._fault("before")
            self._route()
        except _Drop:
            self.close_connection = True
            try:
                self.connection.shutdown(2)
            except OSError:
                pass
        except HubError as e:
            headers = {"X-Error-Message": e.message, **e.headers}
            if e.code:
                headers["X-Error-Code"] = e.code
            self._json(e.status, {"error": e.message}, headers)

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = lambda self: self._dispatch()  # noqa: E731

    # --- routing ------------------------------------------------------------------------
    def _route(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        query = urllib.parse.parse_qs(url.query)
        m = self.command
        if path == "/" and m in ("GET", "HEAD"):  # the Hub's home page (clients may check the endpoint answers)
            return self._send(200, b"<html>hubserver</html>", content_type="text/html")
        if path == "/api/whoami-v2" and m == "GET":
            user = self._user(required=True)
            return self._json(200, {"type": "user", "name": user, "fullname": user, "orgs": [],
                                    "auth": {"accessToken": {"role": "write"}}})
        if path == "/api/repos/create" and m == "POST":
            return self._create_repo(json.loads(self._body() or b"{}"))
        if path == "/api/validate-yaml" and m == "POST":
            self._body()
            return self._json(200, {"errors": [], "warnings": []})
        if path.startswith("/lfs-upload/") and m == "PUT":
            return self._lfs_put(path.rsplit("/", 1)[1])
        if path.startswith("/lfs-verify/") and m == "POST":
            self._body()
            return self._json(200, {})
        api = re.match(r"^/api/(models|datasets|spaces)/([^/]+)/([^/]+)(?:/(.*))?$", path)
        if api:
            repo_type, rest = api.group(1)[:-1], api.group(4) or ""
            repo_id = f"{api.group(2)}/{api.group(3)}"
            return self._api(repo_type, repo_id, rest, query)
        lfs = re.match(r"^/(?:(datasets|spaces)/)?([^/]+)/([^/]+?)\.git/info/lfs/objects/batch$", path)
        if lfs and m == "POST":
            return self._lfs_batch((lfs.group(1) or "models")[:-1], f"{lfs.group(2)}/{lfs.group(3)}")
        res = re.match(r"^/(?:(datasets|spaces)/)?([^/]+)/([^/]+)/resolve/([^/]+)/(.+)$", path)
        if res and m in ("GET", "HEAD"):
            return self._resolve((res.group(1) or "models")[:-1], f"{res.group(2)}/{res.group(3)}",
                                 res.group(4), res.group(5))
        raise HubError(404, f"no route for {m} {path}")

    def _repo(self, repo_type: str, repo_id: str, write: bool) -> Repo:
        user = self._user(required=write)
        with self.state.lock:
            repo = self.state.repos.get((repo_type, repo_id))
        open_server = self.state.tokens is None  # without tokens every caller may do everything
        if repo is None or (repo.private and not open_server and user != repo.owner):
            raise HubError(404, "Repository not found", "RepoNotFound")
        if write and not open_server and user != repo.owner:
            raise HubError(403, "You don't have the rights to write to this repository")
        return repo

    def _create_repo(self, payload: dict) -> None:
        user = self._user(required=True)
        repo_type = payload.get("type") or "model"
        name, org = payload.get("name"), payload.get("organization")
        if repo_type not in REPO_TYPES or not name or not re.match(r"^[\w.-]+$", name):
            raise HubError(400, f"invalid repo name {name!r}")
        repo_id = f"{org or user}/{name}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        with self.state.lock:
            if (repo_type, repo_id) in self.state.repos:
                # Like the Hub, a 409 still carries the repo url (create_repo(exist_ok=True) reads it).
                prefix = "" if repo_type == "model" else f"{repo_type}s/"
                return self._json(409, {"error": "You already created this repo",
                                        "url": f"http://{self.headers.get('Host')}/{prefix}{repo_id}"},
                                  {"X-Error-Message": "You already created this repo"})
            repo = Repo(repo_type, repo_id, private, org or user, _now())
            gitattributes = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"
            tree = {".gitattributes": Entry(gitattributes, git_blob_sha1(gitattributes))}
            repo.commits.append(Commit(hashlib.sha1(f"{repo_id}{time.time_ns()}".encode()).hexdigest(),
                                       None, "initial commit", tree, _now()))
            self.state.repos[(repo_type, repo_id)] = repo
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        self._json(200, {"url": f"http://{self.headers.get('Host')}/{prefix}{repo_id}", "name": repo_id})

    def _api(self, repo_type: str, repo_id: str, rest: str, query: dict) -> None:
        m = self.command
        if rest == "" or rest.startswith("revision/"):
            repo = self._repo(repo_type, repo_id, write=False)
            commit = repo.at(urllib.parse.unquote(rest[len("revision/"):]) if rest else "main")
            if commit is None:
                raise HubError(404, "Revision not found", "RevisionNotFound")
            return self._json(200, {
                "id": repo_id, "author": repo.owner, "sha": commit.oid, "private": repo.private,
                "createdAt": repo.created, "lastModified": commit.date, "disabled": False, "gated": False,
                "siblings": [{"rfilename": p} for p in sorted(commit.tree)], "tags": []})
        verb, _, tail = rest.partition("/")
        if verb == "preupload" and m == "POST":
            return self._preupload(self._repo(repo_type, repo_id, write=True), tail)
        if verb == "commit" and m == "POST":
            return self._commit(self._repo(repo_type, repo_id, write=True), tail)
        if verb == "tree" and m == "GET":
            rev, _, sub = tail.partition("/")
            return self._tree(self._repo(repo_type, repo_id, write=False), rev, sub, query)
        if verb == "paths-info" and m == "POST":
            return self._paths_info(self._repo(repo_type, repo_id, write=False), tail)
        raise HubError(404, f"no route for {m} /api/{repo_type}s/{repo_id}/{rest}")

    # --- endpoints ----------------------------------------------------------------------
    def _preupload(self, repo: Repo, rev: str) -> None:
        payload = json.loads(self._body())
        commit = repo.at(urllib.parse.unquote(rev))
        if commit is None:
            raise HubError(404, "Revision not found", "RevisionNotFound")
        files = []
        for f in payload.get("files", []):
            existing = commit.tree.get(f["path"])
            mode = "lfs" if f["size"] >= self.state.lfs_threshold else "regular"
            oid = None
            if existing is not None:
                oid = existing.lfs_sha256 if mode == "lfs" else existing.oid
            files.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self._json(200, {"files": files, "commitOid": commit.oid})

    def _commit(self, repo: Repo, rev: str) -> None:
        lines = [json.loads(x) for x in self._body().splitlines() if x.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "commit payload must start with a header line")
        header = lines[0]["value"]
        with self.state.lock:
            head = repo.head
            if header.get("parentCommit") and header["parentCommit"] != head.oid:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            tree = dict(head.tree)
            for item in lines[1:]:
                v = item["value"]
                if item["key"] == "file":
                    data = base64.b64decode(v["content"]) if v.get("encoding") == "base64" else v["content"].encode()
                    tree[v["path"]] = Entry(data, git_blob_sha1(data))
                elif item["key"] == "lfsFile":
                    data = self.state.lfs_objects.get(v["oid"])
                    if data is None:
                        raise HubError(400, f"LFS object {v['oid']} of {v['path']} was never uploaded")
                    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{v['oid']}\nsize {len(data)}\n"
                    tree[v["path"]] = Entry(data, git_blob_sha1(pointer.encode()), v["oid"])
                elif item["key"] == "deletedFile":
                    if tree.pop(v["path"], None) is None:
                        raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                elif item["key"] == "deletedFolder":
                    prefix = v["path"].rstrip("/") + "/"
                    for p in [p for p in tree if p.startswith(prefix)]:
                        del tree[p]
                else:
                    raise HubError(400, f"unknown commit operation {item['key']!r}")
            oid = hashlib.sha1(json.dumps([head.oid, sorted((p, e.oid) for p, e in tree.items()),
                                           time.time_ns()]).encode()).hexdigest()
            repo.commits.append(Commit(oid, head.oid, header.get("summary", ""), tree, _now()))
        # A fault "after" simulates a response lost on the way back: the commit has landed.
        self._fault("after")
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        self._json(200, {"success": True, "commitOid": oid,
                         "commitUrl": f"http://{self.headers.get('Host')}/{prefix}{repo.repo_id}/commit/{oid}",
                         "hookOutput": ""})

    @staticmethod
    def _file_info(path: str, e: Entry) -> dict:
        info: dict[str, Any] = {"type": "file", "path": path, "size": len(e.data), "oid": e.oid}
        if e.lfs_sha256:
            info["lfs"] = {"oid": e.lfs_sha256, "size": len(e.data), "pointerSize": 130}
        return info

    def _listing(self, commit: Commit, sub: str, recursive: bool) -> list[dict]:
        sub = sub.strip("/")
        prefix = sub + "/" if sub else ""
        if sub and sub in commit.tree:
            return [self._file_info(sub, commit.tree[sub])]
        out, dirs = [], set()
        for p in sorted(commit.tree):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):]
            parts = rest.split("/")
            for i in range(1, len(parts)):
                d = prefix + "/".join(parts[:i])
                if (recursive or i == 1) and d not in dirs:
                    dirs.add(d)
                    out.append({"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0})
            if recursive or len(parts) == 1:
                out.append(self._file_info(p, commit.tree[p]))
        if sub and not out:
            raise HubError(404, f"{sub} does not exist", "EntryNotFound")
        return out

    def _tree(self, repo: Repo, rev: str, sub: str, query: dict) -> None:
        commit = repo.at(urllib.parse.unquote(rev))
        if commit is None:
            raise HubError(404, "Revision not found", "RevisionNotFound")
        items = self._listing(commit, sub, query.get("recursive", ["false"])[0].lower() == "true")
        start = int(query.get("cursor", ["0"])[0])
        page = items[start:start + self.server.page_size]
        headers = {}
        if start + self.server.page_size < len(items):
            q = {k: v[0] for k, v in query.items()}
            q["cursor"] = str(start + self.server.page_size)
            url = f"http://{self.headers.get('Host')}{urllib.parse.urlsplit(self.path).path}?{urllib.parse.urlencode(q)}"
            headers["Link"] = f'<{url}>; rel="next"'
        self._json(200, page, headers)

    def _paths_info(self, repo: Repo, rev: str) -> None:
        body = self._body().decode()
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            paths = json.loads(body).get("paths", [])
        else:
            paths = urllib.parse.parse_qs(body).get("paths", [])
        commit = repo.at(urllib.parse.unquote(rev))
        if commit is None:
            raise HubError(404, "Revision not found", "RevisionNotFound")
        out = []
        for p in paths:
            if p in commit.tree:
                out.append(self._file_info(p, commit.tree[p]))
            elif any(q.startswith(p.rstrip("/") + "/") for q in commit.tree):
                out.append({"type": "directory", "path": p, "oid": hashlib.sha1(p.encode()).hexdigest(), "size": 0})
        self._json(200, out)

    def _resolve(self, repo_type: str, repo_id: str, rev: str, path: str) -> None:
        repo = self._repo(repo_type, repo_id, write=False)
        commit = repo.at(urllib.parse.unquote(rev))
        if commit is None:
            raise HubError(404, "Revision not found", "RevisionNotFound")
        e = commit.tree.get(path)
        if e is None:
            raise HubError(404, "Entry not found", "EntryNotFound")
        data = e.data
        etag = e.lfs_sha256 or e.oid
        headers = {"ETag": f'"{etag}"', "X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes"}
        status = 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            a, _, b = rng[6:].partition("-")
            start, end = int(a or 0), int(b) if b else len(data) - 1
            data = data[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{start + len(data) - 1}/{len(e.data)}"
            status = 206
        self._send(status, data, headers, content_type="application/octet-stream", head=self.command == "HEAD")

    # --- git LFS "basic" transfer ----------------------------------------------------------
    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        self._repo(repo_type, repo_id, write=True)
        req = json.loads(self._body())
        host = f"http://{self.headers.get('Host')}"
        objects = []
        for o in req.get("objects", []):
            entry: dict[str, Any] = {"oid": o["oid"], "size": o["size"]}
            with self.state.lock:
                have = o["oid"] in self.state.lfs_objects
            if not have:
                entry["actions"] = {"upload": {"href": f"{host}/lfs-upload/{o['oid']}"},
                                    "verify": {"href": f"{host}/lfs-verify/{o['oid']}"}}
            objects.append(entry)
        self._json(200, {"transfer": "basic", "objects": objects})

    def _lfs_put(self, oid: str) -> None:
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, "LFS object content does not match its oid")
        with self.state.lock:
            self.state.lfs_objects[oid] = data
        self._send(200, b"")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    page_size = 1000
    state: HubState


class HubServer:
    """Run the server on 127.0.0.1 in a background thread: ``with HubServer() as hub: hub.url``."""

    def __init__(self, tokens: dict[str, str] | None = None, lfs_threshold: int = 1 << 40, port: int = 0,
                 page_size: int = 1000):
        self.state = HubState(tokens, lfs_threshold)
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.state = self.state
        self._server.page_size = page_size
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubServer":
        self._thread = threading.Thread(target=self._server.serve_forever, name="hubserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- test helpers -------------------------------------------------------------------
    def inject(self, pattern: str, status: int | None = None, count: int = 1, headers: dict[str, str] | None = None,
               drop: str | None = None) -> None:
        """Fail the next ``count`` requests whose "METHOD path" matches ``pattern``: answer
        ``status`` (with ``headers``), or close the connection ``drop="before"`` the request takes
        effect or ``drop="after"`` it (commits only: the commit lands, the answer is lost)."""
        with self.state.lock:
            self.state.faults.append(Fault(re.compile(pattern), status, count, headers or {}, drop))

    def files(self, repo_id: str, repo_type: str = "dataset") -> dict[str, bytes]:
        with self.state.lock:
            return {p: e.data for p, e in self.state.repos[(repo_type, repo_id)].head.tree.items()}

    def put_file(self, repo_id: str, path: str, data: bytes, repo_type: str = "dataset") -> None:
        """Commit a file directly (e.g. a corrupt one) as another client would."""
        with self.state.lock:
            repo = self.state.repos[(repo_type, repo_id)]
            tree = dict(repo.head.tree)
            tree[path] = Entry(data, git_blob_sha1(data))
            repo.commits.append(Commit(hashlib.sha1(f"{path}{time.time_ns()}".encode()).hexdigest(),
                                       repo.head.oid, f"put {path}", tree, _now()))

    def commits(self, repo_id: str, repo_type: str = "dataset") -> list[Commit]:
        with self.state.lock:
            return list(self.state.repos[(repo_type, repo_id)].commits)

    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo | None:
        with self.state.lock:
            return self.state.repos.get((repo_type, repo_id))


if __name__ == "__main__":  # run standalone: python tests/hubserver.py [port]
    import sys
    srv = HubServer(port=int(sys.argv[1]) if len(sys.argv) > 1 else 0).start()
    print(srv.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()
