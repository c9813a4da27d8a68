#!/usr/bin/python3
"""make demo: the article's failover experiment, direct vs pgstay, side by side with the article's figures."""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
from lab import free_port_base  # noqa: E402  (shared with the tests: one way to pick ports)

T_START = time.time()

# The article (seed/000_14eb8cfb54d326d3.txt): Aurora PostgreSQL, manual cross-AZ failover.
ARTICLE = {
    "dns": {
        "label": "article: DNS endpoint",
        "write_gap": "~11 s",
        "errors": "~11 s of errors",
        "broken": "every connection",
        "lost": "16 (ids 1074–1089)",
    },
    "rds": {
        "label": "article: RDS Proxy",
        "write_gap": "~7 s",
        "errors": "in-flight statements only",
        "broken": "0 (kept)",
        "lost": "–",
    },
}


def say(msg):
    print("[%5.1fs] %s" % (time.time() - T_START, msg), flush=True)


def build_dir():
    b = os.environ.get("PGSTAY_BUILD", "build")
    return b if os.path.isabs(b) else os.path.join(REPO, b)


class StepFailed(Exception):
    pass


class Demo:
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="pgstay-demo-")
        os.chmod(self.tmp, 0o755)  # the servers run as an unprivileged user
        self.lab = os.path.join(self.tmp, "lab")
        self.out = os.path.abspath(args.out)
        self.proc = None
        self.results = {}

    # -- steps ---------------------------------------------------------------------------------

    def bench(self, event, outdir, duration, at, delay, targets):
        argv = [os.path.join(build_dir(), "pgstay-bench"), "failover",
                "--lab", self.lab, "--port", str(free_port_base()),
                "--event", event, "--duration", str(duration), "--at", str(at),
                "--delay", str(delay), "--clients", "4", "--interval", "10",
                "--target", ",".join(targets), "--out", outdir]
        say("$ " + " ".join(os.path.relpath(a, REPO) if a.startswith(REPO) else a for a in argv))
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        # progress lines come on stderr; the table on stdout (read after, it is small)
        for line in self.proc.stderr:
            say("  " + line.rstrip())
        table = self.proc.stdout.read()
        rc = self.proc.wait()
        self.proc = None
        if rc != 0:
            raise StepFailed("pgstay-bench failover --event %s exited %d" % (event, rc))
        with open(os.path.join(outdir, "report.json")) as f:
            rep = json.load(f)
        return table, rep

    def run(self):
        a = self.args
        quick = a.quick
        if os.path.exists(self.out):
            shutil.rmtree(self.out)
        os.makedirs(self.out)
        targets = ["direct", "pgstay-session", "pgstay-transaction"]
        dur, at = (5, 1.5) if quick else (10, 3)
        say("1/2 crash of the primary, promotion 1 s later (%d s per target, 3 targets)" % dur)
        t1, crash = self.bench("crash", os.path.join(self.out, "crash"), dur, at, 1000, targets)
        self.results["crash"] = crash
        say("2/2 planned switchover (%d s per target)" % (4 if quick else 8))
        t2, sw = self.bench("switchover", os.path.join(self.out, "switchover"),
                            4 if quick else 8, 1.5 if quick else 3, 0, targets)
        self.results["switchover"] = sw
        summary = self.summary()
        with open(os.path.join(self.out, "demo.md"), "w") as f:
            f.write(summary + "\n\n" + t1 + "\n" + t2)
        print()
        print(summary)
        print()
        print("Full reports (tables, timelines per client, the lab's and pgstay's logs):")
        for ev in ("crash", "switchover"):
            print("  " + os.path.join(self.out, ev, "report.html"))
        print("  " + os.path.join(self.out, "demo.md"))
        return self.checks()

    # -- the comparison ------------------------------------------------------------------------

    @staticmethod
    def ms(v):
        if v is None:
            return "–"
        return "%.2f s" % (v / 1000.0) if v >= 1000 else "%.0f ms" % v

    def column(self, t):
        if not t["available"]:
            return {k: "n/a" for k in ("write_gap", "errors", "broken", "lost", "ran", "p2a",
                                       "p2w", "floor")}
        m = t["median"]
        ph = t["runs"][0]["phases_ms"]
        floor = None
        if ph.get("crash") is not None and ph.get("writable") is not None:
            floor = ph["writable"] - ph["crash"]
        p2w = None
        if ph.get("promoted") is not None and ph.get("writable") is not None:
            p2w = ph["writable"] - ph["promoted"]
        err = "%d" % m["errors"]
        if m["errors"]:
            err += " over %s" % self.ms(m["error_window_ms"])
        return {
            "write_gap": self.ms(m["write_gap_ms"]),
            "errors": err,
            "broken": str(m["broken_persistent"]),
            "lost": str(m["lost"]),
            "ran": str(m["ran_despite_error"]),
            "p2a": self.ms(m["promotion_to_first_ack_ms"]),
            "p2w": self.ms(p2w),
            "floor": self.ms(floor),
        }

    def table(self, rep, with_article):
        rows = [("write gap (longest time without an acknowledged insert)", "write_gap"),
                ("errors seen by clients", "errors"),
                ("pooled connections broken", "broken"),
                ("acknowledged inserts lost", "lost"),
                ("inserts that ran although the client got an error", "ran"),
                ("promotion → first acknowledged insert", "p2a"),
                # The floor of the row above for any client: the lab's own commit, sent on a
                # session it holds the moment it sees the promotion, waits for the synchronous
                # standby to follow the new timeline like every other commit.
                ("for scale: promotion → the lab's commit sent at that instant acknowledged "
                 "(the synchronous standby's share), run 1", "p2w"),
                ("for scale: the lab's crash (switchover start) → new primary writable, run 1", "floor")]
        cols = []
        if with_article:
            for k in ("dns", "rds"):
                cols.append((ARTICLE[k]["label"], ARTICLE[k]))
        for t in rep["targets"]:
            name = {"direct": "direct (libpq multi-host)"}.get(t["name"], t["name"])
            cols.append((name, self.column(t)))
        lines = ["| | " + " | ".join(c[0] for c in cols) + " |",
                 "|---|" + "---:|" * len(cols)]
        for label, key in rows:
            lines.append("| %s | " % label + " | ".join(c[1].get(key, "") for c in cols) + " |")
        return "\n".join(lines)

    def summary(self):
        c, s = self.results["crash"], self.results["switchover"]
        out = ["## pgstay demo: the article's failover experiment, locally",
               "",
               "4 pooled clients + 1 client reconnecting for every insert, one insert every 10 ms "
               "each; a 3-node synchronous cluster from pgstay-lab, fresh for every target.",
               "",
               "### Crash of the primary, promotion 1 s later",
               "",
               self.table(c, True),
               "",
               "The article's columns are an Aurora cross-AZ failover (console: ~25 s), for "
               "reference: same experiment, not the same failover.",
               "",
               "### Planned switchover (pgstay targets: through pgstay's PAUSE/RESUME)",
               "",
               self.table(s, False)]
        for t in c["targets"] + s["targets"]:
            if not t["available"]:
                out += ["", "%s not available: %s" % (t["name"], t["why"].strip()[:300])]
        return "\n".join(out)

    def checks(self):
        """The design's targets for pgstay; only a lost acknowledged write fails the demo."""
        ok = True
        print()
        print("Checks against the design's targets (pgstay targets):")
        for ev, rep in self.results.items():
            for t in rep["targets"]:
                if not t["name"].startswith("pgstay") or not t["available"]:
                    continue
                m = t["median"]
                items = [("acknowledged inserts lost = 0", m["lost"] == 0, True),
                         ("pooled connections broken = 0", m["broken_persistent"] == 0, False)]
                if ev == "crash":
                    items.append(("write gap ≤ promotion delay + 0.2 s (%s)" % self.ms(
                        m["write_gap_ms"]), m["write_gap_ms"] <= 1200, False))
                    # the lab's own promotion varies by ~0.3 s; this isolates pgstay's share
                    ph = t["runs"][0]["phases_ms"]
                    if ph.get("crash") is not None and ph.get("writable") is not None:
                        fl = ph["writable"] - ph["crash"]
                        items.append(("write gap ≤ the lab's crash→writable + 50 ms (%s vs %s)" % (
                            self.ms(t["runs"][0]["metrics"]["write_gap_ms"]), self.ms(fl)),
                            t["runs"][0]["metrics"]["write_gap_ms"] <= fl + 50, False))
                else:
                    items.append(("no errors during the switchover (%d)" % m["errors"],
                                  m["errors"] == 0, False))
                # Issue 10: the new writer used within 10 ms of its promotion. What no client can
                # beat (a commit sent at the promotion, acknowledged once the synchronous standby
                # follows) is taken out: that is the lab's, the rest is pgstay's.
                ph = t["runs"][0]["phases_ms"]
                p2a = t["runs"][0]["metrics"]["promotion_to_first_ack_ms"]
                if ph.get("promoted") is not None and ph.get("writable") is not None and \
                        p2a is not None:
                    p2w = ph["writable"] - ph["promoted"]
                    items.append(("promotion → first ack ≤ the lab's promotion → writable + 10 ms "
                                  "(%s vs %s)" % (self.ms(p2a), self.ms(p2w)), p2a <= p2w + 10,
                                  False))
                for label, good, hard in items:
                    print("  %-4s %s %s: %s" % ("ok" if good else "MISS", ev, t["name"], label))
                    if hard and not good:
                        ok = False
        return ok

    # -- cleanup -------------------------------------------------------------------------------

    def cleanup(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # pgstay-bench stops its pgstay first
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # a pgstay left behind by a killed bench: its pid is in the run's work folder
        for root, _dirs, files in os.walk(self.out):
            if "pgstay.pid" in files:
                try:
                    pid = int(open(os.path.join(root, "pgstay.pid")).read())
                    with open("/proc/%d/cmdline" % pid, "rb") as f:
                        if b"pgstay" in f.read():
                            os.kill(pid, signal.SIGINT)
                except (OSError, ValueError):
                    pass
        if os.path.exists(os.path.join(self.lab, "lab.conf")):
            say("cleanup: destroying the cluster")
            subprocess.run([os.path.join(build_dir(), "pgstay-lab"), "--dir", self.lab,
                            "destroy"], capture_output=True, timeout=60)
        shutil.rmtree(self.tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="shorter runs (CI)")
    ap.add_argument("--out", default=os.path.join(build_dir(), "demo-report"),
                    help="report folder (default build/demo-report)")
    args = ap.parse_args()
    for b in ("pgstay", "pgstay-lab", "pgstay-bench"):
        if not os.access(os.path.join(build_dir(), b), os.X_OK):
            print("demo: %s/%s is missing: run make first" % (build_dir(), b), file=sys.stderr)
            return 1
    # SIGTERM (e.g. from CI) cleans up like Ctrl-C
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    demo = Demo(args)
    rc = 1
    try:
        rc = 0 if demo.run() else 1
        if rc:
            print("demo: FAILED: a pgstay target lost acknowledged inserts", file=sys.stderr)
    except StepFailed as e:
        print("demo: FAILED: %s" % e, file=sys.stderr)
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        rc = 130
    finally:
        demo.cleanup()
    say("done")
    return rc


if __name__ == "__main__":
    sys.exit(main())
