"""SIGHUP with clients connected (issue 13): [nodes] changed by a reload (a new node is probed and
judged as at start-up, a removed one drains, the writer is never removed silently), against a real
lab cluster with pgbench running."""
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import psycopg
import pytest

from lab import Lab, free_port_base
from test_topology import Proxy, nodes_of, wait_for


@pytest.fixture(scope="module")
def lab3():
    """Three nodes, asynchronous; nothing here crashes a node, so the tests share it."""
    d = tempfile.mkdtemp(prefix="pgstay-reload-")
    os.chmod(d, 0o755)  # the servers run as an unprivileged user
    lab = Lab(os.path.join(d, "lab"), nodes=3, port=free_port_base(), sync=False, auth="scram")
    lab.init()
    out = subprocess.run(["pgbench", "-i", "-s", "1", "-q", lab.dsn(1)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    with psycopg.connect(lab.dsn(1), autocommit=True) as c:
        lsn = c.execute("select pg_current_wal_lsn()").fetchone()[0]
    for i in (2, 3):
        with psycopg.connect(lab.dsn(i), autocommit=True) as c:
            wait_for(lambda: c.execute("select pg_last_wal_replay_lsn() >= %s::pg_lsn",
                                       (lsn,)).fetchone()[0], what="replay on n%d" % i)
    yield lab
    lab.destroy()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def proxies(tmp_path):
    started = []

    def make(lab, **settings):
        d = tmp_path / ("p%d" % len(started))
        d.mkdir()
        p = Proxy(lab, str(d), **settings)
        started.append(p)
        return p.start()

    yield make
    for p in started:
        p.stop()


def reload(p, nodes=None, **settings):
    """Write p's file again (other [nodes], other settings), SIGHUP, wait for the reload."""
    if nodes is not None:
        p.nodes = nodes
    p.settings.update(settings)
    p.write_config()
    n = p.log().count("configuration reloaded")
    p.signal(signal.SIGHUP)
    wait_for(lambda: p.log().count("configuration reloaded") > n, what="the reload")


def node(lab, i):
    return ("n%d" % i, lab.node_port(i))


def server_port(conn):
    return conn.execute("select inet_server_port()").fetchone()[0]


def test_add_node_by_reload(lab3, cluster1, proxies):
    """A node added by SIGHUP is probed and serves reads once it answers, with the clients
    connected before untouched; a node of another cluster added the same way is judged as at
    start-up (system identifier): foreign, never used."""
    p = proxies(lab3, nodes=[node(lab3, 1), node(lab3, 2)], pool_mode="session")
    w = p.connect()
    w.execute("set application_name = 'kept'")
    r = p.connect(port=p.readonly_port)
    assert server_port(r) == lab3.node_port(2)
    assert "n3" not in nodes_of(p)
    reload(p, nodes=[node(lab3, 1), node(lab3, 2), node(lab3, 3),
                     ("nx", cluster1.node_port(1))])
    assert "needs a restart" not in p.log()
    wait_for(lambda: nodes_of(p).get("n3", {}).get("role") == "standby", what="n3 a standby")
    wait_for(lambda: nodes_of(p).get("nx", {}).get("role") == "foreign", what="nx foreign")
    # The least-loaded standby is the new one: a new reader session is served there.
    r2 = p.connect(port=p.readonly_port)
    assert server_port(r2) == lab3.node_port(3)
    # The clients from before the reload go on, on their servers, their session intact.
    assert w.execute("show application_name").fetchone()[0] == "kept"
    assert server_port(w) == lab3.node_port(1)
    assert server_port(r) == lab3.node_port(2)
    rows = nodes_of(p)
    assert rows["n1"]["writer"] == "yes"
    assert str(rows["nx"]["servers"]) == "0" and rows["nx"]["writer"] == "no"
    assert "is not the cluster's" in rows["nx"]["note"]
    for c in (w, r, r2):
        c.close()


class Bench(threading.Thread):
    """pgbench through pgstay for a few seconds; its output kept."""

    def __init__(self, dsn, *args):
        super().__init__(daemon=True)
        self.cmd = ["pgbench", "-n", "-c", "4", "-j", "2", "-T", "5"] + list(args) + [dsn]
        self.out = None

    def run(self):
        self.out = subprocess.run(self.cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_remove_standby_by_reload_under_traffic(lab3, proxies, mode):
    """A standby removed by SIGHUP while pgbench writes and reads through pgstay and clients sit
    inside transactions on it: no client is dropped and none sees an error; the node shows as
    removed while a transaction still uses it, gets no new connection, and leaves SHOW NODES once
    its last server is released."""
    p = proxies(lab3, pool_mode=mode, pool_size=8)
    # Reader clients inside a transaction, until one is on n3 (least-loaded spreads them).
    held = []
    for _ in range(4):
        c = p.connect(port=p.readonly_port, dbname="postgres")
        c.execute("begin")
        held.append((c, server_port(c)))
    on3 = [c for c, port in held if port == lab3.node_port(3)]
    assert on3, [port for _, port in held]
    idle = p.connect(port=p.readonly_port)
    idle.execute("select 1")
    reads = Bench(p.dsn(port=p.readonly_port), "-S")
    writes = Bench(p.dsn(), "-N")
    reads.start()
    writes.start()
    time.sleep(1.5)
    reload(p, nodes=[node(lab3, 1), node(lab3, 2)])
    wait_for(lambda: nodes_of(p)["n3"]["role"] == "removed", what="n3 removed")
    # New reader sessions go to n2 only, while n3 still serves the transactions open on it.
    for _ in range(3):
        with p.connect(port=p.readonly_port) as c:
            assert server_port(c) == lab3.node_port(2)
    reads.join()
    writes.join()
    for b in (reads, writes):
        assert b.out.returncode == 0, b.out.stdout + b.out.stderr
        assert "error" not in (b.out.stdout + b.out.stderr).lower(), b.out.stderr
        assert "number of failed transactions: 0" in b.out.stdout, b.out.stdout
    # The transactions on n3 go on there and end well; then n3 drains and is gone.
    assert "n3" in nodes_of(p)
    for c, port in held:
        assert server_port(c) == port
        c.execute("select count(*) from pgbench_accounts")
        c.execute("commit")
    assert idle.execute("select 2").fetchone()[0] == 2
    for c, _ in held:
        c.close()
    idle.close()
    wait_for(lambda: "n3" not in nodes_of(p), what="n3 drained")
    assert "node n3: drained" in p.log()
    with psycopg.connect(lab3.dsn(3), autocommit=True) as c:
        assert c.execute("select count(*) from pg_stat_activity where backend_type = "
                         "'client backend' and pid <> pg_backend_pid()").fetchone()[0] == 0


def test_reload_refuses_removing_the_writer(lab3, proxies):
    """A reload that removes the writer from [nodes] is refused for [nodes] with a clear log line
    (switch over first); the other keys of the file apply, and writes go on."""
    p = proxies(lab3, pool_size=10)
    c = p.connect()
    c.execute("create table if not exists reload_w (x int)")
    reload(p, nodes=[node(lab3, 2), node(lab3, 3)], pool_size=7)
    log = p.log()
    assert "[nodes] change refused: it removes n1, the writer now" in log
    cfg = {r[0]: r[1] for r in p.admin("SHOW CONFIG")}
    assert cfg["pool_size"] == "7"
    rows = nodes_of(p)
    assert rows["n1"]["writer"] == "yes" and rows["n1"]["role"] == "primary"
    c.execute("insert into reload_w values (1)")
    assert server_port(c) == lab3.node_port(1)
    # Moving the writer (another port under its name) is refused the same way.
    reload(p, nodes=[("n1", lab3.node_port(2)), node(lab3, 2), node(lab3, 3)])
    assert "[nodes] change refused: it moves n1, the writer now" in p.log()
    assert str(nodes_of(p)["n1"]["port"]) == str(lab3.node_port(1))
    c.execute("insert into reload_w values (2)")
    c.close()
