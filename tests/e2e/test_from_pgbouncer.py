"""pgstay --from-pgbouncer on real-looking pgbouncer.ini files, and PgBouncer's key names in a
pgstay.ini: a PgBouncer user's configuration carries over, and what does not is said."""
import os
import socket
import subprocess
import time

import psycopg

from conftest import assert_no_sanitizer_report, build_dir, free_port


def convert(tmp_path, text, name="pgbouncer.ini"):
    path = tmp_path / name
    path.write_text(text)
    p = subprocess.run([os.path.join(build_dir(), "pgstay"), "--from-pgbouncer", str(path)],
                       capture_output=True, text=True, timeout=10)
    return p.returncode, p.stdout, p.stderr


def settings(out, section="[nodes]"):
    """The [pgstay] keys and the entries of another section (by default [nodes]) of a converted
    file, comments dropped."""
    main, nodes, sec = {}, {}, None
    for line in out.splitlines():
        line = line.split(" ;")[0].strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith("["):
            sec = line
            continue
        k, v = (x.strip() for x in line.split("=", 1))
        if sec == "[pgstay]":
            main[k] = v
        elif sec == section:
            nodes[k] = v
    return main, nodes


def check_config(tmp_path, out):
    path = tmp_path / "pgstay.ini"
    path.write_text(out)
    return subprocess.run([os.path.join(build_dir(), "pgstay"), "--check-config", str(path)],
                          capture_output=True, text=True, timeout=10)


def test_debian_style_file(tmp_path):
    (tmp_path / "userlist.txt").write_text('"app" "secret"\n')
    rc, out, err = convert(tmp_path, """
;; database name = connect string
[databases]
app = host=10.0.0.5 port=5432 dbname=app
reports = host=10.0.0.5 dbname=reports pool_size=5

[pgbouncer]
logfile = /var/log/postgresql/pgbouncer.log
pidfile = /var/run/postgresql/pgbouncer.pid
listen_addr = *
listen_port = 6432
unix_socket_dir = /var/run/postgresql
auth_type = md5
auth_file = %s/userlist.txt
admin_users = postgres
stats_users = stats, postgres
pool_mode = transaction
server_reset_query = DISCARD ALL
ignore_startup_parameters = extra_float_digits
max_client_conn = 500
default_pool_size = 25
reserve_pool_size = 5
server_lifetime = 3600
server_idle_timeout = 600
query_wait_timeout = 0.5
client_tls_sslmode = prefer
dns_max_ttl = 15
""" % tmp_path)
    assert rc == 0, err
    main, nodes = settings(out)
    assert nodes == {"n1": "host=10.0.0.5 port=5432"}
    assert main["pool_size"] == "25" and main["pool_mode"] == "transaction"
    assert main["max_client_conn"] == "500" and main["auth_type"] == "md5"
    assert main["listen_addr"] == "*" and main["listen_port"] == "6432"
    assert main["query_wait_timeout"] == "500ms"  # PgBouncer's fractional seconds
    assert main["server_connect_timeout"] == "15"  # PgBouncer's default, not pgstay's
    assert main["server_lifetime"] == "3600" and main["server_idle_timeout"] == "600"
    assert main["logfile"] and main["pidfile"]
    assert "ignore_startup_parameters" in main
    assert main["client_tls_sslmode"] == "prefer"  # TLS keys carry over since issue 11
    assert main["reserve_pool_size"] == "5"
    assert settings(out, "[databases]")[1] == {"reports": "pool_size=5"}
    assert main["unix_socket_dir"] == "/var/run/postgresql"
    assert main["stats_users"] == "stats, postgres"  # carried over since issue 11
    for key, why in [("dns_max_ttl", "libevent")]:
        assert any(key in line and why in line for line in out.splitlines()
                   if line.startswith(";  ")), (key, out)
        assert key in err
    assert "not carried over" in err
    r = check_config(tmp_path, out)
    assert r.returncode == 0, r.stderr


