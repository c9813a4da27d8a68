"""Transaction pooling with real clients: servers lent per transaction, SETs following the client,
protocol-level prepared statements under pgstay's names, pins, and failover."""
import asyncio
import os
import shutil
import subprocess
import threading
import time

import asyncpg
import psycopg
import pytest

from conftest import REPO
from wire import Raw, error_fields, msg
from test_failover import cluster3  # noqa: F401 - the 3-node fixture, used by the failover test

JAR = "/usr/share/java/postgresql.jar"
JAVA_SRC = os.path.join(REPO, "tests", "e2e", "java", "Prepared.java")


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 120), **kw)


def tx_proxy(make_proxy, lab, pool_size, **kw):
    kw.setdefault("query_wait_timeout", "10s")  # a stall fails in seconds, not minutes
    return make_proxy(lab, pool_mode="transaction", pool_size=pool_size, **kw)


def backend_pid(c):
    return c.execute("select pg_backend_pid()").fetchone()[0]


def server_count(p):
    """Server connections of the clients' pool (the health probe is listed too: not counted)."""
    return len([r for r in p.admin("SHOW SERVERS") if r[3] != "probe"])


def pins(p):
    return {r[0]: int(r[1]) for r in p.admin("SHOW PINS")}


def defaults(lab, *names):
    """What a fresh session on the server itself shows for these settings."""
    with psycopg.connect(lab.dsn(1), autocommit=True) as c:
        return {n: c.execute("select current_setting(%s)", (n,)).fetchone()[0] for n in names}


class Churn:
    """Clients cycling through the pool in threads: short statements and transactions, each
    answer checked, the backend pids they got recorded."""

    def __init__(self, proxy, n, check=None, pause=0.002):
        self.conns = [proxy.connect() for _ in range(n)]
        self.check = check
        self.pause = pause
        self.pids = set()
        self.errors = []
        self.count = 0
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.threads = [threading.Thread(target=self.loop, args=(c, i), daemon=True)
                        for i, c in enumerate(self.conns)]
        for t in self.threads:
            t.start()

    def loop(self, c, i):
        k = 0
        while not self.halt.is_set():
            k += 1
            try:
                if k % 3 == 0:
                    with c.transaction():
                        pid = backend_pid(c)
                        assert c.execute("select %s::int * 2", (k,)).fetchone()[0] == k * 2
                else:
                    pid, v = c.execute("select pg_backend_pid(), %s::int + 1", (k,)).fetchone()
                    assert v == k + 1
                if self.check:
                    self.check(c)
                with self.lock:
                    self.pids.add(pid)
                    self.count += 1
            except Exception as e:  # noqa: BLE001 - recorded and asserted on
                self.errors.append("client %d: %r" % (i, e))
                if c.closed:
                    return
            time.sleep(self.pause)

    def finish(self):
        self.halt.set()
        for t in self.threads:
            t.join(10)
        for c in self.conns:
            c.close()
        assert self.errors == [], self.errors[:5]
        assert self.count > 0


# ---- 1. pgbench ----

@pytest.fixture(scope="module")
def pgbench_tables(cluster1):
    out = run(["pgbench", "-i", "-s", "1", "-q", cluster1.dsn(1)])
    assert out.returncode == 0, out.stderr
    return cluster1


def pgbench(p, *args, timeout=60):
    return run(["pgbench", "-n"] + list(args) + [p.dsn()], timeout=timeout)


def check_pgbench(p, out, clients):
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout
    assert "number of failed transactions: 0 (0.000%)" in out.stdout, out.stdout
    done = int(out.stdout.split("number of transactions actually processed: ")[1].split()[0])
    assert done > clients, out.stdout
    assert server_count(p) <= 5


