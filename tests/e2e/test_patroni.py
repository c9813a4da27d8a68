"""topology_source = patroni against a real Patroni cluster (one etcd, 3 members, Debian's
packages, tools/patroni-lab): the leader Patroni names is the only writer, through failover,
a crashed leader, switchover, etcd going away, and with 3 pgstay instances; a switchover told in
time (before_stop hook, or scheduled) costs clients no error (issue 15). The FakePatroni tests
at the end script /cluster against pgstay-lab's nodes for what real Patroni cannot show on cue."""
import datetime
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import tempfile
import threading
import time

import http.server
import json

import psycopg
import pytest

from conftest import Pgstay
from lab import REPO, Lab, free_port_base


def _load_patroni_lab():
    path = os.path.join(REPO, "tools", "patroni-lab")
    loader = importlib.machinery.SourceFileLoader("patroni_lab", path)
    spec = importlib.util.spec_from_loader("patroni_lab", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


patroni_lab = _load_patroni_lab()
HOOK = os.path.join(REPO, "contrib", "patroni", "pgstay-patroni-hook")
MISSING = [p for p in ("patroni", "patronictl", "etcd") if not shutil.which(p)]

# Errors a statement in flight on the lost leader may get (failover contract 3).
IN_FLIGHT_STATES = ("08006", "08007", "57P01")


@pytest.fixture(scope="module")
def plab():
    if MISSING:
        pytest.skip("not installed: %s (Debian packages patroni and etcd-server; tools/deps.sh "
                    "installs them)" % ", ".join(MISSING))
    d = tempfile.mkdtemp(prefix="pgstay-patroni-")
    os.chmod(d, 0o755)  # the servers run as an unprivileged user
    lab = patroni_lab.PatroniLab(os.path.join(d, "lab"), port=free_port_base())
    try:
        lab.start()
        yield lab
    finally:
        lab.destroy()
        shutil.rmtree(d, ignore_errors=True)


def make_pgstay(plab, tmpdir, **settings):
    s = {"topology_source": "patroni", "pool_size": 40, "failover_timeout": "20s",
         "health_check_timeout": "500ms"}
    s.update(settings)
    if "patroni_url" not in s:
        s["patroni_url"] = plab.api_urls()
    os.makedirs(tmpdir, exist_ok=True)
    return Pgstay(plab, tmpdir, **s)


@pytest.fixture
def pgstay(plab, tmp_path):
    p = make_pgstay(plab, str(tmp_path)).start()
    with p.connect() as c:
        c.execute("create table if not exists writes (client int, seq int, port int, "
                  "primary key (client, seq))")
    yield p
    p.stop()


def writer_of(proxy):
    rows = [r[0] for r in proxy.admin("SHOW NODES") if r[4] == "yes"]
    return rows[0] if rows else None


class Writer(threading.Thread):
    """A client through pgstay inserting a row every 20 ms; each acknowledged insert records the
    server it ran on (inet_server_port) and when."""

    def __init__(self, proxy, client_id, table="writes"):
        super().__init__(daemon=True)
        self.conn = psycopg.connect(proxy.dsn(), autocommit=True)
        self.table = table
        self.client_id = client_id
        self.acked = []  # (t_start, t_end, seq, port)
        self.errors = []  # (seq, sqlstate, message)
        self.broken = False
        self.halt = threading.Event()
        self.seq = 0

    def run(self):
        while not self.halt.is_set():
            self.seq += 1
            t0 = time.time()
            try:
                if self.table == "writes":
                    port = self.conn.execute(
                        "insert into writes values (%s, %s, inet_server_port()) "
                        "returning inet_server_port()", (self.client_id, self.seq)).fetchone()[0]
                else:
                    port = self.conn.execute(
                        "insert into %s values (%%s) returning inet_server_port()" % self.table,
                        (self.seq,)).fetchone()[0]
                self.acked.append((t0, time.time(), self.seq, port))
            except psycopg.Error as e:
                self.errors.append((self.seq, getattr(e, "sqlstate", None), str(e).strip()))
                if self.conn.closed:
                    self.broken = True
                    return
            time.sleep(0.02)

    def stop(self):
        self.halt.set()
        self.join(10)
        self.conn.close()


class LeaderWatch(threading.Thread):
    """Patroni's leader every 50 ms, as (time, name or None)."""

    def __init__(self, lab):
        super().__init__(daemon=True)
        self.lab = lab
        self.seen = []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            t0 = time.time()
            try:
                self.seen.append((t0, self.lab.leader()))
            except Exception:
                pass
            time.sleep(0.05)

    def stop(self):
        self.halt.set()
        self.join(10)


def idle_clients(proxy, n=10):
    conns = [psycopg.connect(proxy.dsn(), autocommit=True) for _ in range(n)]
    for c in conns:
        c.execute("set application_name = 'idle-client'")
        c.execute("select 1")
    return conns


def check_idle_clients(conns, lab, leader):
    """Every idle client runs its next statement on Patroni's leader, with no error."""
    for c in conns:
        rec, port, app = c.execute(
            "select pg_is_in_recovery(), inet_server_port(), current_setting('application_name')"
        ).fetchone()
        assert (rec, port, app) == (False, lab.node_port(leader), "idle-client")


def wait_progress(w, timeout=30):
    mark = len(w.acked)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(w.acked) > mark + 20:
            return
        time.sleep(0.05)
    raise AssertionError("no writes after the event: %s broken=%s" % (w.errors[-3:], w.broken))


def wait_leader_change(lab, old, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        ld = lab.leader()
        if ld and ld != old:
            return ld
        time.sleep(0.05)
    raise AssertionError("Patroni elected no new leader after %s" % old)


def check_writes_on_leaders(lab, w, watch, slack=1.0):
    """No acknowledged write ran on a node Patroni did not name leader around that time, and the
    writes moved from leader to leader without going back."""
    port_name = {lab.node_port(n): n for n in lab.names()}
    runs = []
    for t0, t1, seq, port in w.acked:
        name = port_name[port]
        named = {ld for t, ld in watch.seen if t0 - slack <= t <= t1 + slack}
        assert name in named, "write %d ran on %s while Patroni named %s" % (seq, name, named)
        if not runs or runs[-1] != name:
            runs.append(name)
    leaders = []
    for _, ld in watch.seen:
        if ld and (not leaders or leaders[-1] != ld):
            leaders.append(ld)
    assert runs == leaders[-len(runs):], (runs, leaders)


def gap_ms(w, after):
    """The longest time between two acknowledged writes after time `after`."""
    ts = [t1 for _, t1, _, _ in w.acked if t1 >= after - 1]
    return max((b - a for a, b in zip(ts, ts[1:])), default=0) * 1000


def test_failover_and_leader_crash(plab, pgstay):
    """patronictl failover, then SIGKILL of the leader's postgres: idle clients keep their
    connections and land on the new leader, writes resume there, none reaches another node."""
    idle = idle_clients(pgstay)
    w, watch = Writer(pgstay, 1), LeaderWatch(plab)
    watch.start()
    w.start()
    time.sleep(0.5)
    gaps = {}
    old = plab.leader()
    assert writer_of(pgstay) == old
    target = plab.sync_standby()  # synchronous_mode: the only candidate Patroni accepts
    t0 = time.time()
    plab.failover(target)
    assert wait_leader_change(plab, old) == target
    wait_progress(w)
    gaps["failover"] = gap_ms(w, t0)
    check_idle_clients(idle, plab, target)
    assert writer_of(pgstay) == target
    # The new leader's postgres dies: Patroni (primary_start_timeout = 0) fails over.
    plab.wait_healthy(60)
    t0 = time.time()
    plab.kill_postgres(target)
    new = wait_leader_change(plab, target)
    wait_progress(w)
    gaps["crash"] = gap_ms(w, t0)
    w.stop()
    watch.stop()
    check_idle_clients(idle, plab, new)
    for c in idle:
        c.close()
    assert writer_of(pgstay) == new
    assert not w.broken, w.errors
    for seq, state, msg in w.errors:
        assert state in IN_FLIGHT_STATES, (seq, state, msg)
    assert len(w.errors) <= 2, w.errors
    check_writes_on_leaders(plab, w, watch)
    print("\nwrite gap through pgstay (topology_source = patroni): %s" %
          ", ".join("%s %.0f ms" % kv for kv in gaps.items()))
    plab.wait_healthy(60)


class TxnWriter(threading.Thread):
    """A client through pgstay whose transaction is in flight most of the time: BEGIN, insert,
    sleep 0.1 s, insert, COMMIT; both rows count as acknowledged when COMMIT returns."""

    def __init__(self, proxy, client_id):
        super().__init__(daemon=True)
        self.conn = psycopg.connect(proxy.dsn())
        self.client_id = client_id
        self.acked, self.errors, self.tried = [], [], set()
        self.broken = False
        self.halt = threading.Event()

    def run(self):
        seq = 0
        while not self.halt.is_set():
            seq += 2
            t0 = time.time()
            try:
                with self.conn.transaction():
                    for k in (seq, seq + 1):
                        self.tried.add(k)
                        self.conn.execute("insert into writes values (%s, %s, inet_server_port())",
                                          (self.client_id, k))
                        if k == seq:
                            self.conn.execute("select pg_sleep(0.1)")
                self.acked += [(t0, time.time(), seq, 0), (t0, time.time(), seq + 1, 0)]
            except psycopg.Error as e:
                self.errors.append((seq, getattr(e, "sqlstate", None), str(e).strip()))
                if self.conn.closed:
                    self.broken = True
                    return

    def stop(self):
        self.halt.set()
        self.join(10)
        self.conn.close()


def check_rows(plab, clients):
    """Nothing acknowledged is lost, and nothing is in the table that was not sent; a row whose
    statement failed may be there or not (its outcome is what a failed COMMIT leaves open)."""
    with psycopg.connect(plab.dsn(plab.leader()), autocommit=True) as c:
        for cl in clients:
            rows = {r[0] for r in c.execute("select seq from writes where client = %s",
                                            (cl.client_id,))}
            acked = {seq for _, _, seq, _ in cl.acked}
            assert acked <= rows, ("acknowledged but lost", sorted(acked - rows))
            sent = getattr(cl, "tried", None) or set(range(1, cl.seq + 1))
            assert rows <= sent, sorted(rows - sent)
            if not cl.errors:
                assert rows == acked, sorted(rows ^ acked)


def test_switchover_no_client_error(plab, pgstay, tmp_path):
    """A planned switchover pgstay is told of in time costs clients no error, in session and in
    transaction pooling, with statements and transactions in flight and no admin PAUSE:
    scheduled ahead (/cluster's scheduled_switchover), or announced by the leader's before_stop
    hook (contrib/patroni/pgstay-patroni-hook; run by hand here: Debian 12's Patroni 3.0.2 has
    no before_stop, 3.0.3 has). Nothing acknowledged is lost. Then a switchover nobody announces
    (Patroni stops the leader with a fast shutdown at once): idle clients still see nothing, a
    statement in flight may get 57P01."""
    ptx = make_pgstay(plab, str(tmp_path / "txn"), pool_mode="transaction").start()
    proxies = [pgstay, ptx]
    plab.set_hook_targets([admin_conninfo(p) for p in proxies])
    idle = idle_clients(pgstay, 5) + idle_clients(ptx, 5)
    base = 10 * (os.getpid() % 1000)  # client ids of this run (the table outlives a test)
    clients = []
    for i, p in enumerate(proxies):
        clients += [Writer(p, base + 2 * i + 1), TxnWriter(p, base + 2 * i + 2)]
    watch = LeaderWatch(plab)
    watch.start()
    for cl in clients:
        cl.start()
    time.sleep(0.5)
    gaps = {}

    def switch(how):
        old, t0 = plab.leader(), time.time()
        if how == "scheduled":
            # 4 s ahead: patronictl itself takes seconds to start on a loaded machine, and Patroni
            # drops a schedule it receives more than loop_wait * 1.5 late as stale.
            plab.switchover(at=4.0)
            t0 += 4.0
        elif how == "hook":
            out = plab.run_hook(old)
            assert out.count("holds: told in time") == 2, out
            plab.switchover()
        else:
            plab.switchover()
        new = wait_leader_change(plab, old)
        for cl in clients:
            wait_progress(cl)
        gaps[how] = max(gap_ms(cl, t0) for cl in clients)
        check_idle_clients(idle, plab, new)
        for p in proxies:
            assert writer_of(p) == new
        plab.wait_healthy(60)

    try:
        for how in ("scheduled", "hook"):
            switch(how)
            told = [(cl.client_id, e) for cl in clients for e in cl.errors]
            assert told == [], (how, told)
        for p in proxies:
            assert "Patroni withdrew" not in p.log()
            assert p.log().count("the hold ends") == 2, p.log()[-3000:]
        switch("untold")
    finally:
        for cl in clients:
            cl.stop()
        watch.stop()
        for c in idle:
            c.close()
        ptx.stop()
    for cl in clients:
        assert not cl.broken, cl.errors
        assert all(s in IN_FLIGHT_STATES for _, s, _ in cl.errors) and len(cl.errors) <= 1, \
            cl.errors
    for cl in clients[0::2]:
        check_writes_on_leaders(plab, cl, watch)
    check_rows(plab, clients)
    print("\nswitchover write gap: %s; errors without being told: %d" % (
        ", ".join("%s %.0f ms" % kv for kv in gaps.items()), sum(len(c.errors) for c in clients)))


def test_etcd_stopped(plab, pgstay):
    """etcd stops: Patroni's /cluster no longer answers; pgstay keeps the writer in use while it
    answers its probes. The writer then dies: pgstay holds and never guesses, until Patroni
    answers again."""
    leader = plab.leader()
    w = Writer(pgstay, 3)
    w.start()
    plab.stop_etcd()
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            if any("stale" in (r[15] or "") for r in pgstay.admin("SHOW NODES")):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("pgstay never saw Patroni stop answering: %s" % pgstay.log()[-3000:])
        n = len(w.acked)
        time.sleep(2)
        assert len(w.acked) > n + 20, w.errors
        assert w.errors == [] and writer_of(pgstay) == leader
        assert "Patroni does not answer" in pgstay.log()
        w.stop()
        # The writer dies while Patroni is silent: whatever the other nodes become, no writer.
        plab.kill_postgres(leader)
        deadline = time.time() + 3
        while time.time() < deadline:
            assert writer_of(pgstay) in (None, leader)
            time.sleep(0.1)
        assert writer_of(pgstay) is None
    finally:
        plab.start_etcd()
    # Patroni's member data can name the dead leader "running" for a moment after etcd is
    # back: wait for the leader it elects (or restarts) and pgstay to meet.
    deadline = time.time() + 60
    while time.time() < deadline:
        ld = plab.leader()
        if ld and writer_of(pgstay) == ld:
            break
        time.sleep(0.1)
    assert ld and writer_of(pgstay) == ld, pgstay.log()[-3000:]
    plab.wait_healthy(90)
    with pgstay.connect() as c:
        assert c.execute("select inet_server_port()").fetchone()[0] == plab.node_port(ld)


def writer_at(proxy, port):
    with psycopg.connect(proxy.dsn(dbname="pgstay", port=port), autocommit=True,
                         prepare_threshold=None) as c:
        rows = c.execute("SHOW NODES").fetchall()
    return next((r[0] for r in rows if r[4] == "yes"), None)


def test_three_instances_agree(plab, tmp_path):
    """3 pgstay instances sharing one port (so_reuseport), no shared state: through a failover
    each goes from the old leader to the new one (possibly through none), never to another node,
    within a second of the others; clients of the shared port write on the new leader."""
    proxies = []
    for i in range(3):
        p = make_pgstay(plab, str(tmp_path / ("p%d" % i)), so_reuseport="on")
        if proxies:  # the first one's port; each keeps its own reader port to be told apart
            p.port = p.settings["listen_port"] = proxies[0].port
        proxies.append(p.start())
    try:
        # The kernel spreads the shared port's connections over the three.
        who = set()  # each instance told apart by its reader port
        for _ in range(30):
            with psycopg.connect(proxies[0].dsn(dbname="pgstay"), autocommit=True,
                                 prepare_threshold=None) as c:
                rows = c.execute("SHOW CONFIG").fetchall()
                who.add(next(r[1] for r in rows if r[0] == "readonly_port"))
        assert len(who) > 1, "every connection to the shared port went to one pgstay"
        seen = [[] for _ in proxies]  # (time, writer)
        halt = threading.Event()

        def sample():
            while not halt.is_set():
                for i, p in enumerate(proxies):
                    wr = writer_at(p, p.readonly_port)
                    if not seen[i] or seen[i][-1][1] != wr:
                        seen[i].append((time.time(), wr))
                time.sleep(0.02)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        time.sleep(0.3)
        old = plab.leader()
        target = plab.sync_standby()
        plab.failover(target)
        wait_leader_change(plab, old)
        deadline = time.time() + 20
        while time.time() < deadline and not all(s and s[-1][1] == target for s in seen):
            time.sleep(0.05)
        halt.set()
        th.join(5)
        for s in seen:
            names = [wr for _, wr in s]
            assert names[0] == old and names[-1] == target, seen
            assert set(names) <= {old, None, target}, seen
            assert names.count(target) == 1 and names.count(old) == 1, seen
        arrivals = [s[-1][0] for s in seen]
        assert max(arrivals) - min(arrivals) < 1.0, seen
        for _ in range(6):
            with proxies[0].connect() as c:
                assert c.execute("select inet_server_port()").fetchone()[0] == \
                    plab.node_port(target)
    finally:
        for p in proxies:
            p.stop()
    plab.wait_healthy(60)


# ---- pgstay's side alone, against a scripted /cluster (no Patroni needed) ----

class FakePatroni:
    """An HTTP server answering GET /cluster with whatever the test sets."""

    def __init__(self):
        fake = self
        self.status, self.body, self.gets = 200, b"{}", 0
        self.schedule = None  # /cluster's scheduled_switchover, as Patroni writes it

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                fake.gets += 1
                body = fake.body if self.path == "/cluster" else b""
                self.send_response(fake.status if self.path == "/cluster" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def members(self, lab, leader, state="running"):
        ms = [{"name": "n%d" % i, "host": "127.0.0.1", "port": lab.node_port(i),
               "role": "leader" if "n%d" % i == leader else "replica",
               "state": state if "n%d" % i == leader else "running"}
              for i in range(1, lab.nodes + 1)]
        doc = {"members": ms}
        if self.schedule:
            doc["scheduled_switchover"] = self.schedule
        self.status, self.body = 200, json.dumps(doc).encode()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def lab2():
    d = tempfile.mkdtemp(prefix="pgstay-fakepatroni-")
    os.chmod(d, 0o755)
    lab = Lab(os.path.join(d, "lab"), nodes=2, port=free_port_base(), sync=False, auth="scram")
    lab.init()
    yield lab
    lab.destroy()
    shutil.rmtree(d, ignore_errors=True)


def wait_writer(proxy, want, timeout=5):
    """Waits until SHOW NODES says want is the writer; returns how long that took (s)."""
    t0 = time.time()
    deadline = t0 + timeout
    while time.time() < deadline:
        if writer_of(proxy) == want:
            return time.time() - t0
        time.sleep(0.02)
    raise AssertionError("writer %s, wanted %s:\n%s" % (writer_of(proxy), want,
                                                         proxy.log()[-2000:]))


def test_scripted_patroni_is_the_authority(lab2, tmp_path):
    """n1 is the primary by its probes. Patroni naming n2 (a standby) leader: no writer at all
    (hold and log, never n1); naming nobody, or a leader that is stopping: hold; naming n1:
    writer n1; Patroni unreachable or answering nonsense: n1 kept while it answers."""
    fake = FakePatroni()
    fake.members(lab2, "n2")
    p = make_pgstay(lab2, str(tmp_path), patroni_url="127.0.0.1:%d" % fake.port,
                    failover_timeout="1s")
    try:
        p.start(wait_writer=False)
        time.sleep(0.5)
        assert writer_of(p) is None
        assert "Patroni names n2 leader but it is in recovery" in p.log()
        with pytest.raises(psycopg.OperationalError) as e:
            with p.connect() as c:
                c.execute("insert into nowhere values (1)")
        # Held (the login itself, in session mode), then failed by failover_timeout: it never
        # reached n1, which would have said 42P01.
        assert "no writer is available" in str(e.value), e.value
        fake.members(lab2, "n1")
        wait_writer(p, "n1")
        src = {r[0]: r[15] for r in p.admin("SHOW NODES")}
        assert src == {"n1": "patroni leader running", "n2": "patroni replica running"}, src
        # A change Patroni reports is acted on within about one health_check_period (100 ms
        # here; the bound leaves room for a loaded machine and the admin query's own time).
        fake.members(lab2, "n1", state="stopping")
        assert wait_writer(p, None) < 0.6
        assert "Patroni names no running leader" in p.log()
        fake.members(lab2, "n1")
        assert wait_writer(p, "n1") < 0.6
        for status, body in ((500, b"oops"), (200, b"not json")):
            fake.status, fake.body = status, body
            time.sleep(0.5)
            assert writer_of(p) == "n1"
            with p.connect() as c:
                assert c.execute("select inet_server_port()").fetchone()[0] == lab2.node_port(1)
            assert "stale" in p.admin("SHOW NODES")[0][15]
        assert "Patroni does not answer" in p.log()
        assert p.log().count("Patroni does not answer") == 1  # once per change, not per poll
        fake.members(lab2, "n1")
        time.sleep(0.3)
        assert "Patroni answers again" in p.log()
        gets = fake.gets
        time.sleep(1)
        assert 5 <= fake.gets - gets <= 15, "polled %d times in 1 s" % (fake.gets - gets)
    finally:
        p.stop()
        fake.close()


def admin_conninfo(proxy):
    return proxy.dsn(dbname="pgstay")


def run_hook(node, *conninfos, timeout=30):
    """contrib/patroni/pgstay-patroni-hook as Patroni's before_stop runs it."""
    r = subprocess.run([HOOK, node] + list(conninfos), capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r
    return r.stderr


def test_hook_without_switchover(lab2, tmp_path):
    """SWITCHOVER n1 (what Patroni's before_stop hook sends): with n1 the writer, the hook
    returns once the transaction in flight has committed (it is not cut), new transactions wait,
    and since no switchover follows (Patroni keeps naming n1), pgstay resumes on n1 after
    failover_timeout. Told of a node that is not the writer, nothing is held."""
    fake = FakePatroni()
    fake.members(lab2, "n1")
    # Session pooling: c4 below keeps its server while PAUSE holds its next transaction (one
    # waiting for a server would meet failover_timeout, PAUSE or not).
    p = make_pgstay(lab2, str(tmp_path), patroni_url="127.0.0.1:%d" % fake.port,
                    failover_timeout="2s", pool_mode="session")
    try:
        p.start()
        with p.connect() as c:
            c.execute("create table if not exists hook_t (x int)")
        t0 = time.time()
        run_hook("n2", admin_conninfo(p))
        assert time.time() - t0 < 1.0
        assert "n2 is not the writer" in p.log()
        c1 = p.connect(autocommit=False)
        c1.execute("insert into hook_t values (1)")  # a transaction in flight
        out = []
        th = threading.Thread(target=lambda: out.append(run_hook("n1", admin_conninfo(p))))
        th.start()
        time.sleep(0.2)
        # Patroni 3.0.3+ publishes the leader as "stopping" while before_stop runs: it stays the
        # writer (its PostgreSQL still runs) so that the transaction in flight can end.
        fake.members(lab2, "n1", state="stopping")
        time.sleep(0.5)
        assert th.is_alive(), out  # waiting for c1's transaction to end
        assert writer_of(p) == "n1"
        c1.execute("insert into hook_t values (2)")  # it goes on, and commits
        c1.commit()
        th.join(5)
        assert not th.is_alive() and "holds: told in time" in out[0], out
        fake.members(lab2, "n1")  # its stop failed, or never came: Patroni says running again
        t1 = time.time()
        with p.connect() as c2:  # held: the writer is about to stop
            c2.execute("insert into hook_t values (3)")
            held = time.time() - t1
            assert c2.execute("select count(*) from hook_t").fetchone()[0] == 3
        assert 1.0 < held < 4.0, held
        assert writer_of(p) == "n1"
        assert "the writer did not stop within failover_timeout" in p.log()
        # The hold is over: nothing waits any more.
        t1 = time.time()
        with p.connect() as c3:
            c3.execute("select 1")
        assert time.time() - t1 < 0.5
        c1.close()
        # An operator's PAUSE during such a hold is the operator's: the hold's end leaves it.
        c4 = p.connect()
        c4.execute("select 1")  # logged in and lent its server before the hold
        assert "holds: told in time" in run_hook("n1", admin_conninfo(p))
        p.admin("PAUSE")
        th = threading.Thread(target=lambda: c4.execute("insert into hook_t values (4)"))
        th.start()
        time.sleep(2.5)
        assert p.log().count("the writer did not stop within failover_timeout") == 2
        assert th.is_alive()
        p.admin("RESUME")
        th.join(5)
        assert not th.is_alive()
        c4.close()
    finally:
        p.stop()
        fake.close()


def test_scheduled_switchover_withdrawn(lab2, tmp_path):
    """/cluster shows a switchover Patroni scheduled: pgstay holds new transactions from
    PLANNED_LEAD_MS (1 s) before its time; Patroni withdraws it while n1 stays leader: resumed
    at once, and no client saw an error."""
    fake = FakePatroni()
    fake.members(lab2, "n1")
    p = make_pgstay(lab2, str(tmp_path), patroni_url="127.0.0.1:%d" % fake.port)
    try:
        p.start()
        with p.connect() as c:
            c.execute("create table if not exists sched_t (x int)")
        w = Writer(p, 1, table="sched_t")
        w.start()
        time.sleep(0.3)
        # In another time zone than UTC, as Patroni writes what patronictl was given.
        tz = datetime.timezone(datetime.timedelta(hours=-3, minutes=-30))
        at = datetime.datetime.now(tz) + datetime.timedelta(seconds=1.6)
        fake.schedule = {"at": at.isoformat(), "from": "n1", "to": "n2"}
        fake.members(lab2, "n1")
        t0 = time.time()
        time.sleep(1.5)  # held from ~0.6 s on
        fake.schedule = None
        fake.members(lab2, "n1")
        t_withdrawn = time.time()
        wait_progress(w, 5)
        w.stop()
        assert w.errors == [] and not w.broken
        ts = [t1 for _, t1, _, _ in w.acked]
        gaps = [(a, b) for a, b in zip(ts, ts[1:]) if b - a > 0.4]
        assert len(gaps) == 1, gaps
        start, end = gaps[0]
        assert 0.3 < start - t0 < 0.9, (start - t0)  # 1 s before the scheduled time
        assert end - t_withdrawn < 0.5, (end - t_withdrawn)
        log = p.log()
        assert "a switchover from n1 is scheduled" in log
        assert "Patroni withdrew the scheduled switchover" in log
    finally:
        p.stop()
        fake.close()


def test_hook_then_leader_restart(lab2, tmp_path):
    """The hook for the writer, then its PostgreSQL restarts in place (patronictl restart of the
    leader: Patroni keeps the lock, says "stopping", "stopped", then "running"): the hold lasts
    through the restart and ends when the same node is the writer again; the writing client sees
    no error."""
    fake = FakePatroni()
    fake.members(lab2, "n1")
    p = make_pgstay(lab2, str(tmp_path), patroni_url="127.0.0.1:%d" % fake.port)
    try:
        p.start()
        with p.connect() as c:
            c.execute("create table if not exists restart_t (x int)")
        w = Writer(p, 1, table="restart_t")
        w.start()
        time.sleep(0.3)
        out = run_hook("n1", admin_conninfo(p))
        assert "holds: told in time" in out, out
        fake.members(lab2, "n1", state="stopping")
        lab2.stop("n1")
        fake.members(lab2, "n1", state="stopped")
        wait_writer(p, None)
        lab2.start("n1")
        fake.members(lab2, "n1")
        wait_writer(p, "n1", 15)
        wait_progress(w, 10)
        w.stop()
        assert w.errors == [] and not w.broken, w.errors
        assert "writer n1 found again after it stopped" in p.log()
    finally:
        p.stop()
        fake.close()
        lab2.start("n1")  # "already running", unless the test failed with n1 stopped
