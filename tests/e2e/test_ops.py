"""Operations keys with PgBouncer's names and semantics (issue 13): reserve pool, server checks,
transaction_timeout, per-user and per-database pool sizes, unix sockets, logging, systemd."""
import grp
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import psycopg
import pytest

from conftest import assert_no_sanitizer_report, build_dir
from wire import Raw


def wait_for(pred, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def pids(lab, **where):
    """Backend pids of client backends on node 1, filtered by usename / datname."""
    cond = " and ".join("%s = '%s'" % (k, v) for k, v in where.items()) or "true"
    with psycopg.connect(lab.dsn(1), autocommit=True) as c:
        return {r[0] for r in c.execute(
            "select pid from pg_stat_activity where backend_type = 'client backend' and "
            + cond).fetchall()}


def test_reserve_pool(cluster1, make_proxy):
    """PgBouncer's reserve pool: with the pool full, a client that waited reserve_pool_timeout
    gets one of reserve_pool_size extra servers; past those, clients wait as before."""
    p = make_proxy(cluster1, pool_mode="session", pool_size=1, reserve_pool_size=1,
                   reserve_pool_timeout="1s", query_wait_timeout="3s")
    a = p.connect(user="app", dbname="app")
    a.execute("select 1")  # session mode: a keeps the pool's one server
    b = p.connect(user="app", dbname="app")
    t0 = time.time()
    assert b.execute("select 2").fetchone()[0] == 2  # from the reserve
    waited = time.time() - t0
    assert 0.9 <= waited < 2.5, waited
    c = p.connect(user="app", dbname="app")
    with pytest.raises(psycopg.OperationalError) as e:  # the reserve is used up
        c.execute("select 3")
    assert "query_wait_timeout" in str(e.value)
    assert "reserve_pool" in p.log()
    db = [r for r in p.admin_rows("SHOW DATABASES") if r["name"] == "app"]
    assert db and db[0]["reserve_pool"] == 1
    for x in (a, b, c):
        x.close()


CHECK_FN = """
create sequence if not exists ops_checks;
create table if not exists ops_bad (pid int);
create or replace function ops_check() returns int language plpgsql as $$
begin
  perform nextval('ops_checks');
  if pg_backend_pid() in (select pid from ops_bad) then
    raise exception 'ops_check: this backend is bad';
  end if;
  return 1;
end $$;
grant usage, select, update on sequence ops_checks to public;
grant select on ops_bad to public;
select nextval('ops_checks');
"""


def checks_run(lab):
    with psycopg.connect(lab.dsn(1, dbname="app"), autocommit=True) as c:
        return c.execute("select last_value from ops_checks").fetchone()[0]


def test_server_check_query(cluster1, make_proxy):
    """PgBouncer's server_check_query / server_check_delay: a server idle longer than the delay
    answers the query before it is lent; one that fails it is closed and another serves the
    client, which sees no error; a server reused at once is not checked."""
    with psycopg.connect(cluster1.dsn(1, dbname="app"), autocommit=True) as d:
        d.execute(CHECK_FN)
        d.execute("delete from ops_bad")
    p = make_proxy(cluster1, pool_mode="transaction", pool_size=2, server_check_delay="1s",
                   server_check_query="select ops_check()")
    c = p.connect(user="app", dbname="app")
    first = c.execute("select pg_backend_pid()").fetchone()[0]
    n = checks_run(cluster1)
    assert c.execute("select pg_backend_pid()").fetchone()[0] == first  # at once: no check
    assert checks_run(cluster1) == n
    time.sleep(1.3)
    assert c.execute("select pg_backend_pid()").fetchone()[0] == first  # checked, passed
    assert checks_run(cluster1) == n + 1
    with psycopg.connect(cluster1.dsn(1, dbname="app"), autocommit=True) as d:
        d.execute("insert into ops_bad values (%s)", (first,))
    time.sleep(1.3)
    second = c.execute("select pg_backend_pid()").fetchone()[0]  # no error seen
    assert second != first
    assert wait_for(lambda: first not in pids(cluster1, datname="app"))
    assert "server_check_query failed" in p.log()
    c.close()


def test_server_check_query_empty(cluster1, make_proxy):
    """An empty server_check_query means no check at all."""
    with psycopg.connect(cluster1.dsn(1, dbname="app"), autocommit=True) as d:
        d.execute(CHECK_FN)
    p = make_proxy(cluster1, pool_mode="transaction", pool_size=2, server_check_delay="0",
                   server_check_query='""')
    c = p.connect(user="app", dbname="app")
    c.execute("select 1")
    n = checks_run(cluster1)
    time.sleep(0.2)
    c.execute("select 1")
    assert checks_run(cluster1) == n
    c.close()


def test_transaction_timeout(cluster1, make_proxy):
    """PgBouncer's transaction_timeout: a client whose transaction stays open longer (idle in it
    or busy) is disconnected with PgBouncer's FATAL 08P01 "transaction timeout", its transaction
    rolled back; short transactions on a long-lived connection are not affected."""
    p = make_proxy(cluster1, pool_mode="transaction", transaction_timeout="1s")
    ok = p.connect(user="app", dbname="app")
    r = Raw(p.port, timeout=10)
    r.login_trust(user="app", database="app")
    msgs, closed = r.query("begin; create table ops_tt (x int)")
    assert not closed and msgs[-1] == (b"Z", b"T")
    t0 = time.time()
    err = r.error_within(5)  # idle in its transaction: told, then closed
    assert err and err["C"] == "08P01" and err["S"] == "FATAL", err
    assert err["M"] == "transaction timeout"
    assert 0.9 <= time.time() - t0 < 3
    assert r.closed()
    busy = p.connect(user="app", dbname="app")
    with pytest.raises(psycopg.OperationalError) as e:  # one long statement is a transaction too
        busy.execute("select pg_sleep(5)")
    assert "transaction timeout" in str(e.value)
    for _ in range(12):  # 1.2 s of short transactions on one connection
        with ok.transaction():
            ok.execute("select 1")
        time.sleep(0.1)
    assert ok.execute("select to_regclass('ops_tt')").fetchone()[0] is None  # rolled back
    ok.close()


def pool_row(p, db, user):
    rows = [r for r in p.admin_rows("SHOW POOLS") if r["database"] == db and r["user"] == user]
    return rows[0] if rows else None


def test_per_user_and_database_pool_size(cluster1, make_proxy):
    """PgBouncer's [users] user = pool_size=N and [databases] db = pool_size=N: the user's wins
    over the database's, which wins over pool_size; a reload applies a new one to waiting
    clients."""
    p = make_proxy(cluster1, start=False, pool_mode="session", pool_size=5)
    p.sections = "[databases]\napp = pool_size=2\n[users]\napp = pool_size=1\n"
    p.start()
    held, waiting = [], []

    def run(user, db):
        c = p.connect(user=user, dbname=db)
        t = threading.Thread(target=c.execute, args=("select 1",))
        t.start()
        return c, t

    for user, db, n in [("app", "app", 2), ("postgres", "app", 3), ("postgres", "postgres", 3)]:
        for _ in range(n):
            held.append(run(user, db))
    assert wait_for(lambda: (pool_row(p, "app", "app") or {}).get("cl_waiting") == 1)
    assert wait_for(lambda: (pool_row(p, "app", "postgres") or {}).get("cl_waiting") == 1)
    assert pool_row(p, "app", "app")["sv_active"] == 1
    assert pool_row(p, "app", "postgres")["sv_active"] == 2
    assert wait_for(lambda: pool_row(p, "postgres", "postgres")["sv_active"] >= 3)
    assert pool_row(p, "postgres", "postgres")["cl_waiting"] == 0
    dbs = {r["name"]: r for r in p.admin_rows("SHOW DATABASES")}
    assert dbs["app"]["pool_size"] == 2 and dbs["postgres"]["pool_size"] == 5
    # reload: the user's pool grows and its waiting client is served
    p.sections = "[databases]\napp = pool_size=3\n[users]\napp = pool_size=2\n"
    p.write_config()
    p.signal(signal.SIGHUP)
    assert wait_for(lambda: pool_row(p, "app", "app")["cl_waiting"] == 0)
    assert wait_for(lambda: pool_row(p, "app", "postgres")["cl_waiting"] == 0)
    for c, t in held:
        t.join(5)
        assert not t.is_alive()
        c.close()
    # a smaller size by reload: the idle servers beyond it are closed
    assert wait_for(lambda: pool_row(p, "app", "app")["sv_idle"] == 2)
    p.sections = "[databases]\napp = pool_size=3\n[users]\napp = pool_size=1\n"
    p.write_config()
    p.signal(signal.SIGHUP)
    assert wait_for(lambda: pool_row(p, "app", "app")["sv_idle"] == 1)
    assert "pool_size lowered" in p.log()


@pytest.fixture
def short_dir():
    """Folders under /tmp (a unix socket path must stay under 108 bytes), removed afterwards."""
    made = []

    def make(prefix):
        made.append(tempfile.mkdtemp(prefix=prefix))
        return made[-1]

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


def psql(sockdir, port, sql, user="app", db="app"):
    return subprocess.run(["psql", "-X", "-At", "-h", sockdir, "-p", str(port), "-U", user,
                           "-d", db, "-c", sql], capture_output=True, text=True, timeout=20)


def test_unix_socket_dir(cluster1, make_proxy, short_dir):
    """PgBouncer's unix_socket_dir: both endpoints also listen on .s.PGSQL.<port> there, so
    psql -h <dir> works; a reload moves the sockets; the files go when pgstay stops."""
    d1 = short_dir("ops-s1-")
    d2 = short_dir("ops-s2-")
    open(os.path.join(d1, ".s.PGSQL.1"), "w").close()  # unrelated file: left alone
    p = make_proxy(cluster1, unix_socket_dir=d1)
    w, r = (os.path.join(d1, ".s.PGSQL.%d" % port) for port in (p.port, p.readonly_port))
    assert os.path.exists(w) and os.path.exists(r)
    out = psql(d1, p.port, "select 40 + 2")
    assert out.returncode == 0 and out.stdout.strip() == "42", out.stderr
    out = psql(d1, p.readonly_port, "select pg_is_in_recovery()")  # the reader endpoint
    assert out.returncode == 0, out.stderr
    held = psycopg.connect("host=%s port=%d dbname=app user=app" % (d1, p.port), autocommit=True)
    p.settings["unix_socket_dir"] = d2
    p.write_config()
    p.signal(signal.SIGHUP)
    assert wait_for(lambda: os.path.exists(os.path.join(d2, ".s.PGSQL.%d" % p.port)))
    assert wait_for(lambda: not os.path.exists(w))
    assert psql(d2, p.port, "select 1").stdout.strip() == "1"
    assert held.execute("select 3").fetchone()[0] == 3  # a connected client stays
    w2 = os.path.join(d2, ".s.PGSQL.%d" % p.port)
    assert os.stat(w2).st_mode & 0o777 == 0o777  # PgBouncer's default unix_socket_mode
    # unix_socket_mode and unix_socket_group, by reload too
    # root may give the files any group; anyone else only one of their own
    group = "nogroup" if os.geteuid() == 0 else grp.getgrgid(os.getgid()).gr_name
    p.settings.update(unix_socket_mode="0770", unix_socket_group=group)
    p.write_config()
    p.signal(signal.SIGHUP)
    assert wait_for(lambda: os.path.exists(w2) and os.stat(w2).st_mode & 0o777 == 0o770)
    assert grp.getgrgid(os.stat(w2).st_gid).gr_name == group
    assert psql(d2, p.port, "select 1").stdout.strip() == "1"  # its owner: still allowed
    held.close()
    p.stop()
    assert not os.path.exists(os.path.join(d2, ".s.PGSQL.%d" % p.port))
    assert os.path.exists(os.path.join(d1, ".s.PGSQL.1"))


def test_unix_socket_stale_and_busy(cluster1, make_proxy, short_dir):
    """A socket file left by a dead process is replaced; one another process listens on is not
    taken over (pgstay refuses to start, naming it)."""
    d = short_dir("ops-s3-")
    p = make_proxy(cluster1, start=False, unix_socket_dir=d)
    path = os.path.join(d, ".s.PGSQL.%d" % p.port)
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()  # stale: bound, nobody listening
    p.start()
    assert psql(d, p.port, "select 1").stdout.strip() == "1"
    p.stop()
    busy = socket.socket(socket.AF_UNIX)
    busy.bind(path)
    busy.listen(1)
    q = make_proxy(cluster1, start=False, unix_socket_dir=d)
    q.port, q.settings["listen_port"] = p.port, p.port
    with pytest.raises(RuntimeError) as e:
        q.start()
    assert "another process listens there" in str(e.value)
    busy.close()
    os.unlink(path)
    r = subprocess.run([os.path.join(build_dir(), "pgstay"), "--check-config", q.conf_path],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    q.settings["unix_socket_mode"] = "0999"
    q.write_config()
    r = subprocess.run([os.path.join(build_dir(), "pgstay"), "--check-config", q.conf_path],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "unix_socket_mode" in r.stderr


def test_application_name_add_host(cluster1, make_proxy):
    """PgBouncer's application_name_add_host: the server sees "name - address:port" (or "app -
    ..." when the client gave none); track_extra_parameters is accepted."""
    p = make_proxy(cluster1, pool_mode="transaction", application_name_add_host="on",
                   track_extra_parameters="search_path")
    with p.connect(user="app", dbname="app", application_name="billing") as c:
        s = socket.fromfd(c.pgconn.socket, socket.AF_INET, socket.SOCK_STREAM)  # a dup
        local_port = s.getsockname()[1]
        s.close()
        name = c.execute("select current_setting('application_name')").fetchone()[0]
        assert name == "billing - 127.0.0.1:%d" % local_port, name
    with p.connect(user="app", dbname="app") as c:
        name = c.execute("select current_setting('application_name')").fetchone()[0]
        assert name.startswith("app - 127.0.0.1:"), name
    cfg = {r["key"]: r["value"] for r in p.admin_rows("SHOW CONFIG")}
    assert cfg["track_extra_parameters"] == "search_path"


def test_log_connections_disconnections_pooler_errors(cluster1, make_proxy):
    """PgBouncer's log_connections, log_disconnections and log_pooler_errors (on by default):
    a login line, a line per client and server closed saying why and how old, a line per error
    pgstay itself sends; off, none of them."""
    p = make_proxy(cluster1, pool_mode="session", server_lifetime="1s", server_idle_timeout="0")
    with p.connect(user="app", dbname="app") as c:
        c.execute("select 1")
    with pytest.raises(psycopg.Error):
        p.admin("SHOW NONSENSE")
    assert wait_for(lambda: "server_lifetime (age=" in p.log())  # the server, closed idle
    log = p.log()
    assert "login: db=app user=app tls=no" in log
    assert "app/app: closing because: client sent Terminate (age=0s)" in log
    assert "pooler error: 42601" in log and "NONSENSE" in log
    assert "new server connection (backend pid" in log
    p.stop()
    mark = len(p.log())  # the same log file: only what q writes counts below
    q = make_proxy(cluster1, pool_mode="session", log_connections="off",
                   log_disconnections="off", log_pooler_errors="off")
    with q.connect(user="app", dbname="app") as c:
        c.execute("select 1")
    with pytest.raises(psycopg.Error):
        q.admin("SHOW NONSENSE")
    time.sleep(0.2)
    log = q.log()[mark:]
    for line in ("login: db=", "closing because: client sent Terminate", "pooler error",
                 "new server connection"):
        assert line not in log, line


def test_syslog(cluster1, make_proxy, short_dir):
    """syslog = on sends every log line to the system log as syslog_ident with syslog_facility
    (a datagram socket standing in for /dev/log, in a private mount namespace)."""
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs unshare -m (root)")
    dev = short_dir("ops-dev-")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(os.path.join(dev, "log"))
    sink.settimeout(10)
    p = make_proxy(cluster1, start=False, syslog="on", syslog_ident="stay7",
                   syslog_facility="local3")
    p.write_config()
    # pgstay itself, with /dev replaced by the folder holding the socket
    real = os.path.join(build_dir(), "pgstay")
    logf = open(p.log_path, "ab")
    proc = subprocess.Popen(["unshare", "-m", "sh", "-c",
                             'mount --bind "$0" /dev && exec "$1" "$2"', dev, real, p.conf_path],
                            stdout=logf, stderr=subprocess.STDOUT)
    try:
        got = []
        deadline = time.time() + 10
        while time.time() < deadline and not any(b"started" in g for g in got):
            got.append(sink.recv(4096))
        started = [g for g in got if b"started" in g]
        assert started, got
        # <PRI> = facility local3 (19) * 8 + info (6) = 158; the ident and the level name
        assert started[0].startswith(b"<158>"), started[0]
        assert b"stay7[" in started[0] and b"LOG pgstay" in started[0]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
        logf.close()
        sink.close()
    assert_no_sanitizer_report(p.log(), proc.returncode)


def test_systemd_notify(cluster1, make_proxy, short_dir):
    """systemd's Type=notify protocol through NOTIFY_SOCKET: READY=1 once the listeners accept,
    RELOADING=1 then READY=1 around a SIGHUP and an admin RELOAD, STOPPING=1 at SIGTERM; and
    contrib/pgstay.service is a Type=notify unit reloading with SIGHUP."""
    d = short_dir("ops-nfy-")
    path = os.path.join(d, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(15)
    os.environ["NOTIFY_SOCKET"] = path
    try:
        p = make_proxy(cluster1, start=False)
        p.start(wait_writer=False)
    finally:
        del os.environ["NOTIFY_SOCKET"]

    def recv():
        return dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())

    first = recv()
    assert first.get("READY") == "1", first
    socket.create_connection(("127.0.0.1", p.port), timeout=2).close()  # open when READY
    p.signal(signal.SIGHUP)
    m = recv()
    assert m.get("RELOADING") == "1" and int(m["MONOTONIC_USEC"]) > 0, m
    assert recv().get("READY") == "1"
    assert wait_for(lambda: p.admin("SHOW NODES") is not None)
    p.admin("RELOAD")
    assert recv().get("RELOADING") == "1"
    assert recv().get("READY") == "1"
    p.signal(signal.SIGTERM)
    assert recv().get("STOPPING") == "1"
    p.proc.wait(15)
    sock.close()
    unit = open(os.path.join(os.path.dirname(__file__), "..", "..", "contrib",
                             "pgstay.service")).read()
    assert "Type=notify" in unit and "ExecReload=/bin/kill -HUP $MAINPID" in unit


def test_application_name_add_host_login_needs_no_server(cluster1, make_proxy):
    """With application_name_add_host every client's application_name differs, yet a login
    is welcomed at once like any other (no server needed while the pool is busy), and told its
    own application_name."""
    p = make_proxy(cluster1, pool_mode="transaction", pool_size=1,
                   application_name_add_host="on")
    first = p.connect(user="app", dbname="app", application_name="web")
    first.execute("select 1")  # the pool has welcomed these parameters once
    first.execute("begin")
    first.execute("select 1")  # holds the pool's one server
    t0 = time.time()
    c = p.connect(user="app", dbname="app", application_name="web", connect_timeout=3)
    assert time.time() - t0 < 1.5  # not waiting for the server
    s = socket.fromfd(c.pgconn.socket, socket.AF_INET, socket.SOCK_STREAM)
    own = "web - 127.0.0.1:%d" % s.getsockname()[1]
    s.close()
    assert c.info.parameter_status("application_name") == own
    first.execute("commit")
    assert c.execute("select current_setting('application_name')").fetchone()[0] == own
    assert c.info.parameter_status("application_name") == own
    first.close()
    c.close()


def test_unused_pool_still_welcomes_without_server(cluster1, make_proxy):
    """A pool whose clients and servers are all gone keeps what it learned (as PgBouncer keeps
    its pools): the next client of that database and user logs in at once, with no server,
    even when none can be had; only its first statement waits. Here user app's only server is
    taken by another of its pools (max_user_connections = 1) and the unused pool has gone
    through pgstay's housekeeping ticks (which once freed it, so the login itself waited for a
    server and failed with query_wait_timeout)."""
    p = make_proxy(cluster1, pool_mode="transaction", max_user_connections=1,
                   query_wait_timeout="2s")
    with p.connect(user="app", dbname="postgres") as first:
        first.execute("select 1")
    busy = p.connect(user="app", dbname="app", autocommit=False)
    busy.execute("select 1")  # closes app/postgres's idle server to make room: the user's only one
    time.sleep(2.5)  # several housekeeping ticks with app/postgres unused and empty
    assert len(pids(cluster1, usename="app")) == 1
    late = p.connect(user="app", dbname="postgres")  # welcomed from the pool, no server needed
    with pytest.raises(psycopg.Error) as e:
        late.execute("select 4")
    assert e.value.sqlstate == "08P01" and "query_wait_timeout" in str(e.value)
    busy.rollback()
    busy.close()
    late.close()


def test_max_user_connections(cluster1, make_proxy):
    """PgBouncer's max_user_connections: the servers of every pool of one user (every database)
    stay within it; a client of a new pool of that user waits, and is served once a server of
    another pool of the user is idle (closed to make room), then past query_wait_timeout the
    waiting one gets PgBouncer's query_wait_timeout (08P01). The limit is each user's: another
    user has its own."""
    p = make_proxy(cluster1, pool_mode="transaction", pool_size=5, max_user_connections=2,
                   query_wait_timeout="2s")
    a1 = p.connect(user="app", dbname="app", autocommit=False)
    a2 = p.connect(user="app", dbname="app", autocommit=False)
    a1.execute("select 1")
    a2.execute("select 1")  # two servers of user app, both in transactions: the limit
    # another user has a limit of its own: app's two servers do not count against it
    others = [p.connect(autocommit=False) for _ in range(2)]
    for o in others:
        o.execute("select 1")
    assert len(pids(cluster1, usename="postgres", datname="postgres")) >= 2
    got = []

    def other_pool():  # user app, database postgres: a pool of its own, same user
        with p.connect(user="app", dbname="postgres") as other:
            got.append(other.execute("select 3").fetchone()[0])

    th = threading.Thread(target=other_pool, daemon=True)
    th.start()
    th.join(1.0)
    assert got == [], "a third server was opened for user app"
    assert len(pids(cluster1, usename="app")) == 2
    a1.commit()  # idle in the app pool: closed for the postgres pool of the same user
    th.join(10)
    assert got == [3]
    assert len(pids(cluster1, usename="app")) <= 2
    # At the limit again, a waiting client gets query_wait_timeout, as from PgBouncer.
    a1.execute("select 1")
    late = p.connect(user="app", dbname="postgres")
    t0 = time.time()
    with pytest.raises(psycopg.Error) as e:
        late.execute("select 4")
    assert e.value.sqlstate == "08P01" and "query_wait_timeout" in str(e.value)
    assert 1.5 < time.time() - t0 < 6
    for c in [a1, a2, late] + others:
        c.rollback()
        c.close()
