"""Issue 9: a server is never shared in an unknown state, and session state follows its client.

Each test reproduces one numbered item of the issue with PostgreSQL's own behaviour as the
reference. Most share one server between clients (pool_size=1) so that anything a client leaves
on it reaches the next one. Raw wire messages where no driver would send them; every read has a
timeout so a hang fails the test in seconds."""
import signal
import socket
import struct
import threading
import time

import psycopg
import pytest

from conftest import rss_kb, sanitizer, slack
from wire import Raw, error_fields, msg, startup_packet


# ---- helpers ----

def tx(make_proxy, lab, pool_size, **kw):
    kw.setdefault("query_wait_timeout", "10s")  # a stall fails in seconds, not minutes
    return make_proxy(lab, pool_mode="transaction", pool_size=pool_size, **kw)


def direct(lab):
    return psycopg.connect(lab.dsn(1), autocommit=True)


def defaults(lab, *names):
    """What a fresh session on the server itself shows for these settings."""
    with direct(lab) as c:
        return {n: c.execute("select current_setting(%s)", (n,)).fetchone()[0] for n in names}


def within(seconds, fn, *args, **kw):
    """fn(*args) in a thread; its result, or a test failure if it has not returned in time."""
    out = {}

    def run():
        try:
            out["value"] = fn(*args, **kw)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        pytest.fail("%s did not return within %ss" % (getattr(fn, "__name__", fn), seconds))
    if "error" in out:
        raise out["error"]
    return out["value"]


def Q(sql):
    return msg(b"Q", sql.encode() + b"\0")


def P(sql, name=""):
    return msg(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + b"\0\0")


def B(params=(), stmt="", portal=""):
    body = portal.encode() + b"\0" + stmt.encode() + b"\0" + struct.pack("!HH", 0, len(params))
    for v in params:
        v = v if isinstance(v, bytes) else str(v).encode()
        body += struct.pack("!I", len(v)) + v
    return msg(b"B", body + struct.pack("!H", 0))


def E(portal="", maxrows=0):
    return msg(b"E", portal.encode() + b"\0" + struct.pack("!I", maxrows))


def DESC(kind, name=""):
    return msg(b"D", kind + name.encode() + b"\0")


SYNC = msg(b"S")
FLUSH = msg(b"H")
TERM = msg(b"X")


def values(body):
    """The text columns of a DataRow."""
    (n,) = struct.unpack("!H", body[:2])
    pos, out = 2, []
    for _ in range(n):
        (ln,) = struct.unpack("!i", body[pos:pos + 4])
        pos += 4
        if ln < 0:
            out.append(None)
        else:
            out.append(body[pos:pos + ln].decode())
            pos += ln
    return out


class Client(Raw):
    """A raw client logged in (trust) that keeps its BackendKeyData and ParameterStatus."""

    def __init__(self, port, timeout=10, user="postgres", database="postgres", extra=None,
                 login=True):
        super().__init__(port, timeout=timeout)
        self.timeout = timeout
        self.key = None
        self.params = {}
        if login:
            self.send(startup_packet(user, database, extra=extra))
            msgs = self.until_ready()
            errs = [error_fields(b) for t, b in msgs if t == b"E"]
            if errs:
                raise RuntimeError("login failed: %r" % errs)

    def until_ready(self):
        """Every message up to and including ReadyForQuery, as (type, body)."""
        out = []
        while True:
            t, body = self.read_msg()
            out.append((t, body))
            if t == b"K":
                self.key = struct.unpack("!II", body)
            elif t == b"S":
                k, v = body.split(b"\0")[:2]
                self.params[k.decode()] = v.decode()
            elif t == b"E" and error_fields(body).get("S") == "FATAL":
                return out
            if t == b"Z":
                return out

    def query(self, sql):
        self.send(Q(sql))
        return self.until_ready()

    def nothing_more(self, wait=0.3):
        """True if nothing else arrives within `wait` seconds (and the connection is open)."""
        if self.buf:
            return False
        self.s.settimeout(wait)
        try:
            return not self.s.recv(1)
        except socket.timeout:
            return True
        finally:
            self.s.settimeout(self.timeout)


def types(msgs):
    return [t for t, _ in msgs]


def sqlstates(msgs):
    return [error_fields(b)["C"] for t, b in msgs if t == b"E"]


def rows(msgs):
    return [values(b) for t, b in msgs if t == b"D"]


def status(msgs):
    assert msgs and msgs[-1][0] == b"Z", types(msgs)
    return msgs[-1][1]


def cancel_request(port, pid, key):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(struct.pack("!IIII", 16, 80877102, pid, key))
    try:
        s.recv(1)  # the proxy closes it, as PostgreSQL does
    except OSError:
        pass
    s.close()


def exactly_b(port):
    """A new client on the pool runs SELECT 'b': it must get exactly its own answer."""
    b = Client(port)
    got = b.query("select 'b'")
    assert types(got) == [b"T", b"D", b"C", b"Z"], got
    assert rows(got) == [["b"]], got
    assert status(got) == b"I", got
    assert b.nothing_more(), "more bytes after the answer"
    got = b.query("select 'b2'")
    assert types(got) == [b"T", b"D", b"C", b"Z"] and rows(got) == [["b2"]], got
    assert b"secret" not in b"".join(body for _, body in got)
    b.send(TERM)
    b.close()


# ---- 1. unsynced work is never handed over ----

def leave_terminate(a):
    a.send(P("select 'secret-a'") + B() + E() + TERM)
    time.sleep(0.2)
    a.close()


def leave_close(a):
    a.send(P("select 'secret-a'") + B() + E())
    time.sleep(0.2)
    a.close()


def leave_flush_read_terminate(a):
    a.send(P("select 'secret-a'") + B() + E() + FLUSH)
    got = [a.read_msg() for _ in range(4)]
    assert types(got) == [b"1", b"2", b"D", b"C"] and rows(got) == [["secret-a"]], got
    a.send(TERM)
    a.close()


def leave_flush_read_close(a):
    a.send(P("select 'secret-a'") + B() + E() + FLUSH)
    got = [a.read_msg() for _ in range(4)]
    assert types(got) == [b"1", b"2", b"D", b"C"], got
    a.close()


def leave_protocol_violation(a):
    """pgstay closes the client (a message length below 4) after unsynced work."""
    a.send(P("select 'secret-a'") + B() + E() + FLUSH)
    got = [a.read_msg() for _ in range(4)]
    assert types(got) == [b"1", b"2", b"D", b"C"], got
    a.send(b"Q" + struct.pack("!I", 2))
    a.closed()  # pgstay closes it (any error message first is fine)
    a.close()


def leave_in_transaction_unsynced(a):
    """Inside an explicit transaction block, then unsynced work, then a plain close."""
    assert status(a.query("begin")) == b"T"
    a.send(P("insert into t_iso_unsynced values ('secret-a')") + B() + E() + FLUSH)
    got = [a.read_msg() for _ in range(3)]
    assert types(got) == [b"1", b"2", b"C"], got
    a.close()


def leave_error_flush_close(a):
    """An error in unsynced work: the server now skips everything up to a Sync."""
    a.send(P("select 1/0") + B() + E() + FLUSH)
    # PostgreSQL folds 1/0 when it plans the statement, at Bind: no BindComplete.
    got = [a.read_msg() for _ in range(2)]
    assert types(got) == [b"1", b"E"], got
    a.close()


def leave_portal_suspended(a):
    a.send(P("select 'secret-a' from generate_series(1, 5)") + B() + E(maxrows=1) + FLUSH)
    got = [a.read_msg() for _ in range(4)]
    assert types(got) == [b"1", b"2", b"D", b"s"], got
    a.send(E(maxrows=1))  # one more row asked for, never synced
    time.sleep(0.2)
    a.close()


