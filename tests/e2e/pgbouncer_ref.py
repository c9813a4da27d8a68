"""A live PgBouncer 1.18 (Debian's /usr/sbin/pgbouncer) in front of a lab, as the reference the
parity tests compare pgstay with: the same scenario is run against both and what a client
receives (SHOW columns, ErrorResponse severity, SQLSTATE, message) is compared."""
import os
import shutil
import subprocess
import tempfile
import time

import psycopg

from conftest import free_port

PGBOUNCER = "/usr/sbin/pgbouncer"


class PgBouncer:
    def __init__(self, lab, **settings):
        # PgBouncer refuses to run as root: it drops to nobody, so its files must be readable.
        self.dir = tempfile.mkdtemp(prefix="pgb-", dir="/tmp")
        os.chmod(self.dir, 0o777)
        self.lab = lab
        self.port = free_port()
        self.settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": self.port,
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": os.path.join(self.dir, "userlist.txt"),
            "admin_users": "postgres",
            "pool_mode": "session",
            "default_pool_size": 10,
            "logfile": os.path.join(self.dir, "pgbouncer.log"),
        }
        self.settings.update(settings)
        self.proc = None

    def start(self):
        conf = os.path.join(self.dir, "pgbouncer.ini")
        with open(conf, "w") as f:
            f.write("[databases]\n* = host=127.0.0.1 port=%d\n[pgbouncer]\n"
                    % self.lab.node_port(1))
            for k, v in self.settings.items():
                f.write("%s = %s\n" % (k, v))
        with open(self.settings["auth_file"], "w") as f:
            f.write('"postgres" "postgres"\n"app" "app"\n')
        for name in os.listdir(self.dir):
            os.chmod(os.path.join(self.dir, name), 0o666)
        args = [PGBOUNCER, conf]
        if os.geteuid() == 0:
            args[1:1] = ["-u", "nobody"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                psycopg.connect(self.dsn(dbname="pgbouncer"), autocommit=True).close()
                return self
            except psycopg.Error:
                time.sleep(0.1)
        raise RuntimeError("pgbouncer did not start: " + self.log())

    def dsn(self, dbname="postgres", user="postgres", **extra):
        d = "host=127.0.0.1 port=%d dbname=%s user=%s password=%s" % (self.port, dbname, user,
                                                                         user)
        return d + "".join(" %s=%s" % kv for kv in extra.items())

    def connect(self, **kw):
        dsnkw = {k: kw.pop(k) for k in list(kw) if k in ("dbname", "user")}
        return psycopg.connect(self.dsn(**dsnkw), autocommit=kw.pop("autocommit", True), **kw)

    def log(self):
        try:
            with open(self.settings["logfile"], errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
