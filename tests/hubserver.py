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
    GET  /api/{type}s/{ns}/{name}/commits/{rev}          history (paginated with Link)
    GET/POST /api/{type}s/{ns}/{name}/discussions        list (type, status, author, p) / open one
    GET  /api/{type}s/{ns}/{name}/discussions/{num}      details (events, changes.base, diff)
    POST /api/{type}s/{ns}/{name}/discussions/{num}/{comment|status|merge}

Pull requests work as on the Hub: ``commit/main?create_pr=1`` opens discussion N with the ref
``refs/pr/N`` (branched from main's head) and answers ``pullRequestUrl``; a commit to
``refs/pr/N`` (URL-encoded, as the client sends it) appends to an open PR (its author or a
writer of the repo); ``merge`` squashes the PR's changes onto main as one commit titled
``<title> (#N)`` (writers only; refused when closed or already merged, 409 when a changed file
changed on main too). Every revision argument (tree, paths-info, resolve, repo info, commits)
accepts ``refs/pr/N``. ``tree?expand=true`` and ``paths-info`` with ``expand`` give each file's
``lastCommit`` (id, title, date) on that revision.

Upload modes: ``preupload`` answers ``regular`` below ``lfs_threshold`` bytes (the file travels
base64 inside the commit, as the Hub does for small files) and ``lfs`` at or above it. The
server does not speak the Xet protocol: with ``lfs`` the client must take its HTTP LFS path,
which huggingface_hub 2.x does when ``HF_HUB_DISABLE_XET=1`` (the default threshold is so
high that the tests never need it).

Everything is in memory and guarded by one lock, so commits are serialised like on the Hub;
``parentCommit`` that is not the head answers 412. ``tokens`` (token -> user name, or token ->
``(user, role)`` with role ``"write"`` or ``"read"``) turns on authentication: an unknown token
answers 401 "Invalid credentials in Authorization header". Who may write: the repo's creator
and its namespace (``Repo.writers``), with a write token. Anyone else (another user, or a read
token) gets the Hub's 403 "Forbidden: pass `create_pr=1` as a query parameter to create a Pull
Request" on a commit to a branch, and may open a pull request on a public repo.
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
    author: str = "user"
    changed: frozenset = frozenset()  # paths added, modified or deleted relative to the parent


def _changed(before: dict[str, Entry], after: dict[str, Entry]) -> frozenset:
    return frozenset({p for p, e in after.items() if p not in before or before[p].oid != e.oid}
                     | {p for p in before if p not in after})


@dataclass
class Discussion:
    """A discussion or pull request (``is_pr``); a PR's commits form the ref ``refs/pr/<num>``."""
    num: int
    title: str
    author: str
    created: str
    is_pr: bool
    status: str = "open"  # open | draft | closed | merged
    base: str | None = None  # the main commit the PR branched from
    commits: list[Commit] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    merge_commit: str | None = None

    @property
    def head(self) -> Commit | None:
        return self.commits[-1] if self.commits else None


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    owner: str
    created: str
    commits: list[Commit] = field(default_factory=list)  # main's history, oldest first
    writers: set[str] = field(default_factory=set)
    discussions: list[Discussion] = field(default_factory=list)  # number N is discussions[N - 1]

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def pr(self, rev: str) -> Discussion | None:
        m = re.fullmatch(r"refs/pr/(\d+)", rev)
        if not m or not 0 < int(m.group(1)) <= len(self.discussions):
            return None
        d = self.discussions[int(m.group(1)) - 1]
        return d if d.is_pr else None

    def history(self, rev: str) -> list[Commit] | None:
        """The commits reachable from a branch or PR ref, oldest first."""
        if rev in ("main", "refs/heads/main", "HEAD"):
            return self.commits
        d = self.pr(rev)
        if d is not None:
            base = [c for c in self.commits if c.oid == d.base]
            idx = self.commits.index(base[0]) if base else -1
            return self.commits[:idx + 1] + d.commits
        return None

    def at(self, rev: str) -> Commit | None:
        if rev in ("main", "refs/heads/main", "HEAD"):
            return self.head
        if rev.startswith("refs/pr/"):
            d = self.pr(rev)
            return d.head if d is not None else None
        for c in self.commits + [c for d in self.discussions for c in d.commits]:
            if c.oid == rev or (len(rev) >= 7 and c.oid.startswith(rev)):
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


def _split_rev(tail: str) -> tuple[str, str]:
    """``<rev>/<path>`` -> (rev, path), where the revision may itself hold slashes (``refs/pr/3``,
    ``refs/heads/main``): the client URL-encodes it, and the router decodes the whole path."""
    m = re.match(r"^(refs/pr/\d+|refs/heads/[^/]+|refs/convert/[^/]+)(?:/(.*))?$", tail)
    if m:
        return m.group(1), m.group(2) or ""
    rev, _, rest = tail.partition("/")
    return rev, rest


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
        if getattr(self, "_body_read", False):
            return b""
        self._body_read = True
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

    def _auth(self, required: bool) -> tuple[str | None, str]:
        """(user, role) of the caller's token; role is "write" or "read"."""
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else None
        if self.state.tokens is None:
            return "user", "write"
        if token is None:
            if required:
                raise HubError(401, "You must be authenticated to perform this action")
            return None, "read"
        if token not in self.state.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        who = self.state.tokens[token]
        return (who, "write") if isinstance(who, str) else (who[0], who[1])

    def _user(self, required: bool) -> str | None:
        return self._auth(required)[0]

    def _can_write(self, repo: "Repo") -> bool:
        """May the caller commit to the repo's branches, merge and close its PRs?"""
        if self.state.tokens is None:
            return True
        user, role = self._auth(required=False)
        return role == "write" and user is not None and (user in repo.writers or user == repo.owner)

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
        self._body_read = False
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
            self._body()  # an unread request body would be parsed as the next request on this connection
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
            user, role = self._auth(required=True)
            return self._json(200, {"type": "user", "name": user, "fullname": user, "orgs": [],
                                    "auth": {"accessToken": {"role": role}}})
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
        res = re.match(r"^/(?:(datasets|spaces)/)?([^/]+)/([^/]+)/resolve/(.+)$", path)
        if res and m in ("GET", "HEAD"):
            rev, file = _split_rev(res.group(4))
            return self._resolve((res.group(1) or "models")[:-1], f"{res.group(2)}/{res.group(3)}", rev, file)
        raise HubError(404, f"no route for {m} {path}")

    def _repo(self, repo_type: str, repo_id: str, write: bool, rev: str = "main", create_pr: bool = False) -> Repo:
        """The repo, if the caller may see it; with ``write``, if the caller may write to ``rev``:
        a branch needs write access (else the Hub's 403 pointing at ``create_pr=1``); opening a PR
        needs a login; a PR's ref needs its author or a writer."""
        user = self._user(required=write)
        with self.state.lock:
            repo = self.state.repos.get((repo_type, repo_id))
        open_server = self.state.tokens is None  # without tokens every caller may do everything
        if repo is None or (repo.private and not open_server and user != repo.owner and user not in repo.writers):
            raise HubError(404, "Repository not found", "RepoNotFound")
        if write and not self._can_write(repo):
            pr = repo.pr(rev)
            if create_pr and not repo.private:
                return repo
            if pr is not None and pr.author == user:
                return repo
            raise HubError(403, "Forbidden: pass `create_pr=1` as a query parameter to create a Pull Request")
        return repo

    def _create_repo(self, payload: dict) -> None:
        user, role = self._auth(required=True)
        repo_type = payload.get("type") or "model"
        name, org = payload.get("name"), payload.get("organization")
        if repo_type not in REPO_TYPES or not name or not re.match(r"^[\w.-]+$", name):
            raise HubError(400, f"invalid repo name {name!r}")
        repo_id = f"{org or user}/{name}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        if self.state.tokens is not None and (role != "write" or (org and org != user)):
            # As on the Hub: create_repo(exist_ok=True) then checks that the repo exists (repo_info).
            raise HubError(403, f"You don't have the rights to create a repo under the namespace {org or user}")
        with self.state.lock:
            if (repo_type, repo_id) in self.state.repos:
                # Like the Hub, a 409 still carries the repo url (create_repo(exist_ok=True) reads it).
                prefix = "" if repo_type == "model" else f"{repo_type}s/"
                return self._json(409, {"error": "You already created this repo",
                                        "url": f"http://{self.headers.get('Host')}/{prefix}{repo_id}"},
                                  {"X-Error-Message": "You already created this repo"})
            repo = Repo(repo_type, repo_id, private, org or user, _now(), writers={user, org or user})
            gitattributes = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"
            tree = {".gitattributes": Entry(gitattributes, git_blob_sha1(gitattributes))}
            repo.commits.append(Commit(hashlib.sha1(f"{repo_id}{time.time_ns()}".encode()).hexdigest(),
                                       None, "initial commit", tree, _now(), user, frozenset(tree)))
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
        create_pr = query.get("create_pr", ["0"])[0] in ("1", "true", "True")
        if verb == "preupload" and m == "POST":
            return self._preupload(self._repo(repo_type, repo_id, write=True, rev=tail, create_pr=create_pr), tail)
        if verb == "commit" and m == "POST":
            return self._commit(self._repo(repo_type, repo_id, write=True, rev=tail, create_pr=create_pr), tail,
                                create_pr)
        if verb == "tree" and m == "GET":
            rev, sub = _split_rev(tail)
            return self._tree(self._repo(repo_type, repo_id, write=False), rev, sub, query)
        if verb == "paths-info" and m == "POST":
            return self._paths_info(self._repo(repo_type, repo_id, write=False), tail)
        if verb == "commits" and m == "GET":
            return self._commits(self._repo(repo_type, repo_id, write=False), tail, query)
        if verb == "discussions":
            return self._discussions(self._repo(repo_type, repo_id, write=False), tail, query)
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

    def _commit(self, repo: Repo, rev: str, create_pr: bool = False) -> None:
        lines = [json.loads(x) for x in self._body().splitlines() if x.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "commit payload must start with a header line")
        header = lines[0]["value"]
        user = self._user(required=False) or "user"
        with self.state.lock:
            pr = repo.pr(rev)
            if rev.startswith("refs/pr/") and pr is None:
                raise HubError(404, "Revision not found", "RevisionNotFound")
            if pr is not None and pr.status not in ("open", "draft"):
                raise HubError(403, f"Pull request #{pr.num} is {pr.status}: it cannot receive commits")
            if pr is None and rev not in ("main", "refs/heads/main"):
                raise HubError(404, "Revision not found", "RevisionNotFound")
            if create_pr and pr is not None:
                raise HubError(400, "create_pr=1 opens a pull request against a branch, not against a PR ref")
            head = pr.head if pr is not None else repo.head
            if create_pr and header.get("parentCommit"):
                head = repo.at(header["parentCommit"]) or head  # a PR may branch from an older commit
            elif header.get("parentCommit") and header["parentCommit"] != head.oid:
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
            commit = Commit(oid, head.oid, header.get("summary", ""), tree, _now(), user, _changed(head.tree, tree))
            pr_url = None
            if create_pr:
                pr = Discussion(len(repo.discussions) + 1, header.get("summary") or "Upload files", user, _now(),
                                is_pr=True, base=head.oid)
                description = header.get("description") or ""
                pr.events.append(self._event("comment", user, {"raw": description}))
                repo.discussions.append(pr)
            if pr is not None:
                pr.commits.append(commit)
                pr.events.append(self._event("commit", user, {"subject": commit.summary, "oid": oid}))
                pr_url = self._discussion_url(repo, pr.num)
            else:
                repo.commits.append(commit)
        # A fault "after" simulates a response lost on the way back: the commit has landed.
        self._fault("after")
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        answer = {"success": True, "commitOid": oid,
                  "commitUrl": f"http://{self.headers.get('Host')}/{prefix}{repo.repo_id}/commit/{oid}",
                  "hookOutput": ""}
        if create_pr:
            answer["pullRequestUrl"] = pr_url
        self._json(200, answer)

    # --- discussions and pull requests ---------------------------------------------------
    def _discussion_url(self, repo: Repo, num: int) -> str:
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return f"http://{self.headers.get('Host')}/{prefix}{repo.repo_id}/discussions/{num}"

    @staticmethod
    def _event(kind: str, author: str, data: dict) -> dict:
        if kind == "comment":
            raw = data["raw"]
            data = {"edited": False, "hidden": False, "numEdits": 0, "editors": [author],
                    "latest": {"raw": raw, "html": f"<p>{raw}</p>", "updatedAt": _now(), "author": {"name": author}},
                    "history": []}
        return {"id": hashlib.sha1(f"{kind}{author}{time.time_ns()}".encode()).hexdigest()[:24], "type": kind,
                "createdAt": _now(), "author": {"name": author}, "data": data}

    @staticmethod
    def _summary(repo: Repo, d: Discussion) -> dict:
        return {"num": d.num, "title": d.title, "author": {"name": d.author}, "createdAt": d.created,
                "status": d.status, "isPullRequest": d.is_pr, "repo": {"name": repo.repo_id, "type": repo.repo_type},
                "numComments": sum(e["type"] == "comment" for e in d.events), "pinned": False, "topReactions": []}

    def _discussion(self, repo: Repo, num_text: str) -> Discussion:
        if not num_text.isdigit() or not 0 < int(num_text) <= len(repo.discussions):
            raise HubError(404, "Discussion not found")
        return repo.discussions[int(num_text) - 1]

    def _pr_changes(self, repo: Repo, d: Discussion) -> tuple[dict[str, Entry | None], list[str]]:
        """A PR's changes relative to its base (path -> new entry, None = deleted) and the paths
        that also changed on main since the base, to something else (merge conflicts)."""
        base = repo.at(d.base) if d.base else None
        base_tree = base.tree if base is not None else {}
        head_tree = d.head.tree if d.head is not None else base_tree
        changes: dict[str, Entry | None] = {p: head_tree.get(p) for p in _changed(base_tree, head_tree)}
        def oid(e: Entry | None) -> str | None:
            return e.oid if e is not None else None
        main = repo.head.tree
        conflicts = sorted(p for p, e in changes.items()
                           if oid(main.get(p)) != oid(base_tree.get(p)) and oid(main.get(p)) != oid(e))
        return changes, conflicts

    def _discussions(self, repo: Repo, tail: str, query: dict) -> None:
        m = self.command
        num_text, _, action = tail.partition("/")
        if not num_text:
            if m == "POST":  # open a discussion or an (empty, draft) pull request
                user = self._user(required=True)
                payload = json.loads(self._body() or b"{}")
                title = (payload.get("title") or "").strip()
                if len(title) < 3:
                    raise HubError(400, "title must be at least 3 characters long")
                with self.state.lock:
                    is_pr = bool(payload.get("pullRequest"))
                    d = Discussion(len(repo.discussions) + 1, title, user, _now(), is_pr=is_pr,
                                   status="draft" if is_pr else "open", base=repo.head.oid if is_pr else None)
                    d.events.append(self._event("comment", user, {"raw": payload.get("description") or ""}))
                    repo.discussions.append(d)
                return self._json(200, {"num": d.num, "url": self._discussion_url(repo, d.num)})
            if m != "GET":
                raise HubError(405, "method not allowed")
            kind = query.get("type", ["all"])[0]
            status = query.get("status", ["all"])[0]
            author = query.get("author", [None])[0]
            page = int(query.get("p", ["0"])[0])
            with self.state.lock:
                found = [d for d in reversed(repo.discussions)  # newest first, as the Hub lists them
                         if (kind == "all" or (kind == "pull_request") == d.is_pr)
                         and (status == "all" or (status == "open") == (d.status in ("open", "draft")))
                         and (author is None or d.author == author)]
                start = page * self.server.discussions_page_size
                chunk = found[start:start + self.server.discussions_page_size]
                body = {"discussions": [self._summary(repo, d) for d in chunk], "count": len(found), "start": start,
                        "numClosedDiscussions": sum(d.status in ("closed", "merged") for d in repo.discussions)}
            return self._json(200, body)
        d = self._discussion(repo, num_text)
        if not action and m == "GET":
            with self.state.lock:
                body = self._summary(repo, d)
                body["events"] = list(d.events)
                if d.is_pr:
                    changes, conflicts = self._pr_changes(repo, d)
                    body["changes"] = {"base": "refs/heads/main", **({"mergeCommitId": d.merge_commit}
                                                                    if d.merge_commit else {})}
                    body["filesWithConflicts"] = conflicts if d.status in ("open", "draft") else []
                    body["diff"] = "".join(f"diff --git a/{p} b/{p}\n" + ("deleted file\n" if e is None else "")
                                           for p, e in sorted(changes.items()))
            return self._json(200, body)
        if m != "POST":
            raise HubError(405, "method not allowed")
        payload = json.loads(self._body() or b"null") or {}
        user = self._user(required=True)
        if action == "comment":
            text = (payload.get("comment") or "").strip()
            if not text:
                raise HubError(400, "comment must not be empty")
            with self.state.lock:
                event = self._event("comment", user, {"raw": text})
                d.events.append(event)
            return self._json(200, {"newMessage": event})
        if action == "status":
            status = payload.get("status")
            if status not in ("open", "closed"):
                raise HubError(400, "status must be open or closed")
            if user != d.author and not self._can_write(repo):
                raise HubError(403, "Only the author or a writer of the repo can change the status")
            with self.state.lock:
                if d.status == "merged":
                    raise HubError(400, "This pull request is already merged")
                d.status = status
                event = self._event("status-change", user, {"status": status})
                d.events.append(event)
                if payload.get("comment"):
                    d.events.append(self._event("comment", user, {"raw": payload["comment"]}))
            return self._json(200, {"newStatus": event})
        if action == "merge":
            if not d.is_pr:
                raise HubError(400, "This discussion is not a pull request")
            if not self._can_write(repo):
                raise HubError(403, "You don't have the rights to merge pull requests on this repository")
            with self.state.lock:
                if d.status not in ("open", "draft"):
                    raise HubError(400, f"This pull request is {d.status}: it cannot be merged")
                changes, conflicts = self._pr_changes(repo, d)
                if conflicts:
                    raise HubError(409, "Cannot merge: conflicts in " + ", ".join(conflicts[:10]))
                tree = dict(repo.head.tree)
                for p, e in changes.items():
                    if e is None:
                        tree.pop(p, None)
                    else:
                        tree[p] = e
                oid = hashlib.sha1(json.dumps([repo.head.oid, d.num, time.time_ns()]).encode()).hexdigest()
                # The Hub squashes a PR into one commit on main, titled "<PR title> (#N)".
                repo.commits.append(Commit(oid, repo.head.oid, f"{d.title} (#{d.num})", tree, _now(), d.author,
                                           _changed(repo.head.tree, tree)))
                d.status, d.merge_commit = "merged", oid
                d.events.append(self._event("status-change", user, {"status": "merged"}))
                if payload.get("comment"):
                    d.events.append(self._event("comment", user, {"raw": payload["comment"]}))
            return self._json(200, {"success": True, "mergeCommitId": oid})
        raise HubError(404, f"no route for POST discussions/{tail}")

    def _commits(self, repo: Repo, rev: str, query: dict) -> None:
        history = repo.history(urllib.parse.unquote(rev or "main"))
        if history is None:
            raise HubError(404, "Revision not found", "RevisionNotFound")
        items = [{"id": c.oid, "title": c.summary, "message": "", "date": c.date,
                  "authors": [{"user": c.author}]} for c in reversed(history)]
        self._paged(items, query, 50)

    def _paged(self, items: list, query: dict, page_size: int) -> None:
        start = int(query.get("cursor", ["0"])[0])
        page = items[start:start + page_size]
        headers = {}
        if start + page_size < len(items):
            q = {k: v[0] for k, v in query.items()}
            q["cursor"] = str(start + page_size)
            here = urllib.parse.urlsplit(self.path).path
            url = f"http://{self.headers.get('Host')}{here}?{urllib.parse.urlencode(q)}"
            headers["Link"] = f'<{url}>; rel="next"'
        self._json(200, page, headers)

    @staticmethod
    def _file_info(path: str, e: Entry, last: "Commit | None" = None) -> dict:
        info: dict[str, Any] = {"type": "file", "path": path, "size": len(e.data), "oid": e.oid}
        if e.lfs_sha256:
            info["lfs"] = {"oid": e.lfs_sha256, "size": len(e.data), "pointerSize": 130}
        if last is not None:
            info["lastCommit"] = {"id": last.oid, "title": last.summary, "date": last.date}
        return info

    @staticmethod
    def _last_commits(repo: Repo, rev: str, paths: set[str]) -> dict[str, Commit]:
        """The newest commit on ``rev`` that changed each path (what ``expand=true`` reports)."""
        out: dict[str, Commit] = {}
        todo = set(paths)
        for c in reversed(repo.history(rev) or []):
            hit = todo & c.changed
            for p in hit:
                out[p] = c
            todo -= hit
            if not todo:
                break
        return out

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
        rev = urllib.parse.unquote(rev)
        with self.state.lock:
            commit = repo.at(rev)
            if commit is None:
                raise HubError(404, "Revision not found", "RevisionNotFound")
            items = self._listing(commit, sub, query.get("recursive", ["false"])[0].lower() == "true")
            expand = query.get("expand", ["false"])[0].lower() == "true"
            if expand:  # the Hub pages expanded listings by 50
                last = self._last_commits(repo, rev, {i["path"] for i in items if i["type"] == "file"})
                items = [self._file_info(i["path"], commit.tree[i["path"]], last.get(i["path"]))
                         if i["type"] == "file" else i for i in items]
        self._paged(items, query, min(50, self.server.page_size) if expand else self.server.page_size)

    def _paths_info(self, repo: Repo, rev: str) -> None:
        body = self._body().decode()
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            form = json.loads(body)
            paths, expand = form.get("paths", []), bool(form.get("expand"))
        else:
            form = urllib.parse.parse_qs(body)
            paths, expand = form.get("paths", []), form.get("expand", ["False"])[0].lower() == "true"
        rev = urllib.parse.unquote(rev)
        with self.state.lock:
            commit = repo.at(rev)
            if commit is None:
                raise HubError(404, "Revision not found", "RevisionNotFound")
            last = self._last_commits(repo, rev, {p for p in paths if p in commit.tree}) if expand else {}
        out = []
        for p in paths:
            if p in commit.tree:
                out.append(self._file_info(p, commit.tree[p], last.get(p)))
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
        # Any logged-in user who can see the repo may upload objects (for a PR); a commit decides.
        self._user(required=True)
        self._repo(repo_type, repo_id, write=False)
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
    discussions_page_size = 50
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
                                       repo.head.oid, f"put {path}", tree, _now(), "user", frozenset({path})))

    def commits(self, repo_id: str, repo_type: str = "dataset") -> list[Commit]:
        with self.state.lock:
            return list(self.state.repos[(repo_type, repo_id)].commits)

    def pr_files(self, repo_id: str, num: int, repo_type: str = "dataset") -> dict[str, bytes]:
        """The files at ``refs/pr/<num>``."""
        with self.state.lock:
            head = self.state.repos[(repo_type, repo_id)].at(f"refs/pr/{num}")
            return {p: e.data for p, e in head.tree.items()} if head is not None else {}

    def discussions(self, repo_id: str, repo_type: str = "dataset") -> list[Discussion]:
        with self.state.lock:
            return list(self.state.repos[(repo_type, repo_id)].discussions)

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
