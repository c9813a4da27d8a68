#!/usr/bin/python3
"""User-space instructions per pgbench -S transaction, pgstay and PgBouncer, counted by callgrind.

CPU time and TPS move with whatever else runs on the machine; the instructions a proxy executes
per transaction do not, so this is the measure to compare code changes on a busy machine. Each
proxy runs under valgrind --tool=callgrind in front of the one-node lab (same pool mode and
size), once with the measured transactions and once without; the difference, per transaction,
leaves start-up out. Kernel work (the sends and
receives, most of a proxy's CPU: bench/results/profile-*.md) is not counted.

  bench/callgrind.py [--clients 1,32] [--transactions 20000] [--prepared] [--top 12]
"""
import argparse
import datetime
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)
import run  # noqa: E402  (the lab, the proxies, pgbench)

VALGRIND = shutil.which("valgrind") or "/usr/bin/valgrind"


def totals(path):
    """Instructions in one callgrind output file, and the top functions by self cost."""
    r = subprocess.run(["callgrind_annotate", "--inclusive=no", "--auto=no", path], capture_output=True,
                       text=True)
    total, top, listing = None, [], False
    for line in r.stdout.splitlines():
        if "file:function" in line:
            listing = True  # the per-function table starts after this header
            continue
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+PROGRAM TOTALS", line)
        if m:
            total = int(m.group(1).replace(",", ""))
            continue
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S+)", line)
        if m and total and listing:
            top.append((int(m.group(1).replace(",", "")), m.group(2)))
    return total, top


