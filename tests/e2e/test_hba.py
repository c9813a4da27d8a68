"""auth_hba_file end to end: the first matching pg_hba.conf line picks the method (seen on the
wire as the authentication request pgstay sends), hostssl and hostnossl split TLS from plain,
no line or a reject line refuses with PostgreSQL's words and 28000, cert checks the client
certificate, and SIGHUP reloads the rules (a broken file keeps the running ones). One pgstay
for the module: each test only logs in."""
import asyncio
import os
import shutil
import signal
import ssl
import struct
import tempfile
import time

import asyncpg
import psycopg
import pytest

from conftest import Pgstay
from test_tls import SSL_REQUEST, TlsRaw, make_ca, make_cert
from wire import Raw, error_fields, startup_packet

HBA = """# admin console for the fixture's own checks, plain or TLS
host      pgstay    postgres  127.0.0.1/32   trust
host      postgres  nobody    all            reject
hostssl   postgres  app       127.0.0.1/32   scram-sha-256
hostnossl postgres  app       127.0.0.1/32   md5
host      app       app       127.0.0.1/32   password
hostssl   all       postgres  127.0.0.1/32   cert
hostnossl all       postgres  samehost       trust
host      all       mallory   10.0.0.0/8     trust
"""


@pytest.fixture(scope="module")
def certs():
    d = tempfile.mkdtemp(prefix="pgstay-hba-")
    os.chmod(d, 0o755)
    make_ca(d, "ca")
    make_cert(d, "server", "ca", "localhost", "DNS:localhost,IP:127.0.0.1")
    make_cert(d, "client_postgres", "ca", "postgres")
    make_cert(d, "client_app", "ca", "app")
    yield lambda name: os.path.join(d, name)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def hba_proxy(cluster1, certs, tmp_path_factory):
    d = str(tmp_path_factory.mktemp("hba"))
    hba = os.path.join(d, "hba.conf")
    with open(hba, "w") as f:
        f.write(HBA)
    p = Pgstay(cluster1, d, auth_type="hba", auth_hba_file=hba, client_tls_sslmode="prefer",
               client_tls_cert_file=certs("server.crt"), client_tls_key_file=certs("server.key"),
               client_tls_ca_file=certs("ca.crt"))
    p.hba_path = hba
    p.start()
    yield p
    p.stop()


def first_auth_request(p, user, db, tls=False):
    """The authentication request pgstay answers a startup packet with: ('R', code) or the
    ErrorResponse fields."""
    if tls:
        s = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        s.check_hostname = False
        s.verify_mode = ssl.CERT_NONE
        r = Raw(p.port)
        r.send(SSL_REQUEST)
        assert r.read_byte() == b"S"
        r = TlsRaw(s.wrap_socket(r.s, server_hostname="localhost"))
    else:
        r = Raw(p.port)
    r.send(startup_packet(user, db))
    t, body = r.read_msg()
    r.s.close()
    if t == b"E":
        return error_fields(body)
    assert t == b"R"
    return struct.unpack("!I", body[:4])[0]


def login_error(p, user, db="postgres", password=None, sslmode="disable", **extra):
    """(SQLSTATE, message) of a refused login through asyncpg, which reports the SQLSTATE of
    an error during authentication (libpq only its text)."""
    dsn = "postgresql://%s@127.0.0.1:%d/%s?sslmode=%s" % (user, p.port, db, sslmode)
    for k, v in extra.items():
        dsn += "&%s=%s" % (k, v)

    async def go():
        try:
            c = await asyncpg.connect(dsn, password=password, timeout=10)
        except asyncpg.PostgresError as e:
            return e.sqlstate, str(e)
        await c.close()
        return None, "logged in"
    return asyncio.run(go())


