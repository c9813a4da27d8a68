"""Topology you can trust (issue 10), against real lab clusters: fencing that remembers the highest
timeline and the cluster's system identifier, health with rise and fall, a probe connection that
is not the node, and login backoff."""
import os
import signal
import shutil
import tempfile
import threading
import time

import psycopg
import pytest

from conftest import Pgstay
from lab import Lab, free_port_base


def new_lab(nodes, sync=False, prefix="pgstay-topo-"):
    d = tempfile.mkdtemp(prefix=prefix)
    os.chmod(d, 0o755)  # the servers run as an unprivileged user
    lab = Lab(os.path.join(d, "lab"), nodes=nodes, port=free_port_base(), sync=sync, auth="scram")
    lab.init()
    return d, lab


def drop_lab(d, lab):
    try:
        for i in range(1, lab.nodes + 1):
            lab.run("thaw", "n%d" % i, check=False)
        lab.destroy()
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def lab3():
    """Three nodes, asynchronous: a write sent to a stale primary would succeed there and show."""
    d, lab = new_lab(3)
    with psycopg.connect(lab.dsn(1), autocommit=True) as c:
        c.execute("create table writes (client int, seq int, primary key (client, seq))")
        lsn = c.execute("select pg_current_wal_lsn()").fetchone()[0]
    for i in (2, 3):  # asynchronous: wait until the standbys have the table
        with psycopg.connect(lab.dsn(i), autocommit=True) as c:
            wait_for(lambda: c.execute("select pg_last_wal_replay_lsn() >= %s::pg_lsn",
                                       (lsn,)).fetchone()[0], what="replay on n%d" % i)
    yield lab
    drop_lab(d, lab)


class Proxy(Pgstay):
    """pgstay with [nodes] given explicitly: (name, port) pairs, in that order."""

    def __init__(self, lab, tmpdir, nodes=None, **settings):
        super().__init__(lab, tmpdir, **settings)
        self.nodes = nodes or [("n%d" % i, lab.node_port(i)) for i in range(1, lab.nodes + 1)]

    def write_config(self):
        super().write_config()
        with open(self.conf_path) as f:
            text = f.read()
        head = text[:text.index("[nodes]\n")]
        with open(self.conf_path, "w") as f:
            f.write(head + "[nodes]\n")
            for name, port in self.nodes:
                f.write("%s = host=127.0.0.1 port=%d\n" % (name, port))


@pytest.fixture
def proxies(tmp_path):
    started = []

    def make(lab, start=True, **settings):
        d = tmp_path / ("p%d" % len(started))
        d.mkdir()
        p = Proxy(lab, str(d), **settings)
        started.append(p)
        return p.start() if start else p

    yield make
    for p in started:
        p.stop()


def nodes_of(proxy):
    """SHOW NODES as {name: row dict}."""
    cols = ["name", "host", "port", "role", "writer", "timeline", "lsn", "lag_bytes", "latency_us",
            "servers", "fails", "health", "system_identifier", "max_timeline", "note"]
    return {r[0]: dict(zip(cols, r)) for r in proxy.admin("SHOW NODES")}


def writer_of(proxy):
    w = [n for n, r in nodes_of(proxy).items() if r["writer"] == "yes"]
    return w[0] if w else None


