"""A thin Hugging Face hub-compatible HTTP server over local git repositories, for the tests.

    python -m tests.hub_server ROOT --port N

ROOT/models/<org>/<name> and ROOT/datasets/<org>/<name> are git repositories (a branch, tags, commits); every
revision huggingface_hub names (branch, tag, full or short commit sha) is resolved by git. It answers what
`huggingface_hub.snapshot_download` and `datasets.load_dataset` request (repo info at a revision, file HEAD/GET
with the hub's X-Repo-Commit / ETag headers and byte ranges, tree listing, paths-info), and fails as the hub does:
unknown repo 401 RepoNotFound, unknown revision 404 RevisionNotFound, missing file 404 EntryNotFound.

ROOT/hub-server.json (read at every request, so a test may change it while the server runs) sets faults:
    {"access": {"models/org/x": {"kind": "gated" | "private", "token": "hf_..."}},
     "cut": {"models/org/x/model.safetensors": 100000}}
A gated repo lists its files to anyone but serves them only with `Authorization: Bearer <token>` (401 GatedRepo
without a token, 403 with another); a private one answers 401 RepoNotFound without the token. A `cut` file's
GET sends that many bytes (none to a resuming Range request), then drops the connection.

Why not an existing server: olah needs huggingface_hub>=1.27 (the project pins 1.21.0, optimum-intel <1.22) and
answers an unknown revision with 401 RepoNotFound and an unknown sha or missing file with 500; hf-local-hub's wheel
is a CLI around a Go binary it does not ship.

Binds 127.0.0.1 only; exits by itself when the process that started it is gone.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

REPO_TYPES = {"models": "models", "datasets": "datasets"}


class HubError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def git(repo: Path, *args: str, text: bool = True):
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=text)
    return proc.stdout if proc.returncode == 0 else None


class Repo:
    def __init__(self, path: Path, repo_id: str, key: str):
        self.path, self.repo_id, self.key = path, repo_id, key  # key: "models/org/name" in hub-server.json

    def commit(self, revision: str) -> str:
        sha = (
            None
            if revision.startswith("-")
            else git(self.path, "rev-parse", "--verify", "-q", f"{revision}^{{commit}}")
        )
        if not sha:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return sha.strip()

    def entries(self, commit: str, path: str = "", recursive: bool = True) -> list[dict]:
        """ls-tree of `path` (a folder) at a commit, as the hub's tree API lists it."""
        args = ["ls-tree", "-l", "-t"] + (["-r"] if recursive else []) + [commit]
        if path:
            args.append(path.rstrip("/") + "/")
        out = git(self.path, *args) or ""
        entries = []
        for line in out.splitlines():
            meta, name = line.split("\t", 1)
            _mode, kind, oid, size = meta.split()
            if kind == "tree":
                entries.append({"type": "directory", "oid": oid, "path": name})
            elif kind == "blob":
                entries.append({"type": "file", "oid": oid, "size": int(size), "path": name})
        return entries

    def blob(self, commit: str, path: str) -> tuple[str, bytes]:
        oid = git(self.path, "rev-parse", "--verify", "-q", f"{commit}:{path}")
        data = git(self.path, "cat-file", "blob", oid.strip(), text=False) if oid else None
        if data is None:
            raise HubError(404, "EntryNotFound", f"{path} does not exist at revision {commit}")
        return oid.strip(), data


