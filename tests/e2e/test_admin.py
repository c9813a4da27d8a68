"""The admin console as PgBouncer's users know it: the `pgbouncer` database, PgBouncer 1.18's
SHOW columns and types, statistics that match a known workload, and the control verbs."""
import os
import signal
import subprocess
import time
import urllib.request

import psycopg
import pytest

from conftest import free_port

INT4, INT8, TEXT, NUMERIC = 23, 20, 25, 1700
SOCKET = [("type", TEXT), ("user", TEXT), ("database", TEXT), ("state", TEXT), ("addr", TEXT),
          ("port", INT4), ("local_addr", TEXT), ("local_port", INT4), ("connect_time", TEXT),
          ("request_time", TEXT), ("wait", INT4), ("wait_us", INT4), ("close_needed", INT4),
          ("ptr", TEXT), ("link", TEXT), ("remote_pid", INT4), ("tls", TEXT),
          ("application_name", TEXT)]
TOTALS = [("xact_count", NUMERIC), ("query_count", NUMERIC), ("bytes_received", NUMERIC),
          ("bytes_sent", NUMERIC), ("xact_time", NUMERIC), ("query_time", NUMERIC),
          ("wait_time", NUMERIC)]
# What PgBouncer 1.18 (Debian 12's) answers, copied from a live one: names, order, types.
PGBOUNCER_118 = {
    "POOLS": [("database", TEXT), ("user", TEXT), ("cl_active", INT4), ("cl_waiting", INT4),
              ("cl_active_cancel_req", INT4), ("cl_waiting_cancel_req", INT4),
              ("sv_active", INT4), ("sv_active_cancel", INT4), ("sv_being_canceled", INT4),
              ("sv_idle", INT4), ("sv_used", INT4), ("sv_tested", INT4), ("sv_login", INT4),
              ("maxwait", INT4), ("maxwait_us", INT4), ("pool_mode", TEXT)],
    "CLIENTS": SOCKET,
    "SERVERS": SOCKET,
    "STATS": [("database", TEXT)] + [("total_" + n, NUMERIC) for n in (
        "xact_count", "query_count", "received", "sent", "xact_time", "query_time",
        "wait_time")] + [("avg_" + n, NUMERIC) for n in (
            "xact_count", "query_count", "recv", "sent", "xact_time", "query_time",
            "wait_time")],
    "STATS_TOTALS": [("database", TEXT)] + TOTALS,
    "STATS_AVERAGES": [("database", TEXT)] + TOTALS,
    "LISTS": [("list", TEXT), ("items", INT4)],
    "DATABASES": [("name", TEXT), ("host", TEXT), ("port", INT4), ("database", TEXT),
                  ("force_user", TEXT), ("pool_size", INT4), ("min_pool_size", INT4),
                  ("reserve_pool", INT4), ("pool_mode", TEXT), ("max_connections", INT4),
                  ("current_connections", INT4), ("paused", INT4), ("disabled", INT4)],
    "USERS": [("name", TEXT), ("pool_mode", TEXT)],
    "CONFIG": [("key", TEXT), ("value", TEXT), ("default", TEXT), ("changeable", TEXT)],
    "MEM": [("name", TEXT), ("size", INT4), ("used", INT4), ("free", INT4), ("memtotal", INT4)],
    "VERSION": [("version", TEXT)],
}
LISTS_118 = ["databases", "users", "pools", "free_clients", "used_clients", "login_clients",
             "free_servers", "used_servers", "dns_names", "dns_zones", "dns_queries",
             "dns_pending"]


def admin_conn(p, dbname="pgbouncer"):
    return psycopg.connect(p.dsn(dbname=dbname), autocommit=True, prepare_threshold=None)


