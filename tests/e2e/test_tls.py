"""TLS on both sides of pgstay: certificates made by the test with the openssl CLI, real clients
(psql, psycopg, asyncpg, pgbench) and raw sockets for what no driver sends (plaintext injected
around the handshake, a second SSLRequest, direct TLS)."""
import asyncio
import hashlib
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import time

import asyncpg
import psycopg
import pytest

from conftest import build_dir
from lab import Lab, free_port_base
from wire import Raw, error_fields, msg, startup_packet

SSL_REQUEST = struct.pack("!II", 8, 80877103)


def openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, capture_output=True)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", name + ".key", "-out", name + ".crt", "-days", "2",
            "-subj", "/CN=" + name, cwd=d)


def make_cert(d, name, ca, cn, san=None):
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + cn, cwd=d)
    ext = os.path.join(d, name + ".ext")
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\n")
        if san:
            f.write("subjectAltName=%s\n" % san)
    openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".crt", "-CAkey", ca + ".key",
            "-CAcreateserial", "-out", name + ".crt", "-days", "2", "-extfile", ext, cwd=d)
    os.chmod(os.path.join(d, name + ".key"), 0o600)


@pytest.fixture(scope="module")
def certs():
    """ca: the trusted CA; other: a CA nobody trusts. server (CN localhost, SAN localhost and
    127.0.0.1), server2 (the same names, a reload's replacement), client certificates for the
    users postgres and app, and one for postgres signed by the untrusted CA."""
    d = tempfile.mkdtemp(prefix="pgstay-tls-")
    os.chmod(d, 0o755)
    make_ca(d, "ca")
    make_ca(d, "other")
    san = "DNS:localhost,IP:127.0.0.1"
    make_cert(d, "server", "ca", "localhost", san)
    make_cert(d, "server2", "ca", "localhost", san)
    make_cert(d, "client_postgres", "ca", "postgres")
    make_cert(d, "client_app", "ca", "app")
    make_cert(d, "rogue_postgres", "other", "postgres")
    make_cert(d, "rogue_server", "other", "localhost", san)
    yield lambda name: os.path.join(d, name)
    shutil.rmtree(d, ignore_errors=True)


def tls_settings(certs, mode="require", **extra):
    s = {"client_tls_sslmode": mode, "client_tls_cert_file": certs("server.crt"),
         "client_tls_key_file": certs("server.key")}
    s.update(extra)
    return s


