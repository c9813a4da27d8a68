#!/usr/bin/python3
"""make demo-patroni: make demo's experiment against a Patroni cluster (tools/patroni-lab), with
pgstay in topology_source = patroni, reporting the same table.

pgstay-bench drives pgstay-lab (it crashes and promotes nodes itself); with Patroni the leader is
Patroni's to choose, so this runs the experiment's clients here: 4 pooled clients and 1 client
reconnecting for every insert, one insert every 10 ms each, per target; a crash of the leader's
postgres (Patroni fails over: primary_start_timeout = 0), then a planned `patronictl
switchover` scheduled 4 s ahead (pgstay reads the schedule in /cluster and holds new transactions
from 1 s before it: told in time, with no admin PAUSE), then one run at once (not told). One
cluster serves every target; each event starts from a healthy cluster.
"""
import argparse
import importlib.machinery
import importlib.util
import os
import shutil
import sys
import tempfile
import threading
import time

import psycopg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
from conftest import Pgstay  # noqa: E402
from lab import free_port_base  # noqa: E402

_loader = importlib.machinery.SourceFileLoader("patroni_lab", os.path.join(REPO, "tools",
                                                                         "patroni-lab"))
patroni_lab = importlib.util.module_from_spec(importlib.util.spec_from_loader("patroni_lab",
                                                                              _loader))
_loader.exec_module(patroni_lab)

T_START = time.time()
INTERVAL = 0.01


def say(msg):
    print("[%5.1fs] %s" % (time.time() - T_START, msg), flush=True)


class Client(threading.Thread):
    """Inserts (client, seq) every 10 ms through dsn; pooled keeps one connection (and counts it
    broken when it closes, then reconnects), else one connection per insert."""

    def __init__(self, dsn, cid, pooled):
        super().__init__(daemon=True)
        self.dsn, self.cid, self.pooled = dsn, cid, pooled
        self.acked, self.errors, self.broken = [], [], 0  # (t, seq), (t, seq, msg)
        self.halt = threading.Event()
        self.conn = None

    def _connect(self):
        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=2)

    def run(self):
        seq = 0
        while not self.halt.is_set():
            seq += 1
            was_open = False  # set once the insert is sent on a connection that is up
            try:
                if not self.pooled or self.conn is None or self.conn.closed:
                    if self.conn is not None and not self.conn.closed:
                        self.conn.close()
                    self.conn = self._connect()
                was_open = True
                self.conn.execute("insert into demo values (%s, %s)", (self.cid, seq))
                self.acked.append((time.time(), seq))
                if not self.pooled:
                    self.conn.close()
            except psycopg.Error as e:
                self.errors.append((time.time(), seq, str(e).strip().split("\n")[0]))
                # A pooled connection that was open and is no longer: broken once, not again
                # for each failed reconnection.
                if self.pooled and was_open and self.conn is not None and self.conn.closed:
                    self.broken += 1
            time.sleep(INTERVAL)
        if self.conn is not None and not self.conn.closed:
            self.conn.close()


class WritableWatch(threading.Thread):
    """When a node other than `old` first accepts writes (Patroni's promotion done), polled
    directly every 10 ms: the floor no proxy can beat."""

    def __init__(self, lab, old):
        super().__init__(daemon=True)
        self.lab, self.old, self.at = lab, old, None
        self.halt = threading.Event()

    def run(self):
        others = [n for n in self.lab.names() if n != self.old]
        while not self.halt.is_set() and self.at is None:
            for n in others:
                try:
                    with psycopg.connect(self.lab.dsn(n), autocommit=True, connect_timeout=1) as c:
                        if not c.execute("select pg_is_in_recovery()").fetchone()[0]:
                            self.at = time.time()
                            return
                except psycopg.Error:
                    pass
            time.sleep(0.01)


def ms(v):
    if v is None:
        return "–"
    return "%.2f s" % (v / 1000.0) if v >= 1000 else "%.0f ms" % v


def run_target(lab, name, dsn, event, proxy=None, settle=1.5, after=3.0):
    lab.wait_healthy(90)
    old = lab.leader()
    clients = [Client(dsn, k, True) for k in range(1, 5)] + [Client(dsn, 5, False)]
    for c in clients:
        c.start()
    time.sleep(settle)
    watch = WritableWatch(lab, old)
    t_event = time.time()
    if event == "crash":
        watch.start()
        lab.kill_postgres(old)
    elif event == "switchover":
        # Scheduled: Patroni runs it at t_event; /cluster shows it until then.
        # Scheduled 4 s ahead: patronictl takes seconds to start on a loaded machine, and Patroni
        # drops a schedule that reaches it late as stale.
        t_event += 4.0
        lab.switchover(at=4.0)
        watch.start()
    else:
        watch.start()
        threading.Thread(target=lab.switchover, daemon=True).start()
    deadline = time.time() + 30
    while (lab.leader() in (None, old)) and time.time() < deadline:
        time.sleep(0.05)
    new = lab.leader()
    time.sleep(after)
    for c in clients:
        c.halt.set()
    for c in clients:
        c.join(10)
    watch.halt.set()
    watch.join(5)
    with psycopg.connect(lab.dsn(new), autocommit=True) as c:
        rows = set(c.execute("select client, seq from demo").fetchall())
        c.execute("truncate demo")
    acks = sorted(t for c in clients for t, _ in c.acked)
    gap = max((b - a for a, b in zip(acks, acks[1:]) if b >= t_event - 0.5), default=0) * 1000
    errs = sorted(t for c in clients for t, _, _ in c.errors)
    lost = sum(1 for c in clients for _, s in c.acked if (c.cid, s) not in rows)
    ran = sum(1 for c in clients for _, s, _ in c.errors if (c.cid, s) in rows)
    first_ack = next((t for t in acks if watch.at and t >= watch.at), None)
    res = {
        "write_gap": ms(gap),
        "errors": "%d" % len(errs) + (" over %s" % ms((errs[-1] - errs[0]) * 1000) if errs else ""),
        "broken": str(sum(c.broken for c in clients if c.pooled)),
        "lost": str(lost),
        "ran": str(ran),
        "p2a": ms((first_ack - watch.at) * 1000) if first_ack and watch.at else "–",
        "floor": ms((watch.at - t_event) * 1000) if watch.at else "–",
        "gap_ms": gap, "n_errors": len(errs), "n_lost": lost,
    }
    say("  %s, %s: %s -> %s, write gap %s, %s errors, %s lost" % (
        name, event, old, new, res["write_gap"], res["errors"], res["lost"]))
    for c in clients:
        for _, seq, msg in c.errors[:2]:
            say("    client %d insert %d: %s" % (c.cid, seq, msg[:120]))
    return res