def show(conn, what):
    cur = conn.execute("SHOW " + what)
    cols = [d.name for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def totals(p, db="postgres"):
    rows = [r for r in p.admin_rows("SHOW STATS_TOTALS") if r["database"] == db]
    return rows[0] if rows else {k: 0 for k, _ in TOTALS}


@pytest.fixture
def txp(cluster1, make_proxy):
    return make_proxy(cluster1, pool_mode="transaction", pool_size=4)


def test_pgbouncer_alias_and_columns(proxy):
    with proxy.connect() as c:
        c.execute("select 1")
        with admin_conn(proxy) as a:
            for what, want in PGBOUNCER_118.items():
                cur = a.execute("SHOW " + what)
                got = [(d.name, d.type_code) for d in cur.description]
                assert got[:len(want)] == want, what
                assert cur.statusmessage == "SHOW", what
                cur.fetchall()
            assert [r["list"] for r in show(a, "LISTS")] == LISTS_118
            assert "PgBouncer 1.18.0" in show(a, "VERSION")[0]["version"]
            # pgstay's own commands answer on the alias too
            assert show(a, "NODES")[0]["writer"] == "yes"
            # keywords in any case, a trailing semicolon
            assert a.execute("show pools;").fetchall()


def test_show_reports_state(cluster1, make_proxy):
    # session mode: the client keeps its server, whose row names it
    proxy = make_proxy(cluster1, pool_mode="session")
    with proxy.connect(application_name="app-x") as c:
        pid = c.execute("select pg_backend_pid()").fetchone()[0]
        with admin_conn(proxy) as a:
            cl = [r for r in show(a, "CLIENTS") if r["application_name"] == "app-x"]
            assert len(cl) == 1 and cl[0]["type"] == "C" and cl[0]["database"] == "postgres"
            assert cl[0]["state"] == "active" and cl[0]["addr"] == "127.0.0.1"
            assert cl[0]["local_port"] == proxy.port and cl[0]["connect_time"].endswith(" UTC")
            sv = [r for r in show(a, "SERVERS") if r["remote_pid"] == pid]
            assert len(sv) == 1 and sv[0]["state"] == "active" and sv[0]["type"] == "S"
            # the client and its server point at each other
            assert cl[0]["link"] == sv[0]["ptr"] and sv[0]["link"] == cl[0]["ptr"]
            pool = [r for r in show(a, "POOLS") if r["database"] == "postgres"][0]
            assert pool["cl_active"] >= 1 and pool["sv_active"] >= 1
            assert pool["pool_mode"] == "session" and pool["role"] == "writer"
            db = [r for r in show(a, "DATABASES") if r["name"] == "postgres"][0]
            assert db["pool_size"] == 10 and db["current_connections"] >= 1
            assert db["port"] == proxy.lab.node_port(1) and db["disabled"] == 0
            assert {"postgres"} <= {r["name"] for r in show(a, "USERS")}
            lists = {r["list"]: r["items"] for r in show(a, "LISTS")}
            assert lists["pools"] >= 1 and lists["used_clients"] >= 2
            cfg = {r["key"]: r for r in show(a, "CONFIG")}
            assert cfg["pool_size"]["value"] == "10" and cfg["pool_size"]["changeable"] == "yes"
            assert cfg["listen_port"]["changeable"] == "no"
            mem = {r["name"]: r for r in show(a, "MEM")}
            assert mem["client_cache"]["used"] >= 2


def test_stats_match_workload(txp):
    before = totals(txp)
    # prepare_threshold=None: psycopg would otherwise prepare a statement run 5 times (a Parse
    # and Sync of its own: one request more, which PgBouncer counts too).
    with txp.connect(prepare_threshold=None) as c:
        for _ in range(50):
            c.execute("select 1")  # one request (Sync), one transaction each
        for _ in range(5):
            with c.transaction():  # BEGIN, two statements, COMMIT: four requests, one transaction
                c.execute("select 1")
                c.execute("select 2")
    after = totals(txp)
    d = {k: int(after[k]) - int(before[k]) for k, _ in TOTALS}
    assert d["query_count"] == 70, d
    assert d["xact_count"] == 55, d
    assert d["bytes_received"] > 50 * 20 and d["bytes_sent"] > 50 * 20, d
    assert d["query_time"] > 0 and d["xact_time"] >= d["query_time"] > 0, d
    stats = [r for r in txp.admin_rows("SHOW STATS") if r["database"] == "postgres"][0]
    assert int(stats["total_query_count"]) == int(after["query_count"])
    assert int(stats["total_requests"]) == int(after["query_count"])
    # The counters outlive the pool (freed when unused): they never go back.
    time.sleep(1.5)
    assert int(totals(txp)["query_count"]) >= int(after["query_count"])


def test_stats_averages(cluster1, make_proxy):
    p = make_proxy(cluster1, pool_mode="transaction", stats_period="1s")
    with p.connect() as c:
        t0 = time.time()
        n = 0
        while time.time() - t0 < 2.2:
            c.execute("select 1")
            n += 1
    avg = [r for r in p.admin_rows("SHOW STATS_AVERAGES") if r["database"] == "postgres"]
    assert avg and int(avg[0]["query_count"]) > 0 and int(avg[0]["query_time"]) > 0, avg
    # SHOW TOTALS: PgBouncer's process-wide rows, the averages among them
    tot = {r["name"]: int(r["value"]) for r in p.admin_rows("SHOW TOTALS")}
    assert tot["total_query_count"] >= n and tot["avg_query_count"] > 0, tot
    assert tot["avg_query_time"] > 0 and tot["avg_client_bytes"] > 0, tot


def test_set_key(proxy):
    with admin_conn(proxy) as a:
        a.execute("SET pool_size = 3")
        assert {r["key"]: r["value"] for r in show(a, "CONFIG")}["pool_size"] == "3"
        a.execute("set default_pool_size to '4'")  # PgBouncer's name for it
        assert {r["key"]: r["value"] for r in show(a, "CONFIG")}["pool_size"] == "4"
        a.execute("SET query_wait_timeout = 7")
        assert {r["key"]: r["value"] for r in show(a, "CONFIG")}["query_wait_timeout"] == "7000ms"
        with pytest.raises(psycopg.Error, match="restart"):
            a.execute("SET listen_port = 7000")
        with pytest.raises(psycopg.Error, match="unknown key"):
            a.execute("SET no_such_key = 1")
        with pytest.raises(psycopg.Error, match="between|at least|expected"):
            a.execute("SET pool_size = zero")


def test_disable_enable(proxy):
    with proxy.connect() as kept:
        with admin_conn(proxy) as a:
            a.execute("DISABLE postgres")
            db = [r for r in show(a, "DATABASES") if r["name"] == "postgres"][0]
            assert db["disabled"] == 1
            with pytest.raises(psycopg.OperationalError) as e:
                proxy.connect()
            assert 'database "postgres" is disabled' in str(e.value)
            assert kept.execute("select 1").fetchone() == (1,)  # who is in stays in
            a.execute("ENABLE postgres")
            with proxy.connect() as c:
                assert c.execute("select 1").fetchone() == (1,)


def test_reconnect(cluster1, make_proxy):
    # session mode: the client keeps the server RECONNECT marks (the suite may run in either)
    proxy = make_proxy(cluster1, pool_mode="session")
    with proxy.connect() as c:
        pid = c.execute("select pg_backend_pid()").fetchone()[0]
        with proxy.connect() as idle:
            idle.execute("select 1")
        deadline = time.time() + 5
        while True:  # its server runs server_reset_query ("tested") before it is idle
            idle_pids = [r["remote_pid"] for r in proxy.admin_rows("SHOW SERVERS")
                         if r["state"] == "idle"]
            if idle_pids or time.time() > deadline:
                break
            time.sleep(0.05)
        assert idle_pids
        with admin_conn(proxy) as a:
            a.execute("RECONNECT postgres")
            sv = {r["remote_pid"]: r for r in show(a, "SERVERS")}
            assert not set(idle_pids) & set(sv), "idle servers close at once"
            assert sv[pid]["close_needed"] == 1  # in use: closed once its client is done
        assert c.execute("select pg_backend_pid()").fetchone()[0] == pid
    time.sleep(0.3)
    assert pid not in {r["remote_pid"] for r in proxy.admin_rows("SHOW SERVERS")}
    with proxy.connect() as c:
        assert c.execute("select pg_backend_pid()").fetchone()[0] != pid


def test_kill(proxy):
    c = proxy.connect()
    c.execute("select 1")
    with admin_conn(proxy) as a:
        a.execute("KILL postgres")
        assert not [r for r in show(a, "CLIENTS") if r["database"] == "postgres"]
        assert not show(a, "SERVERS")
        # the admin console itself is not killed
        assert show(a, "VERSION")
    with pytest.raises(psycopg.OperationalError):
        c.execute("select 1")
    c.close()
    with proxy.connect() as c2:
        assert c2.execute("select 1").fetchone() == (1,)


def test_pause_resume_reload_and_errors(proxy):
    with admin_conn(proxy) as a:
        assert a.execute("PAUSE").statusmessage == "PAUSE"
        assert show(a, "DATABASES") == [] or all(r["paused"] == 1 for r in show(a, "DATABASES"))
        assert a.execute("RESUME").statusmessage == "RESUME"
        assert a.execute("RELOAD").statusmessage == "RELOAD"
        with pytest.raises(psycopg.Error, match="not paused"):
            a.execute("RESUME")
        with pytest.raises(psycopg.Error, match="unknown SHOW"):
            a.execute("SHOW NOTHING")
        with pytest.raises(psycopg.Error, match="unknown command"):
            a.execute("FROB")


def test_shutdown(cluster1, make_proxy):
    p = make_proxy(cluster1)
    with admin_conn(p) as a:
        assert a.execute("SHUTDOWN").statusmessage == "SHUTDOWN"
    p.proc.wait(10)
    assert p.proc.returncode == 0


EXPORTER = "/usr/bin/prometheus-pgbouncer-exporter"


@pytest.mark.skipif(not os.path.exists(EXPORTER), reason="prometheus-pgbouncer-exporter missing")
def test_debian_pgbouncer_exporter(txp, tmp_path):
    """Debian's prometheus-pgbouncer-exporter, unchanged, pointed at pgstay's console."""
    with txp.connect() as c:
        for _ in range(30):
            c.execute("select 1")
    port = free_port()
    log = open(str(tmp_path / "exporter.log"), "wb")
    exp = subprocess.Popen([EXPORTER, "--host", "127.0.0.1", "--port", str(port),
                            "--pgbouncer-host", "127.0.0.1", "--pgbouncer-port", str(txp.port),
                            "--pgbouncer-user", "postgres"], stdout=log, stderr=subprocess.STDOUT)
    try:
        text = None
        deadline = time.time() + 15
        while time.time() < deadline and text is None:
            assert exp.poll() is None, open(str(tmp_path / "exporter.log")).read()
            try:
                text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port,
                                              timeout=5).read().decode()
            except OSError:
                time.sleep(0.2)
        assert text, open(str(tmp_path / "exporter.log")).read()
        samples = {}
        for line in text.splitlines():
            if line.startswith("pgbouncer_"):
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
        want = totals(txp)
        assert samples['pgbouncer_requests_total{database="postgres"}'] == \
            float(want["query_count"]) >= 30
        assert samples['pgbouncer_received_bytes_total{database="postgres"}'] == \
            float(want["bytes_received"])
        assert samples['pgbouncer_sent_bytes_total{database="postgres"}'] == \
            float(want["bytes_sent"])
        assert samples['pgbouncer_query_microseconds_total{database="postgres"}'] == \
            float(want["query_time"])
        assert samples['pgbouncer_active_clients{database="postgres",user="postgres"}'] == 0
        assert samples['pgbouncer_waiting_clients{database="postgres",user="postgres"}'] == 0
        assert samples['pgbouncer_pool_size{database="postgres"}'] == 4
        assert samples["pgbouncer_pools"] >= 1 and samples["pgbouncer_used_clients"] >= 1
        # a second scrape sees the traffic in between
        with txp.connect() as c:
            for _ in range(10):
                c.execute("select 1")
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read()
        line = [ln for ln in text.decode().splitlines()
                if ln.startswith('pgbouncer_requests_total{database="postgres"}')][0]
        # (a client on another worker's fresh pool may count one request more than on a warm
        # one: what is checked is that the exporter reports pgstay's own count)
        after = totals(txp)
        assert float(line.rsplit(" ", 1)[1]) == float(after["query_count"]) >= \
            float(want["query_count"]) + 10
    finally:
        exp.send_signal(signal.SIGTERM)
        try:
            exp.wait(5)
        except subprocess.TimeoutExpired:
            exp.kill()
            exp.wait()
        log.close()