def leave_copy_in(a):
    """Inside COPY FROM STDIN, some data sent, then a plain close."""
    a.send(Q("copy t_iso_unsynced from stdin"))
    t, _ = a.read_msg()
    assert t == b"G"
    a.send(msg(b"d", b"secret-a\n"))
    time.sleep(0.2)
    a.close()


def leave_copy_out(a):
    """In the middle of a large COPY TO STDOUT, a plain close."""
    a.send(Q("copy (select 'secret-a' || g from generate_series(1, 200000) g) to stdout"))
    t, _ = a.read_msg()
    assert t == b"H"
    a.read_msg()
    a.close()


LEAVES = {
    "error-flush-close": leave_error_flush_close,
    "portal-suspended": leave_portal_suspended,
    "copy-in-close": leave_copy_in,
    "copy-out-close": leave_copy_out,
    "terminate": leave_terminate,
    "close": leave_close,
    "flush-read-terminate": leave_flush_read_terminate,
    "flush-read-close": leave_flush_read_close,
    "protocol-violation": leave_protocol_violation,
    "in-transaction-close": leave_in_transaction_unsynced,
}


@pytest.mark.parametrize("how", list(LEAVES))
def test_unsynced_work_not_handed_over(cluster1, make_proxy, how):
    with direct(cluster1) as d:
        d.execute("create table if not exists t_iso_unsynced (v text)")
        d.execute("truncate t_iso_unsynced")
    p = tx(make_proxy, cluster1, 1)
    a = Client(p.port)
    assert rows(a.query("select 'warm'")) == [["warm"]]
    LEAVES[how](a)
    time.sleep(0.3)
    exactly_b(p.port)
    exactly_b(p.port)
    with direct(cluster1) as d:  # nothing of `a`'s unfinished transaction was committed
        assert d.execute("select count(*) from t_iso_unsynced").fetchone()[0] == 0


def test_unsynced_client_closed_by_idle_timeout(cluster1, make_proxy):
    """pgstay itself closes a client (client_idle_timeout) that flushed unsynced work."""
    p = tx(make_proxy, cluster1, 1, client_idle_timeout="1s")
    a = Client(p.port)
    a.send(P("select 'secret-a'") + B() + E() + FLUSH)
    got = [a.read_msg() for _ in range(4)]
    assert types(got) == [b"1", b"2", b"D", b"C"], got
    deadline = time.time() + 6
    while not a.closed():
        if time.time() > deadline:
            pytest.fail("client_idle_timeout never closed the idle client")
    exactly_b(p.port)


def test_unsynced_work_next_client_psycopg(cluster1, make_proxy):
    """The same with a real driver as the next client: its own answer and nothing else."""
    p = tx(make_proxy, cluster1, 1)
    a = Client(p.port)
    leave_terminate(a)
    time.sleep(0.3)
    with p.connect() as b:
        assert within(15, lambda: b.execute("select 'b'").fetchall()) == [("b",)]
        assert within(15, lambda: b.execute("select %s::text", ("b2",)).fetchall()) == [("b2",)]


# ---- 2. startup parameters are session state ----

A_OPTIONS = ("-c search_path=tenant_a -c statement_timeout=1234 -c TimeZone=Asia/Tokyo "
             "-c DateStyle=SQL,DMY -c extra_float_digits=0")
A_SETTINGS = {"search_path": "tenant_a", "statement_timeout": "1234ms", "TimeZone": "Asia/Tokyo",
              "DateStyle": "SQL, DMY", "extra_float_digits": "0", "application_name": "tenant-a"}
C_OPTIONS = "-c search_path=tenant_b"
SETTINGS_Q = ("select current_setting('search_path'), current_setting('statement_timeout'), "
              "current_setting('TimeZone'), current_setting('DateStyle'), "
              "current_setting('extra_float_digits'), current_setting('application_name'), "
              "(select v from t_tenant)")


@pytest.fixture(scope="module")
def tenants(cluster1):
    with direct(cluster1) as d:
        for s in ("tenant_a", "tenant_b", "public"):
            d.execute("create schema if not exists %s" % s)
            d.execute("drop table if exists %s.t_tenant" % s)
            d.execute("create table %s.t_tenant (v text)" % s)
            d.execute("insert into %s.t_tenant values ('row-%s')" % (s, s))
    return cluster1


def settings(c):
    return within(15, lambda: c.execute(SETTINGS_Q).fetchone())


def expect_a():
    s = A_SETTINGS
    return (s["search_path"], s["statement_timeout"], s["TimeZone"], s["DateStyle"],
            s["extra_float_digits"], s["application_name"], "row-tenant_a")


def expect_default(lab, app=""):
    d = defaults(lab, *A_SETTINGS)
    assert d["search_path"] == '"$user", public' and d["statement_timeout"] == "0"
    return (d["search_path"], d["statement_timeout"], d["TimeZone"], d["DateStyle"],
            d["extra_float_digits"], app, "row-public")


@pytest.mark.parametrize("first", ["a-first", "b-first"])
def test_startup_parameters_do_not_leak(tenants, make_proxy, first):
    p = tx(make_proxy, tenants, 1)
    dflt = expect_default(tenants)

    def connect_a():
        return p.connect(options=A_OPTIONS, application_name="tenant-a")

    if first == "a-first":
        a = within(15, connect_a)
        assert settings(a) == expect_a()
        b = within(15, p.connect)
    else:
        b = within(15, p.connect)
        assert settings(b) == dflt
        a = within(15, connect_a)
    c = within(15, p.connect, options=C_OPTIONS)
    try:
        for rnd in range(4):
            assert settings(a) == expect_a(), rnd
            assert settings(b) == dflt, rnd
            assert within(15, lambda: b.execute("show search_path").fetchone()[0]) == '"$user", public'
            assert within(15, lambda: b.execute("show statement_timeout").fetchone()[0]) == "0"
            with a.transaction():
                assert settings(a) == expect_a(), rnd
            got = settings(c)
            assert got[0] == "tenant_b" and got[6] == "row-tenant_b", got
            assert got[1:6] == dflt[1:6], got
            with b.transaction():
                assert settings(b) == dflt, rnd
    finally:
        for x in (a, b, c):
            x.close()
    # one after the other: a client connecting after `a` left finds no trace of it
    a = within(15, connect_a)
    assert settings(a) == expect_a()
    a.close()
    with within(15, p.connect) as b:
        assert settings(b) == dflt


def test_startup_parameters_raw_client_defaults(tenants, make_proxy):
    """A raw client with no parameters after one with options: the ParameterStatus it is told
    and what the server then shows are PostgreSQL's defaults."""
    p = tx(make_proxy, tenants, 1)
    dflt = defaults(tenants, "TimeZone", "DateStyle", "application_name")
    a = Client(p.port, extra={"options": "-c TimeZone=Asia/Tokyo -c DateStyle=SQL,DMY",
                              "application_name": "tenant-a"})
    assert a.params.get("TimeZone") == "Asia/Tokyo" and a.params.get("application_name") == "tenant-a"
    assert rows(a.query("show timezone")) == [["Asia/Tokyo"]]
    b = Client(p.port)
    assert b.params.get("TimeZone") == dflt["TimeZone"], b.params
    assert b.params.get("DateStyle") == dflt["DateStyle"], b.params
    assert b.params.get("application_name") == dflt["application_name"], b.params
    assert rows(b.query("show timezone")) == [[dflt["TimeZone"]]]
    assert rows(b.query("show datestyle")) == [[dflt["DateStyle"]]]
    assert rows(a.query("show datestyle")) == [["SQL, DMY"]]
    a.close()
    b.close()


