"""SIGHUP with clients connected (issue 13): [nodes] changed by a reload (a new node is probed and
judged as at start-up, a removed one drains, the writer is never removed silently), against a real
lab cluster with pgbench running."""
import grp
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
from test_topology import Proxy, drop_lab, new_lab, nodes_of, wait_for, writer_of


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


def test_added_stale_primary_is_fenced(proxies):
    """The memory of the highest timeline covers nodes added by a reload: after a failover to
    timeline 2, the old primary is removed, started again as a primary on timeline 1 and added
    back: it is fenced at its first probe, never the writer, and writes stay on the new one."""
    d, lab = new_lab(3, prefix="pgstay-reload-fence-")
    try:
        p = proxies(lab, health_check_timeout="300ms")
        lab.failover(delay_ms=100)
        new = wait_for(lambda: writer_of(p) not in (None, "n1") and writer_of(p),
                       what="new writer")
        reload(p, nodes=[n for n in p.nodes if n[0] != "n1"])
        wait_for(lambda: "n1" not in nodes_of(p), what="n1 gone")
        lab.start("n1")  # a primary again, on timeline 1
        reload(p, nodes=p.nodes + [("n1", lab.node_port(1))])
        wait_for(lambda: nodes_of(p).get("n1", {}).get("role") == "fenced", what="n1 fenced")
        with p.connect() as c:
            c.execute("create table if not exists fenced_w (x int)")
            c.execute("insert into fenced_w values (1)")
            assert server_port(c) == lab.node_port(new)
        time.sleep(0.5)
        rows = nodes_of(p)
        assert rows["n1"]["role"] == "fenced" and rows["n1"]["writer"] == "no", rows["n1"]
        assert writer_of(p) == new
        assert p.log().count("new writer n1 seen") == 0
    finally:
        drop_lab(d, lab)


# ---- every reloadable key, by SIGHUP, with clients connected ----

def changed_values(d, p, certs):
    """key -> (value written to the file, value SHOW CONFIG must then show), for the keys whose
    new value cannot be derived from the old one (strings, enums, paths, limits)."""
    with open(os.path.join(d, "users2.txt"), "w") as f:
        for u, pw in p.userlist.items():
            f.write('"%s" "%s"\n' % (u, pw))
    with open(os.path.join(d, "hba.conf"), "w") as f:
        f.write("local all all trust\nhost all all 127.0.0.1/32 trust\n")
    sockdir = os.path.join(d, "sock")
    os.mkdir(sockdir)
    group = grp.getgrgid(os.getgid()).gr_name
    same = lambda v: (v, v)  # noqa: E731
    return {
        "unix_socket_dir": same(sockdir),
        "unix_socket_mode": same("0770"),
        "unix_socket_group": same(group),
        "max_packet_size": ("512MB", str(512 * 1024 * 1024)),
        "max_replica_lag": ("32MB", str(32 * 1024 * 1024)),
        "auth_type": same("md5"),
        "auth_file": same(os.path.join(d, "users2.txt")),
        "auth_hba_file": same(os.path.join(d, "hba.conf")),
        "auth_user": same("postgres"),
        "auth_query": same("SELECT usename, passwd FROM pg_shadow WHERE usename = $1 LIMIT 1"),
        "admin_users": same("postgres,app"),
        "stats_users": same("app"),
        "track_extra_parameters": same("search_path"),
        "ignore_startup_parameters": same("extra_float_digits"),
        "server_reset_query": same("RESET ALL"),
        "server_check_query": same("SELECT 2"),
        "health_check_user": same("probe"),
        "health_check_dbname": same("app"),
        "readonly_fallback": same("error"),
        "logfile": same(p.log_path),  # the file the test reads: appended to, as stdout is
        "syslog_ident": same("pgstay-reload"),
        "syslog_facility": same("local3"),
        "client_tls_sslmode": same("allow"),
        "client_tls_cert_file": same(certs("server.crt")),
        "client_tls_key_file": same(certs("server.key")),
        "client_tls_ca_file": same(certs("ca.crt")),
        "client_tls_protocols": same("tlsv1.2,tlsv1.3"),
        "client_tls_ciphers": same("HIGH:!aNULL"),
        "server_tls_sslmode": same("prefer"),
        "server_tls_cert_file": same(certs("client_postgres.crt")),
        "server_tls_key_file": same(certs("client_postgres.key")),
        "server_tls_ca_file": same(certs("ca.crt")),
        "server_tls_protocols": same("tlsv1.2,tlsv1.3"),
        "server_tls_ciphers": same("HIGH:!aNULL"),
        "max_db_connections": same("100"),
        "max_user_connections": same("100"),
        "health_check_rise": same("2"),
        "health_check_fall": same("3"),
    }


