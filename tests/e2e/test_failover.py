"""The failover contract against a real 3-node synchronous cluster: idle clients see nothing,
in-flight requests fail cleanly, no acknowledged write is lost, stale primaries are fenced."""
import os
import shutil
import tempfile
import threading
import time

import psycopg
import psycopg.rows
import pytest

from conftest import Pgstay, slack
from lab import Lab, Unsupported, free_port_base


@pytest.fixture
def cluster3():
    d = tempfile.mkdtemp(prefix="pgstay-fo-")
    os.chmod(d, 0o755)
    lab = Lab(os.path.join(d, "lab"), nodes=3, port=free_port_base(), sync=True, auth="scram")
    lab.init()
    yield lab
    try:
        for n in ("n1", "n2", "n3"):
            lab.run("thaw", n, check=False)
            lab.run("heal", n, check=False)
        lab.destroy()
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fo_proxy(cluster3, tmp_path):
    p = Pgstay(cluster3, str(tmp_path), pool_size=40, failover_timeout="20s",
               health_check_timeout="500ms")
    p.start()
    with p.connect() as c:
        c.execute("create table if not exists writes (client int, seq int, ts timestamptz "
                  "default now(), primary key (client, seq))")
    yield p
    p.stop()


class Writer(threading.Thread):
    """One client through pgstay inserting a row every 10 ms, recording what it was told."""

    def __init__(self, proxy, client_id, port=None):
        super().__init__(daemon=True)
        self.conn = psycopg.connect(proxy.dsn(port=port), autocommit=True)
        self.client_id = client_id
        self.acked = []
        self.errors = []  # (seq, sqlstate, message)
        self.broken = False
        self.halt = threading.Event()
        self.seq = 0

    def run(self):
        while not self.halt.is_set():
            self.seq += 1
            try:
                self.conn.execute("insert into writes (client, seq) values (%s, %s)",
                                  (self.client_id, self.seq))
                self.acked.append(self.seq)
            except psycopg.Error as e:
                self.errors.append((self.seq, getattr(e, "sqlstate", None), str(e).strip()))
                if self.conn.closed:
                    self.broken = True
                    return
            time.sleep(0.01)

    def acked_since(self, n):
        return len(self.acked) > n

    def stop(self):
        self.halt.set()
        self.join(10)


class Reader(threading.Thread):
    """A client on the reader endpoint reading every 20 ms."""

    def __init__(self, proxy):
        super().__init__(daemon=True)
        self.conn = psycopg.connect(proxy.dsn(port=proxy.readonly_port), autocommit=True)
        self.ok = 0
        self.errors = []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            try:
                self.conn.execute("select 1").fetchone()
                self.ok += 1
            except psycopg.Error as e:
                self.errors.append(str(e).strip())
                if self.conn.closed:
                    return
            time.sleep(0.02)

    def stop(self):
        self.halt.set()
        self.join(10)


def show(proxy, cmd):
    """An admin SHOW as a list of dicts, so that tests name the columns they read."""
    with psycopg.connect(proxy.dsn(dbname="pgstay"), autocommit=True, prepare_threshold=None,
                         row_factory=psycopg.rows.dict_row) as c:
        return c.execute(cmd).fetchall()


def idle_clients(proxy, n=20):
    conns = [psycopg.connect(proxy.dsn(), autocommit=True) for _ in range(n)]
    for c in conns:
        c.execute("set application_name = 'idle-client'")
        c.execute("select 1")
    return conns


def check_idle_clients(conns, writer_port):
    """Every idle client runs its next statement, on the new writer, with no error."""
    for c in conns:
        rec, port, app = c.execute(
            "select pg_is_in_recovery(), inet_server_port(), current_setting('application_name')"
        ).fetchone()
        assert rec is False
        assert port == writer_port
        assert app == "idle-client"  # its SET followed it to the new server
        c.close()


def writer_of(proxy):
    rows = [r[0] for r in proxy.admin("SHOW NODES") if r[4] == "yes"]
    return rows[0] if rows else None