# -M prepared: pgbench prepares with a synchronous PQprepare that blocks its thread; with 50
# clients per thread and 5 servers, the thread's other clients hold every server in an open
# transaction meanwhile, so the Parse must be answered without one.
@pytest.mark.parametrize("mode,clients", [("prepared", 100), ("simple", 50), ("extended", 50)])
def test_pgbench(pgbench_tables, make_proxy, mode, clients):
    p = tx_proxy(make_proxy, pgbench_tables, 5)
    try:
        out = pgbench(p, "-M", mode, "-c", str(clients), "-j", "2", "-T", "3", timeout=15)
    except subprocess.TimeoutExpired:
        lent = [r for r in p.admin_rows("SHOW SERVERS") if r["client"]]
        waiting = [r for r in p.admin("SHOW CLIENTS") if r[3] == "waiting"]
        pytest.fail("pgbench stalled: %d servers lent, %d clients waiting" % (len(lent), len(waiting)))
    check_pgbench(p, out, clients)


# ---- 2. asyncpg: named prepared statements everywhere ----

def test_asyncpg_prepared_statements(cluster1, make_proxy):
    p = tx_proxy(make_proxy, cluster1, 3)

    async def client(k, pids):
        conn = await asyncpg.connect(host="127.0.0.1", port=p.port, user="postgres",
                                     password="postgres", database="postgres")
        try:
            for i in range(25):  # statement cache: named statements reused on any server
                assert await conn.fetchval("select $1::int + 1", i) == i + 1
            triple = await conn.prepare("select $1::int * 3, pg_backend_pid()")
            concat = await conn.prepare("select $1::text || $2::text")
            for t in range(8):
                row = await triple.fetchrow(t)
                assert row[0] == t * 3
                pids.add(row[1])
                async with conn.transaction():
                    a = await triple.fetchrow(t + 100)
                    assert a[0] == (t + 100) * 3
                    assert await concat.fetchval("c%d" % k, str(t)) == "c%d%d" % (k, t)
                    assert await conn.fetchval("select $1::int + 1", t) == t + 1
                    b = await triple.fetchrow(t + 200)
                    assert b[1] == a[1]  # one transaction, one server
                assert await concat.fetchval("x", "y") == "xy"
            rows = await conn.fetch("select g, $1::int from generate_series(1, 50) g", k)
            assert [r[0] for r in rows] == list(range(1, 51)) and rows[0][1] == k
            # more statements than asyncpg's cache holds: it closes the oldest ones
            for i in range(120):
                assert await conn.fetchval("select $1::int - %d" % i, 500) == 500 - i
            assert await conn.fetchval("select $1::int + 1", 7) == 8
        finally:
            await conn.close()

    async def main():
        pids = set()
        res = await asyncio.gather(*[client(k, pids) for k in range(20)], return_exceptions=True)
        return [r for r in res if r is not None], pids

    errors, pids = asyncio.run(main())
    assert errors == [], errors[:3]
    assert 1 < len(pids) <= 3
    assert server_count(p) <= 3


# ---- 3. psycopg: pipeline mode and automatic server-side prepare ----

def test_psycopg_pipeline(cluster1, make_proxy):
    p = tx_proxy(make_proxy, cluster1, 2)
    with p.connect() as c:
        c.execute("drop table if exists t_txpipe")
        c.execute("create table t_txpipe (id int primary key, v text)")
    churn = Churn(p, 3)
    try:
        with p.connect() as c:
            for rnd in range(5):
                with c.pipeline():
                    for i in range(100):
                        c.execute("insert into t_txpipe values (%s, %s)", (rnd * 1000 + i, str(i)))
                    cur = c.execute("select count(*) from t_txpipe where id / 1000 = %s", (rnd,))
                assert cur.fetchone()[0] == 100
            # a pipeline inside a transaction block, then one with an error in the middle
            with c.transaction(), c.pipeline():
                for i in range(50):
                    c.execute("insert into t_txpipe values (%s, 'tx')", (9000 + i,))
                cur = c.execute("select count(*) from t_txpipe where v = 'tx'")
            assert cur.fetchone()[0] == 50
            with pytest.raises(psycopg.errors.UniqueViolation):
                with c.pipeline():
                    c.execute("insert into t_txpipe values (%s, 'dup')", (9100,))
                    c.execute("insert into t_txpipe values (%s, 'dup')", (9100,))
                    c.execute("insert into t_txpipe values (%s, 'dup')", (9101,))
            assert c.execute("select count(*) from t_txpipe where v = 'dup'").fetchone()[0] == 0
            assert c.execute("select count(*) from t_txpipe").fetchone()[0] == 550
    finally:
        churn.finish()
    assert server_count(p) <= 2


