#!/usr/bin/python3
"""Layer check: fails when an #include in src/*/*.[ch] runs against the layer order (issue 16).

The order, lowest first. A layer may include its own folders and any layer below it, never one
above; what a lower layer needs from above goes through a hook table the program registers at
start (struct topology_hooks, struct session_hooks, w->reload / w->begin_shutdown).

  core      event loop glue, conn, buffers, clock, log, lists, the deferred work queue, struct
            worker, the TLS transport: libevent, OpenSSL and libc only
  proto     the v3 codec, SCRAM, md5, the SQL classifier, and framing (the next message on a
            conn's input, checked once for every reader): no sockets of its own, no loop
  config    the key table and the auth file (the auth file parses SCRAM secrets: proto)
  topology  probes, writer choice, fencing: it reads config and hands the layers above its
            verdicts (writer lost/found, node dropped) through struct topology_hooks, through
            which it also opens, queries and closes its probe connections (served by the
            session layer's src/server/probe.c: server connections without a pool)
  session   client, server, pool (with login backoff and prepared statements): one layer of
            three folders, because a client, its server and their pool meet in every message
            (client <-> server <-> pool call each other on each turn); the session reads the
            topology (which node, its generation, the writer) downward
  failover  hold/resume, PAUSE/RESUME, failover events: it acts on sessions (drops servers on
            the old writer, resumes held clients, opens servers ahead on standbys), so it sits
            above them; the session only asks it "holding? paused?" and bumps its counters,
            through struct session_hooks
  admin     the console: reads every layer below for SHOW, drives failover (PAUSE/RESUME)
  app       the program: creates, wires (the hook tables), reloads and frees a loop

Why not the issue's example order (... backend < topology < failover < session ...): failover's
work is on sessions (see above), so session below failover needs a few one-line hooks (holding,
paused, four counters), while failover below session would need most of its body (which walks
the server and client lists) moved into the session layer. Topology below session needs no
backend layer either: its probe connections are server connections without a pool, which it
opens, queries and closes through topology_hooks' probe_* calls (src/server/probe.c) and holds
only as an opaque pointer, so the login code stays in one place for pools and probes.

Run by `make check-layers` (first step of `make check`). Exit 1, with file:line and the rule,
on any violation not in ALLOWED.
"""
import glob
import os
import re
import sys

LAYERS = [
    ("core", ["core"]),
    ("proto", ["proto"]),
    ("config", ["config"]),
    ("topology", ["topology"]),
    ("session", ["client", "server", "pool"]),
    ("failover", ["failover"]),
    ("admin", ["admin"]),
    ("app", ["app"]),
]

# Known upward includes: debt, each with why. Anything not listed here fails the check. None is
# left: topology's probes, once struct server connections it drove itself, are reached through
# topology_hooks' probe_* calls (src/server/probe.c, wired by src/app/worker.c).
ALLOWED = set()

INCLUDE = re.compile(r'^\s*#\s*include\s+"([A-Za-z0-9_]+)/[^"]+"')


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    os.chdir(root)
    rank = {}
    for i, (name, folders) in enumerate(LAYERS):
        for f in folders:
            rank[f] = (i, name)
    bad = 0
    used = set()
    for path in sorted(glob.glob("src/*/*.[ch]")):
        folder = path.split("/")[1]
        if folder not in rank:
            print(f"{path}: folder src/{folder} is in no layer: add it to LAYERS in tools/layers.py")
            bad += 1
            continue
        me, my_layer = rank[folder]
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                m = INCLUDE.match(line)
                if not m:
                    continue
                target = m.group(1)
                inc = line.split('"')[1]
                if target not in rank:
                    print(f"{path}:{n}: includes {inc}: src/{target} is in no layer")
                    bad += 1
                    continue
                them, their_layer = rank[target]
                if them <= me:
                    continue
                if (path, inc) in ALLOWED:
                    used.add((path, inc))
                    continue
                print(f"{path}:{n}: {my_layer} includes {inc} from {their_layer}, a layer above it "
                      f"(order: {' < '.join(n for n, _ in LAYERS)}); call up through a hook "
                      "table registered by src/app instead")
                bad += 1
    for path, inc in sorted(ALLOWED - used):
        print(f"tools/layers.py: allowed {path} -> {inc} no longer happens: remove it from ALLOWED")
        bad += 1
    if bad:
        print(f"layers: {bad} violation(s)")
        return 1
    if ALLOWED:
        print(f"layers: ok ({len(ALLOWED)} known upward include(s) allowed as debt)")
    else:
        print("layers: ok (no upward include)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