def derived(key, shown):
    """A new value from the old for numbers, durations and booleans; None otherwise."""
    if shown in ("on", "off"):
        v = "off" if shown == "on" else "on"
        return v, v
    if shown.endswith("ms") and shown[:-2].isdigit():
        ms = int(shown[:-2])
        ms = ms * 2 if ms > 0 else 3600000  # 0 (never) becomes an hour: no client is timed out
        return "%dms" % ms, "%dms" % ms
    if shown.isdigit():
        v = str(int(shown) + 1)
        return v, v
    return None


@pytest.fixture(scope="module")
def reload_certs():
    from test_tls import make_ca, make_cert
    d = tempfile.mkdtemp(prefix="pgstay-reload-tls-")
    os.chmod(d, 0o755)
    make_ca(d, "ca")
    make_cert(d, "server", "ca", "localhost", "DNS:localhost,IP:127.0.0.1")
    make_cert(d, "server2", "ca", "localhost", "DNS:localhost,IP:127.0.0.1")
    make_cert(d, "client_postgres", "ca", "postgres")
    make_cert(d, "client2", "ca", "postgres")
    yield lambda name: os.path.join(d, name)
    shutil.rmtree(d, ignore_errors=True)


def test_reload_each_reloadable_key(cluster1, make_proxy, reload_certs, tmp_path):
    """Every key SHOW CONFIG marks changeable (config.c's reloadable column) is changed in the file
    and applied by SIGHUP, one reload each, while a writer session, a reader session and a client
    inside a transaction stay connected: SHOW CONFIG shows each new value, no reload fails, and
    afterwards every client is still there, on the same backend, its session intact. A key that
    needs a restart (listen_backlog) is logged and keeps its running value."""
    with psycopg.connect(cluster1.dsn(1), autocommit=True) as c:
        if not c.execute("select 1 from pg_roles where rolname = 'probe'").fetchone():
            c.execute("create role probe login superuser password 'probe'")
    p = make_proxy(cluster1, start=False, pool_mode="session")
    p.userlist["probe"] = "probe"
    p.start()
    d = str(tmp_path)
    explicit = changed_values(d, p, reload_certs)

    w = p.connect(user="app", dbname="app")
    w.execute("set application_name = 'kept'")
    w_pid = w.execute("select pg_backend_pid()").fetchone()[0]
    r = p.connect(port=p.readonly_port)
    r_pid = r.execute("select pg_backend_pid()").fetchone()[0]
    t = p.connect(user="app", dbname="app")
    t.execute("create table if not exists reload_keys (k text)")
    t.execute("begin")
    t.execute("insert into reload_keys values ('before')")
    t_pid = t.execute("select pg_backend_pid()").fetchone()[0]

    config = [(row[0], row[1], row[3]) for row in p.admin("SHOW CONFIG")]
    reloadable = [(k, v) for k, v, changeable in config if changeable == "yes"]
    assert len(reloadable) > 50, reloadable
    # A certificate and its key are loaded together: the one is written with the other (the
    # certificate first with a key, then the key with a second certificate).
    pairs = {"client_tls_cert_file": {"client_tls_key_file": reload_certs("server.key")},
             "client_tls_key_file": {"client_tls_cert_file": reload_certs("server2.crt")},
             "server_tls_cert_file": {"server_tls_key_file": reload_certs("client_postgres.key")},
             "server_tls_key_file": {"server_tls_cert_file": reload_certs("client2.crt")}}
    explicit["client_tls_key_file"] = (reload_certs("server2.key"),) * 2
    explicit["server_tls_key_file"] = (reload_certs("client2.key"),) * 2
    done = []
    for key, _ in reloadable:
        old = {row[0]: row[1] for row in p.admin("SHOW CONFIG")}[key]
        new = explicit.get(key) or derived(key, old)
        assert new, "no new value for the reloadable key %s (now %r): add one" % (key, old)
        assert new[1] != old, (key, old)
        n_ok = p.log().count("configuration reloaded")
        n_bad = p.log().count("reload failed")
        p.settings.update(pairs.get(key, {}))
        p.settings[key] = new[0]
        p.write_config()
        p.signal(signal.SIGHUP)
        wait_for(lambda: p.log().count("configuration reloaded") > n_ok
                 or p.log().count("reload failed") > n_bad, what="reload of " + key)
        assert p.log().count("reload failed") == n_bad, (key, p.log()[-2000:])
        shown = {row[0]: row[1] for row in p.admin("SHOW CONFIG")}
        assert shown[key] == new[1], (key, shown[key], new[1])
        done.append(key)
        # the clients are still connected after each one
        assert w.execute("select 1").fetchone()[0] == 1, key
    assert "needs a restart" not in p.log()

    # A key that needs a restart: logged, the running value kept.
    old_backlog = {row[0]: row[1] for row in p.admin("SHOW CONFIG")}["listen_backlog"]
    reload(p, listen_backlog=int(old_backlog) + 64)
    assert "config: listen_backlog changed to %d but needs a restart; keeping %s" % (
        int(old_backlog) + 64, old_backlog) in p.log()
    assert {row[0]: row[1] for row in p.admin("SHOW CONFIG")}["listen_backlog"] == old_backlog

    # No client was dropped: same backends, session and transaction intact.
    assert w.execute("show application_name").fetchone()[0] == "kept"
    assert w.execute("select pg_backend_pid()").fetchone()[0] == w_pid
    assert r.execute("select pg_backend_pid()").fetchone()[0] == r_pid
    t.execute("insert into reload_keys values ('after')")
    assert t.execute("select pg_backend_pid()").fetchone()[0] == t_pid
    t.execute("commit")
    assert t.execute("select count(*) from reload_keys where k in ('before', 'after')"
                     ).fetchone()[0] >= 2
    # New clients get in under the new settings (md5 overridden by the hba file's trust).
    with p.connect(user="app", dbname="app") as c:
        assert c.execute("select 3").fetchone()[0] == 3
    for c in (w, r, t):
        c.close()