@pytest.mark.parametrize("threshold", [1, 5])
def test_psycopg_auto_prepare(cluster1, make_proxy, threshold):
    p = tx_proxy(make_proxy, cluster1, 2)
    churn = Churn(p, 3)
    try:
        with p.connect(prepare_threshold=threshold) as c:
            pids = set()
            # Rounds until the client has run on both servers (six are usually enough; on a
            # loaded machine the churn may leave it on one server for longer), at most 60.
            for rnd in range(60):
                if rnd >= 6 and len(pids) == 2:
                    break
                for i in range(10):  # the same query 10 times: prepared after `threshold`
                    pid, v = c.execute("select pg_backend_pid(), %s::int * 7", (i,)).fetchone()
                    assert v == i * 7
                    pids.add(pid)
                with c.transaction():
                    for i in range(10):
                        row = c.execute("select %s::text || 'z', pg_backend_pid()", ("r%d" % i,)).fetchone()
                        assert row[0] == "r%dz" % i
                    # the transaction's server has the statements under pgstay's names
                    n = c.execute("select count(*) from pg_prepared_statements "
                                  "where name like 'pgstay%%'", prepare=False).fetchone()[0]
                    assert n >= 1
                time.sleep(0.01)
            assert len(pids) == 2, "the client never moved between the two servers"
    finally:
        churn.finish()


# ---- 4. pgjdbc ----

def test_pgjdbc_prepared(cluster1, make_proxy, tmp_path):
    if not (shutil.which("javac") and shutil.which("java")):
        pytest.skip("javac/java not installed (tools/deps.sh installs default-jdk-headless)")
    if not os.path.exists(JAR):
        pytest.skip("%s missing (tools/deps.sh installs libpostgresql-jdbc-java)" % JAR)
    classes = tmp_path / "classes"
    classes.mkdir()
    out = run(["javac", "-d", str(classes), "-cp", JAR, JAVA_SRC])
    assert out.returncode == 0, out.stderr
    p = tx_proxy(make_proxy, cluster1, 2)
    with p.connect() as c:
        c.execute("drop table if exists t_jdbc")
        c.execute("create table t_jdbc (w int, v int)")
    churn = Churn(p, 2)
    try:
        out = run(["java", "-cp", "%s:%s" % (classes, JAR), "Prepared", "127.0.0.1", str(p.port),
                   "t_jdbc", "2"], timeout=90)
    finally:
        churn.finish()
    assert out.returncode == 0, out.stdout + out.stderr + p.log()[-3000:]
    assert "all ok" in out.stdout
    assert int(out.stdout.split("server pids seen: ")[1].split()[0]) == 2, out.stdout
    assert server_count(p) <= 2


# ---- 5, 6. SET follows the client; SET LOCAL and other clients' SETs do not leak ----

class Holder:
    """A client holding a server in an open transaction (so others must use another one)."""

    def __init__(self, proxy):
        self.conn = proxy.connect(autocommit=False)

    def hold(self):
        return backend_pid(self.conn)

    def release(self):
        self.conn.commit()


