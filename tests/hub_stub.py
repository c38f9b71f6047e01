"""A local stand-in for the few Hugging Face Hub HTTP endpoints that the recipe uses: to upload (create repo,
branch, preupload, commit, Space variables: push.py, the Trainer's `push_to_hub`, the end-of-run card) and to
download (repo info, the recursive file listing, each file: `snapshot_download` of `--resume hub`). Each commit
gets a new commit hash. It records what it receives; no test reaches the internet."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class Handler(BaseHTTPRequestHandler):
    """The HTTP side: each request is recorded and answered by the server's HubStub."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.stub.requests.append(("GET", self.path))
        self.answer(*self.server.stub.handle_get(self.path, self.headers.get("authorization")))

    def do_HEAD(self):
        self.server.stub.requests.append(("HEAD", self.path))
        self.answer(*self.server.stub.handle_get(self.path, self.headers.get("authorization")), body=False)

    def do_POST(self):
        stub, body = self.server.stub, self.rfile.read(int(self.headers.get("Content-Length") or 0))
        stub.requests.append(("POST", self.path))
        if self.headers.get("authorization") != f"Bearer {stub.token}":
            return self.reply(401, {"error": "Invalid credentials in Authorization header"})
        self.reply(*stub.handle_post(self.path, body))

    def answer(self, status, payload, headers=None, body=True):
        if not isinstance(payload, bytes):
            return self.reply(status, payload, headers, body)
        self.send(status, payload, {"Content-Length": str(len(payload)), **(headers or {})}, body)

    def reply(self, status, payload, headers=None, body=True):
        data = json.dumps(payload).encode()
        error = {"X-Error-Message": payload.get("error", "")} if status >= 400 else {}
        headers = {"Content-Type": "application/json", "Content-Length": str(len(data)), **error, **(headers or {})}
        self.send(status, data, headers, body)

    def send(self, status, data: bytes, headers: dict, body: bool):
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)


class HubStub:
    def __init__(self, token: str, refuse: set[str] = frozenset()):
        self.token = token
        self.refuse = set(refuse)
        self.repos: dict[str, dict] = {}  # "model:user/name" -> {"private", "files": {path: bytes}, "branches", "sha"}
        self.variables: dict[str, dict] = {}
        self.commits: list[tuple[str, str]] = []  # (repo id, commit message), in order
        self.requests: list[tuple[str, str]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.stub = self
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()

    def handle_post(self, path: str, body: bytes):
        if path == "/api/repos/create":
            return self.create_repo(json.loads(body))
        if path == "/api/validate-yaml":
            return 200, {}
        parts = path.split("/")  # /api/{kind}s/{user}/{name}/{action}/{revision}
        if len(parts) < 6 or parts[1] != "api":
            return 404, {"error": f"unknown endpoint {path}"}
        kind, repo_id, action = parts[2][:-1], f"{parts[3]}/{parts[4]}", parts[5]
        repo = self.repos.get(f"{kind}:{repo_id}")
        if repo is None:
            return 404, {"error": f"Repository {repo_id} not found"}
        if action == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        if action == "branch":
            repo["branches"].append(parts[6])
            return 200, {}
        if action == "variables":
            self.variables.setdefault(repo_id, {}).update({json.loads(body)["key"]: json.loads(body)["value"]})
            return 200, {}
        if action == "commit":
            return self.commit(repo_id, repo, body)
        return 404, {"error": f"unknown action {action}"}

    def create_repo(self, spec: dict):
        repo_id = f"{spec.get('organization') or 'me'}/{spec['name']}"
        if repo_id in self.refuse:
            return 403, {"error": f"You don't have the rights to create {repo_id}"}
        kind = spec.get("type", "model")
        private = spec.get("private", spec.get("visibility") == "private")
        self.repos.setdefault(f"{kind}:{repo_id}", {"private": private, "files": {}, "branches": [], "sha": "0" * 40})
        return 200, {"url": f"{self.url}/{'spaces/' if kind == 'space' else ''}{repo_id}"}

    def commit(self, repo_id: str, repo: dict, body: bytes):
        for line in body.decode().splitlines():
            item = json.loads(line)
            if item["key"] == "header":
                self.commits.append((repo_id, item["value"]["summary"]))
            elif item["key"] == "file":
                repo["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] == "lfsFile":
                return 400, {"error": "the stub takes regular uploads only"}
        repo["sha"] = hashlib.sha1(repo["sha"].encode() + body).hexdigest()
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{repo['sha']}", "commitOid": repo["sha"]}

    def handle_get(self, path: str, authorization: str | None):
        """Repo info (`/api/models/u/n/revision/main`), the recursive listing (`/api/models/u/n/tree/main`) and
        a file (`/u/n/resolve/<revision>/<path>`, HEAD or GET). A private repo answers only to the token."""
        parts = [unquote(p) for p in urlparse(path).path.split("/")]
        api = parts[1] == "api"
        if len(parts) < (6 if api else 5):
            return 404, {"error": f"unknown endpoint {path}"}
        kind, (user, name) = (parts[2][:-1], parts[3:5]) if api else ("model", parts[1:3])
        repo = self.repos.get(f"{kind}:{user}/{name}")
        if repo is None or (repo["private"] and authorization != f"Bearer {self.token}"):
            return 404, {"error": f"Repository {user}/{name} not found"}, {"X-Error-Code": "RepoNotFound"}
        files, sha = repo["files"], repo["sha"]
        if api and parts[5] == "revision":
            siblings = [{"rfilename": p} for p in sorted(files)]
            return 200, {"id": f"{user}/{name}", "sha": sha, "private": repo["private"], "siblings": siblings}
        if api and parts[5] == "tree":
            return 200, [
                {"type": "file", "path": p, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                for p, data in sorted(files.items())
            ]
        if not api and parts[3] == "resolve" and "/".join(parts[5:]) in files:
            data = files["/".join(parts[5:])]
            return 200, data, {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
        return 404, {"error": f"Entry not found: {path}"}, {"X-Error-Code": "EntryNotFound"}
