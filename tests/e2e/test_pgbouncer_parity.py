"""pgstay beside a live PgBouncer 1.18 (Debian's /usr/sbin/pgbouncer), the same scenario run
against both: every SHOW that PgBouncer 1.18 has answers with its column names, order and types
(pgstay's own columns after them), and each limit and timeout a client can run into ends with
PgBouncer's message and severity. Where pgstay's SQLSTATE is PostgreSQL's code for the same case
rather than PgBouncer 1.18's catch-all 08P01, the test names it (doc/compatibility.md says why)."""
import os
import time

import psycopg
import pytest

from pgbouncer_ref import PGBOUNCER, PgBouncer
from wire import Raw, error_fields, msg, startup_packet

pytestmark = pytest.mark.skipif(not os.path.exists(PGBOUNCER), reason="pgbouncer missing")

SHOWS = ["POOLS", "CLIENTS", "SERVERS", "STATS", "STATS_TOTALS", "STATS_AVERAGES", "LISTS",
         "DATABASES", "USERS", "CONFIG", "MEM", "VERSION", "TOTALS"]


@pytest.fixture
def bouncers(cluster1):
    started = []

    def make(**settings):
        b = PgBouncer(cluster1, **settings)
        started.append(b)
        return b.start()

    yield make
    for b in started:
        b.stop()


def columns(port, what):
    dsn = "host=127.0.0.1 port=%d dbname=pgbouncer user=postgres password=postgres" % port
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as a:
        cur = a.execute("SHOW " + what)
        cols = [(d.name, d.type_code) for d in cur.description]
        tag = cur.statusmessage
        rows = cur.fetchall()
    return cols, tag, rows


def test_show_columns_as_pgbouncer_118(cluster1, make_proxy, bouncers):
    """Each SHOW, with a client and a server in use on both, compared column by column."""
    b = bouncers()
    p = make_proxy(cluster1, pool_mode="session")
    held = [b.connect(), p.connect()]
    for c in held:
        c.execute("select 1")
    version = columns(b.port, "VERSION")[2][0][0]
    assert version.startswith("PgBouncer 1.18"), version
    for what in SHOWS:
        want, want_tag, _ = columns(b.port, what)
        got, got_tag, _ = columns(p.port, what)
        assert got[:len(want)] == want, (what, want, got)
        assert got_tag == want_tag, what
    # SHOW LISTS: the same rows, in the same order
    assert [r[0] for r in columns(p.port, "LISTS")[2]][:12] == \
        [r[0] for r in columns(b.port, "LISTS")[2]]
    # SHOW TOTALS: PgBouncer's counters first, by name
    assert [r[0] for r in columns(p.port, "TOTALS")[2]][:len(columns(b.port, "TOTALS")[2])] == \
        [r[0] for r in columns(b.port, "TOTALS")[2]]
    for c in held:
        c.close()


def login(port, db="postgres"):
    r = Raw(port, timeout=15)
    r.send(startup_packet("postgres", db))
    while True:
        t, body = r.read_msg()
        assert t != b"E", error_fields(body)
        if t == b"Z":
            return r


def run_query(r, sql):
    r.send(msg(b"Q", sql.encode() + b"\0"))
    return r.read_until_error_or_close()


def idle_in_transaction(port):
    r = login(port)
    r.send(msg(b"Q", b"begin\0"))
    r.collect()
    time.sleep(2.5)
    return run_query(r, "select 1")


def query_too_long(port):
    return run_query(login(port), "select pg_sleep(5)")


def idle_client(port):
    r = login(port)
    time.sleep(2.5)
    return r.read_until_error_or_close()


# (name, PgBouncer's settings, pgstay's, scenario, pgstay's SQLSTATE when it is not PgBouncer's)
CASES = [
    ("idle_transaction_timeout", {"idle_transaction_timeout": 1}, {}, idle_in_transaction,
     "25P03"),  # PostgreSQL's idle_in_transaction_session_timeout
    ("query_timeout", {"query_timeout": 1}, {}, query_too_long,
     "57014"),  # PostgreSQL's statement_timeout (query_canceled)
    ("client_idle_timeout", {"client_idle_timeout": 1}, {}, idle_client,
     "57P05"),  # PostgreSQL's idle_session_timeout
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_timeout_error_as_pgbouncer(cluster1, make_proxy, bouncers, case):
    """The error that ends the client: PgBouncer's severity, PgBouncer's message first (what log
    alerts and retry code match), PostgreSQL's SQLSTATE for the case where it has one."""
    name, settings, extra, scenario, pg_code = case
    b = bouncers(**settings)
    p = make_proxy(cluster1, pool_mode="session", **dict(settings, **extra))
    want = scenario(b.port)
    got = scenario(p.port)
    assert want and got, (want, got)
    assert got["S"] == want["S"] == "FATAL", (want, got)
    assert got["M"].startswith(want["M"]), (want, got)
    assert want["C"] == "08P01" and got["C"] == pg_code, (want, got)


def test_query_wait_timeout_as_pgbouncer(cluster1, make_proxy, bouncers):
    """query_wait_timeout: PgBouncer's SQLSTATE and message; pgstay keeps the connection (an
    ERROR where PgBouncer ends it with FATAL), since the client has done nothing wrong."""
    b = bouncers(query_wait_timeout=1, default_pool_size=1)
    p = make_proxy(cluster1, pool_mode="session", query_wait_timeout=1, pool_size=1)
    res = {}
    for name, port, first in (("pgbouncer", b.port, b.connect()), ("pgstay", p.port, p.connect())):
        first.execute("select 1")  # the one server is taken
        r = login(port)  # both welcome a login with what the pool already knows
        res[name] = run_query(r, "select 1")
        if name == "pgstay":
            assert not r.closed_within(0.3)
            r.s.settimeout(15)
            assert run_query(r, "select 1") is not None  # still waits: the server is taken
        first.close()
    want, got = res["pgbouncer"], res["pgstay"]
    assert want == {"S": "FATAL", "C": "08P01", "M": "query_wait_timeout"}, want
    assert got["C"] == want["C"] and got["M"].startswith(want["M"]) and got["S"] == "ERROR", got


def test_max_client_conn_and_disabled_as_pgbouncer(cluster1, make_proxy, bouncers):
    """max_client_conn: PostgreSQL's 53300 and words (issue 12), naming PgBouncer's key; a
    DISABLEd database: PgBouncer's 08P01 and message."""
    b = bouncers(max_client_conn=1)
    p = make_proxy(cluster1, max_client_conn=1)
    res = {}
    for name, target in (("pgbouncer", b), ("pgstay", p)):
        first = target.connect()
        r = Raw(target.port, timeout=15)
        r.send(startup_packet())
        res[name] = r.read_until_error_or_close()
        first.close()
    assert res["pgbouncer"] == {"S": "FATAL", "C": "08P01",
                                "M": "no more connections allowed (max_client_conn)"}
    got = res["pgstay"]
    assert got["S"] == "FATAL" and got["C"] == "53300" and "(max_client_conn)" in got["M"], got
    res = {}
    for name, target in (("pgbouncer", bouncers()), ("pgstay", make_proxy(cluster1))):
        with psycopg.connect(target.dsn(dbname="pgbouncer"), autocommit=True,
                             prepare_threshold=None) as a:
            a.execute("DISABLE app")
            r = Raw(target.port, timeout=15)
            r.send(startup_packet("app", "app"))
            res[name] = r.read_until_error_or_close()
            a.execute("ENABLE app")
    want, got = res["pgbouncer"], res["pgstay"]
    assert {k: got[k] for k in "SCM"} == want, (want, got)