def test_set_follows_client(cluster1, make_proxy):
    # One worker: the proof needs the clients to take turns on the same servers, which they do
    # within a worker (doc/workers.md; test_workers.py covers servers moving between workers).
    p = tx_proxy(make_proxy, cluster1, 3, workers=1)
    dflt = defaults(cluster1, "search_path", "TimeZone", "application_name")
    a = p.connect()
    plain = p.connect()
    holders = [Holder(p), Holder(p)]
    a.execute("set search_path = s_tx, public")
    a.execute("set timezone = 'Asia/Tokyo'")
    a.execute("SET application_name TO 'client-a'", prepare=True)  # a named Parse
    pids = []
    for rnd in range(8):
        h = holders[rnd % 2]
        hp = h.hold()  # likely the server `a` just had
        pid, sp, tz, app = a.execute(
            "select pg_backend_pid(), current_setting('search_path'), current_setting('TimeZone'), "
            "current_setting('application_name')").fetchone()
        assert pid != hp
        pids.append(pid)
        assert (sp, tz, app) == ("s_tx, public", "Asia/Tokyo", "client-a"), rnd
        assert a.execute("show search_path").fetchone()[0] == "s_tx, public"
        assert a.execute("show timezone").fetchone()[0] == "Asia/Tokyo"
        h.release()
        # a client that never SET, on whatever server is free now
        for _ in range(3):
            got = plain.execute("select current_setting('search_path'), current_setting('TimeZone'), "
                                "current_setting('application_name')").fetchone()
            assert got == (dflt["search_path"], dflt["TimeZone"], dflt["application_name"]), rnd
    assert len(set(pids)) > 1, "client a never changed servers: %s" % pids
    # RESET: back to the default wherever it runs next
    a.execute("reset timezone")
    for rnd in range(4):
        h = holders[rnd % 2]
        h.hold()
        assert a.execute("show timezone").fetchone()[0] == dflt["TimeZone"]
        assert a.execute("show search_path").fetchone()[0] == "s_tx, public"
        h.release()
    for h in holders:
        h.conn.close()
    a.close()
    plain.close()


def test_set_local_does_not_leak(cluster1, make_proxy):
    p = tx_proxy(make_proxy, cluster1, 2)
    dflt = defaults(cluster1, "work_mem")["work_mem"]
    assert dflt != "3MB"
    seen = []
    churn = Churn(p, 2, check=lambda c: seen.append(c.execute("show work_mem").fetchone()[0]))
    try:
        with p.connect(autocommit=False) as a:
            for rnd in range(10):
                a.execute("set local work_mem = '3MB'")
                assert a.execute("show work_mem").fetchone()[0] == "3MB"
                a.commit()
                assert a.execute("show work_mem").fetchone()[0] == dflt
                a.commit()
                time.sleep(0.01)
        with p.connect() as b:  # simple BEGIN ... COMMIT in autocommit, one Query each
            for rnd in range(10):
                b.execute("begin")
                b.execute("set local work_mem to '3MB'")
                b.execute("commit")
                assert b.execute("show work_mem").fetchone()[0] == dflt
    finally:
        churn.finish()
    assert seen and "3MB" not in seen, sorted(set(seen))


def test_set_rolled_back_not_replayed(cluster1, make_proxy):
    """PostgreSQL undoes a SET whose transaction rolls back: pgstay must not replay it."""
    # One worker: the proof needs the clients to take turns on the same servers, which they do
    # within a worker (doc/workers.md; test_workers.py covers servers moving between workers).
    p = tx_proxy(make_proxy, cluster1, 3, workers=1)
    dflt = defaults(cluster1, "work_mem")["work_mem"]
    a = p.connect(autocommit=False)
    holders = [Holder(p), Holder(p)]
    a.execute("set work_mem = '5MB'")
    assert a.execute("show work_mem").fetchone()[0] == "5MB"
    a.rollback()
    got = []
    for rnd in range(6):
        h = holders[rnd % 2]
        h.hold()
        got.append(a.execute("select pg_backend_pid(), current_setting('work_mem')").fetchone())
        a.commit()
        h.release()
    for c in [a] + [h.conn for h in holders]:
        c.close()
    assert len({pid for pid, _ in got}) > 1
    assert [v for _, v in got] == [dflt] * 6, got


