"""Fixtures for end-to-end tests: real PostgreSQL clusters from pgstay-lab and a real pgstay in front."""
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import psycopg
import pytest

from lab import REPO, Lab, free_port_base


def build_dir():
    b = os.environ.get("PGSTAY_BUILD", "build")
    return b if os.path.isabs(b) else os.path.join(REPO, b)


def sanitizer():
    """The sanitizer of the build under test ("asan", "tsan" or ""), from PGSTAY_BUILD's name
    (make asan-check and make tsan name build-asan and build-tsan)."""
    b = os.path.basename(build_dir().rstrip("/"))
    return "tsan" if "tsan" in b else "asan" if "asan" in b else ""


def slack(seconds):
    """A bound on how long pgstay may take, scaled for ThreadSanitizer: every memory access of
    pgstay (and of the lab) checked costs it several times its speed, on 2 shared cores."""
    return seconds * (3 if sanitizer() == "tsan" else 1)


# What a sanitizer writes to pgstay's stderr (the test's log) when it finds something.
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "ThreadSanitizer")
SANITIZER_EXIT = 66  # TSAN_OPTIONS exitcode in make tsan


def sanitizer_report(log):
    """The first sanitizer report in a pgstay log (from its first line on), or None."""
    at = [log.find(m) for m in SANITIZER_MARKS if m in log]
    if not at:
        return None
    start = log.rfind("\n", 0, min(at)) + 1
    return log[start:start + 6000]


def assert_no_sanitizer_report(log, returncode=None):
    """Fail the test whose pgstay printed a sanitizer report or exited with TSan's code."""
    report = sanitizer_report(log)
    assert report is None, "pgstay printed a sanitizer report:\n" + report
    assert returncode != SANITIZER_EXIT, \
        "pgstay exited with %d (a sanitizer report?):\n%s" % (returncode, log[-4000:])


