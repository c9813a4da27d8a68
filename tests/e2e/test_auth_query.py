"""auth_query with auth_user (issue 11): users that exist only in the database log in through
pgstay with the secret the current writer stores (md5 and SCRAM), a wrong password is 28P01,
the answer is cached for auth_cache_ttl, and after a failover it is fetched again from the new
writer. One two-node lab for the module; its servers take md5 for md5-stored passwords (pg_hba
method md5, which keeps SCRAM for SCRAM-stored ones)."""
import asyncio
import os
import re
import shutil
import tempfile
import time

import asyncpg
import psycopg
import pytest

from conftest import Pgstay, slack
from lab import Lab, free_port_base


def login_error(p, user, password, db="postgres"):
    """(SQLSTATE, message) of a refused login (asyncpg reports the SQLSTATE; libpq does not)."""
    async def go():
        try:
            c = await asyncpg.connect(host="127.0.0.1", port=p.port, user=user, database=db,
                                      password=password, ssl=False, timeout=10)
        except asyncpg.PostgresError as e:
            return e.sqlstate, str(e)
        await c.close()
        return None, "logged in"
    return asyncio.run(go())


def whoami(p, user, password):
    with psycopg.connect(p.dsn(user=user, password=password, sslmode="disable")) as c:
        return c.execute("select current_user, inet_server_port()").fetchone()


def lookups(p, user):
    """The auth_query answers pgstay logged for user (debug log: verbose = 1)."""
    return re.findall(r'auth_query: user "%s": (.*) \(from node (\w+)\)' % user, p.log())


@pytest.fixture(scope="module")
def aq(tmp_path_factory):
    d = tempfile.mkdtemp(prefix="pgstay-aq-")
    os.chmod(d, 0o755)
    lab = Lab(os.path.join(d, "lab"), nodes=2, port=free_port_base(), sync=True, auth="scram")
    lab.init()
    p = None
    try:
        for n in (1, 2):
            hba = os.path.join(lab.dir, "n%d" % n, "pg_hba.conf")
            with open(hba) as f:
                text = f.read()
            with open(hba, "w") as f:
                f.write(text.replace("scram-sha-256", "md5"))
        with psycopg.connect(lab.dsn(1), autocommit=True) as c:
            c.execute("select pg_reload_conf()")
            c.execute("set password_encryption = 'md5'")
            c.execute("create role aq_md5 login password 'md5_pw'")
            c.execute("set password_encryption = 'scram-sha-256'")
            c.execute("create role aq_scram login password 'scram_pw'")
        with psycopg.connect(lab.dsn(2), autocommit=True) as c:
            c.execute("select pg_reload_conf()")
            deadline = time.time() + 10
            while c.execute("select count(*) from pg_roles where rolname like 'aq_%'"
                            ).fetchone()[0] < 2:
                assert time.time() < deadline, "roles not replicated"
                time.sleep(0.05)
        # One worker: these tests count the lookups and see the cache's age, and each worker
        # keeps its own cache of fetched secrets (doc/workers.md).
        p = Pgstay(lab, str(tmp_path_factory.mktemp("aq")), auth_type="md5", workers=1,
                   auth_user="postgres", auth_cache_ttl="60s", verbose=1,
                   server_allow_plaintext_password="on", failover_timeout="20s")
        p.start()
        yield p, lab
    finally:
        if p:
            p.stop()
        lab.destroy()
        shutil.rmtree(d, ignore_errors=True)


def test_login_from_the_database(aq):
    p, lab = aq
    port1 = lab.node_port(1)
    # md5 secret: the client answers md5, pgstay logs into the server with the same hash
    assert whoami(p, "aq_md5", "md5_pw") == ("aq_md5", port1)
    # SCRAM secret: SCRAM towards the client, the ClientKey from its proof towards the server
    assert whoami(p, "aq_scram", "scram_pw") == ("aq_scram", port1)
    for user in ("aq_md5", "aq_scram"):
        state, text = login_error(p, user, "wrong")
        assert state == "28P01" and "password authentication failed" in text, text
    # a user the database does not know either: the same answer, nothing revealed
    state, text = login_error(p, "aq_nobody", "x")
    assert state == "28P01" and "password authentication failed" in text, text
    assert lookups(p, "aq_nobody") == [("no such user", "n1")]
    # within auth_cache_ttl, one lookup served every login of a user
    assert lookups(p, "aq_md5") == [("md5 secret", "n1")]
    assert lookups(p, "aq_scram") == [("SCRAM secret", "n1")]
    # and auth_file users never reach auth_query
    assert whoami(p, "app", "app")[0] == "app"
    assert lookups(p, "app") == []


def test_fetched_again_from_the_new_writer(aq):
    p, lab = aq
    whoami(p, "aq_scram", "scram_pw")
    with psycopg.connect(lab.dsn(1), autocommit=True) as c:
        c.execute("alter role aq_scram password 'scram_pw2'")
        c.execute("set password_encryption = 'md5'")
        c.execute("alter role aq_md5 password 'md5_pw2'")
    # cached: the old passwords still work through pgstay, the new ones not yet
    assert whoami(p, "aq_scram", "scram_pw")[0] == "aq_scram"
    assert login_error(p, "aq_md5", "md5_pw2")[0] == "28P01"
    n_before = len(lookups(p, "aq_scram"))
    # the writer crashes, n2 is promoted: the next logins ask n2, whatever the ttl says
    lab.failover(to="n2")
    port2 = lab.node_port(2)
    deadline = time.time() + 20
    while True:
        try:
            assert whoami(p, "aq_scram", "scram_pw2") == ("aq_scram", port2)
            break
        except (psycopg.OperationalError, AssertionError):
            if time.time() > deadline:
                raise
            time.sleep(0.1)
    assert whoami(p, "aq_md5", "md5_pw2") == ("aq_md5", port2)
    assert login_error(p, "aq_scram", "scram_pw")[0] == "28P01"
    after = lookups(p, "aq_scram")[n_before:]
    assert after and after[-1] == ("SCRAM secret", "n2"), after
    assert lookups(p, "aq_md5")[-1] == ("md5 secret", "n2")


def test_auth_user_cannot_log_in(aq):
    """auth_user without a usable password: the logins that need a lookup get 28000 at once
    (not a hang until client_login_timeout), and the log says why."""
    p, lab = aq
    assert p.admin("SET auth_user = 'aq_nopassword'") == "SET"
    try:
        t0 = time.time()
        state, text = login_error(p, "aq_someone", "x")
        assert state == "28000" and "auth_query failed" in text, text
        assert time.time() - t0 < slack(5)
        assert 'auth_query failed for user "aq_someone"' in p.log()
        # auth_file users are not affected
        assert whoami(p, "app", "app")[0] == "app"
    finally:
        assert p.admin("SET auth_user = 'postgres'") == "SET"
