#!/usr/bin/python3
"""A quick side-by-side: pgbench -S through PgBouncer and one or more pgstay builds, runs
alternating so that drift on a shared machine hits all alike; medians of TPS and proxy CPU.

  bench/ab.py NODE_PORT BUILD[,BUILD...] [ROUNDS]
  env: AB_MODE (transaction|session), AB_POOL (8), AB_CLIENTS (32), AB_PREPARED=1, AB_C=1 (-C),
       AB_WORKERS (pgstay's workers: 1 by default; "none" leaves the key out, for builds older
       than it)

NODE_PORT is a running PostgreSQL with pgbench tables (for example a pgstay-lab node after
pgbench -i); make bench does the full, self-contained run.
"""
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402


def main():
    node = int(sys.argv[1])
    builds = sys.argv[2].split(",")
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    clients = int(os.environ.get("AB_CLIENTS", "32"))
    prepared = os.environ.get("AB_PREPARED") == "1"
    connect = os.environ.get("AB_C") == "1"
    mode = os.environ.get("AB_MODE", "transaction")
    pool = int(os.environ.get("AB_POOL", "8"))
    w = os.environ.get("AB_WORKERS", "1")
    workers = None if w == "none" else int(w)
    tmp = tempfile.mkdtemp()
    os.chmod(tmp, 0o755)  # PgBouncer runs as postgres
    proxies = [("pgbouncer", run.PgBouncer(tmp, node, mode, pool).start())]
    for b in builds:
        os.environ["PGSTAY_BUILD"] = b
        p = run.Pgstay(tmp, node, mode, pool, workers=workers)
        p.tmp = os.path.join(tmp, "pgstay-%d" % len(proxies))
        os.makedirs(p.tmp)
        proxies.append((b, p.start()))
    res = {n: [] for n, _ in proxies}
    try:
        for _ in range(rounds):
            for n, p in proxies:
                c0 = run.cpu_ms(p.pid)
                out = run.pgbench(p.port, clients, 5, prepared=prepared, connect=connect)
                c1 = run.cpu_ms(p.pid)
                if "tps" in out:
                    res[n].append((out["tps"], (c1 - c0) * 1000.0 / out["tx"]))
                    print("%-30s tps %.0f cpu %.1f ms/1k tx" % ((n,) + res[n][-1]), flush=True)
                else:
                    print(n, out, flush=True)
    finally:
        for _, p in proxies:
            p.stop()
    for n in res:
        if res[n]:
            print("median %-23s tps %.0f  cpu ms/1k tx %.1f" % (
                n, statistics.median(x[0] for x in res[n]),
                statistics.median(x[1] for x in res[n])))


if __name__ == "__main__":
    main()
