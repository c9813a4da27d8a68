"""workers = 4 (issue 14): clients spread over 4 event loops, and what must not notice it does
not: cancels reach the right worker, pool and connection limits hold across workers, a failover
holds and resumes every worker's clients in one event, RELOAD reaches every worker."""
import concurrent.futures
import threading
import time
import uuid

import psycopg
import pytest

from conftest import Pgstay, slack
from test_failover import cluster3, promote_best, writer_of  # noqa: F401 (cluster3: a fixture)
from wire import Raw, error_fields, startup_packet

WORKERS = 4


def wproxy(make_proxy, lab, **settings):
    settings.setdefault("workers", WORKERS)
    return make_proxy(lab, **settings)


def show(p, cmd):
    """An admin SHOW: its column names and its rows as dicts."""
    with psycopg.connect(p.dsn(dbname="pgstay"), autocommit=True, prepare_threshold=None) as c:
        cur = c.execute(cmd)
        cols = [d.name for d in cur.description]
        return cols, [dict(zip(cols, r)) for r in cur.fetchall()]


def workers_of(p, database):
    """The worker column of SHOW CLIENTS for the clients of `database`, one entry per client."""
    cols, rows = show(p, "SHOW CLIENTS")
    assert cols[-1] == "worker", cols
    return [int(r["worker"]) for r in rows if r["database"] == database]


def assert_spread(p, database, n):
    """n clients of `database` listed, on workers 0..3, at least two of them: what makes the
    rest of a test exercise more than one worker."""
    ws = workers_of(p, database)
    assert len(ws) == n, ws
    assert set(ws) <= set(range(WORKERS)), ws
    assert len(set(ws)) >= 2, "all %d clients on one worker: %s" % (n, ws)


def connect_many(p, n, **kw):
    """n connections opened at once (from n threads), as concurrent clients arrive."""
    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        return list(ex.map(lambda _: p.connect(**kw), range(n)))


def close_all(conns):
    for c in conns:
        c.close()


@pytest.fixture
def own_db(cluster1):
    """A database of the test's own on cluster1's node: pg_stat_activity rows for it are
    pgstay's servers of this test only (not the health checks, not another test's)."""
    name = "wk_" + uuid.uuid4().hex[:10]
    with psycopg.connect(cluster1.dsn(1), autocommit=True) as d:
        d.execute("create database %s" % name)
    yield name
    with psycopg.connect(cluster1.dsn(1), autocommit=True) as d:
        d.execute("drop database if exists %s with (force)" % name)


class BackendWatch(threading.Thread):
    """Polls pg_stat_activity on the node itself (not through pgstay) while a test runs, and
    keeps the most backends seen at once for one database (optionally only the active ones)."""

    def __init__(self, lab, dbname, active_only=False):
        super().__init__(daemon=True)
        self.conn = psycopg.connect(lab.dsn(1), autocommit=True)
        self.dbname = dbname
        self.active_only = active_only
        self.peak = 0
        self.samples = 0
        self.halt = threading.Event()

    def count(self):
        sql = "select count(*) from pg_stat_activity where datname = %s"
        if self.active_only:
            sql += " and state = 'active'"
        return self.conn.execute(sql, (self.dbname,)).fetchone()[0]

    def run(self):
        while not self.halt.is_set():
            self.peak = max(self.peak, self.count())
            self.samples += 1
            time.sleep(0.01)

    def stop(self):
        self.halt.set()
        self.join(10)
        self.conn.close()
        return self.peak


