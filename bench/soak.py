#!/usr/bin/python3
"""Failover soak: many failover events in a row against one pgstay, with writers and idle
clients throughout; counts what the failover contract says must never happen.

  /usr/bin/python3 bench/soak.py                      # 100 events, transaction then session mode
  /usr/bin/python3 bench/soak.py --events 5 --mode transaction --out /tmp/soak.md

A 3-node synchronous cluster from build/pgstay-lab (PGSTAY_BUILD or --build picks another
build, e.g. build-asan). Events cycle through: a crash failover with the old primary rejoined,
a switchover (with pgstay's PAUSE/RESUME), a frozen primary with a standby promoted (the
frozen node then crashed and rejoined), and a writer stall shorter than the fall window
(SIGSTOP for 300 ms). Writers insert (writer, seq) every 10 ms through pgstay into a table
with no key, so a row written twice shows; idle clients stay connected throughout.

Reported, per pool mode: acknowledged writes lost (must be 0: the cluster is synchronous),
rows present twice (0), idle clients dropped (0), errors outside what was in flight (0: a
crash or freeze may fail the one request each writer had in flight, with a connection-loss
SQLSTATE; a switchover or a stall none), and pgstay's open file descriptors and RSS after
warm-up and after the last event.
"""
import argparse
import os
import shutil
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))

import psycopg  # noqa: E402

from conftest import Pgstay  # noqa: E402
from lab import Lab, free_port_base  # noqa: E402

EVENTS = ("crash", "switchover", "freeze", "stall")
# What a request in flight when its server is lost may get (failover contract 3).
IN_FLIGHT_STATES = ("08006", "08007", "57P01", "57P02", "57P03")
STALL_S = 0.3


class Writer(threading.Thread):
    """A client inserting a row every interval, recording what it was told and when."""

    def __init__(self, proxy, wid, interval):
        super().__init__(daemon=True)
        self.conn = psycopg.connect(proxy.dsn(), autocommit=True)
        self.wid = wid
        self.interval = interval
        self.acked = []
        self.errors = []  # (time, seq, sqlstate, message)
        self.broken = False
        self.halt = threading.Event()

    def run(self):
        seq = 0
        while not self.halt.is_set():
            seq += 1
            try:
                self.conn.execute("insert into soak (writer, seq) values (%s, %s)", (self.wid, seq))
                self.acked.append(seq)
            except psycopg.Error as e:
                self.errors.append((time.time(), seq, getattr(e, "sqlstate", None),
                                    str(e).strip()[:200]))
                if self.conn.closed:
                    self.broken = True
                    return
            time.sleep(self.interval)

    def stop(self):
        self.halt.set()
        self.join(30)


def proc_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def proc_rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def roles(lab):
    nodes = lab.status()["nodes"]
    return ([n["name"] for n in nodes if n["role"] == "primary"],
            [n for n in nodes if n["role"] == "standby"])


