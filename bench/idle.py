#!/usr/bin/python3
"""Memory per idle client alone, PgBouncer and pgstay side by side (make bench's idle row
without the throughput rows before it): each proxy fresh, pool_mode transaction, pool 8, N
clients logged in with raw startup packets, (RSS with them - RSS without) / N.

    /usr/bin/python3 bench/idle.py [--idle 10000] [--runs 3]

Each run starts both proxies again (a second round in one process reuses the memory the first
freed, so it would read as ~0). Prints one line per run and the medians."""
import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402  (bench/run.py: the lab, the proxies, idle_clients)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    fds = R.raise_nofile(a.idle + 1000)
    if fds < a.idle + 500:
        a.idle = max(100, fds - 500)
    b = R.Bench(argparse.Namespace(scale=1))
    got = {"pgbouncer": [], "pgstay": []}
    try:
        b.setup()
        for k in range(a.runs):
            for cls in (R.PgBouncer, R.Pgstay):
                p = b.start(cls, "transaction", 8)
                if not p:
                    print("%s did not start: %s" % (cls.name, b.notes[-1]), file=sys.stderr)
                    continue
                try:
                    v = R.idle_clients(p, a.idle)
                finally:
                    p.stop()
                got[cls.name].append(v["per_client_kb"])
                print("run %d %-9s %.3f kB per client (RSS %d -> %d kB, %d clients)" % (
                    k + 1, cls.name, v["per_client_kb"], v["rss0_kb"], v["rss_kb"],
                    v["clients"]), flush=True)
    finally:
        for p in b.proxies:
            p.stop()
        b.lab.destroy()
        shutil.rmtree(b.tmp, ignore_errors=True)
    for name, vals in got.items():
        if vals:
            print("median %-9s %.3f kB per client" % (name, R.med(vals)))
    if got["pgbouncer"] and got["pgstay"]:
        print("pgstay / PgBouncer: %.2f" % (R.med(got["pgstay"]) / R.med(got["pgbouncer"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