def wait_until(cond, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def run_clients(conns, work, timeout=60):
    """Run work(conn, i) on every connection at once; each one's exception or None."""
    errors = [None] * len(conns)

    def one(i):
        try:
            work(conns[i], i)
        except Exception as e:  # noqa: BLE001 (reported by the test)
            errors[i] = e

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(conns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a client did not finish within %ds" % timeout
    return errors


# ---- a. clients are spread, and each is listed with its worker ----

def test_clients_spread_over_workers(cluster1, make_proxy):
    """32 clients connecting at once land on at least two of the 4 workers; SHOW CLIENTS and
    SHOW SERVERS end with a `worker` column in 0..3, and a session's server is on its client's
    worker (a worker does the I/O of its own connections only)."""
    p = wproxy(make_proxy, cluster1, pool_mode="session", pool_size=40)
    conns = connect_many(p, 32)
    try:
        for c in conns:
            assert c.execute("select 1").fetchone() == (1,)
        assert_spread(p, "postgres", 32)
        cols, clients = show(p, "SHOW CLIENTS")
        scols, servers = show(p, "SHOW SERVERS")
        assert scols[-1] == "worker", scols
        assert all(int(s["worker"]) in range(WORKERS) for s in servers), servers
        server_worker = {s["id"]: int(s["worker"]) for s in servers}
        linked = [c for c in clients if c["database"] == "postgres" and c["server"] is not None]
        assert len(linked) == 32, clients  # session mode: every client has its server
        for c in linked:
            assert server_worker[c["server"]] == int(c["worker"]), (c, server_worker)
    finally:
        close_all(conns)


# ---- b. a cancel accepted by any worker reaches the right one ----

def test_cancel_across_workers(cluster1, make_proxy):
    """12 clients on several workers each run pg_sleep(30); each is cancelled by libpq's cancel
    (a new connection, accepted by whichever worker): every one ends with 57014."""
    p = wproxy(make_proxy, cluster1, pool_mode="session", pool_size=20)
    conns = connect_many(p, 12)
    for c in conns:
        c.execute("set application_name = 'wk-cancel'")
    assert_spread(p, "postgres", 12)
    got = [None] * len(conns)

    def sleep(i):
        try:
            conns[i].execute("select pg_sleep(30)")
            got[i] = "finished"
        except psycopg.Error as e:
            got[i] = e.sqlstate

    threads = [threading.Thread(target=sleep, args=(i,), daemon=True) for i in range(12)]
    for t in threads:
        t.start()
    try:
        with psycopg.connect(cluster1.dsn(1), autocommit=True) as mon:
            deadline = time.time() + slack(10)
            running = 0
            while time.time() < deadline and running < 12:
                running = mon.execute(
                    "select count(*) from pg_stat_activity where state = 'active' and "
                    "application_name = 'wk-cancel' and query like 'select pg_sleep%%'"
                ).fetchone()[0]
                time.sleep(0.05)
            assert running == 12, "only %d of 12 sleeps running" % running
        for c in conns:
            c.cancel()
        for t in threads:
            t.join(20)  # far less than the 30 s sleep: cancelled, not finished
        assert got == ["57014"] * 12, got
        for c in conns:  # and each connection goes on
            assert c.execute("select 2").fetchone() == (2,)
    finally:
        close_all(conns)


# ---- c. pool_size holds across workers ----

def test_pool_size_is_global(cluster1, make_proxy, own_db):
    """Transaction mode, pool_size = 3, 16 clients on several workers each running
    pg_sleep(0.5) three times: the node never sees more than 3 backends of the pool, and every
    query succeeds."""
    p = wproxy(make_proxy, cluster1, pool_mode="transaction", pool_size=3,
               query_wait_timeout="60s")
    conns = connect_many(p, 16, dbname=own_db)
    try:
        assert_spread(p, own_db, 16)
        watch = BackendWatch(cluster1, own_db)
        watch.start()
        errors = run_clients(conns, lambda c, i: [c.execute("select pg_sleep(0.5)")
                                                  for _ in range(3)])
        peak = watch.stop()
        assert errors == [None] * 16, errors
        assert watch.samples > 10
        assert 2 <= peak <= 3, "the node saw %d backends of a pool of 3" % peak
    finally:
        close_all(conns)


# ---- d. max_client_conn holds across workers ----

def login(port):
    """A raw login: (the connection, None) once ready, or (None, the error's fields)."""
    r = Raw(port, timeout=slack(10))
    r.send(startup_packet())
    while True:
        t, body = r.read_msg()
        if t == b"E":
            r.close()
            return None, error_fields(body)
        if t == b"Z":
            return r, None


def test_max_client_conn_is_global(cluster1, make_proxy):
    """max_client_conn = 6 on 4 workers: of 10 logins, exactly 6 get in and 4 get 53300 (as
    with one worker); a client leaving makes room for one more, whichever worker accepts it."""
    p = wproxy(make_proxy, cluster1, max_client_conn=6)
    # The admin connections of start() count until their worker sees them close: wait until
    # the one asking is the only client listed.
    wait_until(lambda: len(show(p, "SHOW CLIENTS")[1]) == 1, slack(5), "no client left")
    results = [login(p.port) for _ in range(10)]
    ok = [r for r, err in results if r]
    refused = [err for r, err in results if err]
    try:
        assert len(ok) == 6 and len(refused) == 4, refused
        for err in refused:
            assert err["C"] == "53300", err
            assert err["M"] == "sorry, too many clients already (max_client_conn)", err
        ok.pop().close()
        deadline = time.time() + slack(5)
        while True:  # the close is seen by its worker's loop, not at once
            r, err = login(p.port)
            if r or time.time() > deadline:
                break
            time.sleep(0.1)
        assert r is not None, err
        ok.append(r)
        r, err = login(p.port)  # and full again
        assert r is None and err["C"] == "53300", err
    finally:
        for r in ok:
            r.close()


# ---- e. max_db_connections holds across workers ----

def test_max_db_connections_is_global(cluster1, make_proxy, own_db):
    """max_db_connections = 2 (pool_size 10), 12 clients on several workers each running
    pg_sleep(0.3) three times: the node never sees more than 2 backends of the database, and
    every query succeeds."""
    p = wproxy(make_proxy, cluster1, pool_mode="transaction", pool_size=10,
               max_db_connections=2, query_wait_timeout="60s")
    conns = connect_many(p, 12, dbname=own_db)
    try:
        assert_spread(p, own_db, 12)
        watch = BackendWatch(cluster1, own_db)
        watch.start()
        errors = run_clients(conns, lambda c, i: [c.execute("select pg_sleep(0.3)")
                                                  for _ in range(3)])
        peak = watch.stop()
        assert errors == [None] * 12, errors
        assert 1 <= peak <= 2, "the node saw %d backends with max_db_connections = 2" % peak
    finally:
        close_all(conns)


# ---- f. one failover holds and resumes every worker's clients ----

def test_failover_holds_every_workers_clients(cluster3, tmp_path):
    """16 idle clients on several workers; the primary crashes; once pgstay sees no writer,
    each client sends one INSERT (held); then a standby is promoted. Every insert succeeds on
    the new writer, every client writes again after it, and SHOW FAILOVERS has one event whose
    clients_held counts the 16, with its hold ended."""
    p = Pgstay(cluster3, str(tmp_path), workers=WORKERS, pool_size=40, failover_timeout="30s",
               health_check_timeout="500ms")
    p.start()
    conns = []
    try:
        with p.connect() as c:
            c.execute("create table wk_writes (client int, seq int, primary key (client, seq))")
        conns = connect_many(p, 16)
        for c in conns:
            c.execute("select 1")
        assert_spread(p, "postgres", 16)
        cluster3.crash("n1")
        wait_until(lambda: writer_of(p) is None, slack(20), "pgstay to see no writer")
        errors = [None] * 16
        done = []

        def insert(i):
            try:
                conns[i].execute("insert into wk_writes values (%s, 1)", (i,))
                done.append(i)
            except psycopg.Error as e:
                errors[i] = (e.sqlstate, str(e))

        threads = [threading.Thread(target=insert, args=(i,), daemon=True) for i in range(16)]
        for t in threads:
            t.start()

        def held():
            _, rows = show(p, "SHOW CLIENTS")
            return sum(1 for r in rows if r["database"] == "postgres" and r["held"] == "yes")

        wait_until(lambda: held() == 16, slack(20), "the 16 inserts to be held")
        assert done == [] and errors == [None] * 16, "a request went through with no writer"
        new = promote_best(cluster3)
        for t in threads:
            t.join(30)
        assert errors == [None] * 16 and sorted(done) == list(range(16)), (errors, done)
        port = cluster3.node_port(new)
        for i, c in enumerate(conns):  # each client writes again, on the new writer
            c.execute("insert into wk_writes values (%s, 2)", (i,))
            assert c.execute("select inet_server_port()").fetchone()[0] == port
        with psycopg.connect(cluster3.dsn(new), autocommit=True) as d:
            assert d.execute("select count(*) from wk_writes").fetchone()[0] == 32
        _, ev = show(p, "SHOW FAILOVERS")
        assert len(ev) == 1, ev  # one event for all the workers' clients
        assert int(ev[0]["clients_held"]) == 16, ev
        assert ev[0]["hold_ended"] is not None and ev[0]["new_writer"] == new, ev
    finally:
        close_all(conns)
        p.stop()


# ---- g. RELOAD reaches every worker ----

def test_reload_applies_to_every_worker(cluster1, make_proxy, own_db):
    """Transaction mode, pool_size = 8, 16 clients on several workers: the load uses more than
    2 servers, on several workers. RELOAD with pool_size = 2 and server_idle_timeout = 1: SHOW
    CONFIG says so, the same load never has more than 2 queries running at once on the node,
    and once idle every server is closed (whichever worker held it)."""
    p = wproxy(make_proxy, cluster1, pool_mode="transaction", pool_size=8,
               query_wait_timeout="60s", server_idle_timeout="600s")
    conns = connect_many(p, 16, dbname=own_db)

    def load(c, i):
        for _ in range(3):
            c.execute("select pg_sleep(0.3)")

    held_by = set()  # the workers seen holding a server of the pool during the first load
    halt = threading.Event()

    def sample():
        while not halt.is_set():
            _, servers = show(p, "SHOW SERVERS")
            held_by.update(int(s["worker"]) for s in servers if s["database"] == own_db)
            time.sleep(0.05)

    try:
        assert_spread(p, own_db, 16)
        watch = BackendWatch(cluster1, own_db, active_only=True)
        watch.start()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        assert run_clients(conns, load) == [None] * 16
        halt.set()
        sampler.join(10)
        before = watch.stop()
        assert 2 < before <= 8, before  # the first pool_size in force
        # (once the load ends, idle servers may all have moved to the last worker still waiting)
        assert len(held_by) >= 2, held_by

        p.settings.update(pool_size=2, server_idle_timeout="1s")
        p.write_config()
        assert p.admin("RELOAD") == "RELOAD"
        _, cfg = show(p, "SHOW CONFIG")
        cfg = {r["key"]: r["value"] for r in cfg}
        assert cfg["pool_size"] == "2" and cfg["server_idle_timeout"] == "1000ms", cfg

        watch = BackendWatch(cluster1, own_db, active_only=True)
        watch.start()
        assert run_clients(conns, load) == [None] * 16
        after = watch.stop()
        # Fails intermittently on a2b5fb6 (3 to 5 at once): the servers opened under
        # pool_size = 8 in several workers are still lent after the reload (passes alone at
        # times, and always with workers = 1).
        assert 1 <= after <= 2, "%d queries at once after RELOAD to pool_size = 2" % after

        with psycopg.connect(cluster1.dsn(1), autocommit=True) as mon:
            try:
                wait_until(lambda: mon.execute("select count(*) = 0 from pg_stat_activity where "
                                               "datname = %s", (own_db,)).fetchone()[0],
                           slack(20), "every idle server closed by server_idle_timeout = 1s")
            except AssertionError as e:
                raise AssertionError("%s; SHOW SERVERS: %s" % (e, show(p, "SHOW SERVERS")[1]))
        _, servers = show(p, "SHOW SERVERS")
        assert [s for s in servers if s["database"] == own_db] == []
    finally:
        close_all(conns)


# ---- h. a server freed in one worker serves a client waiting in another ----

def test_waiting_client_served_from_another_worker(cluster1, make_proxy, own_db):
    """Transaction mode, pool_size = 1 (one server for all 4 workers), 8 clients on several
    workers each running BEGIN; pg_sleep(0.2); COMMIT five times at once: every transaction
    succeeds, none waits past query_wait_timeout (20 s), the node sees 1 backend at most, and
    that server goes from worker to worker rather than being closed and logged in again for
    the next one (at most 2 backend pids over the 40 transactions)."""
    p = wproxy(make_proxy, cluster1, pool_mode="transaction", pool_size=1,
               query_wait_timeout="20s")
    conns = connect_many(p, 8, dbname=own_db, autocommit=False)
    try:
        assert_spread(p, own_db, 8)

        pids = set()

        def txns(c, i):
            for _ in range(5):
                pids.add(c.execute("select pg_backend_pid(), pg_sleep(0.2)").fetchone()[0])
                c.commit()

        watch = BackendWatch(cluster1, own_db)
        watch.start()
        errors = run_clients(conns, txns, timeout=120)
        peak = watch.stop()
        assert errors == [None] * 8, errors
        assert peak == 1, "the node saw %d backends of a pool of 1" % peak
        # Fails on de8836d..a2b5fb6 (40 transactions, up to 40 logins): a worker that needs the
        # server another worker holds idle gets it by that worker closing it and itself opening
        # a new one (9611b29), not by the connection moving; see test_transaction's test_pin.
        assert len(pids) <= 2, "%d logins for 40 transactions on a pool of 1" % len(pids)
    finally:
        close_all(conns)