def check_rows(lab, writers, primary):
    with psycopg.connect(lab.dsn(primary), autocommit=True) as c:
        rows = set(c.execute("select client, seq from writes").fetchall())
    for w in writers:
        acked = {(w.client_id, s) for s in w.acked}
        lost = acked - rows
        assert not lost, "acknowledged inserts lost: %s" % sorted(lost)[:10]
    return rows


def wait_progress(writers, timeout=25):
    marks = [len(w.acked) for w in writers]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(len(w.acked) > m + 20 for w, m in zip(writers, marks)):
            return
        time.sleep(0.05)
    raise AssertionError("writers made no progress after the event: %s" %
                         [(w.errors[-3:], w.broken) for w in writers])


def run_event(proxy, lab, event, max_errors):
    idle = idle_clients(proxy)
    writers = [Writer(proxy, 1)]
    reader = Reader(proxy)
    for w in writers:
        w.start()
    reader.start()
    time.sleep(1.0)
    event()
    wait_progress(writers)
    for w in writers:
        w.stop()
    reader.stop()
    # The writer as pgstay sees it: a frozen or blackholed old primary still claims the role.
    primary = writer_of(proxy)
    assert primary is not None
    check_idle_clients(idle, lab.node_port(primary))
    rows = check_rows(lab, writers, primary)
    for w in writers:
        assert not w.broken, w.errors
        assert len(w.errors) <= max_errors, w.errors
        for seq, state, msg in w.errors:
            assert state in ("08006", "08007", "57P01"), (seq, state, msg)
    assert not reader.errors or len(reader.errors) <= 1, reader.errors
    assert reader.ok > 0
    return writers, rows


def lsn_value(lsn):
    hi, lo = lsn.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def promote_best(lab):
    """Promote the standby with the most WAL, as a control plane would: the other one can then
    follow it, and synchronous commits on the new primary do not wait for good."""
    standbys = [n for n in lab.status()["nodes"] if n["role"] == "standby" and n["lsn"]]
    best = max(standbys, key=lambda n: lsn_value(n["lsn"]))["name"]
    lab.promote(best)
    return best


def failovers(proxy):
    return proxy.admin("SHOW FAILOVERS")


def test_crash_failover(fo_proxy, cluster3):
    writers, _ = run_event(fo_proxy, cluster3, lambda: cluster3.failover(delay_ms=1000), 1)
    ev = failovers(fo_proxy)
    assert len(ev) == 1
    assert ev[0][1] == "n1" and ev[0][2] in ("n2", "n3")
    assert int(ev[0][9]) >= 900  # the hold lasted about the promotion delay
    log = fo_proxy.log()
    assert "failover #1: started" in log and "failover #1: completed" in log


def test_crash_failover_rejoin(fo_proxy, cluster3):
    run_event(fo_proxy, cluster3, lambda: cluster3.failover(delay_ms=300, rejoin=True), 1)
    st = {n["name"]: n["role"] for n in cluster3.status()["nodes"]}
    assert st["n1"] == "standby"
    # the rejoined node enters the reader set
    deadline = time.time() + 5
    while time.time() < deadline:
        nodes = {r[0]: r[3] for r in fo_proxy.admin("SHOW NODES")}
        if nodes["n1"] == "standby":
            break
        time.sleep(0.1)
    assert nodes["n1"] == "standby"


def test_switchover_zero_errors(fo_proxy, cluster3):
    admin = fo_proxy.dsn(dbname="pgstay")
    out = []
    run_event(fo_proxy, cluster3, lambda: out.append(cluster3.switchover(proxy=admin)), 0)
    assert cluster3.primary() != "n1"
    # Writes resume once the new primary is writable, not after the old one's rejoin.
    out = out[0]
    assert out.index("proxy: RESUME") < out.index("rejoined as a standby"), out


