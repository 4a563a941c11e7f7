"""The Kubernetes client looks the environment's proxy up once, and never per request
(``tasks/kube.py``): aiohttp would otherwise read the proxy variables and ~/.netrc in a thread for
every request. Built from a real kubeconfig file; nothing is sent."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from stashflow.tasks.kube import _new_api

SERVER = "https://apiserver.example:6443"


def kubeconfig(tmp_path: Path) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": SERVER, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    return str(path)


def built(tmp_path: Path) -> dict[str, Any]:
    async def build() -> dict[str, Any]:
        api = await _new_api(kubeconfig(tmp_path), None, None)
        try:
            rest = api.rest_client
            return {"trust_env": rest.pool_manager.trust_env, "proxy": rest.proxy,
                    "proxy_headers": rest.proxy_headers}
        finally:
            await api.close()
    return asyncio.run(build())


@pytest.fixture(autouse=True)
def no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy",
                 "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_without_a_proxy_the_session_reads_nothing_from_the_environment_per_request(tmp_path: Path) -> None:
    assert built(tmp_path) == {"trust_env": False, "proxy": None, "proxy_headers": None}


def test_the_environment_s_proxy_and_its_credentials_are_taken_once(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://ops:s3cret@proxy.example:3128")
    got = built(tmp_path)
    assert got["trust_env"] is False
    assert got["proxy"] == "http://proxy.example:3128"
    assert got["proxy_headers"] == {"Proxy-Authorization": "Basic " + base64.b64encode(b"ops:s3cret").decode()}


def test_no_proxy_covering_the_api_server_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", ".example")
    assert built(tmp_path)["proxy"] is None
