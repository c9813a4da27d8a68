#!/usr/bin/python3
"""User-space instructions per pgbench -S transaction, pgstay and PgBouncer, counted by callgrind.

CPU time and TPS move with whatever else runs on the machine; the instructions a proxy executes
per transaction do not, so this is the measure to compare code changes on a busy machine. Each
proxy runs under valgrind --tool=callgrind in front of the one-node lab (same pool mode and
size); pgbench warms it up, the counters are dumped (callgrind_control -d), the measured run
follows, and the proxy's exit writes the counts of that run alone. Kernel work (the sends and
receives, most of a proxy's CPU: bench/results/profile-*.md) is not counted.

  bench/callgrind.py [--clients 1,32] [--transactions 20000] [--prepared] [--top 12]
"""
import argparse
import datetime
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)
import run  # noqa: E402  (the lab, the proxies, pgbench)

VALGRIND = shutil.which("valgrind") or "/usr/bin/valgrind"


def wrapper(path, real, out):
    """An executable that runs real under callgrind (and plain for --version)."""
    with open(path, "w") as f:
        f.write('#!/bin/sh\n[ "$1" = "--version" ] && exec %s "$@"\n'
                'exec %s --tool=callgrind --callgrind-out-file=%s %s "$@"\n'
                % (real, VALGRIND, out, real))
    os.chmod(path, 0o755)


def totals(path):
    """Instructions in one callgrind output file, and the top functions by self cost."""
    r = subprocess.run(["callgrind_annotate", "--inclusive=no", path], capture_output=True,
                       text=True)
    total, top = None, []
    for line in r.stdout.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+PROGRAM TOTALS", line)
        if m:
            total = int(m.group(1).replace(",", ""))
            continue
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S+)", line)
        if m and total:
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


def measure(kind, tmp, node_port, clients, tx, prepared, pool):
    """Instructions per transaction of one proxy (kind: pgstay | pgbouncer)."""
    d = tempfile.mkdtemp(dir=tmp)
    os.chmod(d, 0o777)  # PgBouncer runs as postgres and writes its counts here
    out = os.path.join(d, "callgrind.out")
    if kind == "pgstay":
        bdir = os.path.join(d, "build")
        os.makedirs(bdir)
        wrapper(os.path.join(bdir, "pgstay"), os.path.join(run.build_dir(), "pgstay"), out)
        os.environ["PGSTAY_BUILD"], saved = bdir, os.environ.get("PGSTAY_BUILD")
        proxy = run.Pgstay(tmp, node_port, "transaction", pool)
    else:
        w = os.path.join(d, "pgbouncer")
        wrapper(w, run.PGBOUNCER, out)
        run.PGBOUNCER, saved = w, run.PGBOUNCER
        proxy = run.PgBouncer(tmp, node_port, "transaction", pool)
    try:
        proxy.start()
        # pgstay waits for its writer in start(); PgBouncer connects at the first client
        pgbench_tx(proxy.port, clients, max(10, 320 // clients), prepared)
        subprocess.run(["callgrind_control", "-d", str(proxy.pid)], capture_output=True,
                       timeout=60)
        time.sleep(1)
        done = pgbench_tx(proxy.port, clients, tx, prepared)
        proxy.stop()
    finally:
        proxy.stop()
        if kind == "pgstay":
            if saved is None:
                del os.environ["PGSTAY_BUILD"]
            else:
                os.environ["PGSTAY_BUILD"] = saved
        else:
            run.PGBOUNCER = saved
    # the last file written holds what followed the dump: the measured run and the exit
    files = sorted(glob.glob(out + "*"), key=os.path.getmtime)
    total, top = totals(files[-1])
    return total / done, [(n / done, f) for n, f in top]


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
             "valgrind --tool=callgrind, counted over the measured run only (after a warm-up); "
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