def test_pause_opens_the_new_writers_servers_ahead(fo_proxy, cluster3):
    """A planned switchover by hand: PAUSE, the primary stops, a standby is promoted. Before
    RESUME, pgstay has logged in on the new writer as many servers as the held clients need, so
    RESUME costs them no login (issue 10: the new writer used within milliseconds)."""
    conns = [fo_proxy.connect() for _ in range(3)]
    for c in conns:
        c.execute("select 1")
    fo_proxy.admin("PAUSE")
    done = []

    def one(c, i):
        c.execute("insert into writes (client, seq) values (%s, 1)", (900 + i,))
        done.append(i)

    threads = [threading.Thread(target=one, args=(c, i), daemon=True) for i, c in enumerate(conns)]
    try:
        for th in threads:
            th.start()
        cluster3.stop("n1")
        cluster3.promote("n2")
        deadline = time.time() + 20
        ready = 0
        while time.time() < deadline:
            rows = show(fo_proxy, "SHOW SERVERS")
            ready = sum(1 for r in rows
                        if r["node"] == "n2" and r["state"] == "idle" and r["user"] == "postgres")
            if ready >= len(conns):
                break
            time.sleep(0.05)
        assert ready >= len(conns), rows
        assert done == [], "PAUSE let a transaction through"
    finally:
        fo_proxy.admin("RESUME")
        for th in threads:
            th.join(10)
    assert sorted(done) == [0, 1, 2]
    for c in conns:
        c.close()


def test_every_held_client_has_a_server_opened_ahead(cluster3, tmp_path):
    """While there is no writer, each held client of a session pool has a server logged in on
    every standby, not only server_connect_concurrency of them (issue 10): the ones past it would
    each pay a login on the just-promoted node. After the promotion every held insert runs on one
    of those servers, with no error."""
    p = Pgstay(cluster3, str(tmp_path), pool_mode="session", pool_size=20,
               server_connect_concurrency=2, failover_timeout="20s",
               health_check_timeout="500ms")
    p.start()
    n = 6
    try:
        with p.connect() as c:
            c.execute("create table if not exists writes (client int, seq int, ts timestamptz "
                      "default now(), primary key (client, seq))")
        conns = [p.connect() for _ in range(n)]
        for c in conns:
            c.execute("select 1")
        cluster3.crash("n1")
        done, errors = [], []

        def one(c, i):
            try:
                pid = c.execute("insert into writes (client, seq) values (%s, 1) "
                                "returning pg_backend_pid()", (800 + i,)).fetchone()[0]
                done.append(pid)
            except psycopg.Error as e:
                errors.append(str(e))

        threads = [threading.Thread(target=one, args=(c, i), daemon=True)
                   for i, c in enumerate(conns)]
        for th in threads:
            th.start()
        deadline = time.time() + 20
        ready = {}
        while time.time() < deadline:
            rows = show(p, "SHOW SERVERS")
            ready = {nd: [r["remote_pid"] for r in rows if r["node"] == nd and
                          r["state"] == "idle" and r["user"] == "postgres"]
                     for nd in ("n2", "n3")}
            if all(len(v) >= n for v in ready.values()):
                break
            time.sleep(0.05)
        assert all(len(v) >= n for v in ready.values()), ready
        assert done == [] and errors == [], "a request went through with no writer"
        new = promote_best(cluster3)
        for th in threads:
            th.join(20)
        assert errors == [] and len(done) == n, (errors, done)
        # no login on the new writer: each insert ran on a server opened while it was a standby
        assert set(done) <= set(ready[new]), (done, ready[new])
        for c in conns:
            c.close()
    finally:
        p.stop()