def test_failed_set_not_replayed(cluster1, make_proxy):
    """A SET that failed changed nothing: the client's other settings still follow it."""
    # One worker: the proof needs the clients to take turns on the same servers, which they do
    # within a worker (doc/workers.md; test_workers.py covers servers moving between workers).
    p = tx_proxy(make_proxy, cluster1, 3, workers=1)
    a = p.connect()
    holders = [Holder(p), Holder(p)]
    a.execute("set search_path = s_ok, public")
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        a.execute("set work_mem = 'lots'")
    got = []
    for rnd in range(6):
        h = holders[rnd % 2]
        h.hold()
        got.append(a.execute("select pg_backend_pid(), current_setting('search_path')").fetchone())
        h.release()
    for c in [a] + [h.conn for h in holders]:
        c.close()
    assert len({pid for pid, _ in got}) > 1
    assert [v for _, v in got] == ["s_ok, public"] * 6, got


# SET forms beyond `SET name = value`: tracked, or pinning; never left on the server for others.
SET_FORMS = {
    # statement, the setting it changes, the value it shows
    "set timezone": pytest.param("set timezone = 'America/Lima'", "TimeZone", "America/Lima"),
    "set time zone": pytest.param("set time zone 'America/Lima'", "TimeZone", "America/Lima"),
    "set quoted name": pytest.param("set \"TimeZone\" = 'Africa/Cairo'", "TimeZone", "Africa/Cairo"),
    "two SETs in one Query": pytest.param("set timezone = 'Asia/Kolkata'; set work_mem = '6MB'",
                                          "TimeZone", "Asia/Kolkata"),
    "set role": pytest.param("set role app", "role", "app"),
}


@pytest.mark.parametrize("sql,setting,value", list(SET_FORMS.values()), ids=list(SET_FORMS))
def test_set_forms_do_not_leak(cluster1, make_proxy, sql, setting, value):
    """Whatever SET form a client uses, it keeps its value and a client that never SET keeps
    the defaults. Three servers: one may be pinned to `a`, one held by `h`, one for `b`."""
    # One worker: the proof needs the clients to take turns on the same servers, which they do
    # within a worker (doc/workers.md; test_workers.py covers servers moving between workers).
    p = tx_proxy(make_proxy, cluster1, 3, workers=1)
    dflt = defaults(cluster1, setting)[setting]
    a = p.connect()
    a.execute(sql)
    assert a.execute("select current_setting(%s)", (setting,)).fetchone()[0] == value
    q = "select pg_backend_pid(), current_setting(%s)"
    seen, a_pids, b_pids = set(), set(), set()
    with p.connect() as b, p.connect(autocommit=False) as h:
        for _ in range(6):
            h.execute("select 1")  # holds one of the servers
            for _ in range(2):
                pid, v = b.execute(q, (setting,)).fetchone()
                b_pids.add(pid)
                seen.add(v)
                pid, v = a.execute(q, (setting,)).fetchone()
                a_pids.add(pid)
                assert v == value
            h.commit()
        pinned = [r["pinned"] for r in p.admin_rows("SHOW CLIENTS") if r["pinned"]]
    a.close()
    assert seen == {dflt}, "%s leaked to another client: %s" % (sql, seen)
    if pinned:
        assert len(a_pids) == 1 and not a_pids & b_pids
    else:
        assert a_pids & b_pids, "b never ran on a server `a` had used: the check proved nothing"