class Handler(BaseHTTPRequestHandler):
    root: Path
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: the tests read the client's errors, not the access log
        pass

    def faults(self) -> dict:
        path = self.root / "hub-server.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def find_repo(self, repo_type: str, parts: list[str]) -> tuple[Repo, list[str]]:
        """The repository named by the first one or two path segments, and the segments after it."""
        for n in (2, 1):
            if len(parts) >= n and all(p not in ("", ".", "..") for p in parts[:n]):
                path = self.root / repo_type / Path(*parts[:n])
                if (path / ".git").exists():
                    repo_id = "/".join(parts[:n])
                    repo = Repo(path, repo_id, f"{repo_type}/{repo_id}")
                    access = self.faults().get("access", {}).get(repo.key)
                    if access and access["kind"] == "private" and not self.authorized(access):
                        break
                    return repo, parts[n:]
        raise HubError(401, "RepoNotFound", "Repository not found")

    def authorized(self, access: dict) -> bool:
        return self.headers.get("Authorization", "") == f"Bearer {access['token']}"

    def route(self, method: str) -> tuple[int, dict, bytes]:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        if parts == ["health"]:
            return 200, {}, b"ok"
        if parts[0] == "api" and len(parts) > 2 and parts[1] in REPO_TYPES:
            repo, rest = self.find_repo(parts[1], parts[2:])
            return self.api(method, parts[1], repo, rest, url.query)
        repo_type = "models"
        if parts[0] in REPO_TYPES:
            repo_type, parts = parts[0], parts[1:]
        repo, rest = self.find_repo(repo_type, parts)
        if len(rest) >= 3 and rest[0] == "resolve":
            return self.resolve(method, repo, rest[1], "/".join(rest[2:]))
        raise HubError(404, "EntryNotFound", f"no route for {url.path}")

    def api(self, method: str, repo_type: str, repo: Repo, rest: list[str], query: str) -> tuple[int, dict, bytes]:
        if len(rest) == 0 or (len(rest) == 2 and rest[0] == "revision"):
            commit = repo.commit(rest[1] if rest else "main")
            files = [e["path"] for e in repo.entries(commit) if e["type"] == "file"]
            info = {
                "_id": repo.repo_id,
                "id": repo.repo_id,
                "sha": commit,
                "private": False,
                "gated": "auto" if self.faults().get("access", {}).get(repo.key, {}).get("kind") == "gated" else False,
                "disabled": False,
                "tags": [],
                "siblings": [{"rfilename": f} for f in files],
            }
            return 200, {}, json.dumps(info).encode()
        if len(rest) >= 2 and rest[0] == "tree":
            commit = repo.commit(rest[1])
            path = "/".join(rest[2:]).strip("/")
            recursive = parse_qs(query).get("recursive", ["false"])[0].lower() == "true"
            if path and not repo.entries(commit, path, recursive=False):
                raise HubError(404, "EntryNotFound", f"{path} does not exist at revision {commit}")
            return 200, {}, json.dumps(repo.entries(commit, path, recursive)).encode()
        if len(rest) == 2 and rest[0] == "paths-info" and method == "POST":
            commit = repo.commit(rest[1])
            form = parse_qs(self.body().decode())
            wanted = {p.strip("/") for p in form.get("paths", [])}
            found = [e for e in repo.entries(commit) if e["path"] in wanted]
            return 200, {}, json.dumps(found).encode()
        if rest == ["refs"]:
            refs = {"branches": [], "tags": [], "converts": []}
            for line in (git(repo.path, "for-each-ref", "--format=%(refname) %(objectname)") or "").splitlines():
                name, _sha = line.split()
                for prefix, group in (("refs/heads/", "branches"), ("refs/tags/", "tags")):
                    if name.startswith(prefix):
                        refs[group].append(
                            {"name": name[len(prefix) :], "ref": name, "targetCommit": repo.commit(name)}
                        )
            return 200, {}, json.dumps(refs).encode()
        raise HubError(404, "EntryNotFound", f"no API route {'/'.join(rest)}")

    def resolve(self, method: str, repo: Repo, revision: str, path: str) -> tuple[int, dict, bytes]:
        access = self.faults().get("access", {}).get(repo.key)
        if access and access["kind"] == "gated" and not self.authorized(access):
            status = 403 if self.headers.get("Authorization") else 401
            raise HubError(status, "GatedRepo", f"Access to model {repo.repo_id} is restricted.")
        commit = repo.commit(revision)
        oid, data = repo.blob(commit, path)
        headers = {"X-Repo-Commit": commit, "ETag": f'"{oid}"', "Accept-Ranges": "bytes"}
        status, body = 200, data
        ranged = self.headers.get("Range", "")
        if method == "GET" and ranged.startswith("bytes="):
            start_s, _, end_s = ranged.removeprefix("bytes=").partition("-")
            start = int(start_s) if start_s else max(0, len(data) - int(end_s))
            end = min(int(end_s), len(data) - 1) if start_s and end_s else len(data) - 1
            if start >= len(data):
                return 416, {"Content-Range": f"bytes */{len(data)}"}, b""
            status, body = 206, data[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        cut = self.faults().get("cut", {}).get(f"{repo.key}/{path}")
        if method == "GET" and cut is not None:
            headers["X-Test-Cut"] = str(0 if ranged else cut)
        return status, headers, body

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def answer(self, method: str) -> None:
        try:
            status, headers, body = self.route(method)
        except HubError as e:
            status, body = e.status, json.dumps({"error": e.message}).encode()
            headers = {"X-Error-Code": e.code, "X-Error-Message": e.message}
        headers.setdefault(
            "Content-Type", "application/json" if body[:1] in (b"{", b"[") else "application/octet-stream"
        )
        cut = headers.pop("X-Test-Cut", None)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cut is not None:  # a connection dropped mid-file
            self.wfile.write(body[: int(cut)])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif method != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        self.answer("GET")

    def do_HEAD(self):
        self.answer("HEAD")

    def do_POST(self):
        self.answer("POST")


def git_repo(path: Path, commits: list[tuple[str, dict[str, bytes | None]]], branch: str = "main") -> dict[str, str]:
    """A git repository at `path`: each commit writes (or, for None, deletes) files; a message `tag:NAME` also
    tags the commit, `branch:NAME` first checks out a new branch. Returns {message or tag or branch: sha}."""
    path.mkdir(parents=True, exist_ok=True)

    def run(*args):
        subprocess.run(
            ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
            check=True,
            capture_output=True,
        )

    run("init", "-q", "-b", branch)
    shas = {}
    for message, files in commits:
        for word in message.split():
            if word.startswith("branch:"):
                run("checkout", "-q", "-b", word.removeprefix("branch:"))
        for name, data in files.items():
            if data is None:
                (path / name).unlink()
            else:
                (path / name).parent.mkdir(parents=True, exist_ok=True)
                (path / name).write_bytes(data)
        run("add", "-A")
        run("commit", "-q", "--allow-empty", "-m", message)
        sha = git(path, "rev-parse", "HEAD").strip()
        shas[message] = sha
        for word in message.split():
            if word.startswith("tag:"):
                run("tag", word.removeprefix("tag:"))
            if word.startswith(("tag:", "branch:")):
                shas[word.partition(":")[2]] = sha
    run("checkout", "-q", branch)
    return shas


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(root: Path, timeout: float = 20) -> tuple[subprocess.Popen, str]:
    """This server over `root` as a subprocess on a free 127.0.0.1 port, once it answers; returns (process, url)."""
    import sys
    import urllib.request

    port = free_port()
    log = (root / "hub-server.log").open("wb")  # unexpected server errors (tracebacks) land here
    proc = subprocess.Popen([sys.executable, __file__, str(root), "--port", str(port)], stdout=log, stderr=log)
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = (root / "hub-server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"hub server exited ({proc.returncode}): {tail}")
        try:
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"{url}/health", timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            if time.monotonic() > deadline:
                stop(proc)
                raise RuntimeError(f"hub server not answering on {url} after {timeout}s") from None
            time.sleep(0.1)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def exit_with_parent(parent: int) -> None:
    while True:
        time.sleep(1)
        if os.getppid() != parent:
            os._exit(0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    handler = type("RootHandler", (Handler,), {"root": args.root.resolve()})
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    server.daemon_threads = True
    threading.Thread(target=exit_with_parent, args=(os.getppid(),), daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