def raw_tls(port, alpn=None, direct=False, timeout=5):
    """A raw socket, TLS after SSLRequest/'S' (or direct TLS), certificate not checked."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if not direct:
        s.sendall(SSL_REQUEST)
        assert s.recv(1) == b"S"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx.wrap_socket(s, server_hostname="localhost")


class TlsRaw(Raw):
    """wire.Raw over an already wrapped socket."""

    def __init__(self, sock):
        self.s = sock
        self.buf = b""


def psql(dsn, sql, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(["psql", "-X", "-A", "-t", dsn, "-c", sql], capture_output=True,
                          text=True, timeout=60, env=e)


# ---- client side ----

def test_require_psycopg_psql_asyncpg(cluster1, make_proxy, certs):
    p = make_proxy(cluster1, **tls_settings(certs))
    with psycopg.connect(p.dsn(sslmode="require")) as c:
        assert c.pgconn.ssl_in_use
        assert c.execute("select 1").fetchone()[0] == 1
    # verify-full: the client checks pgstay's certificate against the CA and the host name
    for host in ("localhost", "127.0.0.1"):
        dsn = "host=%s port=%d dbname=postgres user=postgres sslmode=verify-full sslrootcert=%s" % (
            host, p.port, certs("ca.crt"))
        out = psql(dsn, "select 42")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "42"
    with psycopg.connect(p.dsn(sslmode="verify-ca", sslrootcert=certs("ca.crt"))) as c:
        assert c.pgconn.ssl_in_use
        # SHOW CLIENTS names the TLS version of each client (column tls)
        rows = p.admin_rows("SHOW CLIENTS")
        assert any(r["tls"] in ("TLSv1.2", "TLSv1.3") for r in rows), rows

    async def main():
        ctx = ssl.create_default_context(cafile=certs("ca.crt"))
        conn = await asyncpg.connect(host="localhost", port=p.port, user="postgres",
                                     database="postgres", password="postgres", ssl=ctx)
        v = await conn.fetchval("select 7")
        await conn.close()
        return v

    assert asyncio.run(main()) == 7


def test_prefer_default_and_disable(cluster1, make_proxy, certs):
    """With a certificate, the default mode (prefer) answers 'S' and still takes plaintext;
    disable answers 'N' whatever the files."""
    p = make_proxy(cluster1, client_tls_cert_file=certs("server.crt"),
                   client_tls_key_file=certs("server.key"))
    with psycopg.connect(p.dsn()) as c:  # libpq's default sslmode=prefer
        assert c.pgconn.ssl_in_use
    with psycopg.connect(p.dsn(sslmode="disable")) as c:
        assert not c.pgconn.ssl_in_use
        assert c.execute("select 1").fetchone()[0] == 1
        rows = p.admin_rows("SHOW CLIENTS")
        assert any(r["tls"] == "" for r in rows), rows  # this one, in plaintext (PgBouncer: "")
    p2 = make_proxy(cluster1, **tls_settings(certs, "disable"))
    r = Raw(p2.port)
    r.send(SSL_REQUEST)
    assert r.read_byte() == b"N"
    r.login_trust()
    r.close()


def test_plaintext_refused_when_required(cluster1, make_proxy, certs):
    p = make_proxy(cluster1, **tls_settings(certs))
    r = Raw(p.port)
    r.send(startup_packet())
    t, body = r.read_msg()
    f = error_fields(body)
    assert t == b"E" and f["S"] == "FATAL" and f["C"] == "28000", f
    assert "no encryption" in f["M"] and "sslmode=require" in f["M"], f
    assert r.closed()
    with pytest.raises(psycopg.OperationalError) as e:
        psycopg.connect(p.dsn(sslmode="disable"))
    assert "no encryption" in str(e.value)
    # A CancelRequest is still taken in plaintext (libpq before 17 never encrypts them).
    with psycopg.connect(p.dsn(sslmode="require")) as c:
        t0 = time.time()
        with pytest.raises(psycopg.errors.QueryCanceled):
            import threading
            threading.Timer(0.3, c.cancel).start()
            c.execute("select pg_sleep(10)")
        assert time.time() - t0 < 5


def test_plaintext_after_sslrequest_refused(cluster1, make_proxy, certs):
    """CVE-2021-23214 / CVE-2021-3935: a StartupMessage sent in clear right behind the
    SSLRequest (as a man in the middle would inject it) is refused, never processed."""
    p = make_proxy(cluster1, **tls_settings(certs, "prefer"))
    r = Raw(p.port)
    r.send(SSL_REQUEST + startup_packet())
    t, body = r.read_msg()  # no 'S' comes first: an ErrorResponse
    f = error_fields(body)
    assert t == b"E" and f["C"] == "08P01", f
    assert "received unencrypted data after SSL request" in f["M"]
    assert r.closed()
    # After the 'S', plaintext is taken as TLS (and fails as such): no session ever starts.
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    s.sendall(SSL_REQUEST)
    assert s.recv(1) == b"S"
    s.sendall(startup_packet() + msg(b"Q", b"select 1\0"))
    got = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    s.close()
    assert not got.startswith(b"R") and b"SELECT" not in got, got
    assert got == b"" or got[0] == 0x15, got  # nothing, or a TLS alert
    assert "TLS handshake failed" in p.log()
    # pgstay is fine for the next client
    with psycopg.connect(p.dsn(sslmode="require")) as c:
        assert c.execute("select 1").fetchone()[0] == 1


def test_second_sslrequest_refused(cluster1, make_proxy, certs):
    """An SSLRequest inside TLS is refused as PostgreSQL does (one negotiation per connection)."""
    p = make_proxy(cluster1, **tls_settings(certs))
    r = TlsRaw(raw_tls(p.port))
    r.send(SSL_REQUEST)
    t, body = r.read_msg()
    f = error_fields(body)
    assert t == b"E" and f["C"] == "0A000", f
    assert "unsupported frontend protocol 1234.5679" in f["M"]
    assert r.closed()
    # Over TLS, a raw client logs in and queries.
    r = TlsRaw(raw_tls(p.port))
    r.login_trust()
    r.send(msg(b"Q", b"select 1\0"))
    seen = []
    while True:
        t, body = r.read_msg()
        seen.append(t)
        if t == b"Z":
            break
    assert seen == [b"T", b"D", b"C", b"Z"]
    r.close()


def test_direct_tls(cluster1, make_proxy, certs):
    """PostgreSQL 17's direct TLS: a ClientHello first, with ALPN "postgresql"."""
    p = make_proxy(cluster1, **tls_settings(certs))
    s = raw_tls(p.port, alpn=["postgresql"], direct=True)
    assert s.selected_alpn_protocol() == "postgresql"
    r = TlsRaw(s)
    r.login_trust()
    r.close()
    # Without ALPN: refused, as PostgreSQL 17 does.
    r = TlsRaw(raw_tls(p.port, direct=True))
    r.send(startup_packet())
    f = r.read_until_error_or_close()
    assert f and f["C"] == "08P01" and "ALPN" in f["M"], f
    # Another protocol asked for: the handshake itself fails.
    with pytest.raises(ssl.SSLError):
        raw_tls(p.port, alpn=["http/1.1"], direct=True)


