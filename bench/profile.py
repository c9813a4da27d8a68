#!/usr/bin/python3
"""Where the time goes: syscalls per pgbench -S transaction and perf profiles of pgstay and PgBouncer.

Starts the one-node lab, PgBouncer and pgstay in the same pool mode (transaction, pool 8 by
default) and, for each proxy and protocol, runs pgbench -S while
  - counting the proxy's syscalls (perf stat on the syscalls:sys_enter_* tracepoints, which
    does not slow the proxy, and/or strace -c -f, which does), reported per transaction;
  - separately, sampling it with perf record -g, reported as the top symbols by self time.
Writes bench/results/profile-<label>.md and prints it.
"""
import argparse
import datetime
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)
import run  # noqa: E402  (bench/run.py: the lab, the proxies, pgbench)


def stop_tool(p, timeout):
    """End a measuring tool (perf, strace) the way it writes its results: SIGINT, then kill."""
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
from run import (PGBIN, REPO, Lab, PgBouncer, Pgstay, build_dir, free_port_base,  # noqa: E402
                 machine, pgbench, pgbouncer_prepared, raise_nofile, say, setup_lab)

# Counted one by one with perf stat (the rest is "other" = raw_syscalls:sys_enter − these).
# Opening all ~350 syscalls:sys_enter_* tracepoints takes seconds; these cover an event loop.
SYSCALLS = ["read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg",
            "recvmmsg", "sendmmsg", "epoll_wait", "epoll_pwait", "epoll_pwait2", "epoll_ctl",
            "poll", "ppoll", "select", "pselect6", "ioctl", "accept", "accept4", "connect",
            "socket", "close", "shutdown", "setsockopt", "getsockopt", "getsockname",
            "getpeername", "fcntl", "futex", "clock_gettime", "gettimeofday", "clock_nanosleep",
            "nanosleep", "brk", "mmap", "munmap", "mremap", "madvise", "rt_sigprocmask",
            "rt_sigaction", "timerfd_settime", "eventfd2", "splice", "io_uring_enter",
            "sched_yield", "getpid", "gettid", "openat", "lseek", "getrandom", "tgkill", "kill"]
PERF = shutil.which("perf") or "/usr/bin/perf"
STRACE = shutil.which("strace") or "/usr/bin/strace"
_probe = {}


def _tracepoints():
    for d in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        try:
            with open(os.path.join(d, "available_events")) as f:
                return {line.strip() for line in f}
        except OSError:
            continue
    return set()


def perf_stat_ok():
    """(True, events) if perf stat can count syscall tracepoints here, else (False, why)."""
    if "stat" not in _probe:
        have = _tracepoints()
        if "raw_syscalls:sys_enter" not in have:
            _probe["stat"] = (False, "no raw_syscalls:sys_enter tracepoint (tracefs not mounted "
                              "or kernel without FTRACE_SYSCALLS)")
        else:
            ev = ["raw_syscalls:sys_enter"] + ["syscalls:sys_enter_" + s for s in SYSCALLS
                                               if "syscalls:sys_enter_" + s in have]
            try:
                r = subprocess.run([PERF, "stat", "-x,", "-e", "raw_syscalls:sys_enter", "--",
                                    "true"], capture_output=True, text=True, timeout=30)
                ok = re.search(r"^\d+,,raw_syscalls:sys_enter", r.stderr, re.M)
                _probe["stat"] = (True, ev) if ok else (False, "perf stat failed: %s" %
                                                        r.stderr.strip()[-300:])
            except (OSError, subprocess.TimeoutExpired) as e:
                _probe["stat"] = (False, "perf stat failed: %s" % e)
    return _probe["stat"]