def lsn_value(lsn):
    hi, lo = lsn.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def wait_healthy(lab, timeout=60):
    """One primary and every other node a running standby (after a rejoin)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        prim, stby = roles(lab)
        if len(prim) == 1 and len(stby) == lab.nodes - 1 and all(n["running"] for n in stby):
            return prim[0]
        time.sleep(0.1)
    raise RuntimeError("the cluster did not become healthy: %s" % lab.status())


def run_event(lab, proxy, kind, say=print):
    primary = wait_healthy(lab)
    say("  %s: %s on %s (%s)" % (time.strftime("%H:%M:%S"), kind, primary,
                                ", ".join("%s %s" % (n["name"], n["role"]) for n in lab.status()["nodes"])))
    if kind == "crash":
        lab.failover(delay_ms=300, rejoin=True)
    elif kind == "switchover":
        lab.switchover(proxy=proxy.dsn(dbname="pgstay"))
    elif kind == "freeze":
        lab.freeze(primary)
        time.sleep(1.0)
        _, stby = roles(lab)
        best = max((n for n in stby if n["lsn"]), key=lambda n: lsn_value(n["lsn"]))["name"]
        lab.promote(best)
        # the frozen node is now a stale primary: crash it and bring it back as a standby
        lab.run("crash", primary, check=False)
        lab.run("thaw", primary, check=False)
        lab.rejoin(primary)
    elif kind == "stall":
        lab.freeze(primary)
        time.sleep(STALL_S)
        lab.thaw(primary)
    wait_healthy(lab)


def wait_progress(writers, timeout=30):
    """Every live writer acknowledged something new: writes flow again."""
    marks = [len(w.acked) for w in writers]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(w.broken or len(w.acked) > m + 2 for w, m in zip(writers, marks)):
            return True
        time.sleep(0.02)
    return False


def soak(lab, tmpdir, mode, events, idle=100, writers=4, interval=0.01, say=print):
    """One pgstay in MODE through EVENTS failover events; returns the figures as a dict."""
    pool = writers + idle + 10 if mode == "session" else 10
    proxy = Pgstay(lab, tmpdir, pool_mode=mode, pool_size=pool, failover_timeout="30s",
                   health_check_timeout="500ms", max_client_conn=idle + writers + 50)
    proxy.start()
    res = {"mode": mode, "events": 0, "by_kind": {}, "lost": 0, "twice": 0, "idle_dropped": 0,
           "writers_broken": 0, "errors_in_flight": 0, "errors_outside": [], "acked": 0,
           "stalled_after": []}
    ws, idles = [], []
    try:
        with proxy.connect() as c:
            c.execute("drop table if exists soak")
            c.execute("create table soak (writer int, seq int)")
        idles = [proxy.connect() for _ in range(idle)]
        for c in idles:
            c.execute("select 1")
        ws = [Writer(proxy, i + 1, interval) for i in range(writers)]
        for w in ws:
            w.start()
        time.sleep(1.0)
        res["fds_before"], res["rss_kb_before"] = proc_fds(proxy.proc.pid), proc_rss_kb(proxy.proc.pid)
        windows = []  # (kind, start, end)
        t_start = time.time()
        for i in range(events):
            kind = EVENTS[i % len(EVENTS)]
            t0 = time.time()
            run_event(lab, proxy, kind, say)
            if not wait_progress(ws):
                res["stalled_after"].append(i)
            windows.append((kind, t0, time.time()))
            res["by_kind"][kind] = res["by_kind"].get(kind, 0) + 1
            res["events"] += 1
            say("%s: event %d/%d %s done in %.1f s" % (mode, i + 1, events, kind, time.time() - t0))
        res["seconds"] = round(time.time() - t_start, 1)
        time.sleep(0.5)
        for w in ws:
            w.stop()
        # idle clients: every one still answers on the connection it opened first
        for c in idles:
            try:
                c.execute("select 1")
            except psycopg.Error:
                res["idle_dropped"] += 1
        res["fds_after"], res["rss_kb_after"] = proc_fds(proxy.proc.pid), proc_rss_kb(proxy.proc.pid)
        # errors: each one must fall in an event that may fail what is in flight, with a
        # connection-loss SQLSTATE, at most one per writer per event
        per = {}
        for w in ws:
            res["writers_broken"] += 1 if w.broken else 0
            for t, seq, state, msg in w.errors:
                # events run back to back: an error belongs to the last event begun before it
                win = [k for k, (kind, a, b) in enumerate(windows) if a <= t + 0.05][-1:]
                ok_kind = win and windows[win[0]][0] in ("crash", "freeze")
                key = (w.wid, win[0] if win else None)
                per[key] = per.get(key, 0) + 1
                if ok_kind and state in IN_FLIGHT_STATES and per[key] == 1:
                    res["errors_in_flight"] += 1
                else:
                    res["errors_outside"].append(
                        (w.wid, seq, state, msg, windows[win[0]][0] if win else "between events",
                         round(t, 3)))
        # what the cluster holds, read from the primary directly
        primary = wait_healthy(lab)
        with psycopg.connect(lab.dsn(primary), autocommit=True) as c:
            rows = c.execute("select writer, seq, count(*) from soak group by 1, 2").fetchall()
        have = {(wr, s): n for wr, s, n in rows}
        for w in ws:
            res["acked"] += len(w.acked)
            res["lost"] += sum(1 for s in w.acked if (w.wid, s) not in have)
        res["twice"] = sum(1 for n in have.values() if n > 1)
        ev = proxy.admin_rows("SHOW FAILOVERS")
        res["failovers_shown"] = len(ev)
        res["windows"] = [(k, round(a, 3), round(b, 3)) for k, a, b in windows]
    finally:
        for w in ws:
            w.halt.set()
        for c in idles:
            c.close()
        proxy.stop()
        if res["errors_outside"] or res["lost"] or res["twice"] or res["idle_dropped"]:
            # keep pgstay's log where the report names it: the run's directory is removed
            res["log"] = "/tmp/pgstay-soak-%s-%d.log" % (mode, os.getpid())
            shutil.copy(proxy.log_path, res["log"])
    return res


def new_lab(base_dir):
    os.chmod(base_dir, 0o755)  # the servers run as an unprivileged user
    lab = Lab(os.path.join(base_dir, "lab"), nodes=3, port=free_port_base(), sync=True,
              auth="scram")
    lab.init()
    return lab


def report(results, args):
    lines = ["# pgstay failover soak: %s" % time.strftime("%Y-%m-%d %H:%M"), "",
             "`/usr/bin/python3 bench/soak.py --events %d --idle %d --writers %d` (build %s): a "
             "3-node synchronous pgstay-lab cluster, writers every 10 ms, idle clients "
             "throughout; events cycle crash+rejoin, switchover, freeze+promote, stall %d ms. "
             "Load average at the end: %s." % (
                 args.events, args.idle, args.writers, os.environ.get("PGSTAY_BUILD", "build"),
                 int(STALL_S * 1000), " ".join("%.2f" % x for x in os.getloadavg())), "",
             "| pool mode | events | s | acked writes | lost | twice | idle dropped | writers broken "
             "| errors in flight | errors outside | fds before → after | RSS kB before → after |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in results:
        lines.append("| %s | %d | %s | %d | %d | %d | %d | %d | %d | %d | %d → %d | %d → %d |" % (
            r["mode"], r["events"], r.get("seconds", "–"), r["acked"], r["lost"], r["twice"],
            r["idle_dropped"], r["writers_broken"], r["errors_in_flight"],
            len(r["errors_outside"]), r["fds_before"], r["fds_after"], r["rss_kb_before"],
            r["rss_kb_after"]))
    for r in results:
        for e in r["errors_outside"][:20]:
            lines.append("- %s: error outside what was in flight: writer %s seq %s %s %s (%s)"
                         % ((r["mode"],) + tuple(e[:3]) + (e[3][:120], e[4])))
        if r["stalled_after"]:
            lines.append("- %s: writes did not resume within 30 s after events %s"
                         % (r["mode"], r["stalled_after"]))
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100)
    ap.add_argument("--mode", choices=("transaction", "session", "both"), default="both")
    ap.add_argument("--idle", type=int, default=100)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--build", help="pgstay build directory (default: PGSTAY_BUILD or build)")
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "soak.md"))
    args = ap.parse_args()
    if args.build:
        os.environ["PGSTAY_BUILD"] = os.path.abspath(args.build)
    modes = ("transaction", "session") if args.mode == "both" else (args.mode,)
    base = tempfile.mkdtemp(prefix="pgstay-soak-", dir="/tmp")
    lab = None
    results = []
    try:
        lab = new_lab(base)
        for m in modes:
            d = os.path.join(base, m)
            os.makedirs(d)
            results.append(soak(lab, d, m, args.events, args.idle, args.writers))
    finally:
        if lab:
            for n in range(1, lab.nodes + 1):
                lab.run("thaw", "n%d" % n, check=False)
            if os.environ.get("SOAK_KEEP"):
                print("kept the cluster in", base)
            else:
                lab.run("destroy", check=False)
        if not os.environ.get("SOAK_KEEP"):
            shutil.rmtree(base, ignore_errors=True)
    text = report(results, args)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)
    bad = any(r["lost"] or r["twice"] or r["idle_dropped"] or r["writers_broken"]
              or r["errors_outside"] or r["stalled_after"] for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