def test_wrong_ca_refused(cluster1, make_proxy, certs):
    """A client that trusts another CA refuses pgstay (verify-full and verify-ca)."""
    p = make_proxy(cluster1, **tls_settings(certs))
    for mode in ("verify-ca", "verify-full"):
        with pytest.raises(psycopg.OperationalError) as e:
            psycopg.connect(p.dsn(sslmode=mode, sslrootcert=certs("other.crt")))
        assert "certificate verify failed" in str(e.value)


@pytest.mark.parametrize("mode", ["verify-ca", "verify-full"])
def test_client_certificates(cluster1, make_proxy, certs, mode, monkeypatch):
    # The fixture's own admin connection (is pgstay up?) needs a certificate too.
    monkeypatch.setenv("PGSSLCERT", certs("client_postgres.crt"))
    monkeypatch.setenv("PGSSLKEY", certs("client_postgres.key"))
    p = make_proxy(cluster1, **tls_settings(certs, mode, client_tls_ca_file=certs("ca.crt")))
    monkeypatch.delenv("PGSSLCERT")
    monkeypatch.delenv("PGSSLKEY")
    good = dict(sslmode="require", sslcert=certs("client_postgres.crt"),
                sslkey=certs("client_postgres.key"))
    with psycopg.connect(p.dsn(**good)) as c:
        assert c.execute("select current_user").fetchone()[0] == "postgres"
    with pytest.raises(psycopg.OperationalError):  # no certificate
        psycopg.connect(p.dsn(sslmode="require"))
    with pytest.raises(psycopg.OperationalError):  # signed by a CA pgstay does not trust
        psycopg.connect(p.dsn(sslmode="require", sslcert=certs("rogue_postgres.crt"),
                              sslkey=certs("rogue_postgres.key")))
    # app's certificate used to log in as postgres: verify-full checks the CN, verify-ca not
    other = dict(sslmode="require", sslcert=certs("client_app.crt"), sslkey=certs("client_app.key"))
    if mode == "verify-full":
        with pytest.raises(psycopg.OperationalError) as e:
            psycopg.connect(p.dsn(**other))
        assert "CN mismatch" in str(e.value)
    else:
        with psycopg.connect(p.dsn(**other)) as c:
            assert c.execute("select 1").fetchone()[0] == 1


