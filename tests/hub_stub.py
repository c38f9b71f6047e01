"""A local stand-in for the few Hugging Face Hub HTTP endpoints that push.py uses (create repo, branch,
preupload, commit, Space variables). It records what it receives; no test reaches the internet."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HubStub:
    def __init__(self, token: str, refuse: set[str] = frozenset()):
        self.token = token
        self.refuse = set(refuse)
        self.repos: dict[str, dict] = {}  # "model:user/name" -> {"private", "files": {path: bytes}, "branches"}
        self.variables: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                stub.requests.append(("GET", self.path))
                self.reply(404, {"error": "not found"})

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stub.requests.append(("POST", self.path))
                if self.headers.get("authorization") != f"Bearer {stub.token}":
                    return self.reply(401, {"error": "Invalid credentials in Authorization header"})
                self.reply(*stub.handle_post(self.path, body))

            def reply(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status >= 400:
                    self.send_header("X-Error-Message", payload.get("error", ""))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()

    def handle_post(self, path: str, body: bytes):
        if path == "/api/repos/create":
            spec = json.loads(body)
            repo_id = f"{spec.get('organization') or 'me'}/{spec['name']}"
            if repo_id in self.refuse:
                return 403, {"error": f"You don't have the rights to create {repo_id}"}
            kind = spec.get("type", "model")
            private = spec.get("private", spec.get("visibility") == "private")
            self.repos.setdefault(f"{kind}:{repo_id}", {"private": private, "files": {}, "branches": []})
            return 200, {"url": f"{self.url}/{'spaces/' if kind == 'space' else ''}{repo_id}"}
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
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    repo["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] == "lfsFile":
                    return 400, {"error": "the stub takes regular uploads only"}
            return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{'a' * 40}", "commitOid": "a" * 40}
        return 404, {"error": f"unknown action {action}"}