def perf_record_ok():
    if "record" not in _probe:
        d = tempfile.mkdtemp(prefix="pgstay-perf-")
        try:
            r = subprocess.run([PERF, "record", "-g", "-o", os.path.join(d, "p.data"), "--",
                                "true"], capture_output=True, text=True, timeout=30)
            _probe["record"] = (r.returncode == 0, r.stderr.strip()[-300:])
        except (OSError, subprocess.TimeoutExpired) as e:
            _probe["record"] = (False, str(e))
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return _probe["record"]


def _read_ack(fd, timeout):
    r, _, _ = select.select([fd], [], [], timeout)
    return bool(r) and b"ack" in os.read(fd, 64)


def _perf_stat_count(proxy, events, run_load):
    """perf stat on the proxy's syscall tracepoints, enabled only while run_load() runs."""
    d = tempfile.mkdtemp(prefix="pgstay-pstat-")
    ctl, ack, out = (os.path.join(d, n) for n in ("ctl", "ack", "out"))
    os.mkfifo(ctl)
    os.mkfifo(ack)
    # O_RDWR: neither open blocks, whatever perf does
    cfd, afd = os.open(ctl, os.O_RDWR), os.open(ack, os.O_RDWR)
    p = subprocess.Popen([PERF, "stat", "-x,", "-e", ",".join(events), "-p", str(proxy.pid),
                          "-D", "-1", "--control", "fifo:%s,%s" % (ctl, ack), "-o", out],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        os.write(cfd, b"enable\n")
        if not _read_ack(afd, 60):
            raise RuntimeError("perf stat did not start: %s" % (
                p.stderr.read().decode(errors="replace")[-300:] if p.poll() is not None else
                "no ack"))
        r = run_load()
        os.write(cfd, b"disable\n")
        _read_ack(afd, 30)
    finally:
        stop_tool(p, 30)
        os.close(cfd)
        os.close(afd)
    counts, total = {}, None
    with open(out) as f:
        for line in f:
            fs = line.strip().split(",")
            if len(fs) < 3 or not fs[0].isdigit():
                continue
            if fs[2] == "raw_syscalls:sys_enter":
                total = int(fs[0])
            elif fs[2].startswith("syscalls:sys_enter_") and int(fs[0]):
                counts[fs[2][len("syscalls:sys_enter_"):]] = int(fs[0])
    shutil.rmtree(d, ignore_errors=True)
    if total is None:
        raise RuntimeError("perf stat counted nothing")
    other = total - sum(counts.values())
    if other > 0:
        counts["(other)"] = other
    return r, counts, total


def _strace_count(proxy, run_load):
    """strace -c -f attached to the proxy while run_load() runs (slows the proxy down)."""
    d = tempfile.mkdtemp(prefix="pgstay-strace-")
    out, err = os.path.join(d, "out"), os.path.join(d, "err")
    with open(err, "w") as ef:
        p = subprocess.Popen([STRACE, "-c", "-f", "-p", str(proxy.pid), "-o", out],
                             stdout=subprocess.DEVNULL, stderr=ef)
    try:
        deadline = time.time() + 15
        while time.time() < deadline:
            with open(err) as f:
                if "attached" in f.read():
                    break
            if p.poll() is not None:
                raise RuntimeError("strace exited: %s" % open(err).read()[-300:])
            time.sleep(0.05)
        time.sleep(0.2)  # all threads attached
        r = run_load()
    finally:
        stop_tool(p, 30)
    counts, total = {}, None
    with open(out) as f:
        for line in f:
            fs = line.split()
            if len(fs) < 5 or not re.match(r"^[\d.]+$", fs[0]):
                continue
            if fs[-1] == "total":
                total = int(fs[3])
            else:
                counts[fs[-1]] = int(fs[3])
    shutil.rmtree(d, ignore_errors=True)
    if total is None:
        raise RuntimeError("strace printed no summary")
    return r, counts, total


def count_syscalls(proxy, clients=32, seconds=5, prepared=False, method="auto"):
    """Run pgbench -S through proxy while counting its syscalls; per-transaction numbers.

    method: "perf" (perf stat on syscall tracepoints), "strace" (strace -c -f) or "auto"
    (perf if it works here, else strace). Returns a dict; "error" set if it failed."""
    if method == "auto":
        method = "perf" if perf_stat_ok()[0] else "strace"
    res = {"method": method, "clients": clients, "seconds": seconds,
           "protocol": "prepared" if prepared else "simple"}

    def load():
        return pgbench(proxy.port, clients, seconds, prepared)
    try:
        if method == "perf":
            ok, ev = perf_stat_ok()
            if not ok:
                raise RuntimeError(ev)
            r, counts, total = _perf_stat_count(proxy, ev, load)
        else:
            r, counts, total = _strace_count(proxy, load)
    except (OSError, RuntimeError) as e:
        res["error"] = str(e)
        return res
    if "error" in r or not r.get("tx"):
        res["error"] = "pgbench: %s" % r.get("error", "no transactions")
        return res
    tx = r["tx"]
    res.update({"tx": tx, "tps": r["tps"], "total": total, "counts": counts,
                "total_per_tx": total / float(tx),
                "per_tx": {k: v / float(tx) for k, v in counts.items()}})
    return res


def perf_profile(proxy, clients=32, seconds=5, prepared=False, top=25, keep=None):
    """perf record -g on the proxy during a pgbench -S run; the top symbols by self time."""
    ok, why = perf_record_ok()
    if not ok:
        return {"error": "perf record does not work here: %s" % why}
    d = tempfile.mkdtemp(prefix="pgstay-prec-")
    data = os.path.join(d, "perf.data")
    p = subprocess.Popen([PERF, "record", "-g", "-p", str(proxy.pid), "-o", data],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)
        if p.poll() is not None:
            return {"error": "perf record exited: %s" %
                    p.stderr.read().decode(errors="replace")[-300:]}
        r = pgbench(proxy.port, clients, seconds, prepared)
    finally:
        stop_tool(p, 60)
    rep = subprocess.run([PERF, "report", "-i", data, "--stdio", "--no-children", "--sort",
                          "dso,sym", "-g", "none", "--percent-limit", "0"],
                         capture_output=True, text=True, timeout=300)
    if keep:
        with open(keep, "w") as f:
            f.write(rep.stdout)
    samples = re.search(r"# Samples: (\S+)\s+of event '([^']+)'", rep.stdout)
    rows = []
    for line in rep.stdout.splitlines():
        m = re.match(r"^\s+([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*?)\s*$", line)
        if m:
            rows.append((float(m.group(1)), m.group(2), m.group(3), m.group(4)))
    shutil.rmtree(d, ignore_errors=True)
    if not rows:
        return {"error": "perf report found no samples: %s" % (rep.stderr.strip()[-300:])}
    rows.sort(key=lambda x: -x[0])
    kernel = sum(x[0] for x in rows if x[2] == "k")
    return {"samples": samples.group(1) if samples else "?",
            "event": samples.group(2) if samples else "?", "kernel_pct": kernel,
            "user_pct": sum(x[0] for x in rows) - kernel, "top": rows[:top],
            "top_user": [x for x in rows if x[2] != "k"][:15],
            "tps": r.get("tps"), "tx": r.get("tx"), "pgbench_error": r.get("error")}


# ---- the run -----------------------------------------------------------------------------------

def syscall_table(by_proxy, min_per_tx=0.01):
    """Markdown table: syscall | PgBouncer /tx | pgstay /tx | ratio, from count_syscalls()."""
    b, s = by_proxy.get("pgbouncer") or {}, by_proxy.get("pgstay") or {}
    bp, sp = b.get("per_tx", {}), s.get("per_tx", {})
    names = sorted(set(bp) | set(sp), key=lambda k: (k == "(other)", -(bp.get(k, 0) +
                                                                       sp.get(k, 0)), k))

    def f(v):
        return "–" if v is None else "%.2f" % v

    def ratio(x, y):
        return "–" if x is None or not y else "%.2f" % (x / y)
    L = ["| syscall | PgBouncer / tx | pgstay / tx | pgstay / PgBouncer |", "|---|---:|---:|---:|"]
    for n in names:
        if max(bp.get(n, 0), sp.get(n, 0)) < min_per_tx:
            continue
        L.append("| %s | %s | %s | %s |" % (n, f(bp.get(n, 0) if b.get("per_tx") else None),
                                            f(sp.get(n, 0) if s.get("per_tx") else None),
                                            ratio(sp.get(n), bp.get(n))))
    bt, st = b.get("total_per_tx"), s.get("total_per_tx")
    L.append("| **total** | **%s** | **%s** | **%s** |" % (f(bt), f(st), ratio(st, bt)))
    return L


class Profile:
    def __init__(self, args):
        self.a = args
        self.tmp = tempfile.mkdtemp(prefix="pgstay-profile-")
        os.chmod(self.tmp, 0o755)
        self.lab = Lab(os.path.join(self.tmp, "lab"), nodes=1, port=free_port_base(),
                       sync=False, fast=True)
        self.proxies = []
        self.notes = []
        self.cells = []  # (mode, protocol, {proxy: {"syscalls": {method: ...}, "perf": ...}})

    def start(self, cls, mode, pool):
        p = cls(self.tmp, self.lab.node_port(1), mode, pool)
        self.proxies.append(p)
        try:
            return p.start()
        except RuntimeError as e:
            p.stop()
            self.notes.append("%s (pool_mode = %s) did not start: %s %s"
                              % (cls.name, mode, e, p.log_tail(400)))
            return None

    def run(self):
        a = self.a
        setup_lab(self.lab, a.scale)
        for mode in a.modes:
            pool = a.pool if mode == "transaction" else max(a.pool, a.clients + 8)
            proxies = [p for p in (self.start(PgBouncer, mode, pool),
                                   self.start(Pgstay, mode, pool)) if p]
            for proto in ("simple", "prepared"):
                cell = {}
                for p in proxies:
                    if proto == "prepared" and p.name == "pgbouncer" and \
                            not pgbouncer_prepared(mode):
                        self.notes.append(
                            "PgBouncer %s has no protocol-level prepared statements in "
                            "transaction mode (1.21+ has; PGBOUNCER=path picks another): its "
                            "prepared rows are empty" % ".".join(map(str, run.pgbouncer_version())))
                        continue
                    prep = proto == "prepared"
                    c = cell.setdefault(p.name, {"syscalls": {}})
                    for m in a.methods:
                        say("%s %s %s: counting syscalls with %s, %d s"
                            % (mode, proto, p.name, m, a.seconds))
                        r = count_syscalls(p, a.clients, a.seconds, prep, m)
                        c["syscalls"][m] = r
                        say("  " + (r["error"] if "error" in r else
                                    "%.2f syscalls / tx (%d tx, tps %.0f)"
                                    % (r["total_per_tx"], r["tx"], r["tps"])))
                    if a.perf_record:
                        say("%s %s %s: perf record -g, %d s" % (mode, proto, p.name, a.seconds))
                        c["perf"] = perf_profile(p, a.clients, a.seconds, prep, a.top)
                        say("  " + (c["perf"]["error"] if "error" in c["perf"] else
                                    "%s samples" % c["perf"]["samples"]))
                    if p.proc.poll() is not None:
                        self.notes.append("%s died during %s %s: %s"
                                          % (p.name, mode, proto, p.log_tail(300)))
                        break
                if cell:
                    self.cells.append((mode, pool, proto, cell))
            for p in proxies:
                p.stop()

    def cleanup(self):
        for p in self.proxies:
            p.stop()
        try:
            if os.path.exists(os.path.join(self.lab.dir, "lab.conf")):
                self.lab.destroy()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def report(self, mach):
        a = self.a
        L = ["# pgstay profile: %s (%s)" % (a.label,
                                            datetime.datetime.now().strftime("%Y-%m-%d %H:%M")),
             ""]
        L.append("Machine: %s × %s, Linux %s (load average at the end: %s). %s (build %s); %s; "
                 "%s; %s; %s." % (mach["nproc"], mach["model"], mach["kernel"],
                                  mach["loadavg_end"], mach["pgstay"], a.build,
                                  mach["pgbouncer"], mach["postgres"], mach["pgbench"],
                                  mach.get("perf", "perf ?")))
        L.append("")
        L.append("`pgbench -S -c %d -j 2 -T %d` (scale %d, one async node from pgstay-lab "
                 "--fast, all on this machine). Each cell is a separate pgbench run per proxy "
                 "and per measuring tool." % (a.clients, a.seconds, a.scale))
        L.append("")
        L.append("Syscalls are the proxy process's (all threads), from the first to the last "
                 "moment of the pgbench run (its 32 connection setups included), divided by the "
                 "transactions pgbench completed. Methods: **perf** = `perf stat` on the "
                 "`syscalls:sys_enter_*` tracepoints of the syscalls listed in bench/profile.py "
                 "plus `raw_syscalls:sys_enter` for the total (\"(other)\" = the rest); it does "
                 "not slow the proxy, so batching is as in a normal run. **strace** = `strace -c "
                 "-f -p PID`; it stops the proxy at every syscall, so the proxy runs slower "
                 "and may find more bytes or more ready events per call: its counts per "
                 "transaction can differ from undisturbed ones (compare strace with strace), "
                 "and its times are not reported at all.")
        L.append("")
        pvm = any("pvm_irq_enable" in row[3] for _, _, _, cell in self.cells
                  for c in cell.values() for row in c.get("perf", {}).get("top", []))
        L.append("perf record samples the event named with each profile (`cpu-clock` when the "
                 "VM exposes no hardware counters)." + ("" if not pvm else " On this PVM "
                 "guest (kernel symbol `pvm_irq_enable`), time spent with interrupts disabled is "
                 "charged to `pvm_irq_enable` when they are re-enabled: read that row as "
                 "\"kernel work under irq-off\" (syscall and network-stack paths), not as one "
                 "function.") + " The user-space table shows the proxy's own code and "
                 "libraries.")
        for mode, pool, proto, cell in self.cells:
            L.append("")
            L.append("## %s mode, pool %d, %s protocol, %d clients" % (mode, pool, proto,
                                                                        a.clients))
            for m in a.methods:
                by = {n: c["syscalls"].get(m) for n, c in cell.items()}
                L.append("")
                L.append("Syscalls per transaction (%s):" % m)
                L.append("")
                L.extend(syscall_table(by))
                L.append("")
                for n in ("pgbouncer", "pgstay"):
                    r = by.get(n)
                    if r is None:
                        continue
                    L.append("- %s: %s" % (n, r["error"] if "error" in r else
                                           "%d transactions counted (%.0f tps while counted), "
                                           "%d syscalls" % (r["tx"], r["tps"], r["total"])))
            for n in ("pgbouncer", "pgstay"):
                pr = cell.get(n, {}).get("perf")
                if pr is None:
                    continue
                L.append("")
                if "error" in pr:
                    L.append("perf record, %s: not available: %s" % (n, pr["error"]))
                    continue
                L.append("perf record -g, %s: top %d symbols by self time (%s samples of %s; "
                         "user %.1f %%, kernel %.1f %%; %s tps while sampled):"
                         % (n, len(pr["top"]), pr["samples"], pr["event"], pr["user_pct"],
                            pr["kernel_pct"], "%.0f" % pr["tps"] if pr.get("tps") else "?"))
                L.append("")
                L.append("| self % | object | symbol |")
                L.append("|---:|---|---|")
                for pct, dso, kind, sym in pr["top"]:
                    L.append("| %.2f | %s | %s%s |" % (pct, dso, "[k] " if kind == "k" else "",
                                                       sym.replace("|", "\\|")))
                L.append("")
                L.append("%s, user space only (the proxy, libevent, libc; %% of all samples):"
                         % n)
                L.append("")
                L.append("| self % | object | symbol |")
                L.append("|---:|---|---|")
                for pct, dso, kind, sym in pr["top_user"]:
                    L.append("| %.2f | %s | %s |" % (pct, dso, sym.replace("|", "\\|")))
        if self.notes:
            L.append("")
            L.append("Notes:")
            L.append("")
            for n in dict.fromkeys(self.notes):
                L.append("- " + n.replace("\n", " ")[:600])
        L.append("")
        L.append("## Raw numbers")
        L.append("")
        L.append("```json")
        raw = [{"mode": m, "pool": pool, "protocol": pr, "syscalls": {
            n: c["syscalls"] for n, c in cell.items()}} for m, pool, pr, cell in self.cells]
        L.append(json.dumps({"machine": mach, "cells": raw, "args": vars(a)}, indent=1,
                            sort_keys=True))
        L.append("```")
        return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.environ.get("PGSTAY_BUILD", "build"),
                    help="pgstay build dir (env PGSTAY_BUILD; default build)")
    ap.add_argument("--label", default="latest", help="writes bench/results/profile-LABEL.md")
    ap.add_argument("--out", help="write here instead")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--pool", type=int, default=8, help="transaction-mode pool size")
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--session", action="store_true", help="session mode too (pool ≥ clients)")
    ap.add_argument("--method", choices=("auto", "perf", "strace", "both"), default="both",
                    help="syscall counting: perf stat, strace -c, both (default; perf skipped "
                    "if it does not work here) or auto (perf, else strace)")
    ap.add_argument("--no-perf-record", dest="perf_record", action="store_false")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    os.environ["PGSTAY_BUILD"] = a.build
    a.build = build_dir()
    a.modes = ["transaction"] + (["session"] if a.session else [])
    a.out = a.out or os.path.join(REPO, "bench", "results", "profile-%s.md" % a.label)
    pok, why = perf_stat_ok()
    notes = []
    if a.method in ("both", "perf") and not pok:
        notes.append("perf stat cannot count syscalls here (%s): counted with strace only" % why)
    a.methods = {"both": ["perf", "strace"] if pok else ["strace"],
                 "perf": ["perf"] if pok else ["strace"], "strace": ["strace"],
                 "auto": ["perf" if pok else "strace"]}[a.method]
    if a.perf_record and not perf_record_ok()[0]:
        notes.append("perf record does not work here (%s): no profiles" % perf_record_ok()[1])
        a.perf_record = False
    raise_nofile(20000)
    for exe in (os.path.join(a.build, "pgstay"), os.path.join(a.build, "pgstay-lab"),
                run.PGBOUNCER, os.path.join(PGBIN, "pgbench")):
        if not os.access(exe, os.X_OK):
            print("profile: %s is missing" % exe, file=sys.stderr)
            return 1
    if not shutil.which("strace") and "strace" in a.methods:
        print("profile: strace is missing (apt-get install strace)", file=sys.stderr)
        return 1
    pr = Profile(a)
    pr.notes.extend(notes)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        pr.run()
        mach = machine()
        try:
            mach["perf"] = subprocess.run([PERF, "--version"], capture_output=True,
                                          text=True).stdout.strip()
        except OSError:
            pass
        text = pr.report(mach)
    except KeyboardInterrupt:
        print("profile: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  (report, clean up, fail)
        print("profile: FAILED: %s" % e, file=sys.stderr)
        return 1
    finally:
        pr.cleanup()
    run.write_report(a.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