# PostgreSQL's setting names are case-insensitive: a startup parameter sent as TimeZone and a
# SET timezone (the parser lowercases it) are the same setting on the server.
@pytest.mark.parametrize("case", ["other-set-same-value", "other-set-then-reset",
                                  "own-reset"])
def test_setting_name_case_does_not_leak(cluster1, make_proxy, case):
    """One server (transaction mode). A client whose startup parameter is TimeZone=Asia/Tokyo
    gets Asia/Tokyo whatever an earlier client did to timezone on that server under another
    spelling: before, pgstay reset "timezone" and skipped "TimeZone" (the server still reported
    Asia/Tokyo, or its list of applied settings still had it), and the client got the default."""
    p = tx(make_proxy, cluster1, 1)
    dflt = defaults(cluster1, "TimeZone")["TimeZone"]
    assert dflt != "Asia/Tokyo"
    tokyo = "-c TimeZone=Asia/Tokyo"
    show = "select current_setting('TimeZone')"
    if case == "other-set-same-value":
        # b changes timezone to the very value a asks for at startup, then leaves the server
        with within(15, p.connect, autocommit=True) as b:
            within(15, b.execute, "set timezone = 'Asia/Tokyo'")
            with within(15, p.connect, options=tokyo, autocommit=True) as a:
                assert within(15, lambda: a.execute(show).fetchone()[0]) == "Asia/Tokyo"
                assert within(15, lambda: b.execute(show).fetchone()[0]) == "Asia/Tokyo"
                assert within(15, lambda: a.execute(show).fetchone()[0]) == "Asia/Tokyo"
    elif case == "other-set-then-reset":
        # b has TimeZone=Asia/Tokyo at startup and resets it as timezone: the server is back
        # at its default, which the next client with TimeZone=Asia/Tokyo must not inherit
        with within(15, p.connect, options=tokyo, autocommit=True) as b:
            assert within(15, lambda: b.execute(show).fetchone()[0]) == "Asia/Tokyo"
            within(15, b.execute, "reset timezone")
            with within(15, p.connect, options=tokyo, autocommit=True) as a:
                assert within(15, lambda: a.execute(show).fetchone()[0]) == "Asia/Tokyo"
    else:
        # PostgreSQL: RESET goes back to the value the session started with
        with within(15, p.connect, options=tokyo, autocommit=True) as a:
            within(15, a.execute, "set timezone = 'Europe/Paris'")
            within(15, a.execute, "reset timezone")
            assert within(15, lambda: a.execute(show).fetchone()[0]) == "Asia/Tokyo"
    with within(15, p.connect, autocommit=True) as c:
        assert within(15, lambda: c.execute(show).fetchone()[0]) == dflt


@pytest.mark.parametrize("length", [70, 130])
def test_long_custom_parameter_does_not_leak(cluster1, make_proxy, length):
    """A startup parameter with a long custom name (PostgreSQL takes it whole from the startup
    packet and from set_config) is undone before the next client gets the server. Before,
    pgstay undid it with RESET name, whose name the SQL scanner truncates to 63 bytes (and
    pgstay itself to 120): another setting was reset and the next client read this one's
    value."""
    p = tx(make_proxy, cluster1, 1)
    name = "tenant." + "k" * length
    get = "select coalesce(current_setting('%s', true), '<unset>')" % name
    a = Client(p.port, extra={name: "secret-of-a"})
    assert rows(a.query(get)) == [["secret-of-a"]]
    b = Client(p.port)
    got = rows(b.query(get))
    assert got != [["secret-of-a"]], got
    assert rows(b.query("select 1")) == [["1"]]
    assert rows(a.query(get)) == [["secret-of-a"]]
    a.close()
    b.close()


@pytest.mark.parametrize("first", ["startup", "set"])
def test_backslash_value_after_nonstandard_strings(cluster1, make_proxy, first):
    """A client that turned standard_conforming_strings off (at startup or by SET) leaves the
    server; the next client's startup parameter with a backslash is applied as it was sent.
    Before, the next client's setup statements were read with the first client's setting:
    C:\\new came out as C: + newline + ew."""
    p = tx(make_proxy, cluster1, 1)
    if first == "startup":
        a = within(15, p.connect, options="-c standard_conforming_strings=off")
    else:
        a = within(15, p.connect)
        within(15, a.execute, "set standard_conforming_strings = off")
    assert within(15, lambda: a.execute("show standard_conforming_strings").fetchone()[0]) == "off"
    value = "C:\\new\\tab\\x"
    with within(15, p.connect, application_name=value) as b:
        got = within(15, lambda: b.execute("select current_setting('application_name'), "
                                           "current_setting('standard_conforming_strings')")
                     .fetchone())
    assert got == (value, "on"), got
    assert within(15, lambda: a.execute("show standard_conforming_strings").fetchone()[0]) == "off"
    a.close()


@pytest.mark.parametrize("reset", ["DEALLOCATE ALL", "SELECT 1"])
def test_startup_parameters_undone_after_partial_reset_query(cluster1, make_proxy, reset):
    """Session mode with a server_reset_query that leaves settings alone: a client's startup
    parameters are still undone before the next client gets the server (before, pgstay forgot
    them at the reset, as if it had been DISCARD ALL, and the next client inherited them)."""
    p = make_proxy(cluster1, pool_mode="session", pool_size=1, server_reset_query=reset,
                   query_wait_timeout="10s")
    dflt = defaults(cluster1, "statement_timeout")["statement_timeout"]
    show = "select current_setting('statement_timeout')"
    with within(15, p.connect, options="-c statement_timeout=4321") as a:
        assert within(15, lambda: a.execute(show).fetchone()[0]) == "4321ms"
    with within(15, p.connect) as b:
        assert within(15, lambda: b.execute(show).fetchone()[0]) == dflt
    with within(15, p.connect, options="-c statement_timeout=4321") as a:
        assert within(15, lambda: a.execute(show).fetchone()[0]) == "4321ms"


BAD_STARTUP = {
    "options statement_timeout=abc": {"options": "-c statement_timeout=abc"},
    "TimeZone parameter": {"TimeZone": "Nowhere/Bogus"},
}


@pytest.mark.parametrize("bad", list(BAD_STARTUP))
def test_bad_startup_parameter_fails_alone(cluster1, make_proxy, bad):
    """The client with a bad parameter gets PostgreSQL's 22023; a client connecting at the same
    time to the same (new) pool is served."""
    p = tx(make_proxy, cluster1, 1)
    r = Raw(p.port, timeout=10)
    r.send(startup_packet(extra=BAD_STARTUP[bad]))
    good = {}

    def other():
        with psycopg.connect(p.dsn(), autocommit=True, connect_timeout=10) as c:
            good["v"] = c.execute("select 'other'").fetchone()[0]

    t = threading.Thread(target=other, daemon=True)
    t.start()
    err = None
    try:
        while True:
            typ, body = r.read_msg()
            if typ == b"E":
                err = error_fields(body)
                break
            if typ == b"Z":  # welcomed: the error must come with the first statement
                r.send(Q("select 1"))
    except (EOFError, ConnectionResetError, socket.timeout) as e:
        pytest.fail("no error for the bad parameter: %r" % e)
    assert err["C"] == "22023", err
    assert "invalid value for parameter" in err["M"], err
    t.join(15)
    assert good.get("v") == "other", "the other client of the pool was not served"
    with p.connect() as c:
        assert within(15, lambda: c.execute("select current_setting('statement_timeout'), "
                                            "current_setting('TimeZone')").fetchone()) == \
            tuple(defaults(cluster1, "statement_timeout", "TimeZone").values())


