"""The Kubernetes API from inside a Function's Pod, with the standard library only.

The Pod's ServiceAccount is the identity: its token and the cluster's CA are where the kubelet
(here localkube's node agent) mounts them, ``/var/run/secrets/kubernetes.io/serviceaccount``, and
the API's address is ``KUBERNETES_SERVICE_HOST``/``_PORT``. Nothing else is read: no kubeconfig,
no client library. Errors carry the API's own ``Status`` message, never a request body (a Secret's
data must not reach a log through an error).
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TIMEOUT_SECONDS = 60.0


class ApiError(Exception):
    """A request the API answered with an error (``status``: the HTTP code, 0 when unreachable)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason

    @property
    def not_found(self) -> bool:
        return self.status == 404


@dataclass(frozen=True)
class Connection:
    """Where the API is and who we are: the server URL, a bearer token and the CA that signed the server."""

    server: str
    token: str
    ca_file: str | None

    @classmethod
    def in_cluster(cls, sa_dir: str = SERVICE_ACCOUNT_DIR) -> "Connection":
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise ApiError(0, "NoCluster", "KUBERNETES_SERVICE_HOST/PORT are not set: not running in a Pod "
                                           "(give --api-server and --token-file)")
        return cls.from_files(f"https://{_bracket(host)}:{port}", os.path.join(sa_dir, "token"),
                              os.path.join(sa_dir, "ca.crt"))

    @classmethod
    def from_files(cls, server: str, token_file: str, ca_file: str | None) -> "Connection":
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as exc:
            raise ApiError(0, "NoToken", f"cannot read the ServiceAccount token {token_file}: {exc.strerror} "
                                         "(does the Pod mount its ServiceAccount's token?)") from None
        if not token:
            raise ApiError(0, "NoToken", f"the ServiceAccount token {token_file} is empty")
        return cls(server.rstrip("/"), token, ca_file if ca_file and os.path.exists(ca_file) else None)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class Api:
    """JSON requests against one API server."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._context = ssl.create_default_context(cafile=connection.ca_file) if connection.ca_file \
            else ssl.create_default_context()

    def request(self, method: str, path: str, *, query: dict[str, str] | None = None, body: Any = None,
                content_type: str = "application/json") -> Any:
        url = self.connection.server + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {self.connection.token}", "Accept": "application/json",
            **({"Content-Type": content_type} if data is not None else {})})
        try:
            with urllib.request.urlopen(req, context=self._context, timeout=TIMEOUT_SECONDS) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise _status_error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(0, "Unreachable", f"cannot reach the API server {self.connection.server}: {reason}") from None
        return json.loads(raw) if raw else None

    def get(self, path: str, **query: str) -> Any:
        return self.request("GET", path, query=query or None)

    def list_all(self, path: str, **query: str) -> list[dict[str, Any]]:
        """Every item of a list, page by page (``limit``/``continue``)."""
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            page = self.get(path, limit="500", **({"continue": token} if token else {}), **query)
            items += page.get("items") or []
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return items

    def apply(self, path: str, obj: dict[str, Any], *, manager: str, force: bool, dry_run: bool) -> Any:
        """Server-side apply (``PATCH`` with ``application/apply-patch+yaml``; JSON is YAML)."""
        query = {"fieldManager": manager, "force": "true" if force else "false"}
        if dry_run:
            query["dryRun"] = "All"
        return self.request("PATCH", path, query=query, body=obj, content_type="application/apply-patch+yaml")


def _status_error(exc: urllib.error.HTTPError) -> ApiError:
    """The API's ``Status`` (its message and reason), else the HTTP line."""
    try:
        status = json.loads(exc.read() or b"{}")
    except ValueError:
        status = {}
    message = status.get("message") if isinstance(status, dict) else None
    reason = status.get("reason") if isinstance(status, dict) else None
    return ApiError(exc.code, reason or exc.reason or "", message or f"HTTP {exc.code} {exc.reason}")