def free_port():
    """A free port below the ephemeral range, so no outgoing connection takes it meanwhile."""
    for _ in range(200):
        port = random.randrange(10000, 32000)
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free port")


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def hwm_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class Pgstay:
    """One pgstay process with its own config file, log and ports."""

    def __init__(self, lab, tmpdir, **settings):
        self.lab = lab
        self.dir = tmpdir
        self.port = free_port()
        self.readonly_port = free_port()
        while self.readonly_port == self.port:
            self.readonly_port = free_port()
        self.settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": self.port,
            "readonly_port": self.readonly_port,
            # PGSTAY_POOL_MODE=transaction runs every test that does not choose a mode with
            # transaction pooling (isolation holds in both).
            "pool_mode": os.environ.get("PGSTAY_POOL_MODE", "session"),
            # PGSTAY_WORKERS=4 runs every test that does not choose its workers on 4 event
            # loops (make check does; make asan-check keeps 1).
            "workers": int(os.environ.get("PGSTAY_WORKERS", "1")),
            "pool_size": 10,
            "auth_type": "trust",
            "auth_file": "userlist.txt",
            "admin_users": "postgres",
            "health_check_user": "postgres",
            "health_check_dbname": "postgres",
            "shutdown_timeout": "10s",
        }
        self.settings.update(settings)
        self.sections = ""  # more sections ([databases], [users]) as INI text
        self.userlist = {"postgres": "postgres", "app": "app"}
        self.proc = None
        self.nofile = None  # RLIMIT_NOFILE for the process, if set
        self.log_path = os.path.join(tmpdir, "pgstay.log")
        self.conf_path = os.path.join(tmpdir, "pgstay.ini")

    def write_config(self):
        with open(self.conf_path, "w") as f:
            f.write("[pgstay]\n")
            for k, v in self.settings.items():
                f.write("%s = %s\n" % (k, v))
            f.write("[nodes]\n")
            for i in range(1, self.lab.nodes + 1):
                f.write("n%d = host=127.0.0.1 port=%d\n" % (i, self.lab.node_port(i)))
            f.write(self.sections)
        with open(os.path.join(self.dir, "userlist.txt"), "w") as f:
            for u, p in self.userlist.items():
                f.write('"%s" "%s"\n' % (u, p))

    def start(self, wait_writer=True):
        # A port picked as free can be taken by someone else before pgstay binds it: pick again.
        for attempt in range(3):
            try:
                return self._start(wait_writer)
            except RuntimeError as e:
                if "Address already in use" not in str(e) or attempt == 2:
                    raise
                self.port = free_port()
                self.readonly_port = free_port()
                while self.readonly_port == self.port:
                    self.readonly_port = free_port()
                self.settings["listen_port"] = self.port
                self.settings["readonly_port"] = self.readonly_port

    def _start(self, wait_writer):
        self.write_config()
        self.logf = open(self.log_path, "ab")
        env = dict(os.environ)
        # ASan keeps freed memory in a quarantine (256 MB by default), which would read as
        # pgstay's own growth in the bounded-memory tests.
        env.setdefault("ASAN_OPTIONS", "quarantine_size_mb=4:detect_leaks=1")
        nofile = self.nofile

        def limits():
            if nofile:  # a test of running out of descriptors
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen([os.path.join(build_dir(), "pgstay"), self.conf_path],
                                     stdout=self.logf, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=limits)
        deadline = time.time() + 15
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("pgstay exited: %s" % self.log())
            try:
                if not wait_writer:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                    return self
                rows = self.admin("SHOW NODES")
                if any(r[4] == "yes" for r in rows):
                    return self
            except Exception:
                pass
            time.sleep(0.05)
        raise RuntimeError("pgstay did not find a writer: %s" % self.log())

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def dsn(self, dbname="postgres", user="postgres", password=None, port=None, **extra):
        d = "host=127.0.0.1 port=%d dbname=%s user=%s" % (port or self.port, dbname, user)
        if password is None:
            password = self.userlist.get(user)
        if password:
            d += " password=%s" % password
        for k, v in extra.items():
            d += " %s=%s" % (k, v)
        return d

    def connect(self, **kw):
        dsnkw = {k: kw.pop(k) for k in list(kw) if k in ("dbname", "user", "password", "port")}
        return psycopg.connect(self.dsn(**dsnkw), autocommit=kw.pop("autocommit", True), **kw)

    def admin(self, sql):
        with psycopg.connect(self.dsn(dbname="pgstay"), autocommit=True,
                             prepare_threshold=None) as c:
            cur = c.execute(sql)
            return cur.fetchall() if cur.description else cur.statusmessage

    def admin_rows(self, sql, dbname="pgstay"):
        """An admin SHOW as dicts by column name (PgBouncer's columns first, pgstay's after)."""
        with psycopg.connect(self.dsn(dbname=dbname), autocommit=True,
                             prepare_threshold=None) as c:
            cur = c.execute(sql)
            cols = [d.name for d in cur.description]
            return [dict(zip(cols, r)) for r in cur.fetchall()]

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.logf.close()
            # A sanitizer report in the log (pgstay's stderr) is a failure of the test that
            # ran this pgstay, also when the report made pgstay exit before the test's end.
            assert_no_sanitizer_report(self.log(), self.proc.returncode)


@pytest.fixture(scope="session")
def cluster1():
    """A one-node cluster (SCRAM passwords on the server side), shared by the proxy tests."""
    d = tempfile.mkdtemp(prefix="pgstay-e2e-")
    os.chmod(d, 0o755)  # the servers run as an unprivileged user
    lab = Lab(os.path.join(d, "lab"), nodes=1, port=free_port_base(), sync=False, auth="scram")
    lab.init()
    yield lab
    lab.destroy()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def make_proxy(tmp_path):
    """Start pgstay in front of a lab: make_proxy(lab, pool_size=2, ...)."""
    started = []

    def make(lab, start=True, **settings):
        p = Pgstay(lab, str(tmp_path), **settings)
        started.append(p)
        return p.start() if start else p

    yield make
    for p in started:
        p.stop()


@pytest.fixture
def proxy(cluster1, make_proxy):
    return make_proxy(cluster1)