# ---- 4. SETs follow PostgreSQL's transactional semantics ----

class Holder:
    """A client holding a server in an open transaction, so others must use another one."""

    def __init__(self, proxy):
        self.conn = proxy.connect(autocommit=False)

    def hold(self):
        return within(15, lambda: self.conn.execute("select pg_backend_pid()").fetchone()[0])

    def release(self):
        self.conn.commit()


def moving(p, a, sql, rounds=6):
    """Run `sql` for client `a` on several servers (two holders take turns holding one):
    the (backend pid, value) of each run."""
    holders = [Holder(p), Holder(p)]
    got = []
    try:
        for rnd in range(rounds):
            h = holders[rnd % 2]
            h.hold()
            got.append(within(15, lambda: a.execute("select pg_backend_pid(), (%s)::text" % sql).fetchone()))
            h.release()
    finally:
        for h in holders:
            h.conn.close()
    return got


SAVEPOINT_CASES = {
    # statements in one transaction, after `set work_mem = '2MB'`: the value after COMMIT
    "set rolled back to savepoint": (["savepoint s", "set work_mem = '9MB'", "rollback to s"], "2MB"),
    "set local rolled back": (["savepoint s", "set local work_mem = '9MB'", "rollback to s"], "2MB"),
    "reset rolled back to savepoint": (["savepoint s", "reset work_mem", "rollback to savepoint s"], "2MB"),
    "reset all rolled back": (["savepoint s", "reset all", "rollback to s"], "2MB"),
    "set in released savepoint": (["savepoint s", "set work_mem = '7MB'", "release s"], "7MB"),
    "set before savepoint released": (["set work_mem = '7MB'", "savepoint s", "release savepoint s"], "7MB"),
    "set then savepoint set rolled back": (["set work_mem = '7MB'", "savepoint s",
                                           "set work_mem = '9MB'", "rollback to s"], "7MB"),
    "nested savepoints": (["savepoint s1", "set work_mem = '7MB'", "savepoint s2",
                           "set work_mem = '9MB'", "release s2", "rollback to s1"], "2MB"),
    "error then rollback to savepoint": (["savepoint s", "set work_mem = '9MB'", "select 1/0",
                                          "rollback to s"], "2MB"),
}


@pytest.mark.parametrize("case", list(SAVEPOINT_CASES))
def test_set_and_savepoints(cluster1, make_proxy, case):
    stmts, want = SAVEPOINT_CASES[case]
    # the reference: PostgreSQL itself
    with direct(cluster1) as d:
        d.execute("set work_mem = '2MB'")
        d.execute("begin")
        for s in stmts:
            try:
                d.execute(s)
            except psycopg.errors.DivisionByZero:
                pass
        d.execute("commit")
        assert d.execute("show work_mem").fetchone()[0] == want
    # One worker: the proof needs the client to move between servers that other clients use,
    # which they do within a worker (doc/workers.md).
    p = tx(make_proxy, cluster1, 3, workers=1)
    a = p.connect()
    a.execute("set work_mem = '2MB'")
    within(15, a.execute, "begin")
    for s in stmts:
        try:
            within(15, a.execute, s)
        except psycopg.errors.DivisionByZero:
            pass
    within(15, a.execute, "commit")
    got = moving(p, a, "current_setting('work_mem')")
    a.close()
    assert len({pid for pid, _ in got}) > 1, "the client never changed servers: %s" % got
    assert [v for _, v in got] == [want] * len(got), got


def test_search_path_savepoint_rolled_back(tenants, make_proxy):
    """The issue's example: `SET search_path` inside a savepoint rolled back does not stick."""
    p = tx(make_proxy, tenants, 3)
    a = p.connect()
    a.execute("set search_path = tenant_a")
    for s in ("begin", "savepoint s", "set search_path = tenant_b", "rollback to s", "commit"):
        within(15, a.execute, s)
    got = moving(p, a, "(select v from t_tenant)")
    a.close()
    assert [v for _, v in got] == ["row-tenant_a"] * len(got), got


PIPELINED = {
    # one Sync batch (or one Query) in which a SET must leave nothing behind
    "extended: error then set": P("select 1/0") + B() + E() + P("set work_mem = '9MB'") + B() + E() + SYNC,
    "extended: set then error": P("set work_mem = '9MB'") + B() + E() + P("select 1/0") + B() + E() + SYNC,
    "simple: error then set": Q("select 1/0; set work_mem = '9MB'"),
    "simple: set then error": Q("set work_mem = '9MB'; select 1/0"),
}


@pytest.mark.parametrize("case", list(PIPELINED))
def test_pipelined_set_after_error_not_kept(cluster1, make_proxy, case):
    # One worker: the proof needs the clients to take turns on the same servers, which they do
    # within a worker (doc/workers.md; test_workers.py covers servers moving between workers).
    p = tx(make_proxy, cluster1, 3, workers=1)
    dflt = defaults(cluster1, "work_mem")["work_mem"]
    r = Client(p.port)
    assert status(r.query("set work_mem = '2MB'")) == b"I"
    r.send(PIPELINED[case])
    got = r.until_ready()
    assert sqlstates(got) == ["22012"] and status(got) == b"I", got
    assert dflt != "9MB"
    holders = [Holder(p), Holder(p)]
    seen = []
    for rnd in range(6):
        h = holders[rnd % 2]
        h.hold()
        seen.append(rows(r.query("select pg_backend_pid(), current_setting('work_mem')"))[0])
        h.release()
    pinned = [row for row in p.admin_rows("SHOW CLIENTS") if row["pinned"]]
    for h in holders:
        h.conn.close()
    r.close()
    assert [v for _, v in seen] == ["2MB"] * len(seen), seen
    if not pinned:
        assert len({pid for pid, _ in seen}) > 1, seen


def test_psycopg_pipeline_set_after_error(cluster1, make_proxy):
    p = tx(make_proxy, cluster1, 3)
    a = p.connect()
    a.execute("set work_mem = '2MB'")
    with pytest.raises(psycopg.errors.DivisionByZero):
        with a.pipeline():
            a.execute("select 1/0")
            a.execute("set work_mem = '9MB'")
    got = moving(p, a, "current_setting('work_mem')")
    a.close()
    assert [v for _, v in got] == ["2MB"] * len(got), got


# ---- 5. DEALLOCATE ALL / DISCARD ALL through the extended protocol ----

def prepare_and_run(r, name, sql, want):
    r.send(P(sql, name) + SYNC)
    got = r.until_ready()
    assert types(got) == [b"1", b"Z"], (name, got)
    run_named(r, name, want)


def run_named(r, name, want):
    r.send(B(stmt=name) + E() + SYNC)
    got = r.until_ready()
    assert types(got) == [b"2", b"D", b"C", b"Z"], (name, got)
    assert rows(got) == [[want]], got


@pytest.mark.parametrize("command", ["DEALLOCATE ALL", "DISCARD ALL", "deallocate prepare all"])
def test_deallocate_all_extended(cluster1, make_proxy, command):
    p = tx(make_proxy, cluster1, 1)
    a, b = Client(p.port), Client(p.port)
    prepare_and_run(a, "a1", "select 'a1'", "a1")
    prepare_and_run(a, "a2", "select 'shared'", "shared")
    prepare_and_run(b, "b1", "select 'shared'", "shared")
    a.send(P(command) + B() + E() + SYNC)
    got = a.until_ready()
    assert types(got) == [b"1", b"2", b"C", b"Z"], got
    # as in PostgreSQL: `a`'s statements are gone, and `a` can prepare them again
    a.send(B(stmt="a1") + E() + SYNC)
    got = a.until_ready()
    assert sqlstates(got) == ["26000"], got
    prepare_and_run(a, "a1", "select 'a1'", "a1")
    prepare_and_run(a, "a2", "select 'shared'", "shared")
    # `b`'s session never ran it: its statement is still there, and new ones work
    run_named(b, "b1", "shared")
    prepare_and_run(b, "b2", "select 'a1'", "a1")
    c = Client(p.port)
    prepare_and_run(c, "c1", "select 'shared'", "shared")
    prepare_and_run(c, "c2", "select 'a1'", "a1")
    for _ in range(3):
        run_named(a, "a1", "a1")
        run_named(b, "b1", "shared")
        run_named(c, "c2", "a1")
    for x in (a, b, c):
        x.close()


