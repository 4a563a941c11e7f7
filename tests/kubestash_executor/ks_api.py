"""A small Kubernetes API client on the standard library, as the executor's Pod sees the API.

In a Pod it uses the ServiceAccount's mounted credentials (``/var/run/secrets/kubernetes.io/
serviceaccount``) and ``KUBERNETES_SERVICE_HOST/PORT``, as client-go's in-cluster config does, so
RBAC is the Pod's ServiceAccount's. ``--kubeconfig``/``--master`` are honoured like
``clientcmd.BuildConfigFromFlags`` (a kubeconfig needs PyYAML unless it is JSON)."""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class ApiError(Exception):
    """An API call that failed: the HTTP status and the apiserver's message (never a request body)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Kube:
    def __init__(self, server: str, context: ssl.SSLContext, headers: dict[str, str]) -> None:
        self.server = server.rstrip("/")
        self.context = context
        self.headers = headers

    @classmethod
    def connect(cls, kubeconfig: str = "", master: str = "") -> "Kube":
        if kubeconfig:
            return cls._from_kubeconfig(kubeconfig, master)
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise ApiError(0, "unable to load in-cluster configuration, KUBERNETES_SERVICE_HOST and "
                              "KUBERNETES_SERVICE_PORT must be defined")
        try:
            with open(os.path.join(SA_DIR, "token")) as f:
                token = f.read().strip()
        except OSError as e:
            raise ApiError(0, f"unable to load in-cluster configuration: {e.strerror}: {SA_DIR}/token") from None
        ctx = ssl.create_default_context(cafile=os.path.join(SA_DIR, "ca.crt"))
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return cls(master or f"https://{host}:{port}", ctx, {"Authorization": f"Bearer {token}"})

    @classmethod
    def _from_kubeconfig(cls, path: str, master: str) -> "Kube":
        text = open(path).read()
        try:
            cfg = json.loads(text)
        except ValueError:
            import yaml  # only for a YAML kubeconfig given by --kubeconfig

            cfg = yaml.safe_load(text)
        ctx_name = cfg.get("current-context")
        context = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in cfg["users"] if u["name"] == context["user"])
        ssl_ctx = ssl.create_default_context()
        if cluster.get("certificate-authority-data"):
            ssl_ctx.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
        elif cluster.get("certificate-authority"):
            ssl_ctx.load_verify_locations(cafile=cluster["certificate-authority"])
        headers = {}
        if user.get("token"):
            headers["Authorization"] = f"Bearer {user['token']}"
        cert, key = user.get("client-certificate"), user.get("client-key")
        if user.get("client-certificate-data"):
            d = tempfile.mkdtemp(prefix="kube-")
            cert, key = os.path.join(d, "c.crt"), os.path.join(d, "c.key")
            with open(cert, "wb") as f:
                f.write(base64.b64decode(user["client-certificate-data"]))
            with open(key, "wb") as f:
                f.write(base64.b64decode(user["client-key-data"]))
        if cert:
            ssl_ctx.load_cert_chain(cert, key)
        return cls(master or cluster["server"], ssl_ctx, headers)

    def _call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method,
                                     headers={**self.headers, "Accept": "application/json",
                                              **({"Content-Type": content_type} if data else {})})
        try:
            with urllib.request.urlopen(req, context=self.context, timeout=60) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("message") or e.reason
            except ValueError:
                message = str(e.reason)
            raise ApiError(e.code, message) from None
        except urllib.error.URLError as e:
            raise ApiError(0, f"cannot reach the API server {self.server}: {e.reason}") from None

    def get(self, path: str) -> dict[str, Any]:
        return self._call("GET", path)

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", path, body)

    def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("PATCH", path, body, "application/merge-patch+json")


def path_of(group: str, version: str, plural: str, namespace: str | None, name: str = "",
            sub: str = "") -> str:
    """``/apis/<group>/<version>/namespaces/<ns>/<plural>/<name>[/<sub>]`` (core group: ``/api/v1``).

    An empty namespace gives the cluster-scoped path, as client-go does for ``Namespace("")``: the
    apiserver then answers 404 for a namespaced kind, which is what an unfilled reference gets."""
    base = "/api/v1" if group == "" else f"/apis/{group}/{version}"
    parts = [base]
    if namespace:
        parts += ["namespaces", urllib.parse.quote(namespace, safe="")]
    parts.append(plural)
    if name:
        parts.append(urllib.parse.quote(name, safe=""))
    if sub:
        parts.append(sub)
    return "/".join(parts)