def test_shared_statement_text_per_search_path(cluster1, make_proxy):
    """Two clients prepare the same text that names different tables through their search_path:
    each reads its own (the server statements are shared by text; PostgreSQL re-parses a
    statement whose search_path changed)."""
    p = tx_proxy(make_proxy, cluster1, 2)
    with p.connect() as c:
        c.execute("create schema if not exists s_sp")
        c.execute("drop table if exists s_sp.t_sp, public.t_sp")
        c.execute("create table s_sp.t_sp (v text)")
        c.execute("create table public.t_sp (v text)")
        c.execute("insert into s_sp.t_sp values ('schema')")
        c.execute("insert into public.t_sp values ('public')")
    a, b = p.connect(prepare_threshold=0), p.connect(prepare_threshold=0)
    a.execute("set search_path = s_sp")
    for i in range(10):
        assert a.execute("select v, %s::int from t_sp", (i,)).fetchone() == ("schema", i)
        assert b.execute("select v, %s::int from t_sp", (i,)).fetchone() == ("public", i)
        with a.transaction():
            assert a.execute("select v, %s::int from t_sp", (i,)).fetchone() == ("schema", i)
    b.execute("set search_path = s_sp")
    assert b.execute("select v, %s::int from t_sp", (1,)).fetchone() == ("schema", 1)
    a.close()
    b.close()


# ---- protocol-level statement names, as PostgreSQL answers them ----

def until_ready(r):
    """(type, SQLSTATE or b'') of each message up to ReadyForQuery."""
    out = []
    while True:
        t, body = r.read_msg()
        out.append((t, error_fields(body)["C"] if t == b"E" else b""))
        if t == b"Z":
            return out


def parse(name, sql):
    return msg(b"P", name + b"\0" + sql + b"\0\0\0")


def bind_execute(name):
    return msg(b"B", b"\0" + name + b"\0\0\0\0\0\0\0") + msg(b"E", b"\0\0\0\0\0")


def test_statement_names(cluster1, make_proxy):
    p = tx_proxy(make_proxy, cluster1, 2)
    r = Raw(p.port)
    r.login_trust()
    r.send(parse(b"s1", b"select 1") + msg(b"S"))
    assert until_ready(r) == [(b"1", b""), (b"Z", b"")]
    r.send(bind_execute(b"s1") + msg(b"S"))
    assert [t for t, _ in until_ready(r)] == [b"2", b"D", b"C", b"Z"]
    r.send(msg(b"C", b"Ss1\0") + msg(b"S"))
    assert until_ready(r) == [(b"3", b""), (b"Z", b"")]
    r.send(bind_execute(b"s1") + msg(b"S"))
    assert until_ready(r) == [(b"E", "26000"), (b"Z", b"")]
    # the same text under two names, and a name prepared again after its Close
    r.send(parse(b"a", b"select 2") + parse(b"b", b"select 2") + msg(b"C", b"Sa\0") +
           parse(b"a", b"select 3") + bind_execute(b"a") + bind_execute(b"b") + msg(b"S"))
    assert [t for t, _ in until_ready(r)] == [b"1", b"1", b"3", b"1", b"2", b"D", b"C",
                                               b"2", b"D", b"C", b"Z"]
    r.close()


def test_statement_name_in_use(cluster1, make_proxy):
    p = tx_proxy(make_proxy, cluster1, 2)
    r = Raw(p.port)
    r.login_trust()
    r.send(parse(b"s1", b"select 1") + msg(b"S"))
    assert until_ready(r) == [(b"1", b""), (b"Z", b"")]
    r.send(parse(b"s1", b"select 2") + msg(b"S"))
    assert until_ready(r) == [(b"E", "42P05"), (b"Z", b"")]


def test_failed_parse_leaves_no_name(cluster1, make_proxy):
    p = tx_proxy(make_proxy, cluster1, 2)
    r = Raw(p.port)
    r.login_trust()
    r.send(parse(b"bad", b"selec oops") + msg(b"S"))
    assert until_ready(r) == [(b"E", "42601"), (b"Z", b"")]
    r.send(bind_execute(b"bad") + msg(b"S"))
    assert until_ready(r) == [(b"E", "26000"), (b"Z", b"")]


# ---- 7. pins ----