def test_psycopg_deallocate_all_after_drop(cluster1, make_proxy):
    """psycopg sends DEALLOCATE ALL (extended protocol) after a DROP or a ROLLBACK once it has
    prepared statements; it and another client of the same server go on preparing."""
    p = tx(make_proxy, cluster1, 1)
    a = p.connect(prepare_threshold=0)
    b = p.connect(prepare_threshold=0)
    for rnd in range(3):
        for q in range(3):
            assert within(15, lambda: a.execute("select %s::int + " + str(q), (rnd,)).fetchone()[0]) == rnd + q
            assert within(15, lambda: b.execute("select %s::int + " + str(q), (rnd,)).fetchone()[0]) == rnd + q
        within(15, a.execute, "create table if not exists t_iso_drop%d (x int)" % rnd)
        within(15, a.execute, "drop table t_iso_drop%d" % rnd)  # psycopg: DEALLOCATE ALL
        with a.transaction(force_rollback=True):  # ROLLBACK: DEALLOCATE ALL again
            a.execute("select %s::int * 2", (rnd,))
    for q in range(3):
        assert within(15, lambda: a.execute("select %s::int + " + str(q), (10,)).fetchone()[0]) == 10 + q
        assert within(15, lambda: b.execute("select %s::int + " + str(q), (10,)).fetchone()[0]) == 10 + q
    a.close()
    b.close()


# ---- 6. large messages ----

def big_client(port):
    return Client(port, timeout=20)


def then_reusable(port):
    """pool_size=1: another client gets the server and its own answer."""
    exactly_b(port)


@pytest.mark.parametrize("size", [600_000, 900_000, 1_500_000])
@pytest.mark.parametrize("kind", ["NOTICE", "EXCEPTION"])
def test_large_notice_or_error(cluster1, make_proxy, size, kind):
    p = tx(make_proxy, cluster1, 1)
    a = big_client(p.port)
    got = a.query("do $$begin raise %s '%%', repeat('x', %d); end$$" % (kind.lower(), size))
    want = b"N" if kind == "NOTICE" else b"E"
    big = [error_fields(b) for t, b in got if t == want]
    assert len(big) == 1 and big[0]["M"] == "x" * size, types(got)
    assert types(got)[-1] == b"Z" and status(got) == b"I"
    assert rows(a.query("select 'a-again'")) == [["a-again"]]
    then_reusable(p.port)  # while `a` stays connected
    a.close()
    then_reusable(p.port)


@pytest.mark.parametrize("size", [600_000, 1_500_000])
@pytest.mark.parametrize("kind", ["NOTICE", "EXCEPTION"])
def test_large_notice_or_error_extended_protocol(cluster1, make_proxy, kind, size):
    p = tx(make_proxy, cluster1, 1)
    a = big_client(p.port)
    a.send(P("do $$begin raise %s '%%', repeat('y', %d); end$$" % (kind.lower(), size)) +
           B() + E() + SYNC)
    got = a.until_ready()
    if kind == "NOTICE":
        assert types(got) == [b"1", b"2", b"N", b"C", b"Z"], types(got)
    else:
        assert types(got) == [b"1", b"2", b"E", b"Z"], types(got)
    assert error_fields(got[2][1])["M"] == "y" * size
    assert rows(a.query("select 'a-again'")) == [["a-again"]]
    then_reusable(p.port)
    a.close()


def test_large_datarow(cluster1, make_proxy):
    p = tx(make_proxy, cluster1, 1)
    a = big_client(p.port)
    got = a.query("select repeat('x', 5000000), 'end'")
    assert types(got) == [b"T", b"D", b"C", b"Z"]
    assert rows(got) == [["x" * 5000000, "end"]]
    then_reusable(p.port)
    a.close()


@pytest.mark.parametrize("size", [700_000, 1_500_000])
@pytest.mark.parametrize("stmt", ["unnamed", "named-known"])
def test_large_bind(cluster1, make_proxy, size, stmt):
    p = tx(make_proxy, cluster1, 1)
    sql = "select length($1::text), 'bind-%d'" % size
    name = "" if stmt == "unnamed" else "big1"
    if stmt == "named-known":  # the server knows the text already: pgstay may answer the Parse
        other = Client(p.port)
        prepare_and_run_params(other, "o1", sql, size)
        other.close()
    a = big_client(p.port)
    a.send(P(sql, name) + B([b"z" * size], stmt=name) + E() + SYNC)
    got = a.until_ready()
    assert types(got) == [b"1", b"2", b"D", b"C", b"Z"], got
    assert rows(got) == [[str(size), "bind-%d" % size]]
    a.send(B([b"w" * size], stmt=name) + E() + SYNC)
    got = a.until_ready()
    assert rows(got) == [[str(size), "bind-%d" % size]], got
    then_reusable(p.port)
    a.close()


def test_large_bind_after_local_parse(cluster1, make_proxy):
    """A Parse pgstay can answer itself (the text is known, every server busy), then a 700 kB
    Bind in the same batch: it waits for the server and goes through."""
    p = tx(make_proxy, cluster1, 1)
    sql = "select length($1::text), 'local'"
    other = Client(p.port)
    prepare_and_run_params(other, "o1", sql, 10)
    a = big_client(p.port)
    hold = p.connect(autocommit=False)
    within(15, hold.execute, "select pg_sleep(0)")
    a.send(P(sql, "big") + SYNC + B([b"z" * 700_000], stmt="big") + E() + SYNC)
    time.sleep(0.5)
    hold.commit()
    hold.close()
    got = a.until_ready() + a.until_ready()
    assert types(got) == [b"1", b"Z", b"2", b"D", b"C", b"Z"], got
    assert rows(got) == [["700000", "local"]]
    then_reusable(p.port)
    a.close()
    other.close()


def answered_or_closed(a, n_ready=1):
    """The answers up to the n-th ReadyForQuery, or None if pgstay closed the connection; a
    hang fails."""
    got = []
    try:
        for _ in range(n_ready):
            got += a.until_ready()
        return got
    except (EOFError, ConnectionResetError):
        return None
    except socket.timeout:
        pytest.fail("no answer within %ss: %s" % (a.timeout, types(got)))


@pytest.mark.parametrize("size", [1000, 700_000])
@pytest.mark.parametrize("what", ["bind", "copydata"])
def test_large_message_while_answered_locally(cluster1, make_proxy, what, size):
    """The server of an idle transaction is terminated: pgstay answers the client itself (the
    transaction is lost). A Bind or CopyData over 512 kB then must not hang."""
    p = tx(make_proxy, cluster1, 1)
    a = big_client(p.port)
    a.timeout = 10
    a.s.settimeout(10)
    assert status(a.query("begin")) == b"T"
    (pid,) = rows(a.query("select pg_backend_pid()"))[0]
    with direct(cluster1) as d:
        assert d.execute("select pg_terminate_backend(%s)", (int(pid),)).fetchone()[0]
    time.sleep(0.5)
    if what == "bind":
        a.send(P("select length($1::text)") + B([b"z" * size]) + E() + SYNC)
    else:
        a.send(Q("copy t_iso_copy from stdin") + msg(b"d", b"c" * size + b"\n") + msg(b"c"))
    got = answered_or_closed(a)
    if got is not None:
        assert b"E" in types(got), got
        a.send(Q("rollback"))
        got = answered_or_closed(a)
        if got is not None:
            assert status(got) == b"I", got
    a.close()
    then_reusable(p.port)