def pgbench_tx(port, clients, tx, prepared):
    argv = [os.path.join(run.PGBIN, "pgbench"), "-n", "-S", "-t", str(tx), "-c", str(clients),
            "-j", str(min(2, clients)), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
            "-M", "prepared" if prepared else "simple", "postgres"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    m = re.search(r"number of transactions actually processed: (\d+)", p.stdout)
    if p.returncode != 0 or not m:
        raise RuntimeError("pgbench failed: %s" % (p.stdout + p.stderr)[-500:])
    return int(m.group(1))


def start(kind, d, node_port, pool, out):
    """The proxy under callgrind, in transaction mode; (process, port) once it serves."""
    port = run.free_port()
    with open(os.path.join(d, "userlist.txt"), "w") as f:
        f.write('"postgres" "postgres"\n')
    ini = os.path.join(d, "%s.ini" % kind)
    with open(ini, "w") as f:
        if kind == "pgstay":
            f.write("[pgstay]\nlisten_addr = 127.0.0.1\nlisten_port = %d\npool_mode = transaction\n"
                    "pool_size = %d\nmax_client_conn = 1000\nauth_type = trust\n"
                    "auth_file = %s/userlist.txt\nhealth_check_user = postgres\n"
                    "health_check_dbname = postgres\nlog_connections = 0\n"
                    "log_disconnections = 0\n[nodes]\nn1 = host=127.0.0.1 port=%d\n"
                    % (port, pool, d, node_port))
            argv, pre = [os.path.join(run.build_dir(), "pgstay"), ini], None
        else:
            f.write("[databases]\n* = host=127.0.0.1 port=%d\n[pgbouncer]\n"
                    "listen_addr = 127.0.0.1\nlisten_port = %d\nunix_socket_dir =\n"
                    "auth_type = trust\nauth_file = %s/userlist.txt\npool_mode = transaction\n"
                    "default_pool_size = %d\nmax_client_conn = 1000\nlogfile = %s/pgb.log\n"
                    "log_connections = 0\nlog_disconnections = 0\n"
                    "ignore_startup_parameters = extra_float_digits\n"
                    % (node_port, port, d, pool, d))
            if run.pgbouncer_version() >= (1, 21):
                f.write("max_prepared_statements = 200\n")
            pg = pwd.getpwnam("postgres")
            for p in os.listdir(d):
                os.chown(os.path.join(d, p), pg.pw_uid, pg.pw_gid)
            os.chown(d, pg.pw_uid, pg.pw_gid)

            def pre():
                os.setgid(pg.pw_gid)
                os.setuid(pg.pw_uid)
            argv = [run.PGBOUNCER, ini]
    proc = subprocess.Popen([VALGRIND, "--tool=callgrind", "--callgrind-out-file=" + out] + argv,
                            preexec_fn=pre, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=d)
    psql = [os.path.join(run.PGBIN, "psql"), "-XAtq", "-h", "127.0.0.1", "-p", str(port), "-U",
            "postgres", "-d", "postgres", "-c", "select 1"]
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("%s under callgrind exited at start" % kind)
        if subprocess.run(psql, capture_output=True).returncode == 0:
            return proc, port
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("%s under callgrind never served a query" % kind)


def run_once(kind, tmp, node_port, clients, tx, prepared, pool):
    """One proxy process under callgrind: a warm-up, then tx transactions per client (0: none).
    Returns (total instructions, {function: instructions}, transactions done)."""
    d = tempfile.mkdtemp(dir=tmp)
    os.chmod(d, 0o777)
    out = os.path.join(d, "callgrind.out")
    proc, port = start(kind, d, node_port, pool, out)
    done = 0
    try:
        pgbench_tx(port, clients, max(10, 320 // clients), prepared)  # connections, caches
        if tx:
            done = pgbench_tx(port, clients, tx, prepared)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            try:
                # valgrind has been seen to hang as a zombie with a live thread: go on
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
    total, top = totals(out)
    if total is None:
        raise RuntimeError("%s under callgrind left no counts in %s" % (kind, out))
    return total, dict((f, n) for n, f in top), done


def measure(kind, tmp, node_port, clients, tx, prepared, pool):
    """Instructions per transaction of one proxy (kind: pgstay | pgbouncer): a run with the
    measured transactions minus one without them, so start-up (reading auth_file, the first
    connections) is not counted. callgrind_control cannot be used: it needs to ptrace the
    proxy, which this sandbox may not allow."""
    def attempt(n):
        for i in range(3):
            try:
                return run_once(kind, tmp, node_port, clients, n, prepared, pool)
            except RuntimeError as e:
                run.say("%s: %s; again" % (kind, e))
        raise RuntimeError("%s: no counts after 3 attempts" % kind)
    t0, f0, _ = attempt(0)
    t1, f1, done = attempt(tx)
    per = sorted(((n - f0.get(f, 0)) / done, f) for f, n in f1.items())[::-1]
    return (t1 - t0) / done, per


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", default="1,32")
    ap.add_argument("--transactions", type=int, default=20000, help="per client count row")
    ap.add_argument("--pool", type=int, default=8)
    ap.add_argument("--prepared", action="store_true", help="pgbench -M prepared (pgstay only "
                    "when PgBouncer cannot serve it in transaction mode)")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--out", help="also write the report here")
    args = ap.parse_args()
    run.raise_nofile()
    tmp = tempfile.mkdtemp(prefix="pgstay-callgrind-")
    os.chmod(tmp, 0o755)
    lab = run.Lab(os.path.join(tmp, "lab"), nodes=1, port=run.free_port_base(), sync=False,
                  fast=True)
    run.setup_lab(lab, 10)
    node_port = lab.node_port(1)
    lines = ["# User-space instructions per pgbench -S transaction (callgrind), %s" %
             datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "",
             "`bench/callgrind.py %s`: transaction mode, pool %d, %s protocol; the proxy under "
             "valgrind --tool=callgrind; a run without the measured transactions is subtracted (start-up); "
             "kernel work is not counted." % (" ".join(sys.argv[1:]), args.pool,
                                               "prepared" if args.prepared else "simple"), "",
             "| clients | PgBouncer Ir / tx | pgstay Ir / tx | pgstay / PgBouncer |",
             "|---:|---:|---:|---:|"]
    tops = []
    try:
        for clients in [int(c) for c in args.clients.split(",")]:
            tx = max(1, args.transactions // clients)
            kinds = ["pgstay"]
            if not args.prepared or run.pgbouncer_prepared("transaction"):
                kinds.insert(0, "pgbouncer")
            res = {}
            for kind in kinds:
                run.say("%s, %d clients, %d transactions each, under callgrind" %
                        (kind, clients, tx))
                res[kind] = measure(kind, tmp, node_port, clients, tx, args.prepared,
                                    args.pool)
                tops.append((kind, clients, res[kind][1][:args.top]))
            b = res.get("pgbouncer", (None,))[0]
            s = res["pgstay"][0]
            lines.append("| %d | %s | %.0f | %s |" % (clients, "%.0f" % b if b else "–", s,
                                                      "%.2f" % (s / b) if b else "–"))
    finally:
        lab.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    for kind, clients, top in tops:
        lines += ["", "%s, %d clients: top functions by self instructions per transaction" %
                  (kind, clients), "", "| Ir / tx | function |", "|---:|---|"]
        lines += ["| %.0f | `%s` |" % (n, f) for n, f in top]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