def wait_for(cond, timeout=10, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError("timed out waiting for %s" % what)


def rows_on(lab, node, client):
    with psycopg.connect(lab.dsn(node), autocommit=True) as c:
        return c.execute("select count(*) from writes where client = %s", (client,)).fetchone()[0]


class HeldInsert(threading.Thread):
    """One insert through pgstay, in a thread: it is held while there is no writer."""

    def __init__(self, proxy, client, seq=1):
        super().__init__(daemon=True)
        self.proxy = proxy
        self.client, self.seq = client, seq
        self.port = None
        self.error = None

    def run(self):
        try:
            # In session mode the login itself waits for a server: connect here, not before.
            with psycopg.connect(self.proxy.dsn(), autocommit=True) as c:
                c.execute("insert into writes values (%s, %s)", (self.client, self.seq))
                self.port = c.execute("select inet_server_port()").fetchone()[0]
        except psycopg.Error as e:
            self.error = e


class Writers:
    """Clients inserting every 5 ms, each remembering what it was told."""

    def __init__(self, proxy, n=4, base=100):
        self.halt = threading.Event()
        self.acked = {}
        self.errors = []
        self.threads = []
        for i in range(n):
            conn = psycopg.connect(proxy.dsn(), autocommit=True)
            t = threading.Thread(target=self.run, args=(conn, base + i), daemon=True)
            self.threads.append(t)

    def run(self, conn, client):
        seq = 0
        self.acked[client] = 0
        while not self.halt.is_set():
            seq += 1
            try:
                with conn.transaction():
                    conn.execute("insert into writes values (%s, %s)", (client, seq))
                    conn.execute("select pg_sleep(0.002)")
                    conn.execute("insert into writes values (%s, %s)", (client, -seq))
                self.acked[client] += 1
            except psycopg.Error as e:
                self.errors.append((client, seq, getattr(e, "sqlstate", None), str(e).strip()))
                if conn.closed:
                    return
            time.sleep(0.005)
        conn.close()

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def total(self):
        return sum(self.acked.values())

    def stop(self):
        self.halt.set()
        for t in self.threads:
            t.join(10)


def writer_announcements(proxy, node):
    log = proxy.log()
    return log.count("writer is %s " % node) + log.count("new writer %s seen" % node)


# ---- 1. memory: the highest timeline and the system identifier --------------------------------


def fail_over_and_start_stale(lab, proxy):
    """n1 crashes, the most advanced standby is promoted (timeline 2), n1 starts again as a
    primary on timeline 1: pgstay fences it. Returns the new writer."""
    lab.failover(delay_ms=100)
    new = wait_for(lambda: writer_of(proxy) not in (None, "n1") and writer_of(proxy), what="new writer")
    lab.start("n1")
    wait_for(lambda: nodes_of(proxy)["n1"]["role"] == "fenced", what="n1 fenced")
    return new


def test_fenced_node_stays_fenced_when_the_writer_freezes(lab3, proxies):
    p = proxies(lab3, health_check_timeout="300ms", failover_timeout="30s")
    new = fail_over_and_start_stale(lab3, p)
    lab3.freeze(new)
    try:
        # The real writer stops answering: n1 is the only primary left, and stays fenced.
        wait_for(lambda: writer_of(p) is None, what="the frozen writer to be lost")
        held = HeldInsert(p, 42)
        held.start()
        deadline = time.time() + 1.5
        while time.time() < deadline:
            nodes = nodes_of(p)
            assert nodes["n1"]["role"] == "fenced" and nodes["n1"]["writer"] == "no", nodes["n1"]
            time.sleep(0.05)
        assert held.is_alive() and held.port is None  # held, not failed, not sent to n1
        n1 = nodes_of(p)["n1"]
        assert "only primary left" in (n1.get("note") or ""), n1
        assert n1.get("max_timeline") == "2", n1
        assert "the only primary left is fenced" in p.log()
    finally:
        lab3.thaw(new)
    held.join(15)
    assert held.error is None, held.error
    assert held.port == lab3.node_port(new)  # served by the writer once it thawed
    assert rows_on(lab3, "n1", 42) == 0
    assert rows_on(lab3, new, 42) == 1
    assert writer_announcements(p, "n1") == 1  # only at start-up, before the failover


def test_stale_primary_started_while_the_writer_is_down(lab3, proxies):
    p = proxies(lab3, health_check_timeout="300ms", failover_timeout="30s")
    lab3.failover(delay_ms=100)
    new = wait_for(lambda: writer_of(p) not in (None, "n1") and writer_of(p), what="new writer")
    other = ({"n2", "n3"} - {new}).pop()
    lab3.crash(new)
    wait_for(lambda: writer_of(p) is None, what="the crashed writer to be lost")
    lab3.start("n1")  # the old primary, on timeline 1, while timeline 2 has no live primary
    wait_for(lambda: nodes_of(p)["n1"]["role"] == "fenced", what="n1 fenced")
    held = HeldInsert(p, 43)
    held.start()
    time.sleep(1.0)
    assert writer_of(p) is None and held.is_alive()
    lab3.promote(other)  # timeline 3
    held.join(15)
    assert held.error is None, held.error
    assert held.port == lab3.node_port(other)
    assert rows_on(lab3, "n1", 43) == 0
    assert rows_on(lab3, other, 43) == 1
    assert writer_announcements(p, "n1") == 1


def test_startup_with_a_stale_primary_listed_first(lab3, proxies):
    lab3.crash("n1")
    lab3.promote("n2")
    lab3.start("n1")  # primary on timeline 1; n2 is primary on timeline 2
    # n2 answers its first probe late: the stale n1 answers first.
    p = proxies(lab3, start=False, health_check_timeout="3s")
    lab3.freeze("n2")
    try:
        p.start(wait_writer=False)
        time.sleep(0.6)
        assert writer_of(p) is None  # not every node has answered yet
    finally:
        lab3.thaw("n2")
    wait_for(lambda: writer_of(p), what="a writer")
    assert writer_of(p) == "n2"
    nodes = nodes_of(p)
    assert nodes["n1"]["role"] == "fenced", nodes["n1"]
    assert p.admin("SHOW FAILOVERS") == []  # n1 was never taken, even briefly
    assert writer_announcements(p, "n1") == 0
    assert "every node answered or failed its first probe" in p.log()
    with p.connect() as c:
        c.execute("insert into writes values (44, 1)")
        assert c.execute("select inet_server_port()").fetchone()[0] == lab3.node_port("n2")
    assert rows_on(lab3, "n1", 44) == 0


def test_another_clusters_primary_is_never_used(lab3, proxies):
    d, other = new_lab(1, prefix="pgstay-alien-")
    try:
        with psycopg.connect(other.dsn(1), autocommit=True) as c:
            c.execute("create table writes (client int, seq int, primary key (client, seq))")
        # Listed first, same layout: a primary on timeline 1, like n1.
        nodes = [("alien", other.node_port(1))] + [("n%d" % i, lab3.node_port(i)) for i in (1, 2, 3)]
        p = proxies(lab3, nodes=nodes, health_check_timeout="300ms", failover_timeout="30s")
        assert writer_of(p) == "n1"
        alien = nodes_of(p)["alien"]
        assert alien["role"] == "foreign", alien
        assert alien["system_identifier"] != nodes_of(p)["n1"]["system_identifier"]
        with p.connect() as c:
            c.execute("insert into writes values (45, 1)")
        # The cluster's primary crashes: the other cluster's primary is the only one answering.
        lab3.crash("n1")
        wait_for(lambda: writer_of(p) is None, what="n1 to be lost")
        held = HeldInsert(p, 45, 2)
        held.start()
        time.sleep(1.0)
        assert writer_of(p) is None and held.is_alive()
        standbys = [n for n in lab3.status()["nodes"] if n["role"] == "standby"]
        lab3.promote(standbys[0]["name"])
        held.join(15)
        assert held.error is None, held.error
        assert held.port == lab3.node_port(standbys[0]["name"])
        with psycopg.connect(other.dsn(1), autocommit=True) as c:
            assert c.execute("select count(*) from writes").fetchone()[0] == 0
        assert writer_announcements(p, "alien") == 0
        assert "is not the cluster's" in p.log()
    finally:
        drop_lab(d, other)


# ---- 2. rise and fall ------------------------------------------------------------------------


def node_pids(lab, node):
    """The postmaster of a lab node and all its children."""
    with open(os.path.join(lab.dir, node, "postmaster.pid")) as f:
        top = int(f.readline())
    pids = [top]
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == top:
                        pids.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return pids


def test_writer_stall_shorter_than_the_fall_window(lab3, proxies):
    # A probe every 20 ms, 250 ms to answer: a 400 ms stall misses a probe for sure; two
    # misses in a row (health_check_fall's default, 500 ms at least) are needed to declare it
    # lost. The stall is timed here (SIGSTOP/SIGCONT of the node's processes), not by a lab
    # command whose own start-up time on a loaded machine would lengthen it.
    p = proxies(lab3, health_check_period="20ms", health_check_timeout="250ms")
    w = Writers(p).start()
    wait_for(lambda: w.total() > 20, what="writes")
    pids = node_pids(lab3, "n1")
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(0.4)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    mark = w.total()
    wait_for(lambda: w.total() > mark + 40, what="writes after the stall")
    w.stop()
    assert w.errors == []
    assert p.admin("SHOW FAILOVERS") == []
    assert nodes_of(p)["n1"]["health"] == "up"
    # It was suspect (new requests held), then answered again: nothing closed.
    assert "writer n1 is suspect" in p.log()
    assert "answered again" in p.log()


def test_probe_connection_killed_is_not_the_node(lab3, proxies):
    """A "kill idle sessions" job terminates the health-check backend: nothing else happens."""
    p = proxies(lab3)
    w = Writers(p).start()
    wait_for(lambda: w.total() > 20, what="writes")
    with psycopg.connect(lab3.dsn(1), autocommit=True) as c:
        killed = c.execute("select count(pg_terminate_backend(pid)) from pg_stat_activity "
                           "where application_name = 'pgstay-probe'").fetchone()[0]
    assert killed == 1
    time.sleep(0.3)
    mark = w.total()
    wait_for(lambda: w.total() > mark + 40, what="writes after the kill")
    w.stop()
    assert w.errors == []
    assert p.admin("SHOW FAILOVERS") == []
    assert writer_of(p) == "n1"
    assert "probe connection lost" in p.log()  # reconnected and probed again


def test_terminated_pool_server_holds_nothing(lab3, proxies):
    """pg_terminate_backend of one writer-pool server (a "kill idle sessions" job): the writer's
    probe still answers, so the writer is not made suspect and nobody's requests are held; the
    next probe alone would tell if the node were going down."""
    p = proxies(lab3)
    with p.connect() as a:
        pid = a.execute("select pg_backend_pid()").fetchone()[0]
    # its client left: the server is back in the pool, idle
    wait_for(lambda: any(r[0] == "n1" and int(r[9]) > 0 for r in p.admin("SHOW NODES")),
             what="a pool server on n1")
    with psycopg.connect(lab3.dsn(1), autocommit=True) as c:
        assert c.execute("select pg_terminate_backend(%s)", (pid,)).fetchone()[0]
    wait_for(lambda: "57P01" in p.log(), what="the termination seen by pgstay")
    with p.connect() as b:
        assert b.execute("select 1").fetchone()[0] == 1
    time.sleep(0.2)
    assert "writer n1 is suspect" not in p.log()
    assert p.admin("SHOW FAILOVERS") == []
    assert writer_of(p) == "n1"


# ---- 3. login backoff ------------------------------------------------------------------------


@pytest.fixture
def limited(lab3):
    """A role allowed one connection: a second login gets 53300 (too many connections)."""
    with psycopg.connect(lab3.dsn(1), autocommit=True) as c:
        c.execute("create role limited login password 'limited' connection limit 1")
    hog = psycopg.connect(lab3.dsn(1, user="limited") + " password=limited", autocommit=True)
    yield hog
    if not hog.closed:
        hog.close()


def test_login_53300_backs_off_and_clients_wait(lab3, proxies, limited):
    p = proxies(lab3, start=False, query_wait_timeout="30s")
    p.userlist["limited"] = "limited"
    p.start()
    result = {}

    def client():
        t = time.time()
        try:
            with psycopg.connect(p.dsn(user="limited")) as c:
                result["value"] = c.execute("select current_user").fetchone()[0]
        except psycopg.Error as e:
            result["error"] = e
        result["waited"] = time.time() - t

    th = threading.Thread(target=client, daemon=True)
    th.start()
    time.sleep(2.0)
    attempts = p.log().count("53300: too many connections")
    limited.close()  # a slot frees
    th.join(30)
    assert "error" not in result, result
    assert result["value"] == "limited"
    assert result["waited"] >= 1.9  # it waited for the slot rather than failing
    # Backoff from 50 ms doubling: a handful of attempts in 2 s, not one per loop turn.
    assert 2 <= attempts <= 8, attempts
    assert "next login in" in p.log()


def test_login_53300_timeout_gives_the_servers_error(lab3, proxies, limited):
    p = proxies(lab3, start=False, query_wait_timeout="1s")
    p.userlist["limited"] = "limited"
    p.start()
    with pytest.raises(psycopg.OperationalError) as e:
        psycopg.connect(p.dsn(user="limited"))
    assert "too many connections for role" in str(e.value)
