#!/usr/bin/python3
"""Logins for users that do not exist cost pgstay nothing (issue 11): pgbench -S through pgstay
(auth_type = scram-sha-256) alone, then while another process makes SCRAM logins for unknown
users as fast as it can (each answered with a mock salt and iteration count, then 28P01), runs
alternating; medians of TPS and of the proxy's CPU per 1,000 transactions. A benchmark: it
reports, it does not pass or fail.

  /usr/bin/python3 bench/unknown_logins.py [--rounds 3] [--seconds 5] [--logins 1000]
"""
import argparse
import base64
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402


def msg(t, body):
    return t + struct.pack("!I", len(body) + 4) + body


def read_msg(s):
    head = b""
    while len(head) < 5:
        chunk = s.recv(5 - len(head))
        if not chunk:
            raise EOFError
        head += chunk
    n = struct.unpack("!I", head[1:5])[0] - 4
    body = b""
    while len(body) < n:
        chunk = s.recv(n - len(body))
        if not chunk:
            raise EOFError
        body += chunk
    return head[:1], body


def unknown_login(port, i):
    """One SCRAM exchange for a user pgstay does not know, with a wrong proof: returns the
    SQLSTATE pgstay ended it with."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(run.startup_packet("nobody_%d" % i, "postgres"))
        t, body = read_msg(s)
        assert t == b"R" and struct.unpack("!I", body[:4])[0] == 10, (t, body)
        nonce = base64.b64encode(os.urandom(18))
        first = b"n,,n=,r=" + nonce
        s.sendall(msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first))
        t, body = read_msg(s)
        assert t == b"R" and struct.unpack("!I", body[:4])[0] == 11, (t, body)
        server_first = body[4:]
        r = [f[2:] for f in server_first.split(b",") if f.startswith(b"r=")][0]
        final = b"c=biws,r=" + r + b",p=" + base64.b64encode(os.urandom(32))
        s.sendall(msg(b"p", final))
        t, body = read_msg(s)
        fields = {f[:1]: f[1:] for f in body.split(b"\0") if f}
        return fields.get(b"C", b"?").decode()
    finally:
        s.close()


def start_pgstay(tmp, node_port):
    port = run.free_port()
    d = os.path.join(tmp, "pgstay")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "userlist.txt"), "w") as f:
        f.write('"postgres" "postgres"\n')
    ini = os.path.join(d, "pgstay.ini")
    with open(ini, "w") as f:
        f.write("[pgstay]\nlisten_addr = 127.0.0.1\nlisten_port = %d\npool_mode = transaction\n"
                "pool_size = 8\nauth_type = scram-sha-256\nauth_file = userlist.txt\n"
                "admin_users = postgres\nhealth_check_user = postgres\n"
                "health_check_dbname = postgres\nlog_connections = 0\nlog_disconnections = 0\n"
                "log_pooler_errors = 0\n[nodes]\nn1 = host=127.0.0.1 port=%d\n" % (port, node_port))
    logf = open(os.path.join(d, "pgstay.log"), "wb")
    proc = subprocess.Popen([os.path.join(run.build_dir(), "pgstay"), ini], stdout=logf,
                            stderr=subprocess.STDOUT)
    run.wait_port(port, proc, "pgstay")
    time.sleep(0.5)  # its first probe finds the writer
    return proc, port


def storm(port, n):
    """A child process making N unknown-user logins back to back."""
    code = ("import sys; sys.path.insert(0, %r); import unknown_logins as u\n"
            "states = [u.unknown_login(%d, i) for i in range(%d)]\n"
            "print(len(states), sorted(set(states)))" % (os.path.dirname(os.path.abspath(__file__)),
                                                        port, n))
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--logins", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=32)
    args = ap.parse_args()
    os.environ["PGPASSWORD"] = "postgres"
    tmp = tempfile.mkdtemp(prefix="pgstay-unknown-", dir="/tmp")
    os.chmod(tmp, 0o755)
    lab = run.Lab(os.path.join(tmp, "lab"), nodes=1, port=run.free_port_base(), sync=False)
    run.setup_lab(lab, 10)
    node = lab.node_port(1)
    proc = None
    try:
        proc, port = start_pgstay(tmp, node)
        res = {"alone": [], "with unknown-user logins": []}
        for _ in range(args.rounds):
            for case in res:
                st = storm(port, args.logins) if case != "alone" else None
                c0 = run.cpu_ms(proc.pid)
                out = run.pgbench(port, args.clients, args.seconds)
                c1 = run.cpu_ms(proc.pid)
                note = ""
                if st:
                    done = st.communicate(timeout=120)[0].strip()
                    note = " (logins: %s)" % done
                if "tps" not in out:
                    print(case, out)
                    continue
                res[case].append((out["tps"], (c1 - c0) * 1000.0 / out["tx"]))
                print("%-26s tps %7.0f  cpu %.1f ms/1k tx%s" % ((case,) + res[case][-1] + (note,)),
                      flush=True)
        print("\n| pgbench -S, %d clients, transaction mode | TPS (median of %d) | pgstay CPU ms / 1k tx |"
              % (args.clients, args.rounds))
        print("|---|---:|---:|")
        for case, v in res.items():
            if v:
                print("| %s | %.0f | %.1f |" % (case, statistics.median(x[0] for x in v),
                                               statistics.median(x[1] for x in v)))
    finally:
        if proc:
            proc.terminate()
            proc.wait(10)
        lab.run("destroy", check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