def test_multi_host_and_second_cluster(tmp_path):
    rc, out, err = convert(tmp_path, """
[databases]
main = host=db1.internal,db2.internal,db3.internal port=5432,5433,5434 dbname=main
other = host=db3.internal,db1.internal,db2.internal port=5434,5432,5433
analytics = host=warehouse port=5432
renamed = host=db1.internal port=5432 dbname=real user=svc password=x
local = host=/var/run/postgresql
%include /etc/pgbouncer/extra.ini

[users]
app = pool_mode=session
svc = pool_size=4 max_user_connections=2

[pgbouncer]
auth_type = trust
pool_mode = statement
listen_addr = 127.0.0.1,10.0.0.1
""")
    assert rc == 0, err
    main, nodes = settings(out)
    assert nodes == {"n1": "host=db1.internal port=5432", "n2": "host=db2.internal port=5433",
                     "n3": "host=db3.internal port=5434"}
    assert main["pool_mode"] == "session"
    assert main["listen_addr"] == "127.0.0.1"
    assert main["unix_socket_dir"] == "/tmp"  # PgBouncer's default, not pgstay's (none)
    dropped = [line for line in out.splitlines() if line.startswith(";  ")]
    text = "\n".join(dropped)
    assert "analytics: its servers are another cluster" in text and "not merged" in text
    # the same servers in another order, or some of them, are the same cluster
    assert "[databases] other" not in text and "renamed: its servers" not in text
    assert "dbname=real: pgstay does not rename databases" in text
    assert "renamed: user=" in text and "renamed: password=" in text
    assert "local: a unix-socket server" in text
    assert "%include" in text and "[users] app: pool_mode=session" in text
    assert "[users] svc: max_user_connections=2" in text
    assert settings(out, "[users]")[1] == {"svc": "pool_size=4"}
    assert "pool_mode = statement" in text and "listen_addr = 127.0.0.1,10.0.0.1" in text
    r = check_config(tmp_path, out)
    assert r.returncode == 0, r.stderr


def test_nothing_to_convert(tmp_path):
    rc, out, err = convert(tmp_path, "[pgbouncer]\nlisten_port = 6432\n")
    assert rc == 1 and "nothing to make [nodes] of" in err and out == ""
    p = subprocess.run([os.path.join(build_dir(), "pgstay"), "--from-pgbouncer",
                        str(tmp_path / "missing.ini")], capture_output=True, text=True)
    assert p.returncode == 1 and "cannot open" in p.stderr


def test_pgbouncer_names_in_pgstay_ini(tmp_path):
    """[pgbouncer] for [pgstay], default_pool_size for pool_size."""
    (tmp_path / "userlist.txt").write_text('"postgres" "postgres"\n')
    r = check_config(tmp_path, "[pgbouncer]\ndefault_pool_size = 7\nauth_type = trust\n"
                                "[nodes]\nn1 = host=127.0.0.1 port=5432\n")
    assert r.returncode == 0, r.stderr


def test_converted_file_runs(cluster1, tmp_path):
    """A pgbouncer.ini in front of the lab, converted, runs as it is: clients and the console
    (as the pgbouncer database) work through it."""
    (tmp_path / "userlist.txt").write_text('"postgres" "postgres"\n"app" "app"\n')
    port = free_port()
    rc, out, err = convert(tmp_path, """
[databases]
* = host=127.0.0.1 port=%d
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
auth_type = md5
auth_file = %s/userlist.txt
admin_users = postgres
pool_mode = transaction
default_pool_size = 3
""" % (cluster1.node_port(1), port, tmp_path))
    assert rc == 0, err
    conf = tmp_path / "pgstay.ini"
    conf.write_text(out)
    log = open(str(tmp_path / "pgstay.log"), "wb")
    proc = subprocess.Popen([os.path.join(build_dir(), "pgstay"), str(conf)], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, \
                    open(str(tmp_path / "pgstay.log")).read()
                time.sleep(0.05)
        dsn = "host=127.0.0.1 port=%d user=postgres password=postgres" % port
        for _ in range(50):
            try:
                with psycopg.connect(dsn + " dbname=postgres", autocommit=True) as c:
                    assert c.execute("select 1").fetchone() == (1,)
                break
            except psycopg.OperationalError:
                time.sleep(0.1)  # the writer is found within the first probes
        with psycopg.connect(dsn + " dbname=pgbouncer", autocommit=True,
                             prepare_threshold=None) as a:
            cfg = {r[0]: r[1] for r in a.execute("SHOW CONFIG").fetchall()}
            assert cfg["pool_size"] == "3" and cfg["pool_mode"] == "transaction"
            assert [r[0] for r in a.execute("SHOW POOLS").fetchall()] == ["postgres"]
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    assert_no_sanitizer_report(open(str(tmp_path / "pgstay.log")).read(), proc.returncode)
