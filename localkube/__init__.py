"""localkube: the project's test Kubernetes (v1.20.2 control plane on 127.0.0.1) and its node agent.

Dev/test tooling, not part of the installed ``stashflow`` package. See localkube/README.md.
Modules: ``cluster`` (start/stop/restart), ``nodeagent`` (scheduler + kubelet stand-in),
``helpers`` (waits, PVCs, CRDs), ``pytest_plugin`` (fixtures), ``podrun`` (container shim).
"""