def test_pause_resume_one_database(cluster1, make_proxy):
    """PAUSE db holds that database's new transactions only; it answers once the database's
    transactions in flight are done; RESUME db releases them."""
    import threading
    p = make_proxy(cluster1, pool_mode="transaction")
    other = p.connect()  # database postgres: never held
    app = psycopg.connect(p.dsn(dbname="app", user="app"), autocommit=True)
    app.execute("begin")
    app.execute("select 1")
    answered = []
    with admin_conn(p) as a:
        t = threading.Thread(target=lambda: answered.append(
            admin_conn(p).execute("PAUSE app").statusmessage))
        t.start()
        time.sleep(0.5)
        assert not answered  # app's transaction is still open
        assert other.execute("select 1").fetchone() == (1,)
        app.execute("commit")
        t.join(5)
        assert answered == ["PAUSE"]
        dbs = {r["name"]: r["paused"] for r in show(a, "DATABASES")}
        assert dbs["app"] == 1 and dbs["postgres"] == 0
        done = []
        t = threading.Thread(target=lambda: done.append(app.execute("select 2").fetchone()))
        t.start()
        time.sleep(0.5)
        assert not done  # held
        assert other.execute("select 3").fetchone() == (3,)
        with pytest.raises(psycopg.Error, match="not paused"):
            a.execute("RESUME postgres")
        assert a.execute("RESUME app").statusmessage == "RESUME"
        t.join(5)
        assert done == [(2,)]
        # RESUME without a database ends a database's PAUSE too
        a.execute("PAUSE app")
        a.execute("RESUME")
        assert app.execute("select 4").fetchone() == (4,)
    app.close()
    other.close()