def test_readdressed_node_metrics_unique(lab3, proxies):
    """A standby whose address changes by SIGHUP while a transaction is open on it is a new node
    of the same name, the old one draining: /metrics still names each series once (Prometheus
    rejects a whole scrape with a duplicate series), and the n3 it shows is the one in [nodes]."""
    import urllib.request
    from conftest import free_port
    port = free_port()
    p = proxies(lab3, pool_mode="session", metrics_listen="127.0.0.1:%d" % port)
    held = []
    for _ in range(4):
        c = p.connect(port=p.readonly_port)
        c.execute("begin")
        held.append((c, server_port(c)))
    assert [c for c, sp in held if sp == lab3.node_port(3)]
    # n3 "moves" to an address where nothing listens: removed (draining) and added again
    reload(p, nodes=[node(lab3, 1), node(lab3, 2), ("n3", free_port())])
    wait_for(lambda: "added to [nodes] by a reload" in p.log(), what="the new n3")

    def series():
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
            return [tuple(ln.rsplit(" ", 1)) for ln in r.read().decode().splitlines()
                    if ln and not ln.startswith("#")]

    got = series()
    names = [k for k, _ in got]
    assert not sorted({k for k in names if names.count(k) > 1})
    assert dict(got)['pgstay_node_role{node="n3",role="removed"}'] == "0"
    for c, _ in held:
        c.execute("commit")
        c.close()
    wait_for(lambda: "node n3: drained" in p.log(), what="the old n3 drained")
    names = [k for k, _ in series()]
    assert not sorted({k for k in names if names.count(k) > 1})