def prepare_and_run_params(r, name, sql, size):
    r.send(P(sql, name) + B([b"q" * 10], stmt=name) + E() + SYNC)
    got = r.until_ready()
    assert types(got) == [b"1", b"2", b"D", b"C", b"Z"], got


@pytest.mark.parametrize("size", [600_000, 1_500_000])
def test_large_copydata(cluster1, make_proxy, size):
    with direct(cluster1) as d:
        d.execute("create table if not exists t_iso_copy (v text)")
    p = tx(make_proxy, cluster1, 1)
    a = big_client(p.port)
    a.send(Q("copy t_iso_copy from stdin"))
    t, _ = a.read_msg()
    assert t == b"G"
    a.send(msg(b"d", b"c" * size + b"\n") + msg(b"d", b"small\n") + msg(b"c"))
    got = a.until_ready()
    assert types(got) == [b"C", b"Z"] and got[0][1] == b"COPY 2\0", got
    got = a.query("select count(*) from t_iso_copy where length(v) = %d" % size)
    assert rows(got)[0][0] != "0"
    then_reusable(p.port)
    a.close()


# ---- 7. a server lost in the middle of a message ----

VALID_BACKEND = set(b"123ACDEGHIKNRSTVWZcdnstv")


def check_framing(data, closed):
    """Every complete message is well formed; a truncated last message is a DataRow cut short
    (no bytes of any other message inside it), and only if the connection closed after it."""
    pos = 0
    out = []
    while pos + 5 <= len(data):
        t = data[pos]
        (ln,) = struct.unpack("!I", data[pos + 1:pos + 5])
        assert t in VALID_BACKEND and ln >= 4, "garbage at byte %d: %r" % (pos, data[pos:pos + 20])
        if pos + 1 + ln > len(data):
            break
        body = data[pos + 5:pos + 1 + ln]
        if t == ord("D"):
            (n,) = struct.unpack("!H", body[:2])
            (cl,) = struct.unpack("!I", body[2:6])
            assert n == 1 and cl == len(body) - 6, "malformed DataRow at byte %d" % pos
            assert body[6:].strip(b"x") == b"", "another message inside a DataRow at byte %d" % pos
        out.append(chr(t))
        pos += 1 + ln
    tail = data[pos:]
    if tail:
        if len(tail) >= 11:
            assert tail[0] == ord("D"), tail[:20]
            assert tail[11:].strip(b"x") == b"", \
                "a truncated DataRow followed by another message: %r" % tail[-200:].replace(b"x", b"")
        assert closed, "the client is left waiting for the rest of a message"
    return out


@pytest.mark.parametrize("shape", ["one-row", "many-rows"])
def test_server_lost_mid_message(cluster1, make_proxy, shape):
    p = tx(make_proxy, cluster1, 1)
    a = Client(p.port, timeout=15)
    (pid,) = rows(a.query("select pg_backend_pid()"))[0]
    if shape == "one-row":
        a.send(Q("select repeat('x', 30000000)"))
    else:
        a.send(Q("select repeat('x', 100003) from generate_series(1, 300)"))
    data = bytearray()
    while len(data) < 20000:  # the answer has started
        data += a.s.recv(4096)
    time.sleep(0.5)  # the server is blocked writing: pgstay stops reading it
    with direct(cluster1) as d:
        assert d.execute("select pg_terminate_backend(%s)", (int(pid),)).fetchone()[0]
    closed = False
    a.s.settimeout(5)
    k = 0
    try:
        while True:
            chunk = a.s.recv(65536)
            if not chunk:
                closed = True
                break
            data += chunk
            k += 1
            if k % 16 == 0:
                time.sleep(0.001)  # a slow reader
    except socket.timeout:
        pass
    except ConnectionResetError:
        closed = True
    got = check_framing(bytes(data), closed)
    assert "C" not in got, "CommandComplete for a result the server never finished"
    a.close()
    exactly_b(p.port)


# ---- 8. cancel ----

def test_cancel_waiting_request(cluster1, make_proxy):
    """A request waiting for a server is cancelled (57014 at once) and never runs later."""
    with direct(cluster1) as d:
        d.execute("create table if not exists t_iso_cancel (v text)")
        d.execute("truncate t_iso_cancel")
    p = tx(make_proxy, cluster1, 1)
    b = Client(p.port)
    assert b.key
    hold = p.connect(autocommit=False)
    try:
        within(15, hold.execute, "select pg_sleep(0)")  # idle in transaction: holds the server
        b.send(Q("insert into t_iso_cancel values ('b-ran')"))
        time.sleep(0.5)
        t0 = time.time()
        cancel_request(p.port, *b.key)
        b.s.settimeout(slack(3))
        try:
            got = b.until_ready()
        except socket.timeout:
            pytest.fail("the waiting request was not answered after its cancel: %s" % p.log()[-1500:])
        assert sqlstates(got) == ["57014"] and status(got) == b"I", got
        assert time.time() - t0 < slack(3)
    finally:
        hold.commit()
        hold.close()
    time.sleep(1)
    b.s.settimeout(10)
    assert rows(b.query("select 'b-after'")) == [["b-after"]]
    time.sleep(0.3)
    with direct(cluster1) as d:
        assert d.execute("select count(*) from t_iso_cancel").fetchone()[0] == 0
    b.close()


def test_cancel_of_idle_client_does_not_reach_other(cluster1, make_proxy):
    """A cancel for a client with no statement running never reaches the server that now
    serves another client."""
    p = tx(make_proxy, cluster1, 1)
    a = Client(p.port)
    assert rows(a.query("select 'a'")) == [["a"]]  # used the server, then gave it back
    res = {}

    def sleeper():
        with psycopg.connect(p.dsn(), autocommit=True) as c:
            try:
                res["v"] = c.execute("select pg_sleep(2), 'b-done'").fetchone()[1]
            except psycopg.Error as e:
                res["e"] = e

    t = threading.Thread(target=sleeper, daemon=True)
    t.start()
    time.sleep(0.7)
    cancel_request(p.port, *a.key)
    t.join(15)
    assert "e" not in res, "another client's cancel reached this one: %r" % res.get("e")
    assert res.get("v") == "b-done"
    assert rows(a.query("select 'a2'")) == [["a2"]]
    a.close()


def test_cancel_racing_statement_end(cluster1, make_proxy):
    """A's cancel sent as its statement ends (a lock released), while B waits for the only
    server: the cancel may stop A or nothing, never B's statement on that server."""
    with direct(cluster1) as d:
        d.execute("create table if not exists t_iso_lock (x int)")
    p = tx(make_proxy, cluster1, 1)
    a = Client(p.port)
    b = p.connect()
    hits = []
    for attempt in range(8):
        locker = psycopg.connect(cluster1.dsn(1))
        locker.execute("lock table t_iso_lock in access exclusive mode")
        a.send(Q("select count(*) from t_iso_lock"))
        res = {}

        def run_b():
            try:
                res["v"] = b.execute("select pg_sleep(1), 'b-done'").fetchone()[1]
            except psycopg.Error as e:
                res["e"] = e

        t = threading.Thread(target=run_b, daemon=True)
        t.start()
        time.sleep(0.4)  # A blocked on the lock, B waiting for the server
        locker.commit()
        cancel_request(p.port, *a.key)
        got = a.until_ready()
        t.join(15)
        locker.close()
        assert sqlstates(got) in ([], ["57014"]), got
        if "e" in res:
            hits.append((attempt, res["e"].sqlstate, str(res["e"]).strip()))
        else:
            assert res.get("v") == "b-done", res
    a.close()
    b.close()
    assert not hits, "A's cancel reached B's statement: %s" % hits