def test_scram_channel_binding(cluster1, make_proxy, certs):
    """SCRAM-SHA-256-PLUS (tls-server-end-point) over TLS: a client that requires channel
    binding logs in, also with the server's SCRAM secret in auth_file (the ClientKey recovered
    from a -PLUS proof logs pgstay into the server); without TLS it stops on its side."""
    with psycopg.connect(cluster1.dsn(1), autocommit=True) as c:
        secret = c.execute("select rolpassword from pg_authid where rolname = 'app'").fetchone()[0]
    p = make_proxy(cluster1, start=False, auth_type="scram-sha-256",
                   **tls_settings(certs, "prefer"))
    p.userlist["app"] = secret
    p.start()
    for user in ("app", "postgres"):  # a SCRAM secret, a plain password
        with psycopg.connect(p.dsn(user=user, password=user, dbname="postgres",
                                   sslmode="require", channel_binding="require")) as c:
            assert c.pgconn.ssl_in_use
            assert c.execute("select current_user").fetchone()[0] == user
    with pytest.raises(psycopg.OperationalError) as e:
        psycopg.connect(p.dsn(user="app", password="wrong", sslmode="require",
                              channel_binding="require"))
    assert "password authentication failed" in str(e.value)
    with pytest.raises(psycopg.OperationalError) as e:
        psycopg.connect(p.dsn(user="app", password="app", sslmode="disable",
                              channel_binding="require"))
    assert "channel binding" in str(e.value)
    # Over TLS without channel_binding=require, libpq still picks -PLUS; over plaintext the
    # plain mechanism is the only one offered.
    with psycopg.connect(p.dsn(user="app", password="app", sslmode="disable")) as c:
        assert c.execute("select 1").fetchone()[0] == 1
    # A raw client that says "y" (binding supported, server thought not to) is refused: pgstay
    # did offer -PLUS over this TLS session, so someone took it off the list.
    r = TlsRaw(raw_tls(p.port))
    r.send(startup_packet(user="app", database="postgres"))
    t, body = r.read_msg()
    assert t == b"R" and struct.unpack("!I", body[:4])[0] == 10
    assert body[4:].split(b"\0")[:2] == [b"SCRAM-SHA-256-PLUS", b"SCRAM-SHA-256"]
    first = b"y,,n=,r=abcdefghijkl"
    r.send(msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first))
    f = r.read_until_error_or_close()
    assert f and f["C"] == "08P01", f


def test_large_result_and_copy_through_tls(cluster1, make_proxy, certs):
    """Many records per read (read-ahead: SSL_pending) and writes the socket takes in part."""
    p = make_proxy(cluster1, **tls_settings(certs))
    with psycopg.connect(p.dsn(sslmode="require"), autocommit=True) as c:
        rows = c.execute("select i, repeat('x', 1000) from generate_series(1, 30000) i").fetchall()
        assert len(rows) == 30000 and rows[-1][0] == 30000 and len(rows[-1][1]) == 1000
        row = ("y" * 200 + "\n").encode()
        h_in = hashlib.md5()
        c.execute("drop table if exists t_tls_copy")
        c.execute("create table t_tls_copy (v text)")
        with c.cursor().copy("copy t_tls_copy from stdin") as cp:
            chunk = row * 500
            for _ in range(200):  # 20 MB
                cp.write(chunk)
                h_in.update(chunk)
        h_out = hashlib.md5()
        with c.cursor().copy("copy t_tls_copy to stdout") as cp:
            for data in cp:
                h_out.update(data)
        assert h_in.hexdigest() == h_out.hexdigest()
        c.execute("drop table t_tls_copy")
    # A reader slower than pgstay: its socket refuses bytes, TLS writes are retried.
    out = subprocess.run(
        "psql -X '%s' -c \"copy (select repeat('z', 500) from generate_series(1, 100000)) to "
        "stdout\" | (sleep 1; wc -c)" % p.dsn(sslmode="require"),
        shell=True, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) == 100000 * 501


