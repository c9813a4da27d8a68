#!/usr/bin/python3
"""make bench: pgbench -S throughput, latency, CPU and memory of pgstay side by side with direct and PgBouncer."""
import argparse
import datetime
import json
import os
import platform
import pwd
import re
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
from lab import Lab, free_port_base  # noqa: E402

PGBIN = "/usr/lib/postgresql/15/bin"
# PGBOUNCER=path points to another PgBouncer (e.g. a newer one with prepared statements)
PGBOUNCER = os.environ.get("PGBOUNCER", "/usr/sbin/pgbouncer")
CLK_TCK = os.sysconf("SC_CLK_TCK")
# the client count of issue 14's rows (pgstay workers, PgBouncer with so_reuseport)
WORKERS_CLIENTS = 256
T_START = time.time()


def say(msg):
    print("[%6.1fs] %s" % (time.time() - T_START, msg), file=sys.stderr, flush=True)


def build_dir():
    b = os.environ.get("PGSTAY_BUILD", "build")
    return b if os.path.isabs(b) else os.path.join(REPO, b)


def pgbouncer_version():
    """(major, minor) of PGBOUNCER, (0, 0) if unknown."""
    try:
        out = subprocess.run([PGBOUNCER, "--version"], capture_output=True, text=True).stdout
    except OSError:
        return (0, 0)
    m = re.search(r"(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def pgbouncer_prepared(mode):
    """Can PgBouncer serve pgbench -M prepared in this pool mode? Session mode always;
    transaction mode from 1.21 on (max_prepared_statements)."""
    return mode == "session" or pgbouncer_version() >= (1, 21)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_ms(pid, stat="/proc/%d/stat"):
    """utime + stime of a process, in ms (fields 14 and 15 of /proc/PID/stat): all its threads."""
    with open(stat % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000.0 / CLK_TCK


def thread_cpu_ms(pid):
    """{tid: utime + stime in ms} of each thread of a process (pgstay's workers)."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            out[int(tid)] = cpu_ms(pid, "/proc/%%d/task/%s/stat" % tid)
        except OSError:
            pass  # a thread that ended between the listing and the read
    return out


def online_cpus():
    """What pgstay's workers = 0 means: one worker per online CPU."""
    return max(1, os.sysconf("SC_NPROCESSORS_ONLN"))


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def rss_kb_all(pids):
    return sum(rss_kb(pid) for pid in pids)


def raise_nofile(n=20000):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(n, hard) if hard != resource.RLIM_INFINITY else n
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def wait_port(port, proc, what, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("%s exited at start (exit %s)" % (what, proc.returncode))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("%s did not listen on %d" % (what, port))


class Proxy:
    """A proxy process (PgBouncer or pgstay) in front of the lab's single node."""

    name = "?"

    def __init__(self, tmp, node_port, mode, pool):
        self.tmp = tmp
        self.node_port = node_port
        self.mode = mode
        self.pool = pool
        self.port = free_port()
        self.proc = None
        self.logf = None

    @property
    def pid(self):
        return self.proc.pid

    @property
    def pids(self):
        """Every process of the proxy: CPU and RSS are summed over them."""
        return [self.pid]

    def dead(self):
        return self.proc.poll() is not None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.logf:
            self.logf.close()
        self.proc = None

    def log_tail(self, n=1500):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""


class PgBouncer(Proxy):
    name = "pgbouncer"

    def write_ini(self, d, tag="", pool=None, extra=""):
        """pgbouncer<tag>.ini in d (logfile pgbouncer<tag>.log), owned by postgres; its path."""
        pg = pwd.getpwnam("postgres")
        with open(os.path.join(d, "userlist.txt"), "w") as f:
            f.write('"postgres" "postgres"\n"app" "app"\n')
        log_path = os.path.join(d, "pgbouncer%s.log" % tag)
        ini = os.path.join(d, "pgbouncer%s.ini" % tag)
        with open(ini, "w") as f:
            f.write("[databases]\n* = host=127.0.0.1 port=%d\n[pgbouncer]\n"
                    "listen_addr = 127.0.0.1\nlisten_port = %d\nunix_socket_dir =\n"
                    "auth_type = trust\nauth_file = %s/userlist.txt\npool_mode = %s\n"
                    "default_pool_size = %d\nmax_client_conn = 11000\nmax_db_connections = 0\n"
                    "logfile = %s\nlog_connections = 0\nlog_disconnections = 0\n"
                    "stats_period = 60\nignore_startup_parameters = extra_float_digits\n%s"
                    % (self.node_port, self.port, d, self.mode,
                       self.pool if pool is None else pool, log_path, extra))
            if pgbouncer_version() >= (1, 21):
                # protocol-level prepared statements in transaction mode (off by default)
                f.write("max_prepared_statements = 200\n")
        for p in (d, ini, os.path.join(d, "userlist.txt")):
            os.chown(p, pg.pw_uid, pg.pw_gid)
        return ini, log_path

    @staticmethod
    def spawn(ini):
        pg = pwd.getpwnam("postgres")

        def drop():
            # PgBouncer refuses root; the descriptor limit is raised before giving up root
            resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
            os.setgid(pg.pw_gid)
            os.setuid(pg.pw_uid)

        return subprocess.Popen([PGBOUNCER, ini], preexec_fn=drop,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self):
        d = os.path.join(self.tmp, "pgbouncer-%s" % self.mode)
        os.makedirs(d, exist_ok=True)
        ini, self.log_path = self.write_ini(d)
        self.proc = self.spawn(ini)
        wait_port(self.port, self.proc, "pgbouncer")
        return self


class PgBouncerReuseport(PgBouncer):
    """N PgBouncer processes on one port with so_reuseport = 1 (PgBouncer's answer to its single
    thread): the kernel spreads the connections over them. Each has its own config file and
    logfile (no pidfile, no unix socket). In transaction mode each gets pool / N servers, so that
    all of them together have the pool of the other rows (pgstay's pool_size holds across its
    workers); in session mode each keeps the whole pool, as every process needs one server per
    client it happens to get."""

    def __init__(self, tmp, node_port, mode, pool, procs):
        super().__init__(tmp, node_port, mode, pool)
        self.nprocs = procs
        self.name = "pgbouncer x%d" % procs
        self.procs = []

    @property
    def pids(self):
        return [p.pid for p in self.procs]

    def dead(self):
        return any(p.poll() is not None for p in self.procs)

    def start(self):
        d = os.path.join(self.tmp, "pgbouncer-%s-x%d" % (self.mode, self.nprocs))
        os.makedirs(d, exist_ok=True)
        pool = self.pool if self.mode == "session" else max(1, -(-self.pool // self.nprocs))
        for i in range(self.nprocs):
            ini, self.log_path = self.write_ini(d, "-%d" % i, pool, "so_reuseport = 1\n")
            self.procs.append(self.spawn(ini))
            self.proc = self.procs[0]
            # the port answers as soon as one process listens: wait for this one's own socket
            self.wait_listening(self.procs[-1], self.log_path)
        return self

    def wait_listening(self, proc, log_path, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("pgbouncer (so_reuseport) exited at start (exit %s)"
                                   % proc.returncode)
            try:
                with open(log_path, errors="replace") as f:
                    if "listening on 127.0.0.1:%d" % self.port in f.read():
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("pgbouncer (so_reuseport) did not listen on %d" % self.port)

    def stop(self):
        for p in self.procs:
            self.proc = p
            super().stop()
        self.procs = []


class Pgstay(Proxy):
    """pgstay with `workers` event-loop threads (1 by default, as before issue 14, so that the
    rows stay comparable with older results; None leaves the key out, for builds older than it)."""

    name = "pgstay"

    def __init__(self, tmp, node_port, mode, pool, workers=1):
        super().__init__(tmp, node_port, mode, pool)
        self.workers = workers

    def start(self):
        d = os.path.join(self.tmp, "pgstay-%s%s" % (
            self.mode, "" if self.workers in (1, None) else "-w%d" % self.workers))
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "userlist.txt"), "w") as f:
            f.write('"postgres" "postgres"\n"app" "app"\n')
        self.log_path = os.path.join(d, "pgstay.log")
        ini = os.path.join(d, "pgstay.ini")
        with open(ini, "w") as f:
            f.write("[pgstay]\nlisten_addr = 127.0.0.1\nlisten_port = %d\npool_mode = %s\n"
                    "pool_size = %d\nmax_client_conn = 11000\nauth_type = trust\n"
                    "auth_file = userlist.txt\nadmin_users = postgres\n"
                    "health_check_user = postgres\nhealth_check_dbname = postgres\n"
                    "log_connections = 0\nlog_disconnections = 0\n"  # as PgBouncer's, above
                    "%s[nodes]\nn1 = host=127.0.0.1 port=%d\n"
                    % (self.port, self.mode, self.pool,
                       "" if self.workers is None else "workers = %d\n" % self.workers,
                       self.node_port))
        self.logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [os.path.join(build_dir(), "pgstay"), ini], stdout=self.logf,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000)))
        wait_port(self.port, self.proc, "pgstay")
        # the writer must be known before clients come, or the first ones are held
        deadline = time.time() + 10
        while time.time() < deadline:
            r = subprocess.run([os.path.join(PGBIN, "psql"), "-XAtq", "-h", "127.0.0.1", "-p",
                                str(self.port), "-U", "postgres", "-d", "postgres", "-c",
                                "select 1"], capture_output=True, text=True)
            if r.returncode == 0:
                return self
            time.sleep(0.1)
        raise RuntimeError("pgstay never served a query: %s" % self.log_tail())


def pgbench(port, clients, seconds, prepared=False, connect=False):
    argv = [os.path.join(PGBIN, "pgbench"), "-n", "-S", "-T", str(seconds), "-c", str(clients),
            "-j", str(min(2, clients)), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
            "-M", "prepared" if prepared else "simple"]
    if connect:
        argv.append("-C")
    argv.append("postgres")
    try:
        # a proxy that stops serving must not stall the whole benchmark for minutes
        p = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        return {"error": "pgbench did not finish within %d s (killed)" % (seconds + 30)}
    out = p.stdout + p.stderr
    tps = re.search(r"tps = ([0-9.]+)", out)
    lat = re.search(r"latency average = ([0-9.]+) ms", out)
    tx = re.search(r"number of transactions actually processed: (\d+)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    if p.returncode != 0 or not tps or not tx:
        return {"error": out.strip().splitlines()[-1] if out.strip() else "exit %d" % p.returncode}
    return {"tps": float(tps.group(1)), "latency_ms": float(lat.group(1)) if lat else None,
            "tx": int(tx.group(1)), "failed": int(failed.group(1)) if failed else 0}


# ---- idle clients ------------------------------------------------------------------------------

def startup_packet(user, db):
    body = struct.pack("!I", 196608)
    for k, v in (("user", user), ("database", db)):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def read_until_ready(sock):
    """Read messages until ReadyForQuery; raise on ErrorResponse."""
    buf = b""
    while True:
        while len(buf) >= 5:
            typ, ln = buf[0:1], struct.unpack("!I", buf[1:5])[0]
            if len(buf) < 1 + ln:
                break
            msg, buf = buf[:1 + ln], buf[1 + ln:]
            if typ == b"Z":
                return
            if typ == b"E":
                raise RuntimeError("login refused: %r" % msg[5:120])
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("connection closed during login")
        buf += chunk


def idle_clients(proxy, n, batch=100):
    """Log n clients in with raw startup packets (cheap: no libpq), return the RSS growth."""
    pkt = startup_packet("postgres", "postgres")
    # one client first so the proxy has its parameters cached, as in steady state
    s0 = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    s0.sendall(pkt)
    read_until_ready(s0)
    s0.close()
    time.sleep(0.5)
    before = rss_kb(proxy.pid)
    socks = []
    try:
        for i in range(0, n, batch):
            group = []
            for _ in range(min(batch, n - i)):
                s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
                socks.append(s)  # closed in finally, also on failure
                s.sendall(pkt)
                group.append(s)
            for k, s in enumerate(group):
                try:
                    read_until_ready(s)
                except OSError as e:
                    raise RuntimeError("client %d got no ReadyForQuery (%s) after %d clients "
                                       "logged in" % (i + k + 1, e, i + k))
        time.sleep(1.0)
        after = rss_kb(proxy.pid)
        if proxy.proc.poll() is not None:
            raise RuntimeError("%s died with %d clients" % (proxy.name, len(socks)))
        return {"clients": len(socks), "rss0_kb": before, "rss_kb": after,
                "per_client_kb": (after - before) / float(len(socks))}
    finally:
        for s in socks:
            s.close()


# ---- the run -----------------------------------------------------------------------------------

def setup_lab(lab, scale, max_connections=1000):
    """Init the one-node lab, raise max_connections, load pgbench -i -s scale."""
    say("cluster: 1 node (async, --fast) in %s" % lab.dir)
    lab.init()
    node = lab.node_port(1)
    psql = [os.path.join(PGBIN, "psql"), "-XAtq", "-h", "127.0.0.1", "-p", str(node),
            "-U", "postgres", "-d", "postgres"]
    # 256 direct clients while both session pools keep up to 256 servers each (and those of
    # the workers rows' proxies: Bench.setup)
    subprocess.run(psql + ["-c", "ALTER SYSTEM SET max_connections = %d" % max_connections],
                   check=True, capture_output=True)
    lab.stop("n1")
    lab.start("n1")
    say("pgbench -i -s %d" % scale)
    subprocess.run([os.path.join(PGBIN, "pgbench"), "-i", "-q", "-s", str(scale),
                    "-h", "127.0.0.1", "-p", str(node), "-U", "postgres", "postgres"],
                   check=True, capture_output=True)


def load_profile():
    """bench/profile.py as a module (not importable as "profile": the standard library has one)."""
    import importlib.util
    sys.modules.setdefault("run", sys.modules[__name__])  # profile.py imports this file as run
    spec = importlib.util.spec_from_file_location("pgstay_profile",
                                                  os.path.join(REPO, "bench", "profile.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def ver(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            return "?"
    return {"nproc": os.cpu_count(), "model": model, "kernel": platform.release(),
            "loadavg_end": "%.2f %.2f %.2f" % os.getloadavg(),
            "pgstay": ver([os.path.join(build_dir(), "pgstay"), "--version"]),
            "pgbouncer": ver([PGBOUNCER, "--version"]),
            "postgres": ver([os.path.join(PGBIN, "postgres"), "--version"]),
            "pgbench": ver([os.path.join(PGBIN, "pgbench"), "--version"])}


def write_report(path, text):
    """Write a report whole (never half a file on an interrupted run) and print it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    print(text)
    say("written %s" % path)


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="pgstay-bench-")
        os.chmod(self.tmp, 0o755)
        self.lab = Lab(os.path.join(self.tmp, "lab"), nodes=1, port=free_port_base(),
                       sync=False, fast=True)
        self.proxies = []
        self.notes = []
        self.raw = {}  # (config, target) -> list of per-run dicts
        self.idle = {}
        self.syscalls = {}  # proxy name -> profile.count_syscalls() result
        self.prof = None
        self.worker_rows = []  # (config label, [target names]) of the workers table

    def extra_targets(self):
        """The workers rows' proxies besides PgBouncer and pgstay workers = 1: pgstay with each
        other count of --workers, PgBouncer xN with so_reuseport (N = --pgbouncer-procs)."""
        a = self.args
        out = [("pgstay w%d" % w, Pgstay, {"workers": w}) for w in getattr(a, "workers", [])
               if w != 1]
        if getattr(a, "pgbouncer_procs", 1) > 1:
            out.append(("pgbouncer x%d" % a.pgbouncer_procs, PgBouncerReuseport,
                        {"procs": a.pgbouncer_procs}))
        return out

    def setup(self):
        # every session-mode proxy keeps up to one server per client (256) between runs, and
        # PgBouncer xN's processes each keep what they opened: 300 each leaves room
        extra = len(self.extra_targets())
        setup_lab(self.lab, self.args.scale, 1000 if not extra else 300 * (3 + extra) + 100)

    def start(self, cls, mode, pool, **kw):
        p = cls(self.tmp, self.lab.node_port(1), mode, pool, **kw)
        self.proxies.append(p)
        try:
            return p.start()
        except RuntimeError as e:
            p.stop()
            self.notes.append("%s with pool_mode = %s did not start: %s %s"
                              % (p.name, mode, e, p.log_tail(400)))
            return None

    def start_extra(self, mode, pool):
        """Start the workers rows' proxies for this pool mode: [(target, port, proxy)]."""
        out = []
        for tname, cls, kw in self.extra_targets():
            p = self.start(cls, mode, pool, **kw)
            out.append((tname, p.port if p else None, p))
        return out

    def measure(self, label, targets, clients, prepared=False, connect=False):
        """One pgbench run per target (interleaved, so drift hits all alike)."""
        for tname, port, proxy in targets:
            if port is None:
                continue
            c0 = [cpu_ms(pid) for pid in proxy.pids] if proxy else None
            t0 = thread_cpu_ms(proxy.pid) if proxy else None
            r = pgbench(port, clients, self.args.seconds, prepared, connect)
            if proxy:
                if proxy.dead():
                    r = {"error": "%s died: %s" % (proxy.name, proxy.log_tail(300))}
                else:
                    per = [cpu_ms(pid) - c for pid, c in zip(proxy.pids, c0)]
                    r["cpu_ms"] = sum(per)
                    r["rss_kb"] = rss_kb_all(proxy.pids)
                    if len(per) > 1:
                        # how the kernel spread the clients over PgBouncer's processes
                        r["cpu_ms_per_process"] = per
                    t1 = thread_cpu_ms(proxy.pid)
                    busy = [t1[t] - t0.get(t, 0) for t in sorted(t1) if t1[t] > t0.get(t, 0)]
                    if len(busy) > 1:
                        # and pgstay's over its workers (threads that did nothing left out)
                        r["cpu_ms_per_thread"] = busy
            say("  %-28s %-9s %s" % (label, tname, "tps %.0f, latency %.3f ms" % (
                r["tps"], r["latency_ms"] or 0) if "tps" in r else r["error"]))
            self.raw.setdefault((label, tname), []).append(r)

    def with_extra(self, label, targets, extra, clients, mode, prepared):
        """targets, plus the workers rows' proxies at the workers rows' client count (PgBouncer
        xN only where PgBouncer serves the protocol); remembers the row for the report."""
        if clients != self.args.workers_clients or not extra:
            return targets
        more = [t for t in extra
                if not (t[0].startswith("pgbouncer") and prepared and not pgbouncer_prepared(mode))]
        names = ["pgbouncer"] + [t[0] for t in more if t[0].startswith("pgbouncer")] + \
            ["pgstay"] + [t[0] for t in more if t[0].startswith("pgstay")]
        if (label, names) not in self.worker_rows:
            self.worker_rows.append((label, names))
        return targets + more

    def run(self):
        a = self.args
        self.setup()
        node = self.lab.node_port(1)
        bouncer = self.start(PgBouncer, "session", 300)
        stay = self.start(Pgstay, "session", 300, workers=1)
        extra = self.start_extra("session", 300)
        targets = [("direct", node, None),
                   ("pgbouncer", bouncer.port if bouncer else None, bouncer),
                   ("pgstay", stay.port if stay else None, stay)]
        configs = []
        for proto in ("simple", "prepared"):
            for c in a.clients:
                configs.append(("session %s, %d clients" % (proto, c), c, proto == "prepared",
                                False))
        if not a.workers_only:
            configs.append(("session simple, %d clients, -C" % a.connect_clients,
                            a.connect_clients, False, True))
        for k in range(a.runs):
            say("run %d/%d: session mode, pool_size 300, %d s each" % (k + 1, a.runs, a.seconds))
            for label, c, prep, conn in configs:
                self.measure(label, self.with_extra(label, targets, extra, c, "session", prep),
                             c, prep, conn)
        for p in [bouncer, stay] + [t[2] for t in extra]:
            if p:
                p.stop()

        bouncer = self.start(PgBouncer, "transaction", 8)
        stay = self.start(Pgstay, "transaction", 8, workers=1)
        extra = self.start_extra("transaction", 8)
        if not stay:
            self.notes.append("pgstay transaction mode not available: skipped in the "
                              "transaction-mode and idle rows")
        targets = [("direct", node, None),
                   ("pgbouncer", bouncer.port if bouncer else None, bouncer),
                   ("pgstay", stay.port if stay else None, stay)]
        label = "transaction simple, 32 clients, pool 8"
        # Protocol-level prepared statements multiplexed over 8 servers (PgBouncer 1.18 has no
        # prepared-statement support in transaction mode: its row shows what that costs).
        label_prep = "transaction prepared, 256 clients, pool 8"
        # The rest of issue 16's rows: prepared at 32, simple at 256, a connection per
        # transaction (-C).
        tx_more = [("transaction prepared, 32 clients, pool 8", 32, True, False),
                   ("transaction simple, 256 clients, pool 8", 256, False, False),
                   ("transaction simple, 32 clients, pool 8, -C", 32, False, True)]
        tx_rows = [(label, 32, False, False), (label_prep, 256, True, False)] + tx_more
        if a.workers_only:
            tx_rows = [r for r in tx_rows if r[1] == a.workers_clients and not r[3]]
        for k in range(a.runs):
            say("run %d/%d: transaction mode, pool_size 8" % (k + 1, a.runs))
            for l2, c2, prep2, conn2 in tx_rows:
                self.measure(l2, self.with_extra(l2, targets, extra, c2, "transaction", prep2),
                             c2, prep2, conn2)
        for p in [t[2] for t in extra]:
            if p:
                p.stop()
        self.tx_label = label
        self.configs = [c[0] for c in configs] + [r[0] for r in tx_rows]
        if a.workers_only:
            for p in (bouncer, stay):
                if p:
                    p.stop()
            return

        # Syscalls per transaction in the same case, in a separate short run per proxy so the
        # counting (perf stat on syscall tracepoints, or strace -c -f if perf cannot) does not
        # touch the TPS above. bench/profile.py has the breakdown and the profiles.
        self.prof = load_profile()
        self.sys_seconds = min(a.seconds, 5)
        for p in (bouncer, stay):
            if p:
                r = self.prof.count_syscalls(p, 32, self.sys_seconds, False, "auto")
                self.syscalls[p.name] = r
                say("  %-28s %-9s %s" % ("syscalls / tx (%s)" % r["method"], p.name,
                                          r.get("error") or "%.2f" % r["total_per_tx"]))

        say("idle: %d client connections each (raw startup packets, trust)" % a.idle)
        for p in (bouncer, stay):
            if not p:
                continue
            try:
                vals = [idle_clients(p, a.idle) for _ in range(a.idle_runs)]
                self.idle[p.name] = vals
                say("  %-9s %.3f kB per client (RSS %d -> %d kB)" % (
                    p.name, med([v["per_client_kb"] for v in vals]), vals[-1]["rss0_kb"],
                    vals[-1]["rss_kb"]))
            except (OSError, RuntimeError) as e:
                self.notes.append("idle memory through %s (pool_mode transaction, pool_size 8) "
                                  "not measured: %s" % (p.name, e))
                say("  %s: %s" % (p.name, e))
        for p in (bouncer, stay):
            if p:
                p.stop()

    def cleanup(self):
        for p in self.proxies:
            p.stop()
        try:
            if os.path.exists(os.path.join(self.lab.dir, "lab.conf")):
                self.lab.destroy()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- the report ----------------------------------------------------------------------------

    def m(self, label, target, key):
        rs = self.raw.get((label, target), [])
        if any("error" in r for r in rs):
            return None
        return med([r.get(key) for r in rs])

    def latency_table(self, f):
        L = ["", "Added latency at 1 client (pgbench's average latency minus direct's):", "",
             "| protocol | direct µs | PgBouncer +µs | pgstay +µs |", "|---|---:|---:|---:|"]
        for proto in ("simple", "prepared"):
            label = "session %s, 1 clients" % proto
            if label not in self.configs:
                continue
            d = self.m(label, "direct", "latency_ms")
            b = self.m(label, "pgbouncer", "latency_ms")
            s = self.m(label, "pgstay", "latency_ms")
            L.append("| %s | %s | %s | %s |" % (
                proto, f(d and d * 1000), f(None if b is None or d is None else (b - d) * 1000),
                f(None if s is None or d is None else (s - d) * 1000)))
        return L

    def idle_table(self):
        L = ["", "Memory per idle client (%d client connections logged in, pool_mode "
             "transaction; (RSS with them − RSS without) / clients):" % self.args.idle, "",
             "| proxy | RSS before kB | RSS with clients kB | kB per client |",
             "|---|---:|---:|---:|"]
        for name in ("pgbouncer", "pgstay"):
            vals = self.idle.get(name)
            if not vals:
                L.append("| %s | not measured (see notes) | | |" % name)
                continue
            L.append("| %s | %d | %d | %.3f |" % (
                name, med([v["rss0_kb"] for v in vals]), med([v["rss_kb"] for v in vals]),
                med([v["per_client_kb"] for v in vals])))
        return L

    def workers_table(self, f, ratio, cpu_per_k):
        """Issue 14's rows: at --workers-clients, PgBouncer (one process), PgBouncer xN with
        so_reuseport, pgstay with each --workers count; ratios against PgBouncer, one process,
        from the same interleaved runs."""
        if not self.worker_rows:
            return []
        n = self.args.pgbouncer_procs
        L = ["", "Worker threads (issue 14) at %d clients: the same interleaved runs as the table "
             "above (its pgstay column is workers = 1). PgBouncer x%d = %d PgBouncer processes "
             "with so_reuseport = 1 on one port (transaction mode: default_pool_size %d each, "
             "the pool of the other rows in all; session mode: the whole pool each). CPU and RSS "
             "are summed over the proxy's processes (pgstay's workers are threads of one "
             "process). Ratios against PgBouncer, one process. With the proxy, PostgreSQL and "
             "pgbench on the same %d cores, read CPU per transaction more than TPS "
             "(bench/README.md)." % (self.args.workers_clients, n, n,
                                     max(1, -(-8 // n)), online_cpus()), "",
             "| pgbench -S | TPS | TPS / PgBouncer | CPU ms / 1k tx | CPU / PgBouncer | RSS kB |",
             "|---|---:|---:|---:|---:|---:|"]
        for label, names in self.worker_rows:
            b, cb = self.m(label, "pgbouncer", "tps"), cpu_per_k(label, "pgbouncer")
            for t in names:
                if t == "pgbouncer":
                    what = "PgBouncer"
                elif t.startswith("pgbouncer x"):
                    what = "PgBouncer %s so_reuseport" % t.split()[1]
                else:
                    what = "workers %s" % (t.split()[1][1:] if " " in t else "1")
                tps, cpu = self.m(label, t, "tps"), cpu_per_k(label, t)
                L.append("| %s, %s | %s | %s | %s | %s | %s |" % (
                    label, what, f(tps), f(ratio(tps, b), "%.2f"), f(cpu, "%.1f"),
                    f(ratio(cpu, cb), "%.2f"), f(self.m(label, t, "rss_kb"))))
        return L

    def report(self, mach):
        a = self.args
        L = []
        L.append("# pgstay benchmarks: %s" % datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))
        L.append("")
        L.append("Machine: %s × %s, Linux %s (load average at the end: %s; other work on the "
                 "machine skews every number). %s; %s; %s; %s." % (
                     mach["nproc"], mach["model"], mach["kernel"], mach["loadavg_end"],
                     mach["pgstay"], mach["pgbouncer"], mach["postgres"], mach["pgbench"]))
        L.append("")
        L.append("`pgbench -S` (scale %d, one async node from pgstay-lab --fast, everything on "
                 "this machine: the proxies compete with PostgreSQL and pgbench for %s cores), "
                 "%d s per run, median of %d run(s), `-j 2`. CPU = the proxy's utime+stime "
                 "(/proc/PID/stat) during the run per 1,000 transactions; RSS after the run.%s"
                 % (a.scale, mach["nproc"], a.seconds, a.runs,
                    " **Quick smoke run: numbers are indicative only.**" if a.quick else ""))
        L.append("")
        L.append("| pgbench -S | direct TPS | PgBouncer TPS | pgstay TPS | pgstay / direct | "
                 "pgstay / PgBouncer | PgBouncer / direct | CPU ms / 1k tx PgBouncer | "
                 "CPU ms / 1k tx pgstay | RSS kB PgBouncer | RSS kB pgstay |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

        def f(v, fmt="%.0f"):
            return "–" if v is None else fmt % v

        def ratio(x, y):
            return None if x is None or not y else x / y

        def cpu_per_k(label, t):
            rs = self.raw.get((label, t), [])
            if not rs or any("error" in r for r in rs):
                return None
            return med([r["cpu_ms"] / (r["tx"] / 1000.0) for r in rs if r["tx"]])

        for label in self.configs:
            d, b, s = (self.m(label, t, "tps") for t in ("direct", "pgbouncer", "pgstay"))
            L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                label, f(d), f(b), f(s), f(ratio(s, d), "%.2f"), f(ratio(s, b), "%.2f"),
                f(ratio(b, d), "%.2f"), f(cpu_per_k(label, "pgbouncer"), "%.1f"),
                f(cpu_per_k(label, "pgstay"), "%.1f"), f(self.m(label, "pgbouncer", "rss_kb")),
                f(self.m(label, "pgstay", "rss_kb"))))
        L.extend(self.workers_table(f, ratio, cpu_per_k))
        if not a.workers_only:
            L.extend(self.latency_table(f))
            L.extend(self.idle_table())
        if self.syscalls:
            methods = sorted({r["method"] for r in self.syscalls.values()})
            L.append("")
            L.append("Syscalls per transaction (%s; a separate %d s run per proxy, counted with "
                     "%s; per syscall and profiles: bench/profile.py):" % (
                         self.tx_label, self.sys_seconds, " and ".join(
                             {"perf": "perf stat on the syscall tracepoints",
                              "strace": "strace -c -f"}[m] for m in methods)))
            L.append("")
            L.extend(self.prof.syscall_table(self.syscalls, min_per_tx=0.1))
            for name, r in sorted(self.syscalls.items()):
                if "error" in r:
                    self.notes.append("syscalls per transaction through %s not counted: %s"
                                      % (name, r["error"]))
        tl = self.tx_label
        b, s = self.m(tl, "pgbouncer", "tps"), self.m(tl, "pgstay", "tps")
        cb, cs = cpu_per_k(tl, "pgbouncer"), cpu_per_k(tl, "pgstay")
        if tl in self.configs:
            L.append("")
            L.append("Design targets: transaction mode 32 clients pool 8 pgstay ≥ 1.1 × "
                     "PgBouncer; CPU per 1k tx ≤ 0.8 × PgBouncer; idle memory ≤ 0.6 kB per "
                     "client; added latency ≤ PgBouncer's; syscalls per transaction ≤ "
                     "PgBouncer's.")
            L.append("")
            L.append("- transaction mode TPS pgstay / PgBouncer: %s (target ≥ 1.10)" %
                     f(ratio(s, b), "%.2f"))
            L.append("- transaction mode CPU per 1k tx pgstay / PgBouncer: %s (target ≤ 0.80)" %
                     f(ratio(cs, cb), "%.2f"))
        sb, ss = (self.syscalls.get(n, {}).get("total_per_tx") for n in ("pgbouncer", "pgstay"))
        if sb or ss:
            L.append("- syscalls per transaction pgstay / PgBouncer: %s (%s / %s; target ≤ 1.00)"
                     % (f(ratio(ss, sb), "%.2f"), f(ss, "%.2f"), f(sb, "%.2f")))
        if self.idle.get("pgstay"):
            L.append("- idle memory pgstay: %.3f kB per client (target ≤ 0.6)" %
                     med([v["per_client_kb"] for v in self.idle["pgstay"]]))
        if self.notes:
            L.append("")
            L.append("Notes:")
            L.append("")
            for n in self.notes:
                L.append("- " + n.replace("\n", " ")[:600])
        errs = [(k, r["error"]) for k, rs in self.raw.items() for r in rs if "error" in r]
        if errs and not self.notes and tl not in self.configs:
            L.append("")
        for (label, t), e in errs[:10]:
            L.append("- %s through %s failed: %s" % (label, t, e[:300]))
        L.append("")
        L.append("## Raw numbers")
        L.append("")
        L.append("```json")
        raw = {"%s | %s" % k: v for k, v in self.raw.items()}
        L.append(json.dumps({"machine": mach, "pgbench": raw, "idle": self.idle,
                             "syscalls": self.syscalls,
                             "args": vars(a)}, indent=1, sort_keys=True))
        L.append("```")
        return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--idle", type=int, default=10000, help="idle client connections")
    ap.add_argument("--quick", action="store_true", help="a fast smoke run")
    ap.add_argument("--workers", default="1,2,%d" % online_cpus(),
                    help="pgstay worker counts of the workers rows (default 1,2,online CPUs; "
                    "1 is the pgstay column of every row)")
    ap.add_argument("--pgbouncer-procs", type=int, default=online_cpus(),
                    help="PgBouncer processes with so_reuseport in the workers rows (default: "
                    "online CPUs; 1: no such row)")
    ap.add_argument("--workers-only", action="store_true",
                    help="only the %d-client rows with the workers rows (no latency, idle or "
                    "syscall sections)" % WORKERS_CLIENTS)
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "latest.md"))
    a = ap.parse_args()
    a.workers = sorted({int(w) for w in a.workers.split(",") if w.strip()})
    a.workers_clients = WORKERS_CLIENTS
    a.clients = [1, 32, 256] if not a.workers_only else [WORKERS_CLIENTS]
    a.connect_clients = 32
    # Once: a second round in the same process reuses the memory the first one freed (malloc
    # keeps it), so it would read as ~0 kB per client.
    a.idle_runs = 1
    if a.quick:
        a.runs, a.seconds, a.idle, a.idle_runs = 1, 2, min(a.idle, 2000), 1
    fds = raise_nofile(20000)
    if fds < a.idle + 500:
        print("bench: only %d file descriptors: idle test reduced" % fds, file=sys.stderr)
        a.idle = max(100, fds - 500)
    for exe in (os.path.join(build_dir(), "pgstay"), os.path.join(build_dir(), "pgstay-lab"),
                PGBOUNCER, os.path.join(PGBIN, "pgbench")):
        if not os.access(exe, os.X_OK):
            print("bench: %s is missing" % exe, file=sys.stderr)
            return 1
    b = Bench(a)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        b.run()
        text = b.report(machine())
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  (report, clean up, fail)
        print("bench: FAILED: %s" % e, file=sys.stderr)
        return 1
    finally:
        b.cleanup()
    write_report(a.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
