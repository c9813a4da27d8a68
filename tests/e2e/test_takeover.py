"""pgstay -R: a new process takes the listening sockets and the idle clients of the running one
(SCM_RIGHTS over takeover_socket) while the old one finishes what is in flight and exits."""
import os
import shutil
import subprocess
import tempfile
import time

import psycopg
import pytest

from conftest import build_dir
from wire import Raw

_olds = []


@pytest.fixture(autouse=True)
def _reap_old_processes():
    """An old process a failed test left behind does not outlive it."""
    yield
    while _olds:
        proc = _olds.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def takeover(p):
    """Start `pgstay -R` on p's config; p then stands for the new process (the fixture stops
    it). Returns the old process."""
    old = p.proc
    _olds.append(old)
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "quarantine_size_mb=4:detect_leaks=1")
    p.proc = subprocess.Popen([os.path.join(build_dir(), "pgstay"), "-R", p.conf_path],
                              stdout=p.logf, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 10
    while time.time() < deadline:
        if "the new process is up and accepting" in p.log():
            return old
        assert p.proc.poll() is None, p.log()[-3000:]
        time.sleep(0.05)
    raise AssertionError("the new pgstay did not take over: " + p.log()[-3000:])


def wait_exit(proc, timeout):
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def test_restart_keeps_idle_clients(cluster1, make_proxy, tmp_path):
    """100 idle clients and pgbench through pgstay, then pgstay -R: the old pid exits, every
    idle client answers and keeps its SET, pgbench sees no error, and a client inside a
    transaction finishes it on the old process before it moves too."""
    sock = str(tmp_path / "takeover.sock")
    pidfile = str(tmp_path / "pgstay.pid")
    p = make_proxy(cluster1, pool_mode="transaction", pool_size=8, takeover_socket=sock,
                   shutdown_timeout="15s", pidfile=pidfile)
    out = subprocess.run(["pgbench", "-i", "-s", "1", "-q", cluster1.dsn(1)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    idle = []
    for i in range(100):
        c = p.connect()
        c.execute("SET application_name = 'idle%d'" % i)
        # past psycopg's prepare_threshold: a protocol-level prepared statement moves too
        for _ in range(6):
            assert c.execute("SELECT 1").fetchone() == (1,)
        idle.append(c)
    # A raw client sees every byte: after the move, not one ParameterStatus more.
    raw = Raw(p.port)
    raw.login_trust()
    msgs, closed = raw.query("SELECT 1")
    assert not closed and [t for t, _ in msgs] == [b"T", b"D", b"C", b"Z"], msgs
    intx = p.connect(autocommit=False)
    intx.execute("SELECT 1")  # BEGIN sent: the transaction is open on its server

    bench = subprocess.Popen(["pgbench", "-n", "-S", "-c", "4", "-j", "2", "-T", "8",
                              p.dsn()], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    old = takeover(p)
    # A client inside a transaction finishes it where it began.
    time.sleep(0.5)
    assert old.poll() is None, "the old process left before its transaction ended"
    assert intx.execute("SELECT 2").fetchone() == (2,)
    intx.commit()
    # Idle, it moves too; then the old process has nothing left and exits.
    assert wait_exit(old, 10) == 0, p.log()[-3000:]
    with open(pidfile) as f:
        assert int(f.read()) == p.proc.pid  # the new process's, left alone by the old one
    msgs, closed = raw.query("SELECT 1")
    assert not closed and [t for t, _ in msgs] == [b"T", b"D", b"C", b"Z"], msgs
    raw.close()
    assert intx.execute("SELECT 3").fetchone() == (3,)
    intx.commit()

    for i, c in enumerate(idle):
        assert c.execute("SELECT 1").fetchone() == (1,)
        assert c.execute("SHOW application_name").fetchone() == ("idle%d" % i,)
    # New connections reach the new process.
    with p.connect() as c:
        assert c.execute("SELECT 4").fetchone() == (4,)
    stdout, stderr = bench.communicate(timeout=30)
    assert bench.returncode == 0, stdout + stderr
    assert "error" not in stderr.lower(), stderr
    log = p.log()
    assert "takeover: the old process is done" in log
    assert "handed over, none left here: exiting" in log
    for c in idle:
        c.close()
    intx.close()


def test_session_mode_clients_move_between_transactions(cluster1, make_proxy, tmp_path):
    """Session mode: an idle client lets its server go and moves with its SET and its prepared
    statement; a client inside a transaction finishes it on the old process, then moves; new
    clients are served by the new process meanwhile."""
    sock = str(tmp_path / "takeover.sock")
    p = make_proxy(cluster1, pool_mode="session", takeover_socket=sock, shutdown_timeout="15s")
    with p.connect() as c:
        c.execute("CREATE TABLE IF NOT EXISTS takeover_t (a int)")
    idle = p.connect()
    idle.execute("SET search_path = takeover_nowhere, public")
    for _ in range(6):  # prepared by psycopg past its threshold
        assert idle.execute("SELECT %s::int", (7,)).fetchone() == (7,)
    c = p.connect(autocommit=False)
    c.execute("INSERT INTO takeover_t VALUES (1)")
    old = takeover(p)
    with p.connect() as fresh:
        assert fresh.execute("SELECT 5").fetchone() == (5,)
    time.sleep(0.3)
    assert old.poll() is None, "the old process left before its transaction ended"
    c.execute("INSERT INTO takeover_t VALUES (2)")
    c.commit()
    assert wait_exit(old, 10) == 0, p.log()[-3000:]
    assert c.execute("SELECT count(*) FROM takeover_t WHERE a IN (1, 2)").fetchone()[0] >= 2
    c.commit()
    assert idle.execute("SHOW search_path").fetchone() == ("takeover_nowhere, public",)
    for _ in range(3):
        assert idle.execute("SELECT %s::int", (8,)).fetchone() == (8,)
    c.execute("DROP TABLE takeover_t")
    c.commit()
    c.close()
    idle.close()
    assert "the old process is done: 2 clients taken over" in p.log()


def test_cancel_reaches_a_query_on_the_old_process(cluster1, make_proxy, tmp_path):
    """A cancel request arrives at the new process (it has the listening socket) for a query
    still running on the old one: it is passed on over the control socket and cancels it."""
    import threading

    sock = str(tmp_path / "takeover.sock")
    p = make_proxy(cluster1, pool_mode="transaction", takeover_socket=sock, shutdown_timeout="15s")
    c = p.connect()
    result = {}

    def run():
        try:
            c.execute("SELECT pg_sleep(20)")
            result["done"] = True
        except psycopg.errors.QueryCanceled:
            result["canceled"] = True
        except Exception as e:  # anything else is a failure, reported below
            result["error"] = repr(e)

    th = threading.Thread(target=run)
    th.start()
    time.sleep(0.5)
    old = takeover(p)
    time.sleep(0.3)
    assert old.poll() is None
    t0 = time.time()
    c.cancel()
    th.join(10)
    assert result == {"canceled": True}, result
    assert time.time() - t0 < 5
    # Idle again, it moves; the old process is then done.
    assert wait_exit(old, 10) == 0, p.log()[-3000:]
    assert c.execute("SELECT 9").fetchone() == (9,)
    c.close()


def test_tls_client_drained_by_the_old_process(cluster1, make_proxy, tmp_path):
    """A TLS client's session keys are the old process's: it stays there and is served until
    it leaves; a plaintext client moves, and new TLS clients are served by the new process."""
    d = str(tmp_path)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "server.key", "-out",
                    "server.crt", "-days", "2", "-subj", "/CN=localhost"],
                   cwd=d, check=True, capture_output=True)
    os.chmod(os.path.join(d, "server.key"), 0o600)
    p = make_proxy(cluster1, pool_mode="transaction", takeover_socket=os.path.join(d, "tk.sock"),
                   client_tls_cert_file=os.path.join(d, "server.crt"),
                   client_tls_key_file=os.path.join(d, "server.key"), shutdown_timeout="15s")
    tls = psycopg.connect(p.dsn(sslmode="require"), autocommit=True)
    assert tls.pgconn.ssl_in_use
    tls.execute("SET application_name = 'tls'")
    plain = psycopg.connect(p.dsn(sslmode="disable"), autocommit=True)
    plain.execute("SET application_name = 'plain'")
    old = takeover(p)
    with psycopg.connect(p.dsn(sslmode="require")) as fresh:
        assert fresh.pgconn.ssl_in_use
        assert fresh.execute("SELECT 1").fetchone() == (1,)
    time.sleep(0.5)
    assert plain.execute("SHOW application_name").fetchone() == ("plain",)
    # Still on the old process, which waits for it.
    assert old.poll() is None
    assert tls.execute("SHOW application_name").fetchone() == ("tls",)
    tls.close()
    assert wait_exit(old, 10) == 0, p.log()[-3000:]
    assert plain.execute("SELECT 1").fetchone() == (1,)
    plain.close()
    assert "the old process is done: 1 clients taken over" in p.log()


def test_failed_new_process_loses_nothing(cluster1, make_proxy, tmp_path):
    """A new process that fails after taking the listening sockets (here: its pidfile cannot be
    written) never told the old one to hand over: the old one runs on, keeps accepting and
    serving, and a later pgstay -R succeeds."""
    sock = str(tmp_path / "takeover.sock")
    p = make_proxy(cluster1, pool_mode="transaction", takeover_socket=sock)
    c = p.connect()
    c.execute("SET application_name = 'stays'")
    bad_conf = str(tmp_path / "bad.ini")
    with open(p.conf_path) as f:
        text = f.read()
    with open(bad_conf, "w") as f:
        f.write(text.replace("[pgstay]\n", "[pgstay]\npidfile = /nonexistent/dir/pgstay.pid\n", 1))
    bad = subprocess.run([os.path.join(build_dir(), "pgstay"), "-R", bad_conf],
                         capture_output=True, text=True, timeout=20)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    deadline = time.time() + 5  # the old process notices the closed socket in its own time
    while "running on" not in p.log() and time.time() < deadline:
        time.sleep(0.05)
    assert "running on" in p.log()
    assert p.proc.poll() is None
    assert c.execute("SHOW application_name").fetchone() == ("stays",)
    with p.connect() as fresh:
        assert fresh.execute("SELECT 1").fetchone() == (1,)
    old = takeover(p)
    assert wait_exit(old, 10) == 0, p.log()[-3000:]
    assert c.execute("SHOW application_name").fetchone() == ("stays",)
    c.close()


def unix_dsn(d, port, **extra):
    dsn = "host=%s port=%d dbname=postgres user=postgres password=postgres" % (d, port)
    return dsn + "".join(" %s=%s" % kv for kv in extra.items())


def test_unix_sockets_taken_over(cluster1, make_proxy, tmp_path):
    """unix_socket_dir set (PgBouncer's online restart needs it): pgstay -R takes the unix
    listening sockets too. Idle clients over TCP and over the unix socket survive with their
    SET; new unix-socket clients connect before, during and after the takeover without a
    refusal; pgbench over the unix socket sees no error; the socket files are the same ones
    (never unlinked by the old process's exit) and the new process removes them at its own."""
    import threading

    d = tempfile.mkdtemp(prefix="pgs-", dir="/tmp")  # short: a socket path is 107 bytes at most
    try:
        sock = str(tmp_path / "takeover.sock")
        p = make_proxy(cluster1, pool_mode="transaction", pool_size=8, unix_socket_dir=d,
                       takeover_socket=sock, shutdown_timeout="15s")
        wpath, rpath = (os.path.join(d, ".s.PGSQL.%d" % port)
                        for port in (p.port, p.readonly_port))
        inodes = (os.stat(wpath).st_ino, os.stat(rpath).st_ino)
        out = subprocess.run(["pgbench", "-i", "-s", "1", "-q", cluster1.dsn(1)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        idle = []
        for i in range(40):
            # half over TCP, half over the unix socket (the reader endpoint's among them)
            if i % 2 == 0:
                c = p.connect()
            else:
                port = p.readonly_port if i % 4 == 1 else p.port
                c = psycopg.connect(unix_dsn(d, port), autocommit=True)
            c.execute("SET application_name = 'idle%d'" % i)
            idle.append(c)
        # New unix-socket clients all along: not one refused while the sockets change hands.
        stop = threading.Event()
        fresh = {"ok": 0, "errors": []}

        def connect_loop():
            while not stop.is_set():
                try:
                    with psycopg.connect(unix_dsn(d, p.port, connect_timeout=5)) as f:
                        assert f.execute("SELECT 1").fetchone() == (1,)
                    fresh["ok"] += 1
                except Exception as e:  # reported below
                    fresh["errors"].append(repr(e))
                time.sleep(0.02)

        th = threading.Thread(target=connect_loop)
        th.start()
        bench = subprocess.Popen(["pgbench", "-n", "-S", "-c", "4", "-j", "2", "-T", "8",
                                  unix_dsn(d, p.port)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2)
        before = fresh["ok"]
        old = takeover(p)
        assert wait_exit(old, 10) == 0, p.log()[-3000:]
        during = fresh["ok"] - before
        time.sleep(0.5)  # and after: the new process alone
        stop.set()
        th.join(10)
        assert fresh["errors"] == [], fresh["errors"][:3]
        assert during > 0 and fresh["ok"] > before + during, fresh
        # The same socket files, left in place by the old process's exit.
        assert (os.stat(wpath).st_ino, os.stat(rpath).st_ino) == inodes
        log = p.log()
        for path, what in ((wpath, "writer"), (rpath, "reader")):
            assert "listening on %s (%s endpoint), taken over" % (path, what) in log, log[-3000:]
        for i, c in enumerate(idle):
            assert c.execute("SELECT 1").fetchone() == (1,)
            assert c.execute("SHOW application_name").fetchone() == ("idle%d" % i,)
        with psycopg.connect(unix_dsn(d, p.port)) as c:
            assert c.execute("SELECT 4").fetchone() == (4,)
        with psycopg.connect(unix_dsn(d, p.readonly_port)) as c:
            assert c.execute("SELECT 5").fetchone() == (5,)
        stdout, stderr = bench.communicate(timeout=30)
        assert bench.returncode == 0, stdout + stderr
        assert "error" not in stderr.lower(), stderr
        assert "takeover: the old process is done" in log
        for c in idle:
            c.close()
        # The new process owns the files: they go when it stops.
        p.stop()
        assert not os.path.exists(wpath) and not os.path.exists(rpath)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_unix_socket_dir_changed_across_takeover(cluster1, make_proxy, tmp_path):
    """A new configuration with another unix_socket_dir: the new process binds the new path,
    the old socket is not taken over and its file goes with the old process; a unix client
    connected to the old path still moves."""
    d1 = tempfile.mkdtemp(prefix="pgs-", dir="/tmp")
    d2 = tempfile.mkdtemp(prefix="pgs-", dir="/tmp")
    try:
        p = make_proxy(cluster1, pool_mode="transaction", unix_socket_dir=d1,
                       takeover_socket=str(tmp_path / "takeover.sock"), shutdown_timeout="15s")
        c = psycopg.connect(unix_dsn(d1, p.port), autocommit=True)
        c.execute("SET application_name = 'moves'")
        p.settings["unix_socket_dir"] = d2
        p.write_config()
        old = takeover(p)
        assert wait_exit(old, 10) == 0, p.log()[-3000:]
        assert not os.path.exists(os.path.join(d1, ".s.PGSQL.%d" % p.port))
        with psycopg.connect(unix_dsn(d2, p.port)) as f:
            assert f.execute("SELECT 1").fetchone() == (1,)
        assert c.execute("SHOW application_name").fetchone() == ("moves",)
        assert "is not this configuration's: not taken over" in p.log()
        c.close()
    finally:
        shutil.rmtree(d1, ignore_errors=True)
        shutil.rmtree(d2, ignore_errors=True)


def test_old_process_stopped_mid_takeover_leaves_the_unix_socket(cluster1, make_proxy, tmp_path):
    """The old process is stopped (SIGTERM) after it sent its sockets and before the new one
    said it is up (here: the new configuration's node does not answer, so the new process waits
    for its probes): the unix socket file stays, the new process serves it, and removes it when
    it stops."""
    import signal

    d = tempfile.mkdtemp(prefix="pgs-", dir="/tmp")
    new = None
    try:
        p = make_proxy(cluster1, pool_mode="transaction", unix_socket_dir=d,
                       takeover_socket=str(tmp_path / "takeover.sock"))
        wpath = os.path.join(d, ".s.PGSQL.%d" % p.port)
        conf = str(tmp_path / "new.ini")
        with open(p.conf_path) as f:
            text = f.read()
        i = text.index("[nodes]\n")
        with open(conf, "w") as f:  # a node that never answers: no writer for READY_WAIT_MS
            f.write(text[:i] + "[nodes]\nn1 = host=127.0.0.1 port=1\n")
        new = subprocess.Popen([os.path.join(build_dir(), "pgstay"), "-R", conf],
                               stdout=p.logf, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while "listening sockets sent to the new process" not in p.log():
            assert time.time() < deadline and new.poll() is None, p.log()[-3000:]
            time.sleep(0.02)
        old = p.proc
        old.send_signal(signal.SIGTERM)
        assert wait_exit(old, 10) == 0, p.log()[-3000:]
        assert "asking the old process for its clients" not in p.log()  # stopped before
        assert os.path.exists(wpath)
        dsn = "host=%s port=%d dbname=pgstay user=postgres connect_timeout=10" % (d, p.port)
        with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as a:
            assert a.execute("SHOW VERSION").fetchone()  # the new process answers there
        new.send_signal(signal.SIGINT)
        assert wait_exit(new, 10) == 0
        assert not os.path.exists(wpath)
    finally:
        if new and new.poll() is None:
            new.kill()
            new.wait()
        shutil.rmtree(d, ignore_errors=True)
