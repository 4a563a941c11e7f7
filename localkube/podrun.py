"""Container shim: run one container's command as a local process that sees a Pod's view of files.

The node agent starts it as
``unshare --mount --uts --pid --fork --kill-child --propagation private python3 podrun.py SPEC.json``,
so it is PID 1 of fresh mount, UTS and PID namespaces. It builds a throw-away root (an overlay over
the host's ``/``: the "image" is this machine), bind-mounts the Pod's volumes at their mountPaths,
binds the termination-message file, then chroots and execs the command. Nothing it mounts is visible
on the host (private propagation), and everything it started dies with its PID namespace.

Standalone on purpose (stdlib only, no localkube imports): it runs as a script, before the chroot.
The spec's keys are written by ``localkube.nodeagent`` (``_RunSpec``).
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import sys

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

START_ERROR_EXIT = 128

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    """mount(2) through libc: Python 3.11 has no binding, and util-linux's mount would be per-call fork+exec."""
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    if _libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} -> {target} ({fstype}): {os.strerror(err)}")


def bind(source: str, target: str, read_only: bool) -> None:
    """Bind-mount; a read-only bind needs a second remount call (MS_RDONLY is ignored with MS_BIND)."""
    mount(source, target, None, MS_BIND | MS_REC)
    if read_only:
        mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)


def in_root(root: str, path: str) -> str:
    """``path`` as the container sees it, resolved inside ``root``: symlinks are followed against the
    new root, as runc's securejoin does (``/var/run`` is an absolute link to ``/run`` on Debian;
    joined naively, a mount at ``/var/run/secrets/...`` would land on the host's ``/run``)."""
    parts = [p for p in path.split("/") if p]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        here = os.path.join(root, *resolved, part)
        if os.path.islink(here):
            hops += 1
            if hops > 40:
                raise OSError(40, f"too many levels of symbolic links in {path}")
            link = os.readlink(here)
            if link.startswith("/"):
                resolved = []
            parts = [p for p in link.split("/") if p] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def ensure_target(path: str, is_file: bool) -> None:
    """Create a mount point (a file for file binds) inside the new root."""
    if is_file:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            open(path, "a").close()
    else:
        os.makedirs(path, exist_ok=True)


def host_submounts() -> list[tuple[str, str]]:
    """Mount points below / other than /proc, /sys, /dev: an overlay of / does not include them."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")
            fstype = fields[fields.index("-") + 1]
            if point == "/" or any(point == p or point.startswith(p + "/") for p in ("/proc", "/sys", "/dev")):
                continue
            out.append((point, fstype))
    return out


def build_root(spec: dict) -> str:
    state = spec["state_dir"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # belt and braces: unshare --propagation private does this too
    ovl = os.path.join(state, "ovl")
    os.makedirs(ovl, exist_ok=True)
    mount("tmpfs", ovl, "tmpfs", 0, "mode=755")
    for d in ("upper", "work", "root"):
        os.makedirs(os.path.join(ovl, d))
    root = os.path.join(ovl, "root")
    mount("overlay", root, "overlay", 0, f"lowerdir=/,upperdir={ovl}/upper,workdir={ovl}/work")
    for point, fstype in host_submounts():
        if point.startswith(state):
            continue
        target = root + point
        if not os.path.isdir(point):
            continue
        os.makedirs(target, exist_ok=True)
        if fstype == "tmpfs":  # a private, empty tmpfs, as an image layer would be
            mount("tmpfs", target, "tmpfs", 0, "mode=1777")
        else:  # other host filesystems are visible but read-only, like the image
            try:
                bind(point, target, read_only=True)
            except OSError:
                pass
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV)
    bind("/sys", root + "/sys", read_only=True)
    dev = root + "/dev"
    mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755")
    for name in ("null", "zero", "full", "random", "urandom", "tty"):
        ensure_target(f"{dev}/{name}", is_file=True)
        bind(f"/dev/{name}", f"{dev}/{name}", read_only=False)
    os.makedirs(f"{dev}/pts")
    try:
        mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID, "newinstance,ptmxmode=0666,mode=620")
        os.symlink("pts/ptmx", f"{dev}/ptmx")
    except OSError:
        pass
    os.makedirs(f"{dev}/shm")
    mount("tmpfs", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for name, dest in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                       ("stderr", "/proc/self/fd/2")):
        os.symlink(dest, f"{dev}/{name}")
    tlog = spec["termination_log"]
    tlog_target = in_root(root, tlog["target"])
    ensure_target(tlog_target, is_file=True)
    bind(tlog["source"], tlog_target, read_only=False)
    # Shallow mount points first, so that a volume mounted inside another lands on top of it.
    for m in sorted(spec["mounts"], key=lambda m: m["target"].count("/")):
        target = in_root(root, m["target"])
        ensure_target(target, is_file=m.get("file", False))
        bind(m["source"], target, m.get("read_only", False))
    return root


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    # Opened before the chroot, which hides the host's state dir.
    err_fd = os.open(os.path.join(spec["state_dir"], "start-error"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        root = build_root(spec)
        socket.sethostname(spec["hostname"])
        os.chroot(root)
        workdir = spec.get("working_dir") or "/"
        os.makedirs(workdir, exist_ok=True)  # runtimes create a missing workingDir (in the throw-away root)
        os.chdir(workdir)
        if spec.get("gid") is not None or spec.get("uid") is not None:
            os.setgroups([int(g) for g in spec.get("groups") or []])
            gid = spec.get("gid")
            if gid is None:
                gid = spec["uid"]
            os.setgid(int(gid))
            if spec.get("uid") is not None:
                os.setuid(int(spec["uid"]))
            # a change of credentials clears the parent-death signal that `unshare --kill-child` set:
            # without it again, killing unshare would leave this Pod's processes running
            _kill_with_parent()
        argv = spec["argv"]
        if not argv:
            raise RuntimeError("container has no command: the image's entrypoint is unknown here; set command")
        os.execvpe(argv[0], argv, spec["env"])
    except BaseException as e:  # the agent reports this as a StartError, as a runtime would
        msg = f"{type(e).__name__}: {e}"
        os.write(err_fd, msg.encode())
        print(f"localkube podrun: failed to start container: {msg}", file=sys.stderr, flush=True)
        os._exit(START_ERROR_EXIT)


def _kill_with_parent() -> None:
    """SIGKILL this process when its parent (unshare) dies, as ``--kill-child`` arranged before."""
    PR_SET_PDEATHSIG = 1
    if _libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")


if __name__ == "__main__":
    main(sys.argv[1])