def test_clients_held_while_suspect_are_counted(cluster3, tmp_path):
    """A client whose request waits while the writer is only suspect counts in the failover
    that follows (SHOW FAILOVERS clients_held): it was held, before the event existed."""
    p = Pgstay(cluster3, str(tmp_path), pool_mode="transaction", pool_size=10,
               failover_timeout="20s", health_check_timeout="300ms", health_check_fall=100)
    p.start()
    c = p.connect()
    c.execute("select 1")
    got = []
    th = threading.Thread(target=lambda: got.append(c.execute("select 2").fetchone()[0]),
                          daemon=True)
    try:
        cluster3.freeze("n1")
        deadline = time.time() + 10
        while time.time() < deadline:
            n1 = [r for r in show(p, "SHOW NODES") if r["name"] == "n1"][0]
            if n1["health"] == "suspect":
                break
            time.sleep(0.05)
        assert n1["health"] == "suspect", n1
        th.start()
        while time.time() < deadline and not any(
                r["held"] == "yes" for r in show(p, "SHOW CLIENTS")):
            time.sleep(0.05)
        assert show(p, "SHOW FAILOVERS") == []  # held, and no failover yet
        cluster3.run("crash", "n1")  # the writer's connections reset: lost at once
        promote_best(cluster3)
        th.join(20)
        assert got == [2]
        ev = show(p, "SHOW FAILOVERS")
        assert len(ev) == 1 and int(ev[0]["clients_held"]) >= 1, ev
    finally:
        cluster3.run("thaw", "n1", check=False)
        c.close()
        p.stop()


def test_frozen_primary(fo_proxy, cluster3):
    def event():
        cluster3.freeze("n1")
        time.sleep(1.0)
        promote_best(cluster3)

    try:
        run_event(fo_proxy, cluster3, event, 1)
    finally:
        cluster3.run("crash", "n1", check=False)
        cluster3.run("thaw", "n1", check=False)


def test_blackholed_primary(fo_proxy, cluster3):
    def event():
        try:
            cluster3.blackhole("n1")
        except Unsupported as e:
            pytest.skip("the machine does not allow dropping traffic: %s" % e.stdout.strip())
        time.sleep(1.0)
        promote_best(cluster3)

    try:
        run_event(fo_proxy, cluster3, event, 1)
    finally:
        cluster3.run("heal", "n1", check=False)
        cluster3.run("crash", "n1", check=False)


def test_standby_crash(fo_proxy, cluster3):
    writers, _ = run_event(fo_proxy, cluster3, lambda: cluster3.crash("n3"), 0)
    assert cluster3.primary() == "n1"
    for w in writers:
        assert w.errors == []


def test_fencing_stale_primary(fo_proxy, cluster3):
    # The most advanced standby is promoted: with --to a lagging one, the other standby could
    # not follow it and synchronous commits would wait for good.
    run_event(fo_proxy, cluster3, lambda: cluster3.failover(delay_ms=200), 1)
    new = writer_of(fo_proxy)
    assert new in ("n2", "n3")
    # the old primary's data directory starts again: a primary on the old timeline
    cluster3.start("n1")
    deadline = time.time() + 5
    while time.time() < deadline:
        nodes = {r[0]: r[3] for r in fo_proxy.admin("SHOW NODES")}
        if nodes.get("n1") == "fenced":
            break
        time.sleep(0.05)
    assert nodes["n1"] == "fenced", nodes
    assert "FENCED" in fo_proxy.log()
    with fo_proxy.connect() as c:
        for i in range(50):
            c.execute("insert into writes (client, seq) values (99, %s)", (i,))
        assert c.execute("select inet_server_port()").fetchone()[0] == cluster3.node_port(new)
    with psycopg.connect(cluster3.dsn("n1"), autocommit=True) as c:
        assert c.execute("select count(*) from writes where client = 99").fetchone()[0] == 0
    with psycopg.connect(cluster3.dsn(new), autocommit=True) as c:
        assert c.execute("select count(*) from writes where client = 99").fetchone()[0] == 50


