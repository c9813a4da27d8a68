"""pgstay as a plain session pooler in front of one real PostgreSQL: real clients, bad input, signals."""
import asyncio
import hashlib
import os
import signal
import socket
import struct
import subprocess
import threading
import time

import asyncpg
import psycopg
import pytest

from conftest import assert_no_sanitizer_report, build_dir, hwm_kb, rss_kb
from wire import Raw, error_fields, msg, startup_packet

PGBIN = "/usr/lib/postgresql/15/bin"


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 120), **kw)


def test_psql(proxy):
    out = run(["psql", proxy.dsn(), "-Atc", "select 40 + 2"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42"


def test_psycopg_simple_extended_pipeline(proxy):
    with proxy.connect() as c:
        c.execute("create table if not exists t_pipe (id int, v text)")
        c.execute("truncate t_pipe")
        # extended protocol with parameters
        c.execute("insert into t_pipe values (%s, %s)", (1, "one"))
        # simple protocol
        c.cursor().execute(b"select 1; select 2")
        with c.pipeline():
            for i in range(2, 50):
                c.execute("insert into t_pipe values (%s, %s)", (i, str(i)))
            cur = c.execute("select count(*) from t_pipe")
        assert cur.fetchone()[0] == 49
        # errors come through with their SQLSTATE and the connection stays usable
        with pytest.raises(psycopg.errors.UndefinedTable) as e:
            c.execute("select * from no_such_table")
        assert e.value.sqlstate == "42P01"
        assert c.execute("select 1").fetchone()[0] == 1


def test_asyncpg(proxy):
    async def main():
        conn = await asyncpg.connect(host="127.0.0.1", port=proxy.port, user="postgres",
                                     password="postgres", database="postgres")
        stmt = await conn.prepare("select $1::int * 2")
        vals = [await stmt.fetchval(i) for i in range(20)]
        rows = await conn.fetch("select generate_series(1, 1000) as x")
        async with conn.transaction():
            await conn.execute("create temp table tt (x int)")
            await conn.executemany("insert into tt values ($1)", [(i,) for i in range(100)])
            n = await conn.fetchval("select count(*) from tt")
        await conn.close()
        return vals, len(rows), n

    vals, nrows, n = asyncio.run(main())
    assert vals == [i * 2 for i in range(20)]
    assert nrows == 1000 and n == 100


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench(cluster1, make_proxy, mode):
    p = make_proxy(cluster1, pool_size=8)
    init = run(["pgbench", "-i", "-s", "1", "-q", p.dsn()])
    assert init.returncode == 0, init.stderr
    out = run(["pgbench", "-M", mode, "-c", "8", "-j", "2", "-t", "300", p.dsn()])
    assert out.returncode == 0, out.stderr + out.stdout
    assert "number of failed transactions: 0 (0.000%)" in out.stdout
    assert "number of transactions actually processed: 2400/2400" in out.stdout


def test_copy_in_out_100mb(proxy):
    row = ("x" * 90 + "\n").encode()
    nrows = 100 * 1024 * 1024 // len(row)
    h_in = hashlib.md5()
    with proxy.connect() as c:
        c.execute("drop table if exists t_copy")
        c.execute("create table t_copy (v text)")
        with c.cursor().copy("copy t_copy from stdin") as cp:
            chunk = row * 1000
            for _ in range(nrows // 1000):
                cp.write(chunk)
                h_in.update(chunk)
        h_out = hashlib.md5()
        total = 0
        with c.cursor().copy("copy t_copy to stdout") as cp:
            for data in cp:
                h_out.update(data)
                total += len(data)
        assert total == (nrows // 1000) * 1000 * len(row)
        assert h_in.hexdigest() == h_out.hexdigest()
        c.execute("drop table t_copy")


def test_large_result_bounded_memory(proxy):
    """300 MB of rows go through while pgstay's peak RSS stays bounded (streamed, not buffered)."""
    before = rss_kb(proxy.proc.pid)
    # psql with FETCH_COUNT unset reads everything; COPY TO STDOUT streams on the client too.
    out = subprocess.run(["psql", proxy.dsn(), "-c",
                          "copy (select repeat('x', 1000) from generate_series(1, 300000)) to stdout"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout) == 300000 * 1001
    peak = hwm_kb(proxy.proc.pid)
    assert peak - before < 32 * 1024, "pgstay grew by %d kB for a 300 MB result" % (peak - before)


def test_cancel(proxy):
    with proxy.connect() as c:
        t0 = time.time()
        timer = threading.Timer(0.3, c.cancel)
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            c.execute("select pg_sleep(10)")
        assert time.time() - t0 < 1.3
        assert c.execute("select 1").fetchone()[0] == 1


def test_notify_session_mode(proxy):
    with proxy.connect() as listener, proxy.connect() as sender:
        got = []
        listener.add_notify_handler(lambda n: got.append((n.channel, n.payload)))
        listener.execute("listen chan")
        sender.execute("notify chan, 'hello'")
        deadline = time.time() + 5
        while not got and time.time() < deadline:
            listener.execute("select 1")  # notifications are delivered with the next result
            time.sleep(0.05)
        assert got == [("chan", "hello")]


def test_notice_and_parameter_status(proxy):
    with proxy.connect() as c:
        notices = []
        c.add_notice_handler(lambda d: notices.append(d.message_primary))
        c.execute("do $$ begin raise notice 'hi there'; end $$")
        assert notices == ["hi there"]
        c.execute("set application_name = 'abc'")
        assert c.info.parameter_status("application_name") == "abc"


def test_function_call(proxy):
    # libpq's fast-path FunctionCall: lo_creat via psql's \lo_import would need a file; use the
    # protocol directly: FunctionCall to int4pl (oid 177) with two int4 arguments.
    r = Raw(proxy.port)
    r.login_trust()
    args = struct.pack("!IhhH", 177, 1, 1, 2)
    args += struct.pack("!ii", 4, 40) + struct.pack("!ii", 4, 2) + struct.pack("!h", 1)
    r.send(msg(b"F", args))
    t, body = r.read_msg()
    assert t == b"V"
    assert struct.unpack("!ii", body) == (4, 42)
    assert r.read_msg()[0] == b"Z"
    r.close()


# ---- bad input: each gets 08P01 where a reply is possible, and a second client keeps working ----

class Bystander:
    """A second client running queries in a loop for the whole of a bad-input test."""

    def __init__(self, proxy):
        self.conn = proxy.connect()
        self.errors = []
        self.count = 0
        self.stop = False
        self.t = threading.Thread(target=self.loop)
        self.t.start()

    def loop(self):
        while not self.stop:
            try:
                assert self.conn.execute("select 7").fetchone()[0] == 7
                self.count += 1
            except Exception as e:  # noqa: BLE001 - recorded and asserted on
                self.errors.append(repr(e))
            time.sleep(0.005)

    def finish(self):
        self.stop = True
        self.t.join()
        self.conn.close()
        assert self.errors == []
        assert self.count > 0


BAD_STARTUPS = {
    "startup too short": struct.pack("!I", 4) + b"\0\0\0\0",
    "startup too long": struct.pack("!I", 20000) + b"\0" * 100,
    "garbage bytes": b"\xff\xff\xff\xff garbage garbage garbage",
    "layout without terminator": struct.pack("!IHH", 17, 3, 0) + b"user\0postgres",
}


# A startup packet whose length is invalid is closed without a reply, as PostgreSQL does;
# one with a valid length but a broken layout gets 08P01.
SILENT_STARTUPS = {"startup too short", "startup too long", "garbage bytes"}


@pytest.mark.parametrize("name", list(BAD_STARTUPS))
def test_bad_startup(proxy, name):
    b = Bystander(proxy)
    r = Raw(proxy.port)
    r.send(BAD_STARTUPS[name])
    err = r.read_until_error_or_close()
    if name in SILENT_STARTUPS:
        assert err is None, err
    else:
        assert err is not None and err["C"] == "08P01", err
    assert r.closed()
    b.finish()


BAD_MESSAGES = {
    "negative length": b"Q" + struct.pack("!i", -5),
    "length below 4": b"Q" + struct.pack("!i", 2),
    "length past the limit": b"Q" + struct.pack("!I", 0x7FFFFFF0),
    "unknown message type": msg(b"!", b"boom"),
    "garbage after login": b"\x01\x02\x03\x04\x05\x06\x07\x08\x09",
}


@pytest.mark.parametrize("name", list(BAD_MESSAGES))
def test_bad_message(proxy, name):
    b = Bystander(proxy)
    r = Raw(proxy.port)
    r.login_trust()
    r.send(BAD_MESSAGES[name])
    err = r.read_until_error_or_close()
    assert err is not None and err["C"] == "08P01", err
    assert err["S"] == "FATAL"
    assert r.closed()
    b.finish()


def test_truncated_message(proxy):
    """A message cut short by a disconnect: that client is dropped, nobody else notices."""
    b = Bystander(proxy)
    r = Raw(proxy.port)
    r.login_trust()
    r.send(b"Q" + struct.pack("!I", 100) + b"select")
    r.close()
    time.sleep(0.2)
    b.finish()
    assert proxy.admin("SHOW VERSION")


def test_protocol_versions(proxy):
    r = Raw(proxy.port)
    r.send(startup_packet(version=(2, 0)))
    err = r.read_until_error_or_close()
    assert err["C"] == "0A000" and "unsupported frontend protocol 2.0" in err["M"]
    # 3.1 with a _pq_ option: NegotiateProtocolVersion, then the session goes on in 3.0
    r = Raw(proxy.port)
    r.send(startup_packet(version=(3, 1), extra={"_pq_.something": "x"}))
    t, body = r.read_msg()
    assert t == b"v"
    minor, n = struct.unpack("!II", body[:8])
    assert minor == 0 and n == 1 and b"_pq_.something" in body
    while t != b"Z":
        t, body = r.read_msg()
    r.close()


def test_ssl_and_gss_requests_answered_n(proxy):
    for code in (80877103, 80877104):
        r = Raw(proxy.port)
        r.send(struct.pack("!II", 8, code))
        assert r.read_byte() == b"N"
        r.login_trust()
        r.close()


# ---- authentication ----

@pytest.mark.parametrize("auth", ["md5", "scram-sha-256"])
def test_client_auth(cluster1, make_proxy, auth):
    p = make_proxy(cluster1, auth_type=auth)
    with psycopg.connect(p.dsn(user="app", dbname="app", password="app")) as c:
        assert c.execute("select current_user").fetchone()[0] == "app"
    with pytest.raises(psycopg.OperationalError) as e:
        psycopg.connect(p.dsn(user="app", dbname="app", password="wrong"))
    assert "password authentication failed" in str(e.value)
    r = subprocess.run(["psql", p.dsn(user="app", dbname="app", password="wrong"), "-c", "select 1"],
                       capture_output=True, text=True)
    assert r.returncode != 0
    # unknown user: the same answer, so it does not tell which users exist
    with pytest.raises(psycopg.OperationalError) as e:
        psycopg.connect(p.dsn(user="nobody", dbname="app", password="x"))
    assert "password authentication failed" in str(e.value)


def test_wrong_password_sqlstate(cluster1, make_proxy):
    """libpq hides the SQLSTATE of a failed login: read it off the wire."""
    p = make_proxy(cluster1, auth_type="md5")
    r = Raw(p.port)
    r.send(startup_packet(user="app", database="app"))
    t, body = r.read_msg()
    assert t == b"R" and struct.unpack("!I", body[:4])[0] == 5
    r.send(msg(b"p", b"md5" + b"0" * 32 + b"\0"))
    err = r.read_until_error_or_close()
    assert err["C"] == "28P01" and err["S"] == "FATAL"
    assert r.closed()


def test_scram_secret_in_auth_file(cluster1, make_proxy, tmp_path):
    """auth_file holding the server's SCRAM secret: pgstay logs in with the client's key."""
    with psycopg.connect(cluster1.dsn(1), autocommit=True) as c:
        secret = c.execute("select rolpassword from pg_authid where rolname = 'app'").fetchone()[0]
    assert secret.startswith("SCRAM-SHA-256$")
    p = make_proxy(cluster1, start=False, auth_type="scram-sha-256")
    p.userlist["app"] = secret
    p.start()
    with psycopg.connect(p.dsn(user="app", dbname="app", password="app")) as c:
        assert c.execute("select current_user").fetchone()[0] == "app"


@pytest.mark.parametrize("auth", ["scram-sha-256", "md5"])
def test_saslprep_password(cluster1, make_proxy, auth):
    """A password that SASLprep changes ('IX-\u2168' -> 'IX-IX'): libpq prepares what it is
    given, PostgreSQL prepared what it stored; pgstay does both (client side from auth_file,
    server side logging in), so the login works through it as it does directly."""
    pw = "IX-\u2168"
    with psycopg.connect(cluster1.dsn(1), autocommit=True) as c:
        c.execute("drop role if exists roman")
        c.execute("create role roman login password '%s'" % pw)
        c.execute("grant connect on database app to roman")
    try:
        # directly, both spellings work (the server stored the SASLprep'd one)
        for typed in (pw, "IX-IX"):
            psycopg.connect(cluster1.dsn(1, user="roman", dbname="app") + " password=" + typed).close()
        p = make_proxy(cluster1, start=False, auth_type=auth)
        p.userlist["roman"] = pw
        p.start()
        typed_ok = (pw, "IX-IX") if auth == "scram-sha-256" else (pw,)
        for typed in typed_ok:
            with psycopg.connect(p.dsn(user="roman", dbname="app", password=typed)) as c:
                assert c.execute("select current_user").fetchone()[0] == "roman"
        with pytest.raises(psycopg.OperationalError) as e:
            psycopg.connect(p.dsn(user="roman", dbname="app", password="IX-X"))
        assert "password authentication failed" in str(e.value)
    finally:
        with psycopg.connect(cluster1.dsn(1), autocommit=True) as c:
            c.execute("drop owned by roman")
            c.execute("drop role roman")


def test_unknown_database(proxy):
    with pytest.raises(psycopg.OperationalError) as e:
        psycopg.connect(proxy.dsn(dbname="no_such_db"))
    assert 'database "no_such_db" does not exist' in str(e.value)
    with proxy.connect() as c:
        assert c.execute("select 1").fetchone()[0] == 1


# ---- pooling ----

def test_session_pool_reuse_and_reset(cluster1, make_proxy):
    # One worker: a server is reused by the clients of its own worker (doc/workers.md), and the
    # same backend pid is what shows the reuse here.
    p = make_proxy(cluster1, pool_size=1, workers=1)
    with p.connect() as c:
        pid1 = c.execute("select pg_backend_pid()").fetchone()[0]
        c.execute("set work_mem = '7MB'")
    with p.connect() as c:
        pid2 = c.execute("select pg_backend_pid()").fetchone()[0]
        # server_reset_query (DISCARD ALL) ran: the previous client's SET is gone
        assert c.execute("show work_mem").fetchone()[0] != "7MB"
    assert pid1 == pid2


def test_pool_full_waits(cluster1, make_proxy):
    p = make_proxy(cluster1, pool_mode="session", pool_size=1)
    first = p.connect()
    first.execute("select 1")
    result = {}

    def second():
        t0 = time.time()
        with p.connect() as c:
            result["v"] = c.execute("select 2").fetchone()[0]
        result["waited"] = time.time() - t0

    t = threading.Thread(target=second)
    t.start()
    time.sleep(1.0)
    assert "v" not in result  # still waiting for the only server
    first.close()
    t.join(10)
    assert result["v"] == 2 and result["waited"] >= 0.9


def test_query_wait_timeout(cluster1, make_proxy):
    p = make_proxy(cluster1, pool_mode="session", pool_size=1, query_wait_timeout="1s")
    first = p.connect()
    first.execute("select 1")
    # Logging in does not wait for a server once the pool knows its parameters (issue 9,
    # item 14): the first statement does, and gets the timeout.
    second = p.connect()
    t0 = time.time()
    with pytest.raises(psycopg.OperationalError) as e:
        second.execute("select 1")
    assert "query_wait_timeout" in str(e.value)
    assert 0.9 < time.time() - t0 < 5
    first.execute("select 1")
    first.close()
    second.close()


def backends(lab, app):
    """Backend pids of the node serving application_name app (pgstay's servers carry the
    client's application_name while lent, and keep it set afterwards)."""
    with psycopg.connect(lab.dsn(1), autocommit=True) as c:
        return {r[0] for r in c.execute(
            "select pid from pg_stat_activity where usename = 'app' and backend_type = "
            "'client backend'").fetchall()}


def wait_for(pred, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


@pytest.mark.parametrize("key", ["server_idle_timeout", "server_lifetime"])
def test_server_idle_timeout_and_lifetime(cluster1, make_proxy, key):
    """PgBouncer's keys: an idle pooled server unused for server_idle_timeout, or older than
    server_lifetime, is closed; a lent one is not (its client keeps working)."""
    p = make_proxy(cluster1, pool_mode="transaction", pool_size=4, **{key: "1s"})
    busy = p.connect(user="app", dbname="app")
    with busy.transaction():
        busy_pid = busy.execute("select pg_backend_pid()").fetchone()[0]
        c = p.connect(user="app", dbname="app")
        idle_pid = c.execute("select pg_backend_pid()").fetchone()[0]  # back in the pool
        assert idle_pid != busy_pid
        assert wait_for(lambda: idle_pid not in backends(cluster1, "app"))
        # the lent one, in its transaction for longer than the limit, is untouched
        assert busy.execute("select pg_backend_pid()").fetchone()[0] == busy_pid
    assert c.execute("select 1").fetchone()[0] == 1  # a new server
    busy.close()
    c.close()


def test_min_pool_size(cluster1, make_proxy):
    """PgBouncer's min_pool_size: a pool in use keeps that many servers logged in, and
    server_idle_timeout does not close below it."""
    p = make_proxy(cluster1, pool_mode="transaction", pool_size=5, min_pool_size=3,
                   server_idle_timeout="1s")
    c = p.connect(user="app", dbname="app")
    assert c.execute("select 1").fetchone()[0] == 1
    assert wait_for(lambda: len(backends(cluster1, "app")) == 3)
    first = backends(cluster1, "app")
    time.sleep(2.5)  # past server_idle_timeout: the three stay
    assert backends(cluster1, "app") == first
    c.close()


def db_backends(lab, db):
    with psycopg.connect(lab.dsn(1), autocommit=True) as c:
        return c.execute("select count(*) from pg_stat_activity where datname = %s and "
                         "backend_type = 'client backend'", (db,)).fetchone()[0]


def test_max_db_connections(cluster1, make_proxy):
    """PgBouncer's max_db_connections: the servers of every pool of a database stay within it;
    a client over it waits for one to free; a pool at the limit closes another pool's idle
    server to open its own."""
    p = make_proxy(cluster1, pool_mode="transaction", pool_size=5, max_db_connections=2)
    a1 = p.connect(user="app", dbname="app", autocommit=False)
    a2 = p.connect(user="app", dbname="app", autocommit=False)
    a1.execute("select 1")
    a2.execute("select 1")  # two servers, both in transactions: the limit
    got = []

    def other_pool():  # a new pool's first client waits for a server at login already
        with p.connect(user="postgres", dbname="app") as other:
            got.append(other.execute("select 3").fetchone()[0])

    th = threading.Thread(target=other_pool, daemon=True)
    th.start()
    th.join(1.5)
    assert got == [], "a third server was opened for the database"
    assert db_backends(cluster1, "app") == 2
    a1.commit()  # idle in the app pool: evicted for the postgres pool
    th.join(10)
    assert got == [3]
    assert db_backends(cluster1, "app") <= 2
    a2.commit()
    for c in (a1, a2):
        c.close()


def test_idle_transaction_timeout(cluster1, make_proxy):
    """A client idle inside a transaction longer than idle_transaction_timeout is closed with
    25P03 (PostgreSQL's idle_in_transaction_session_timeout) and its transaction rolled back;
    one idle outside a transaction, or busy in a request inside one, is not."""
    p = make_proxy(cluster1, pool_mode="session", idle_transaction_timeout="1s")
    idle_ok = p.connect(user="app", dbname="app")
    busy = p.connect(user="app", dbname="app", autocommit=False)
    c = p.connect(user="app", dbname="app", autocommit=False)
    c.execute("create temp table t_itt (x int)")  # in a transaction from here, then idle
    busy.execute("select pg_sleep(2.5)")  # in its transaction, but in a request: not idle
    busy.execute("select 1")
    busy.rollback()
    assert wait_for(lambda: len([r for r in p.admin_rows("SHOW CLIENTS")
                                 if r["user"] == "app"]) == 2)
    with pytest.raises(psycopg.OperationalError) as e:
        c.execute("select 1")
    assert "idle_transaction_timeout" in str(e.value)
    assert idle_ok.execute("select 1").fetchone()[0] == 1
    with p.connect(user="app", dbname="app") as d:  # the rolled back table is not there
        assert d.execute("select to_regclass('t_itt')").fetchone()[0] is None
    busy.close()
    idle_ok.close()


def test_query_timeout(cluster1, make_proxy):
    """A request running longer than query_timeout: the client gets 57014 and is closed (as
    PgBouncer does), the server too (its query is not waited for); others go on."""
    p = make_proxy(cluster1, pool_mode="transaction", query_timeout="1s")
    other = p.connect(user="app", dbname="app")
    c = p.connect(user="app", dbname="app")
    with pytest.raises(psycopg.OperationalError) as e:
        c.execute("select pg_sleep(30)")
    assert "query_timeout" in str(e.value)
    # libpq does not keep a FATAL's SQLSTATE: read it off the wire
    r = Raw(p.port, timeout=10)
    r.login_trust()
    r.send(msg(b"Q", b"select pg_sleep(30)\0"))
    err = r.read_until_error_or_close()
    assert err["C"] == "57014" and err["S"] == "FATAL", err
    assert r.closed()
    assert other.execute("select 2").fetchone()[0] == 2
    other.close()


def test_pidfile_and_logfile(cluster1, make_proxy, tmp_path):
    """PgBouncer's pidfile and logfile: the pid written at start and removed at exit, a second
    pgstay on the same pidfile refused; the log in logfile, reopened on SIGHUP after a
    rotation."""
    pidfile, logfile = str(tmp_path / "pgstay.pid"), str(tmp_path / "pgstay-file.log")
    p = make_proxy(cluster1, pidfile=pidfile, logfile=logfile)
    assert open(pidfile).read().strip() == str(p.proc.pid)
    assert "started" in open(logfile).read()
    second = subprocess.run([os.path.join(build_dir(), "pgstay"), p.conf_path],
                            capture_output=True, text=True, timeout=20)
    assert second.returncode != 0
    assert_no_sanitizer_report(second.stderr, second.returncode)
    assert "already running as pid %d" % p.proc.pid in open(logfile).read() + second.stderr
    os.rename(logfile, logfile + ".1")
    p.signal(signal.SIGHUP)
    assert wait_for(lambda: os.path.exists(logfile) and "reloaded" in open(logfile).read())
    p.stop()
    assert not os.path.exists(pidfile)
    assert "pgstay stopped" in open(logfile).read()


@pytest.mark.parametrize("ignored", [False, True])
def test_ignore_startup_parameters(cluster1, make_proxy, ignored):
    """PgBouncer's ignore_startup_parameters: a startup parameter listed there is dropped as if
    the client had not sent it; one not listed takes effect, as it does directly."""
    settings = {"ignore_startup_parameters": "search_path, extra_float_digits"} if ignored else {}
    p = make_proxy(cluster1, **settings)

    async def go():
        c = await asyncpg.connect(host="127.0.0.1", port=p.port, user="postgres",
                                  database="postgres", password="postgres",
                                  server_settings={"search_path": "nowhere, public"})
        try:
            return await c.fetchval("show search_path")
        finally:
            await c.close()

    got = asyncio.run(go())
    assert got == ('"$user", public' if ignored else "nowhere, public")


def test_max_client_conn(cluster1, make_proxy):
    p = make_proxy(cluster1, max_client_conn=2)
    a, b = p.connect(), p.connect()
    with pytest.raises(psycopg.OperationalError) as e:
        p.connect()
    assert "too many clients" in str(e.value)
    r = Raw(p.port)
    r.send(startup_packet())
    assert r.read_until_error_or_close()["C"] == "53300"
    a.close()
    b.close()


# ---- signals and command line ----

def test_sighup_reload(cluster1, make_proxy):
    p = make_proxy(cluster1, auth_type="scram-sha-256")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(p.dsn(user="app", dbname="app", password="newpass"))
    p.userlist["app"] = "newpass"
    p.settings["pool_size"] = 3
    p.write_config()
    with open(os.path.join(p.dir, "userlist.txt"), "w") as f:
        f.write('"postgres" "postgres"\n"app" "newpass"\n')
    p.signal(signal.SIGHUP)
    time.sleep(0.5)
    assert "configuration reloaded" in p.log()
    # the client password changed in auth_file; the server still has 'app' and refuses 'newpass',
    # so the login gets the server's own error after pgstay accepted the client
    with pytest.raises(psycopg.OperationalError) as e:
        psycopg.connect(p.dsn(user="app", dbname="app", password="newpass"))
    assert "password authentication failed" in str(e.value)
    assert p.proc.poll() is None


def test_sigterm_drains(cluster1, make_proxy):
    p = make_proxy(cluster1)
    c = p.connect(autocommit=False)
    c.execute("select 1")
    p.signal(signal.SIGTERM)
    time.sleep(0.3)
    # no new connections
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(p.dsn(), connect_timeout=2)
    # the connected client finishes its transaction
    c.execute("select pg_sleep(0.2)")
    c.commit()
    assert p.proc.poll() is None
    c.close()
    p.proc.wait(5)
    assert p.proc.returncode == 0


def test_sigint_exits_at_once(cluster1, make_proxy):
    p = make_proxy(cluster1)
    c = p.connect()
    p.signal(signal.SIGINT)
    p.proc.wait(5)
    c.close()


def test_command_line(cluster1, make_proxy, tmp_path):
    exe = os.path.join(build_dir(), "pgstay")
    out = run([exe, "--version"])
    assert out.returncode == 0 and out.stdout.startswith("pgstay ")
    p = make_proxy(cluster1, start=False)
    p.write_config()
    out = run([exe, "--check-config", p.conf_path])
    assert out.returncode == 0, out.stderr
    bad = tmp_path / "bad.ini"
    bad.write_text("[pgstay]\nlisten_port = 6432\npool_sise = 3\n[nodes]\nn1 = host=127.0.0.1\n")
    out = run([exe, "--check-config", str(bad)])
    assert out.returncode != 0
    assert "bad.ini:3:" in out.stderr and "pool_sise" in out.stderr
    bad.write_text("[pgstay]\npool_size = lots\n[nodes]\nn1 = host=127.0.0.1\n")
    out = run([exe, str(bad)])
    assert out.returncode != 0 and "bad.ini:2:" in out.stderr


def test_admin_console(proxy):
    rows = proxy.admin("SHOW NODES")
    assert rows[0][0] == "n1" and rows[0][3] == "primary" and rows[0][4] == "yes"
    with proxy.connect() as c:
        c.execute("select 1")
        pools = proxy.admin("SHOW POOLS")
        assert any(r[0] == "postgres" and r[1] == "postgres" for r in pools)
        assert len(proxy.admin("SHOW CLIENTS")) >= 1
        assert len(proxy.admin("SHOW SERVERS")) >= 1
    # only admin_users may use it
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn(dbname="pgstay", user="app"))