def test_method_per_line(hba_proxy):
    p = hba_proxy
    # hostssl line: SCRAM (10); hostnossl line for the same user and database: md5 (5);
    # another database: password (3, cleartext); trust (0)
    assert first_auth_request(p, "app", "postgres", tls=True) == 10
    assert first_auth_request(p, "app", "postgres") == 5
    assert first_auth_request(p, "app", "app") == 3
    assert first_auth_request(p, "postgres", "postgres") == 0
    # and real clients log in through each, with the server-side login working as usual
    for extra in ({"sslmode": "require"}, {"sslmode": "disable"}):
        with psycopg.connect(p.dsn(user="app", **extra)) as c:
            assert c.execute("select current_user").fetchone()[0] == "app"
            assert c.pgconn.ssl_in_use == (extra["sslmode"] == "require")
    with psycopg.connect(p.dsn(user="app", dbname="app", sslmode="require")) as c:
        assert c.execute("select current_database()").fetchone()[0] == "app"
    # a wrong password is 28P01 whatever the line's method
    for db, mode in (("postgres", "require"), ("postgres", "disable"), ("app", "require")):
        state, text = login_error(p, "app", db, "wrong", mode)
        assert state == "28P01" and "password authentication failed" in text, (db, mode, text)


def test_no_entry_and_reject(hba_proxy):
    p = hba_proxy
    # mallory's only line wants 10.0.0.0/8: no entry for 127.0.0.1, in PostgreSQL's words
    state, text = login_error(p, "mallory", password="x")
    assert state == "28000"
    assert text == ('no pg_hba.conf entry for host "127.0.0.1", user "mallory", '
                    'database "postgres", no encryption')
    err = first_auth_request(p, "mallory", "postgres", tls=True)
    assert err["C"] == "28000" and err["M"].endswith("SSL encryption"), err
    # a reject line
    err = first_auth_request(p, "nobody", "postgres")
    assert err["C"] == "28000"
    assert err["M"] == ('pg_hba.conf rejects connection for host "127.0.0.1", user "nobody", '
                        'database "postgres", no encryption'), err


def test_cert_line(hba_proxy, certs):
    p = hba_proxy
    ok = dict(sslmode="require", sslcert=certs("client_postgres.crt"),
              sslkey=certs("client_postgres.key"))
    with psycopg.connect(p.dsn(password="", **ok)) as c:
        assert c.execute("select current_user").fetchone()[0] == "postgres"
    # hostssl/cert without a certificate, or with another user's
    state, text = login_error(p, "postgres", sslmode="require")
    assert state == "28000" and "certificate authentication failed" in text, text
    with pytest.raises(psycopg.OperationalError) as e:
        psycopg.connect(p.dsn(sslmode="require", sslcert=certs("client_app.crt"),
                              sslkey=certs("client_app.key")))
    assert "CN mismatch" in str(e.value)
    # the plain connection of the same user meets the hostnossl samehost trust line
    with psycopg.connect(p.dsn(password="", sslmode="disable")) as c:
        assert c.execute("select 1").fetchone()[0] == 1


def wait_log(p, text, start, timeout=5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if p.log().count(text) > start:
            return
        time.sleep(0.05)
    raise AssertionError("no %r in the log: %s" % (text, p.log()[-2000:]))


def test_reload(hba_proxy):
    p = hba_proxy
    try:
        # app over plain text: md5 becomes reject at SIGHUP
        with open(p.hba_path, "w") as f:
            f.write(HBA.replace("hostnossl postgres  app       127.0.0.1/32   md5",
                                "hostnossl postgres  app       127.0.0.1/32   reject"))
        n = p.log().count("configuration reloaded")
        p.signal(signal.SIGHUP)
        wait_log(p, "configuration reloaded", n)
        err = first_auth_request(p, "app", "postgres")
        assert err["C"] == "28000" and "rejects connection" in err["M"], err
        # a file pgstay cannot enforce keeps the running rules, and says why
        with open(p.hba_path, "w") as f:
            f.write(HBA + "host all +admins all trust\n")
        n = p.log().count("reload failed")
        p.signal(signal.SIGHUP)
        wait_log(p, "reload failed", n)
        assert "+admins" in p.log()
        assert first_auth_request(p, "app", "postgres")["C"] == "28000"
    finally:
        with open(p.hba_path, "w") as f:
            f.write(HBA)
        n = p.log().count("configuration reloaded")
        p.signal(signal.SIGHUP)
        wait_log(p, "configuration reloaded", n)
    assert first_auth_request(p, "app", "postgres") == 5