def test_paused_request_times_out_as_paused(cluster1, make_proxy):
    """A request held by PAUSE while the writer answers fails at failover_timeout saying the
    database is paused (query_wait_timeout's SQLSTATE), not that no writer is available, and
    no failover counts it; the connection stays usable after RESUME."""
    p = make_proxy(cluster1, pool_mode="transaction", failover_timeout="1s")
    c = p.connect()
    with admin_conn(p) as a:
        assert a.execute("PAUSE").statusmessage == "PAUSE"
        t0 = time.monotonic()
        with pytest.raises(psycopg.Error) as e:
            c.execute("select 1")
        assert time.monotonic() - t0 >= 0.9
        assert e.value.sqlstate == "08P01", e.value
        assert "paused" in str(e.value) and "no writer" not in str(e.value), e.value
        a.execute("RESUME")
        assert c.execute("select 2").fetchone() == (2,)
        fo = show(a, "FAILOVERS")
        assert not fo or all(int(r.get("timed_out") or 0) == 0 for r in fo), fo
    c.close()


def test_switchover_hold_keeps_database_pause(cluster1, make_proxy):
    """An operator's PAUSE of one database outlives a SWITCHOVER hold that ends by itself (here
    the writer does not stop within failover_timeout): the hold resumes only the PAUSE it set.
    Before, its end ran a RESUME of everything, and the paused database's requests ran."""
    import threading
    p = make_proxy(cluster1, pool_mode="transaction", failover_timeout="2s")
    app = psycopg.connect(p.dsn(dbname="app", user="app"), autocommit=True)
    assert app.execute("select 1").fetchone() == (1,)
    with admin_conn(p) as a:
        assert a.execute("PAUSE app").statusmessage == "PAUSE"
        assert a.execute("SWITCHOVER n1").statusmessage == "SWITCHOVER"
        deadline = time.monotonic() + 10
        while "the hold ends" not in p.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "the hold ends" in p.log()
        dbs = {r["name"]: r["paused"] for r in show(a, "DATABASES")}
        assert dbs["app"] == 1, dbs
        done = []
        t = threading.Thread(target=lambda: done.append(app.execute("select 2").fetchone()),
                             daemon=True)
        t.start()
        time.sleep(0.7)
        assert not done  # still held by the operator's PAUSE app
        assert a.execute("RESUME app").statusmessage == "RESUME"
        t.join(5)
        assert done == [(2,)]
    app.close()