def test_cancel_own_running_statement(cluster1, make_proxy):
    """The positive case, to show the cancel path works at all: a client's own statement."""
    p = tx(make_proxy, cluster1, 1)
    a = Client(p.port)
    a.send(Q("select pg_sleep(10)"))
    time.sleep(0.5)
    t0 = time.time()
    cancel_request(p.port, *a.key)
    got = a.until_ready()
    assert sqlstates(got) == ["57014"] and time.time() - t0 < slack(3)
    a.close()


# ---- 12. the unnamed statement across a Sync ----

@pytest.mark.parametrize("then", ["describe", "bind-execute"])
def test_unnamed_statement_across_sync(cluster1, make_proxy, then):
    """psql's \\gdesc: Parse + Sync, then Describe + Sync (or Bind/Execute + Sync), while other
    clients take the servers in turns."""
    p = tx(make_proxy, cluster1, 3)
    r = Client(p.port)
    holders = [Holder(p), Holder(p)]
    try:
        for rnd in range(6):
            r.send(P("SELECT %d AS a" % rnd) + SYNC)
            got = r.until_ready()
            assert types(got) == [b"1", b"Z"], got
            h = holders[rnd % 2]
            h.hold()
            if then == "describe":
                r.send(DESC(b"S") + SYNC)
                got = r.until_ready()
                assert types(got) == [b"t", b"T", b"Z"], (rnd, sqlstates(got))
                assert got[1][1][2:4] == b"a\0", got
            else:
                r.send(B() + E() + SYNC)
                got = r.until_ready()
                assert types(got) == [b"2", b"D", b"C", b"Z"], (rnd, sqlstates(got))
                assert rows(got) == [[str(rnd)]]
            h.release()
    finally:
        for h in holders:
            h.conn.close()
    r.close()


# ---- 13. sequences ----

def test_currval_is_the_clients_own(cluster1, make_proxy):
    with direct(cluster1) as d:
        d.execute("drop sequence if exists s_iso")
        d.execute("create sequence s_iso")
    p = tx(make_proxy, cluster1, 2)
    a, b = p.connect(), p.connect()
    outcomes = []
    for rnd in range(6):
        mine = within(15, lambda: a.execute("select nextval('s_iso')").fetchone()[0])
        for _ in range(2):  # another session moves the sequence on, on whatever server
            within(15, lambda: b.execute("select nextval('s_iso')").fetchone()[0])
        with b.transaction():  # and holds one of the two servers meanwhile, in turns
            b.execute("select 1")
            if rnd % 2:
                for fn in ("currval('s_iso')", "lastval()"):
                    try:
                        v = within(15, lambda: a.execute("select " + fn).fetchone()[0])
                        outcomes.append((fn, v == mine, v, mine))
                    except psycopg.Error as e:
                        outcomes.append((fn, e.sqlstate, str(e).strip(), mine))
        if rnd % 2 == 0:
            for fn in ("currval('s_iso')", "lastval()"):
                try:
                    v = within(15, lambda: a.execute("select " + fn).fetchone()[0])
                    outcomes.append((fn, v == mine, v, mine))
                except psycopg.Error as e:
                    outcomes.append((fn, e.sqlstate, str(e).strip(), mine))
    a.close()
    b.close()
    bad = [o for o in outcomes if o[1] is not True and o[1] != "0A000"]
    assert not bad, bad


# ---- 14. logging in does not wait for a free server ----

def test_login_while_pool_busy(cluster1, make_proxy):
    p = tx(make_proxy, cluster1, 1)
    with p.connect() as warm:  # the pool knows its server's parameters
        warm.execute("select 1")
    hold = p.connect(autocommit=False)
    within(15, hold.execute, "select pg_sleep(0)")
    try:
        t0 = time.time()
        try:
            b = Client(p.port, timeout=slack(3))
        except socket.timeout:
            pytest.fail("login not finished within %gs while the only server is in a transaction"
                        % slack(3))
        assert time.time() - t0 < slack(2.5)
        assert b.key and "server_version" in b.params and "TimeZone" in b.params, b.params
        b.send(Q("select 'b'"))
        time.sleep(0.3)
        hold.commit()
        b.s.settimeout(10)
        got = b.until_ready()
        assert rows(got) == [["b"]], got
        b.close()
    finally:
        hold.close()


def test_psycopg_connect_while_pool_busy(cluster1, make_proxy):
    p = tx(make_proxy, cluster1, 1)
    with p.connect() as warm:
        warm.execute("select 1")
    hold = p.connect(autocommit=False)
    within(15, hold.execute, "select pg_sleep(0)")
    try:
        c = within(3, p.connect)
        c.close()
    finally:
        hold.close()


# ---- 15. what the server says is what the client hears ----

def terminate(lab, pid):
    with direct(lab) as d:
        assert d.execute("select pg_terminate_backend(%s)", (pid,)).fetchone()[0]


def outcome(e, conn):
    msg_ = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return (type(e).__name__, e.sqlstate, msg_, conn.closed)


def outcome_idle(lab, conn):
    pid = conn.execute("select pg_backend_pid()").fetchone()[0]
    terminate(lab, pid)
    time.sleep(0.5)
    try:
        within(15, lambda: conn.execute("select 1").fetchone())
        return ("no error",)
    except psycopg.OperationalError as e:
        return outcome(e, conn)


def outcome_busy(lab, conn):
    pid = conn.execute("select pg_backend_pid()").fetchone()[0]
    threading.Timer(0.7, terminate, (lab, pid)).start()
    try:
        within(15, lambda: conn.execute("select pg_sleep(5)").fetchone())
        return ("no error",)
    except psycopg.OperationalError as e:
        return outcome(e, conn)


ADMIN_SHUTDOWN = "terminating connection due to administrator command"


@pytest.mark.parametrize("when", ["idle", "in-flight"])
def test_terminated_backend_session_mode(cluster1, make_proxy, when):
    """psycopg sees exactly what it sees with PostgreSQL itself: not a silently rebuilt session,
    not pgstay's 08006."""
    check = outcome_idle if when == "idle" else outcome_busy
    with psycopg.connect(cluster1.dsn(1), autocommit=True) as c:
        want = check(cluster1, c)
    assert ADMIN_SHUTDOWN in want[2] and want[3] is True, want  # the reference
    p = make_proxy(cluster1, pool_mode="session", pool_size=2)
    with p.connect() as c:
        got = check(cluster1, c)
    assert got == want


def raw_terminated_in_flight(lab, port):
    a = Client(port)
    (pid,) = rows(a.query("select pg_backend_pid()"))[0]
    a.send(Q("select pg_sleep(5)"))
    time.sleep(0.5)
    terminate(lab, int(pid))
    err = a.read_until_error_or_close()
    return a, err


def test_terminated_backend_raw_session_mode(cluster1, make_proxy):
    p = make_proxy(cluster1, pool_mode="session", pool_size=2)
    a, err = raw_terminated_in_flight(cluster1, p.port)
    assert err and err["C"] == "57P01" and err["S"] == "FATAL" and ADMIN_SHUTDOWN in err["M"], err
    assert a.closed(), "session mode: the connection must be closed after the FATAL"


