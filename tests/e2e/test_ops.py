"""Operations keys with PgBouncer's names and semantics (issue 13): reserve pool, server checks,
transaction_timeout, per-user and per-database pool sizes, unix sockets, logging."""
import threading
import time

import psycopg
import pytest

from wire import Raw, msg


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