def test_pgbench_select_only_through_tls(cluster1, make_proxy, certs):
    p = make_proxy(cluster1, pool_size=8, **tls_settings(certs))
    env = dict(os.environ, PGSSLMODE="require")
    init = subprocess.run(["pgbench", "-i", "-s", "1", "-q", p.dsn()], capture_output=True,
                          text=True, env=env, timeout=120)
    assert init.returncode == 0, init.stderr
    out = subprocess.run(["pgbench", "-S", "-c", "8", "-j", "2", "-T", "3", p.dsn()],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "number of failed transactions: 0" in out.stdout, out.stdout
    assert "error" not in out.stderr.lower(), out.stderr


def test_sighup_reloads_certificates(cluster1, make_proxy, certs, tmp_path):
    """New handshakes get the new certificate; an established session goes on untouched."""
    crt, key = str(tmp_path / "live.crt"), str(tmp_path / "live.key")
    shutil.copy(certs("server.crt"), crt)
    shutil.copy(certs("server.key"), key)
    p = make_proxy(cluster1, **tls_settings(certs, client_tls_cert_file=crt,
                                            client_tls_key_file=key))

    def served_cert():
        s = raw_tls(p.port)
        der = s.getpeercert(binary_form=True)
        s.close()
        return der

    first = served_cert()
    held = psycopg.connect(p.dsn(sslmode="require"))
    shutil.copy(certs("server2.crt"), crt)
    shutil.copy(certs("server2.key"), key)
    p.signal(signal.SIGHUP)
    deadline = time.time() + 5
    while served_cert() == first and time.time() < deadline:
        time.sleep(0.05)
    assert served_cert() != first
    assert held.execute("select 1").fetchone()[0] == 1
    # A broken file: the reload is refused and the running certificate stays.
    with open(key, "w") as f:
        f.write("not a key\n")
    now = served_cert()
    p.signal(signal.SIGHUP)
    deadline = time.time() + 5
    while "reload failed" not in p.log() and time.time() < deadline:
        time.sleep(0.05)
    assert "reload failed" in p.log()
    assert served_cert() == now
    assert held.execute("select 2").fetchone()[0] == 2
    held.close()


def test_bad_tls_config_refused(cluster1, make_proxy, certs):
    p = make_proxy(cluster1, start=False, client_tls_sslmode="require")
    p.write_config()
    out = subprocess.run([os.path.join(build_dir(), "pgstay"), "--check-config", p.conf_path],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "client_tls_cert_file" in out.stderr, out.stderr


# ---- server side ----

@pytest.fixture(scope="module")
def ssl_cluster(certs):
    """A one-node lab with ssl = on (pgstay-lab ssl) and a pg_hba that takes TLS only."""
    d = tempfile.mkdtemp(prefix="pgstay-e2e-ssl-")
    os.chmod(d, 0o755)
    lab = Lab(os.path.join(d, "lab"), nodes=1, port=free_port_base(), sync=False, auth="scram")
    lab.init()
    lab.run("ssl", "--cert", certs("server.crt"), "--key", certs("server.key"))
    yield lab
    lab.destroy()
    shutil.rmtree(d, ignore_errors=True)


def test_server_tls_verify_full(ssl_cluster, make_proxy, certs):
    p = make_proxy(ssl_cluster, server_tls_sslmode="verify-full",
                   server_tls_ca_file=certs("ca.crt"))
    with psycopg.connect(p.dsn()) as c:
        row = c.execute("select ssl, version from pg_stat_ssl where pid = pg_backend_pid()")
        ssl_on, version = row.fetchone()
        assert ssl_on and version in ("TLSv1.2", "TLSv1.3")
        servers = p.admin_rows("SHOW SERVERS")
        assert servers and all(r["tls"] in ("TLSv1.2", "TLSv1.3") for r in servers), servers
    # The probes use the same settings.
    with psycopg.connect(ssl_cluster.dsn(1)) as c:
        rows = c.execute("select s.ssl from pg_stat_ssl s join pg_stat_activity a using (pid) "
                         "where a.application_name = 'pgstay-probe'").fetchall()
    assert rows and all(r[0] for r in rows), rows


def test_server_tls_large_result(ssl_cluster, make_proxy, certs):
    p = make_proxy(ssl_cluster, server_tls_sslmode="require", **tls_settings(certs))
    with psycopg.connect(p.dsn(sslmode="require")) as c:
        rows = c.execute("select repeat('x', 2000) from generate_series(1, 20000)").fetchall()
        assert len(rows) == 20000 and all(len(r[0]) == 2000 for r in rows)
        with c.cursor().copy("copy (select repeat('q', 300) from generate_series(1, 50000)) to "
                             "stdout") as cp:
            total = sum(len(d) for d in cp)
        assert total == 50000 * 301


def test_server_tls_wrong_ca(ssl_cluster, make_proxy, certs):
    p = make_proxy(ssl_cluster, start=False, server_tls_sslmode="verify-ca",
                   server_tls_ca_file=certs("other.crt"))
    p.start(wait_writer=False)
    deadline = time.time() + 5
    while "certificate verify failed" not in p.log() and time.time() < deadline:
        time.sleep(0.1)
    assert "certificate verify failed" in p.log()
    rows = p.admin("SHOW NODES")
    assert not any(r[4] == "yes" for r in rows), rows


def test_server_tls_required_but_not_offered(cluster1, make_proxy, certs):
    """cluster1 has ssl = off: require refuses it, prefer goes on in plaintext."""
    p = make_proxy(cluster1, start=False, server_tls_sslmode="require")
    p.start(wait_writer=False)
    deadline = time.time() + 5
    while "server does not support SSL" not in p.log() and time.time() < deadline:
        time.sleep(0.1)
    assert "server does not support SSL, but SSL was required" in p.log()
    p2 = make_proxy(cluster1, server_tls_sslmode="prefer")
    with psycopg.connect(p2.dsn()) as c:
        assert c.execute("select 1").fetchone()[0] == 1


def test_server_plaintext_password_only_over_tls(ssl_cluster, make_proxy):
    """A node that asks for a password in clear (or md5) gets it only over TLS, unless
    server_allow_plaintext_password = on. Probes follow the same rule."""
    hba = os.path.join(ssl_cluster.dir, "n1", "pg_hba.conf")
    with open(hba) as f:
        orig = f.read()
    with open(hba, "w") as f:
        f.write(orig.replace("host  all         all  127.0.0.1/32  scram-sha-256",
                             "host  all         all  127.0.0.1/32  password"))

    def auth_code():
        """What the node asks a TCP client for now: 3 cleartext password, 10 SASL."""
        r = Raw(ssl_cluster.node_port(1))
        r.send(startup_packet())
        t, body = r.read_msg()
        r.close()
        return struct.unpack("!I", body[:4])[0] if t == b"R" else None

    def reload(code):
        with psycopg.connect(ssl_cluster.dsn(1), autocommit=True) as c:
            c.execute("select pg_reload_conf()")
        deadline = time.time() + 10
        while auth_code() != code and time.time() < deadline:
            time.sleep(0.05)
        assert auth_code() == code

    reload(3)
    try:
        p = make_proxy(ssl_cluster, start=False)
        p.start(wait_writer=False)
        deadline = time.time() + 5
        while "without TLS: no password sent" not in p.log() and time.time() < deadline:
            time.sleep(0.1)
        assert "asks for password authentication over a connection without TLS" in p.log()
        p.stop()
        for settings in ({"server_tls_sslmode": "require"},
                         {"server_allow_plaintext_password": "on"}):
            p2 = make_proxy(ssl_cluster, **settings)
            with psycopg.connect(p2.dsn()) as c:
                assert c.execute("select 1").fetchone()[0] == 1
            p2.stop()
    finally:
        with open(hba, "w") as f:
            f.write(orig)
        reload(10)