def test_terminated_backend_transaction_mode_in_flight(cluster1, make_proxy):
    p = tx(make_proxy, cluster1, 2)
    a, err = raw_terminated_in_flight(cluster1, p.port)
    assert err and err["C"] == "57P01" and ADMIN_SHUTDOWN in err["M"], err
    with p.connect() as c:
        got = outcome_busy(cluster1, c)
    assert got[2] == ADMIN_SHUTDOWN and got[1] in ("57P01", None), got


@pytest.mark.parametrize("length", [3, 7, 100_000_000])
def test_startup_invalid_length_closed_silently(proxy, length):
    r = Raw(proxy.port)
    r.send(struct.pack("!I", length) + b"\0\0")
    data = b""
    try:
        while True:
            chunk = r.s.recv(4096)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    except socket.timeout:
        pytest.fail("the connection was not closed")
    assert data == b"", "a reply to an invalid startup packet: %r" % data
    r.close()


def test_terminate_before_startup_closed_silently(proxy):
    """node-postgres ending a connection at once: Terminate before the startup packet."""
    r = Raw(proxy.port)
    r.send(TERM)
    data = b""
    try:
        while True:
            chunk = r.s.recv(4096)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    assert data == b"", data
    r.close()


# ---- 2 (cont.). RESET of a startup parameter, as PostgreSQL: back to the startup value ----

@pytest.mark.parametrize("mode", ["session", "transaction"])
@pytest.mark.parametrize("reset", ["reset statement_timeout", "reset all"])
def test_reset_returns_to_startup_value(cluster1, make_proxy, mode, reset):
    p = make_proxy(cluster1, pool_mode=mode, pool_size=1)
    with psycopg.connect(p.dsn(), options="-c statement_timeout=1234", autocommit=True,
                         connect_timeout=10) as c:
        c.execute("set statement_timeout = 5000")
        assert c.execute("show statement_timeout").fetchone()[0] == "5s"
        c.execute(reset)
        assert c.execute("show statement_timeout").fetchone()[0] == "1234ms"


# ---- 10. resources a client controls ----

def test_client_that_does_not_read_is_not_read(cluster1, make_proxy):
    """Local answers (here DEALLOCATE's, answered by pgstay in transaction mode) stop being
    produced, and the client's input stops being read, once pgstay holds the high-water mark
    of answers it does not read (the kernel's socket buffers aside)."""
    p = tx(make_proxy, cluster1, 1)
    r = Raw(p.port)
    r.login_trust()
    chunk = Q("DEALLOCATE nosuch_statement") * 2048  # 66 kB of requests, 2048 answers
    # Once while reading: what the workload needs anyway (parser, caches) is not growth.
    r.send(chunk)
    for _ in range(2048):
        while r.read_msg()[0] != b"Z":
            pass
    before = rss_kb(p.proc.pid)
    s = r.s
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sent = 0
    s.settimeout(2)
    try:
        for _ in range(400):  # up to 26 MB of requests, 8.8 MB of answers
            s.sendall(chunk)
            sent += len(chunk)
    except (socket.timeout, BlockingIOError):
        pass
    grown = rss_kb(p.proc.pid) - before
    s.close()
    assert sent < 400 * len(chunk), "pgstay kept reading a client that reads nothing"
    # ASan keeps up to 4 MB of freed blocks in quarantine (conftest's ASAN_OPTIONS); TSan
    # adds its shadow (some 3 bytes per byte of pgstay's memory) for every page touched.
    limit = 4 * 1024 + {"asan": 4 * 1024, "tsan": 12 * 1024}.get(sanitizer(), 0)
    assert grown < limit, "pgstay grew %d kB for one client" % grown
    exactly_b(p.port)


def test_encryption_requests_follow_postgresql(cluster1, make_proxy):
    """One SSLRequest per negotiation, as PostgreSQL: 'N', then a GSSENCRequest may follow
    (and SSL again after it); a second SSLRequest in a row is refused with 0A000."""
    p = make_proxy(cluster1)
    ssl = struct.pack("!II", 8, 80877103)
    gss = struct.pack("!II", 8, 80877104)
    r = Raw(p.port)
    for req in (ssl, gss, ssl):
        r.send(req)
        assert r.read_byte() == b"N"
    r.login_trust()
    r.close()
    r = Raw(p.port)
    r.send(ssl)
    assert r.read_byte() == b"N"
    r.send(ssl)
    t, body = r.read_msg()
    assert t == b"E"
    f = error_fields(body)
    assert f["C"] == "0A000" and "unsupported frontend protocol 1234.5679" in f["M"], f
    assert r.closed()


def test_pools_of_failed_logins_are_freed(cluster1, make_proxy):
    p = make_proxy(cluster1)
    for i in range(30):
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(p.dsn(user="nosuch_%d" % i), connect_timeout=10)
    deadline = time.time() + 10
    while time.time() < deadline:
        users = [r[1] for r in p.admin("SHOW POOLS")]
        if not any(str(u).startswith("nosuch_") for u in users):
            break
        time.sleep(0.2)
    assert not any(str(u).startswith("nosuch_") for u in users), users


def test_burst_of_logins_while_server_connects(cluster1, make_proxy):
    """Hundreds of clients wait for the pool's first server: lending them one after another
    must not recurse once per client (nor lose any)."""
    p = make_proxy(cluster1, pool_mode="transaction", pool_size=1)
    n = 400
    socks = []
    for _ in range(n):
        r = Raw(p.port, timeout=30)
        r.send(startup_packet())
        socks.append(r)
    for r in socks:
        while True:
            t, _ = r.read_msg()
            assert t != b"E"
            if t == b"Z":
                break
    for r in socks[:20]:
        r.send(Q("select 1"))
        got = []
        while not got or got[-1][0] != b"Z":
            got.append(r.read_msg())
        assert types(got) == [b"T", b"D", b"C", b"Z"], got
    for r in socks:
        r.s.close()
    exactly_b(p.port)


# ---- 11. reload ----

def test_reload_with_live_probes_and_pool_mode_kept(cluster1, make_proxy):
    p = make_proxy(cluster1, pool_mode="transaction", pool_size=1, health_check_period="20ms")
    a = Client(p.port)
    assert rows(a.query("select 'a'")) == [["a"]]
    p.settings["pool_mode"] = "session"
    p.settings["health_check_user"] = "postgres"  # same value, a fresh string
    p.write_config()
    for _ in range(5):
        p.signal(signal.SIGHUP)
        time.sleep(0.1)
    # Still transaction pooling: a second client shares the single server.
    b = Client(p.port)
    assert rows(b.query("select 'b'")) == [["b"]]
    assert rows(a.query("select 'a2'")) == [["a2"]]
    assert "needs a restart" in p.log()


def test_statements_past_the_replay_limit_still_bind(cluster1, make_proxy):
    """Issue 9, item 10: past the 1 MB of statement text pgstay keeps for replay, the session is
    pinned and its statements still work under their names (no 26000)."""
    p = tx(make_proxy, cluster1, 2)
    a = Client(p.port)
    pad = "x" * 8000
    batch = b""
    for i in range(160):  # 160 x 8 kB: past the limit
        batch += P("select %d as n, '%s' as pad" % (i, pad), name="big_%d" % i)
    a.send(batch + SYNC)
    got = a.until_ready()
    assert types(got) == [b"1"] * 160 + [b"Z"], types(got)[-3:]
    for i in (0, 80, 159):
        a.send(B(stmt="big_%d" % i) + E() + SYNC)
        got = a.until_ready()
        assert types(got)[:2] == [b"2", b"D"], got[:2]
    exactly_b(p.port)