PIN_CASES = {
    # reason: (statements that pin, a statement that uses the pinned state, its answer)
    "temp table": (["create temp table tt_pin (x int)", "insert into tt_pin values (5)"],
                   "select sum(x) from tt_pin", 5),
    "advisory lock": (["select pg_advisory_lock(4242)"],
                      "select count(*) from pg_locks where locktype = 'advisory' "
                      "and pid = pg_backend_pid()", 1),
    "LISTEN": (["listen pin_chan"], "select count(*) from pg_listening_channels()", 1),
    "SQL PREPARE": (["prepare pin_p as select 41 + 1"], "execute pin_p", 42),
    "WITH HOLD cursor": (["begin", "declare pin_c cursor with hold for select 7 from generate_series(1, 1000)",
                          "commit"], "fetch 1 from pin_c", 7),
    "LOAD": (["load 'plpgsql'"], None, None),
}

# Session state a server must not carry to the next client after a pinned one leaves.
LEFTOVERS = ("select (to_regclass('pg_temp.tt_pin') is not null)::int"
             " + (select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid())"
             " + (select count(*) from pg_listening_channels())"
             " + (select count(*) from pg_prepared_statements where from_sql)"
             " + (select count(*) from pg_cursors)")


@pytest.mark.parametrize("reason", list(PIN_CASES))
def test_pin(cluster1, make_proxy, reason):
    stmts, use, answer = PIN_CASES[reason]
    p = tx_proxy(make_proxy, cluster1, 2)
    c = p.connect()
    backend_pid(c)
    before = pins(p)
    assert reason in before, before
    for s in stmts:
        c.execute(s)
    after = pins(p)
    assert after[reason] == before[reason] + 1, (before, after)
    assert {k: v for k, v in after.items() if k != reason} == \
        {k: v for k, v in before.items() if k != reason}
    pinned = backend_pid(c)
    srv = [r for r in p.admin_rows("SHOW SERVERS") if r["remote_pid"] == pinned]
    assert len(srv) == 1
    cl = [r for r in p.admin_rows("SHOW CLIENTS") if r["pinned"]]
    assert len(cl) == 1 and cl[0]["pinned"] == reason and cl[0]["server"] == srv[0]["id"], cl
    # others cycle through the pool while the pinned client keeps running transactions
    churn = Churn(p, 3)
    try:
        for i in range(15):
            if i % 2:
                with c.transaction():
                    assert backend_pid(c) == pinned
                    if use:
                        assert c.execute(use).fetchone()[0] == answer
            else:
                assert backend_pid(c) == pinned
                if use:
                    assert c.execute(use).fetchone()[0] == answer
            time.sleep(0.02)
    finally:
        churn.finish()
    assert pinned not in churn.pids, "the pinned client's server was lent to another client"
    assert len(churn.pids) == 1
    c.close()
    # after it leaves, no client finds its session state on any server of the pool
    time.sleep(0.2)
    h1, h2 = p.connect(autocommit=False), p.connect(autocommit=False)
    got = [h.execute(LEFTOVERS).fetchone()[0] for h in (h1, h2)]
    pids = {backend_pid(h1), backend_pid(h2)}
    assert len(pids) == 2
    assert got == [0, 0], "session state left on a server after the pinned client left"
    for h in (h1, h2):
        h.rollback()
        h.close()


# ---- 8. failover ----