def test_admin_and_stats_users(cluster1, make_proxy):
    """Issue 11: admin_users run every command, stats_users SHOW only, anyone else is refused
    (PgBouncer's words); checked at every command, so a reload that takes a user out of the
    lists stops an open session at its next command."""
    p = make_proxy(cluster1, start=False, auth_type="md5", stats_users="app")
    p.userlist["nobody"] = "nobody"
    p.start()
    with pytest.raises(psycopg.OperationalError, match="not allowed"):
        psycopg.connect(p.dsn(dbname="pgbouncer", user="nobody"))
    with psycopg.connect(p.dsn(dbname="pgbouncer", user="app"), autocommit=True,
                         prepare_threshold=None) as st, admin_conn(p) as a:
        assert any(r["name"] == "n1" for r in show(st, "NODES"))
        for cmd in ("PAUSE", "RESUME", "RELOAD", "SHUTDOWN", "KILL postgres", "DISABLE postgres",
                    "SET pool_size = 3", "RECONNECT"):
            with pytest.raises(psycopg.Error, match="admin access needed"):
                st.execute(cmd)
        assert st.execute("SHOW VERSION").fetchone()
        # the admin runs anything; it takes app out of stats_users and reloads
        assert a.execute("SET pool_size = 11").statusmessage == "SET"
        p.settings["stats_users"] = ""
        p.write_config()
        assert a.execute("RELOAD").statusmessage == "RELOAD"
        with pytest.raises(psycopg.OperationalError, match="not allowed"):
            st.execute("SHOW POOLS")
        # and postgres out of admin_users: its own session stops too
        p.settings["admin_users"] = "someone_else"
        p.write_config()
        assert a.execute("RELOAD").statusmessage == "RELOAD"
        with pytest.raises(psycopg.OperationalError, match="not allowed"):
            a.execute("SHOW POOLS")
    assert p.log().count("no longer in admin_users or stats_users") == 2