def test_in_flight_transaction(fo_proxy, cluster3):
    """A transaction block open at the crash: told it failed (E), ROLLBACK answered, goes on."""
    c = fo_proxy.connect(autocommit=False)
    c.execute("insert into writes (client, seq) values (7, 1)")
    cluster3.failover(delay_ms=300)
    with pytest.raises(psycopg.Error) as e:
        c.execute("insert into writes (client, seq) values (7, 2)")
    assert e.value.sqlstate == "08006"
    assert not c.closed
    c.rollback()
    c.execute("insert into writes (client, seq) values (7, 3)")
    c.commit()
    assert c.execute("select count(*) from writes where client = 7").fetchone()[0] == 1
    c.close()


def test_in_flight_failure_counted_in_its_failover(fo_proxy, cluster3):
    """A statement running when the writer crashes fails with 08006, and SHOW FAILOVERS counts
    it in that failover (its connection's reset is what starts the event, so the count must
    not depend on which of the two pgstay handles first)."""
    c = fo_proxy.connect()
    got = []

    def slow():
        try:
            c.execute("select pg_sleep(30)")
        except psycopg.Error as e:
            got.append(e.sqlstate)

    th = threading.Thread(target=slow, daemon=True)
    th.start()
    with psycopg.connect(cluster3.dsn(1), autocommit=True) as mon:
        deadline = time.time() + 10
        while time.time() < deadline and not mon.execute(
                "select count(*) from pg_stat_activity where state = 'active' "
                "and query like 'select pg_sleep%%'").fetchone()[0]:
            time.sleep(0.05)
    cluster3.failover(delay_ms=300)
    th.join(20)
    assert got == ["08006"]
    ev = show(fo_proxy, "SHOW FAILOVERS")
    assert len(ev) == 1 and int(ev[0]["failed_in_flight"]) == 1, ev
    c.close()


def test_hold_times_out(fo_proxy, cluster3, tmp_path):
    """No writer for longer than failover_timeout: 08006 naming the reason, connection usable."""
    p = Pgstay(cluster3, str(tmp_path / "b"), failover_timeout="1s")
    os.makedirs(p.dir, exist_ok=True)
    p.start()
    try:
        c = p.connect()
        c.execute("select 1")
        cluster3.crash("n1")
        t0 = time.time()
        with pytest.raises(psycopg.Error) as e:
            c.execute("select 1")
        assert e.value.sqlstate == "08006"
        assert "failover_timeout" in str(e.value)
        assert 0.8 < time.time() - t0 < slack(5)
        assert not c.closed
        new = promote_best(cluster3)
        assert c.execute("select inet_server_port()").fetchone()[0] == cluster3.node_port(new)
        c.close()
    finally:
        p.stop()


def test_pinned_session_told(fo_proxy, cluster3):
    """An idle session holding state pgstay cannot rebuild (a temp table) gets a FATAL saying why."""
    c = fo_proxy.connect()
    c.execute("create temp table scratch (x int)")
    plain = fo_proxy.connect()
    plain.execute("select 1")
    cluster3.failover(delay_ms=200)
    with pytest.raises(psycopg.OperationalError) as e:
        c.execute("select 1")
    assert "cannot be rebuilt" in str(e.value) and "temp table" in str(e.value)
    assert plain.execute("select 1").fetchone()[0] == 1


def test_commit_outcome_unknown(fo_proxy, cluster3):
    """A COMMIT in flight when the writer is lost gets 08007, and the connection goes on."""
    c = fo_proxy.connect(autocommit=False)
    c.execute("insert into writes (client, seq) values (8, 1)")
    cluster3.freeze("n1")  # the COMMIT reaches the server and never comes back
    try:
        with pytest.raises(psycopg.Error) as e:
            c.commit()
        assert e.value.sqlstate == "08007", str(e.value)
        assert "may or may not have been committed" in str(e.value)
        assert not c.closed
        new = promote_best(cluster3)
        c.execute("insert into writes (client, seq) values (8, 2)")
        c.commit()
        assert c.execute("select inet_server_port()").fetchone()[0] == cluster3.node_port(new)
    finally:
        cluster3.run("crash", "n1", check=False)
        cluster3.run("thaw", "n1", check=False)
        c.close()


