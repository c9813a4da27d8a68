"""Python wrapper around build/pgstay-lab: runs its commands and parses their output for tests."""
import json
import os
import random
import socket
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def lab_binary():
    build = os.environ.get("PGSTAY_BUILD", "build")
    # relative to the repository, so pytest works from any cwd
    if not os.path.isabs(build):
        build = os.path.join(REPO, build)
    return os.path.join(build, "pgstay-lab")


class LabError(Exception):
    """A pgstay-lab command exited non-zero."""

    def __init__(self, args, returncode, stdout, stderr):
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            "pgstay-lab %s: exit %d\n%s%s" % (" ".join(args), returncode, stdout, stderr))


class Unsupported(LabError):
    """Exit code 3: the machine does not allow the operation (e.g. no iptables)."""


def _port_free(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port_base(lo=10000, hi=32000, tries=200):
    """A base port whose BASE..BASE+20 are all free (random, to avoid parallel runs)."""
    for _ in range(tries):
        base = random.randrange(lo, hi, 100)
        if all(_port_free(base + k) for k in range(21)):
            return base
    raise RuntimeError("no free port range found")


class Lab:
    def __init__(self, dir, nodes=3, port=6100, sync=True, auth="trust", fast=True):
        self.dir = dir
        self.nodes = nodes
        self.port = port
        self.sync = sync
        self.auth = auth
        self.fast = fast

    def run(self, *args, check=True, timeout=120):
        argv = [lab_binary(), "--dir", self.dir] + [str(a) for a in args]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode == 3:
            raise Unsupported(argv[1:], p.returncode, p.stdout, p.stderr)
        if check and p.returncode != 0:
            raise LabError(argv[1:], p.returncode, p.stdout, p.stderr)
        return p

    def init(self):
        args = ["init", "--nodes", self.nodes, "--port", self.port,
                "--sync" if self.sync else "--async", "--auth", self.auth]
        if self.fast:
            args.append("--fast")
        return self.run(*args).stdout

    def destroy(self):
        return self.run("destroy").stdout

    def status(self):
        return json.loads(self.run("status", "--json").stdout)

    def primary(self):
        prim = [n["name"] for n in self.status()["nodes"] if n["role"] == "primary"]
        return prim[0] if len(prim) == 1 else None

    def crash(self, n):
        return self.run("crash", n).stdout

    def freeze(self, n):
        return self.run("freeze", n).stdout

    def thaw(self, n):
        return self.run("thaw", n).stdout

    def blackhole(self, n):
        return self.run("blackhole", n).stdout

    def heal(self, n):
        return self.run("heal", n).stdout

    def promote(self, n):
        return self.run("promote", n).stdout

    def failover(self, to=None, delay_ms=0, rejoin=False):
        args = ["failover", "--delay", delay_ms]
        if to:
            args += ["--to", to]
        if rejoin:
            args.append("--rejoin")
        out = self.run(*args).stdout
        for line in out.splitlines():
            if line.startswith("failover: crashed="):
                res = {}
                for kv in line.split()[1:]:
                    k, v = kv.split("=", 1)
                    res[k] = int(v) if v.isdigit() else v
                return res
        raise LabError(args, 0, out, "no timings line")

    def switchover(self, to=None, proxy=None):
        args = ["switchover"]
        if to:
            args += ["--to", to]
        if proxy:
            args += ["--proxy", proxy]
        return self.run(*args).stdout

    def rejoin(self, n):
        return self.run("rejoin", n).stdout

    def start(self, n=None):
        return self.run("start", *([n] if n else [])).stdout

    def stop(self, n=None):
        return self.run("stop", *([n] if n else [])).stdout

    def node_port(self, n):
        return self.port + int(str(n).lstrip("n"))

    def dsn(self, n, user="postgres", dbname="postgres"):
        pw = " password=%s" % user if user in ("postgres", "app") else ""
        return "host=127.0.0.1 port=%d user=%s dbname=%s%s" % (
            self.node_port(n), user, dbname, pw)