def test_failover_transaction_mode(cluster3, make_proxy):  # noqa: F811
    p = tx_proxy(make_proxy, cluster3, 10, failover_timeout="20s", health_check_timeout="500ms")
    old = cluster3.node_port("n1")
    loop = asyncio.new_event_loop()
    psy = []
    for k in range(4):
        c = p.connect(prepare_threshold=0)  # every statement a named one
        c.execute("set application_name = 'tx-idle-%d'" % k)
        for i in range(3):
            assert c.execute("select %s::int + 10, inet_server_port()", (i,)).fetchone() == (i + 10, old)
        with c.transaction():
            assert c.execute("select %s::text || current_setting('application_name')",
                             ("a",)).fetchone()[0] == "atx-idle-%d" % k
        psy.append(c)

    async def setup():
        conns = []
        for k in range(3):
            conn = await asyncpg.connect(host="127.0.0.1", port=p.port, user="postgres",
                                         password="postgres", database="postgres")
            await conn.execute("set application_name = 'tx-async-%d'" % k)
            st = await conn.prepare("select $1::int * 5, inet_server_port(), "
                                    "current_setting('application_name')")
            row = await st.fetchrow(k)
            assert tuple(row) == (k * 5, old, "tx-async-%d" % k)
            conns.append((conn, st))
        return conns

    async def check(conns, port):
        for k, (conn, st) in enumerate(conns):
            row = await st.fetchrow(k + 1)
            assert tuple(row) == ((k + 1) * 5, port, "tx-async-%d" % k)
            assert await conn.fetchval("select pg_is_in_recovery()") is False
            async with conn.transaction():
                assert (await st.fetchrow(2))[0] == 10
            await conn.close()

    try:
        aconns = loop.run_until_complete(setup())
        cluster3.failover(delay_ms=300)
        # straight away: the requests wait for the new writer, then run there
        port = None
        for k, c in enumerate(psy):
            for i in range(3):  # the same named statements, prepared again on the new writer
                v, got_port = c.execute("select %s::int + 10, inet_server_port()", (i,)).fetchone()
                assert v == i + 10
                port = port or got_port
                assert got_port == port != old
            assert c.execute("select current_setting('application_name'), pg_is_in_recovery()",
                             ).fetchone() == ("tx-idle-%d" % k, False)
            with c.transaction():
                assert c.execute("select %s::text || current_setting('application_name')",
                                 ("b",)).fetchone()[0] == "btx-idle-%d" % k
            c.close()
        loop.run_until_complete(check(aconns, port))
        assert port == cluster3.node_port(cluster3.primary())
    finally:
        loop.close()


def test_psycopg_statement_cache_overflow(cluster1, make_proxy):
    """psycopg DEALLOCATEs (extended protocol, unnamed statement) when its statement cache
    overflows: pgstay answers it, since the statement lives on the servers under its own name."""
    p = tx_proxy(make_proxy, cluster1, 2)
    other = p.connect()
    with psycopg.connect(p.dsn(), autocommit=True, prepare_threshold=0) as c:
        c.prepared_max = 2
        for i in range(20):
            for q in range(5):
                assert c.execute("select %s::int + " + str(q), (i,)).fetchone()[0] == i + q
            other.execute("select 1")
        with c.transaction():
            for q in range(5):
                assert c.execute("select %s::int * " + str(q), (3,)).fetchone()[0] == 3 * q
        c.execute("deallocate all")
        assert c.execute("select 41 + 1").fetchone()[0] == 42
    other.close()


def test_bare_flush_needs_no_server(cluster1, make_proxy):
    """An idle client's Flush, with nothing asked since its last Sync, has nothing to push out:
    it does not wait for a server (here the only one is in another client's transaction), and
    the client's next query still works once one is free."""
    from wire import Raw, msg
    p = tx_proxy(make_proxy, cluster1, 1)
    a = p.connect(autocommit=False)
    a.execute("select 1")  # holds the only server
    r = Raw(p.port)
    r.login_trust()
    r.send(msg(b"H"))
    time.sleep(0.5)
    pools = [x for x in p.admin_rows("SHOW POOLS") if x["database"] == "postgres"
             and x["user"] == "postgres"]
    assert sum(x["cl_waiting"] for x in pools) == 0, pools
    a.commit()
    r.send(msg(b"Q", b"select 7\0"))
    t, body = r.read_msg()
    while t != b"D":
        t, body = r.read_msg()
    assert body.endswith(b"7")
    r.close()
    a.close()