ROWS = [("write gap (longest time without an acknowledged insert)", "write_gap"),
        ("errors seen by clients", "errors"),
        ("pooled connections broken", "broken"),
        ("acknowledged inserts lost", "lost"),
        ("inserts that ran although the client got an error", "ran"),
        ("new primary writable → first acknowledged insert", "p2a"),
        ("for scale: the event → Patroni's new primary writable", "floor")]


def table(results):
    cols = list(results.items())
    lines = ["| | " + " | ".join(n for n, _ in cols) + " |", "|---|" + "---:|" * len(cols)]
    for label, key in ROWS:
        lines.append("| %s | " % label + " | ".join(r[key] for _, r in cols) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "build", "demo-patroni.md"))
    args = ap.parse_args()
    missing = [p for p in ("patroni", "etcd") if not shutil.which(p)]
    if missing:
        print("demo-patroni: not installed: %s (tools/deps.sh)" % ", ".join(missing),
              file=sys.stderr)
        return 1
    tmp = tempfile.mkdtemp(prefix="pgstay-demo-patroni-")
    os.chmod(tmp, 0o755)
    lab = patroni_lab.PatroniLab(os.path.join(tmp, "lab"), port=free_port_base())
    proxies = []
    try:
        say("starting etcd and 3 Patroni members")
        lab.start()
        with psycopg.connect(lab.dsn(lab.leader()), autocommit=True) as c:
            c.execute("create table demo (client int, seq int, primary key (client, seq))")
        direct = "host=%s port=%s user=postgres password=postgres dbname=postgres " \
                 "target_session_attrs=read-write" % (
                     ",".join("127.0.0.1" for _ in lab.names()),
                     ",".join(str(lab.node_port(n)) for n in lab.names()))
        targets = [("direct (libpq multi-host)", direct, None)]
        for mode in ("session", "transaction"):
            d = os.path.join(tmp, "pgstay-" + mode)
            os.makedirs(d)
            p = Pgstay(lab, d, topology_source="patroni", patroni_url=lab.api_urls(),
                       pool_mode=mode, pool_size=10, failover_timeout="30s").start()
            proxies.append(p)
            targets.append(("pgstay-%s (patroni)" % mode, p.dsn(), p))
        out = {}
        say("1/3 crash of the leader's postgres (Patroni fails over)")
        out["crash"] = {n: run_target(lab, n, dsn, "crash", proxy) for n, dsn, proxy in targets}
        say("2/3 planned patronictl switchover, scheduled 4 s ahead (pgstay told by /cluster)")
        out["switchover"] = {n: run_target(lab, n, dsn, "switchover", proxy)
                             for n, dsn, proxy in targets}
        say("3/3 planned patronictl switchover at once, pgstay not told")
        out["bare"] = {n: run_target(lab, n, dsn, "bare", None)
                       for n, dsn, proxy in targets if proxy}
        summary = "\n".join([
            "## pgstay demo against Patroni (topology_source = patroni)", "",
            "4 pooled clients + 1 client reconnecting for every insert, one insert every 10 ms "
            "each; one etcd and 3 Patroni members from Debian's packages (tools/patroni-lab: "
            "ttl 5 s, loop_wait 1 s).", "",
            "### Crash of the leader's postgres (Patroni elects and promotes a new leader)", "",
            table(out["crash"]), "",
            "### Planned patronictl switchover, scheduled 4 s ahead (pgstay holds new "
            "transactions from 1 s before it, no admin PAUSE)", "",
            table(out["switchover"]), "",
            "### The same switchover at once, not told (Patroni 3.0.2 has no before_stop hook: "
            "pgstay learns it from its probes and Patroni; a statement in flight when Patroni "
            "stops the old leader may get 57P01)", "",
            table(out["bare"])])
        with open(args.out, "w") as f:
            f.write(summary + "\n")
        print()
        print(summary)
        print()
        print("report: %s" % args.out)
        bad = [n for ev in out.values() for n, r in ev.items()
               if n.startswith("pgstay") and r["n_lost"]]
        if bad:
            print("demo-patroni: FAILED: acknowledged inserts lost through %s" % bad,
                  file=sys.stderr)
            return 1
        return 0
    finally:
        for p in proxies:
            p.stop()
        say("cleanup: destroying the cluster")
        lab.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