def test_session_replay_only_accepted(fo_proxy, cluster3):
    """Issue 9, item 9: a session rebuilt after a failover gets back exactly the prepared
    statements the old server accepted: a refused Parse is not replayed (it would fail the
    replay), a good one works, the refused name is unknown (26000) as on PostgreSQL."""
    c = fo_proxy.connect()
    pg = c.pgconn
    bad = pg.prepare(b"s_bad", b"selec 1")
    assert bad.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"42601"
    good = pg.prepare(b"s_good", b"select 40 + 2")
    assert good.status == psycopg.pq.ExecStatus.COMMAND_OK
    c.execute("set application_name = 'replayed'")
    old_port = c.execute("select inet_server_port()").fetchone()[0]
    cluster3.failover(delay_ms=200)
    deadline = time.time() + 20
    while True:
        r = pg.exec_prepared(b"s_good", [])
        if r.status == psycopg.pq.ExecStatus.TUPLES_OK or time.time() > deadline:
            break
        time.sleep(0.05)
    assert r.status == psycopg.pq.ExecStatus.TUPLES_OK, r.error_message
    assert r.get_value(0, 0) == b"42"
    r = pg.exec_prepared(b"s_bad", [])
    assert r.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"26000"
    assert c.execute("show application_name").fetchone()[0] == "replayed"
    assert c.execute("select inet_server_port()").fetchone()[0] != old_port


def test_session_replay_failure_is_fatal(fo_proxy, cluster3):
    """Issue 9, item 9: state that cannot be rebuilt on the new writer ends the session with a
    FATAL that says so, never a session silently missing a statement."""
    if fo_proxy.settings["pool_mode"] != "session":
        pytest.skip("session-mode replay (transaction mode prepares lazily on each server)")
    with fo_proxy.connect() as d:
        d.execute("create table if not exists t_replay (x int)")
    c = fo_proxy.connect()
    pg = c.pgconn
    assert pg.prepare(b"s_t", b"select x from t_replay").status == psycopg.pq.ExecStatus.COMMAND_OK
    cluster3.failover(delay_ms=200)
    # The statement's table goes away on the new writer before the session is rebuilt there.
    deadline = time.time() + 20
    while True:
        try:
            with psycopg.connect(fo_proxy.dsn(), connect_timeout=5, autocommit=True) as d:
                d.execute("drop table t_replay")
            break
        except psycopg.Error:
            if time.time() > deadline:
                raise
            time.sleep(0.1)
    # Every result libpq makes of the answer (PQexec would keep only its last: "server closed
    # the connection unexpectedly", as after any FATAL).
    pg.send_query_prepared(b"s_t", [])
    while pg.flush():
        pass
    messages = b""
    while True:
        r = pg.get_result()
        if r is None:
            break
        messages += r.error_message or b""
    assert b"could not be rebuilt" in messages, messages
    assert b"t_replay" in messages, messages
    assert pg.status == psycopg.pq.ConnStatus.BAD


def test_cancel_held_request(fo_proxy, cluster3):
    """Issue 9, item 8: a request held while there is no writer, then cancelled, gets 57014
    at once and never runs, also once a writer is back; the connection goes on."""
    c = fo_proxy.connect()
    c.execute("select 1")
    cluster3.run("crash", "n1")  # no promotion yet: requests are held
    result = {}

    def run():
        try:
            c.execute("insert into writes (client, seq) values (77, 1)")
            result["ok"] = True
        except psycopg.Error as e:
            result["err"] = e.sqlstate

    t = threading.Thread(target=run)
    t.start()
    time.sleep(1.0)
    assert t.is_alive(), result  # held
    t0 = time.time()
    c.cancel()
    t.join(10)
    assert result.get("err") == "57014", result
    assert time.time() - t0 < slack(3)
    promote_best(cluster3)
    assert c.execute("select count(*) from writes where client = 77").fetchone()[0] == 0