def psql(p, sql):
    """One admin command through psql itself (what an operator types), -A -F '|'."""
    return subprocess.run(["psql", "-X", "-A", "-F", "|", "-P", "footer=off", "-h", "127.0.0.1",
                           "-p", str(p.port), "-U", "postgres", "-d", "pgbouncer", "-c", sql],
                          capture_output=True, text=True, timeout=20)


def test_every_show_and_command_through_psql(cluster1, make_proxy):
    """Every SHOW and every command of the console through psql, each checked against what it
    changed or reports; SHUTDOWN last."""
    p = make_proxy(cluster1, pool_mode="session")
    c = psycopg.connect(p.dsn(dbname="app", user="app"), autocommit=True)
    c.execute("create temp table psql_pin (a int)")  # pins the session: SHOW PINS has it
    shows = list(PGBOUNCER_118) + ["TOTALS", "NODES", "FAILOVERS", "PINS"]
    for what in shows:
        out = psql(p, "SHOW %s;" % what.lower())
        assert out.returncode == 0, (what, out.stderr)
        header = out.stdout.splitlines()[0].split("|")
        want = [n for n, _ in PGBOUNCER_118.get(what, [])]
        assert header[:len(want)] == want, (what, header)
    assert "app|" in psql(p, "SHOW POOLS").stdout
    pins = psql(p, "SHOW PINS").stdout.splitlines()
    assert any(ln.startswith("temp") and ln.split("|")[1] != "0" for ln in pins[1:]), pins
    assert "n1|" in psql(p, "SHOW NODES").stdout

    def ok(sql, tag):
        out = psql(p, sql)
        assert out.returncode == 0 and out.stdout.strip().endswith(tag), (sql, out)

    ok("SET pool_size = 7", "SET")
    assert "pool_size|7|" in psql(p, "SHOW CONFIG").stdout
    ok("PAUSE app", "PAUSE")
    dbs = {ln.split("|")[0]: ln.split("|") for ln in psql(p, "SHOW DATABASES").stdout.splitlines()}
    assert dbs["app"][11] == "1"  # paused
    ok("RESUME app", "RESUME")
    ok("PAUSE", "PAUSE")
    ok("RESUME", "RESUME")
    ok("DISABLE app", "DISABLE")
    with pytest.raises(psycopg.OperationalError, match='database "app" is disabled'):
        psycopg.connect(p.dsn(dbname="app", user="app"))
    ok("ENABLE app", "ENABLE")
    ok("RECONNECT app", "RECONNECT")
    lines = psql(p, "SHOW SERVERS").stdout.splitlines()
    servers = [dict(zip(lines[0].split("|"), ln.split("|"))) for ln in lines[1:]]
    # the pinned session's server: closed once its client is done with it
    assert [s["close_needed"] for s in servers if s["database"] == "app"] == ["1"], servers
    ok("RELOAD", "RELOAD")
    assert "pool_size|10|" in psql(p, "SHOW CONFIG").stdout  # the file's value again
    ok("KILL app", "KILL")
    with pytest.raises(psycopg.OperationalError):
        c.execute("select 1")
    c.close()
    with psycopg.connect(p.dsn(dbname="app", user="app")) as fresh:
        assert fresh.execute("select 1").fetchone() == (1,)
    ok("SHUTDOWN", "SHUTDOWN")
    assert p.proc.wait(10) == 0
