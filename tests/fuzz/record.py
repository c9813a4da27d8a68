#!/usr/bin/python3
"""Record real client sessions into the fuzz seed corpus (tests/fuzz/corpus/<target>/rec-*).

A one-node cluster from pgstay-lab, a small recording TCP relay in front of it, and real
clients through the relay: psql, pgbench (simple, extended, prepared), psycopg, asyncpg and
pgjdbc when Java is there. Each connection becomes:
  fuzz_startup   its whole client stream (startup packet first),
  fuzz_frontend  its messages after the startup packet (flags 0: transaction, waiting client),
  fuzz_backend   the server's answers as a script: the login up to its ReadyForQuery, then
                 each later answer up to its ReadyForQuery (flags 0: a simple Query).
Streams are cut at a message boundary to keep each file small.

  /usr/bin/python3 tests/fuzz/record.py [--build build]
"""
import argparse
import os
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(HERE, "corpus")
MAX_FILE = 6000


class Relay:
    """Accepts on a free port, relays to the node, keeps each connection's two streams."""

    def __init__(self, target_port):
        self.target = target_port
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.sessions = []  # (client bytes, server bytes)
        self.lock = threading.Lock()
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.relay, args=(c,), daemon=True).start()

    def relay(self, c):
        s = socket.create_connection(("127.0.0.1", self.target))
        fe, be = bytearray(), bytearray()
        sel = selectors.DefaultSelector()
        sel.register(c, selectors.EVENT_READ, (c, s, fe))
        sel.register(s, selectors.EVENT_READ, (s, c, be))
        open_ = True
        while open_:
            for key, _ in sel.select():
                src, dst, rec = key.data
                data = src.recv(65536)
                if not data:
                    open_ = False
                    break
                rec += data
                dst.sendall(data)
        c.close()
        s.close()
        with self.lock:
            self.sessions.append((bytes(fe), bytes(be)))


def split_startup(fe):
    """The startup packets (SSL/GSS requests, then the StartupMessage), and the rest."""
    off = 0
    while off + 8 <= len(fe):
        n, code = struct.unpack("!II", fe[off:off + 8])
        off += n
        if code not in (80877103, 80877104):
            break
    return fe[:off], fe[off:]


def messages(b):
    out, off = [], 0
    while off + 5 <= len(b):
        n = struct.unpack("!I", b[off + 1:off + 5])[0]
        if off + 1 + n > len(b):
            break
        out.append(b[off:off + 1 + n])
        off += 1 + n
    return out


def cut(msgs, limit):
    out = b""
    for m in msgs:
        if len(out) + len(m) > limit:
            break
        out += m
    return out


def backend_script(be):
    """Server messages in chunks, each ending at a ReadyForQuery."""
    if be[:1] in (b"N", b"S"):  # the answer to an SSLRequest
        be = be[1:]
    chunks, cur = [], b""
    for m in messages(be):
        cur += m
        if m[:1] == b"Z":
            chunks.append(cur)
            cur = b""
    out = b"\0"
    for ch in chunks:
        if len(out) + len(ch) + 2 > MAX_FILE or len(ch) > 0xFFFF:
            break
        out += struct.pack("!H", len(ch)) + ch
    return out


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "rec-" + name), "wb") as f:
        f.write(data)


def run(cmd, **kw):
    print("  $", " ".join(cmd) if isinstance(cmd, list) else cmd, flush=True)
    p = subprocess.run(cmd, capture_output=True, timeout=120, **kw)
    if p.returncode:
        print("    exit %d: %s" % (p.returncode, p.stderr.decode()[:300]), flush=True)
    return p


def clients(port, java):
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(port), PGUSER="postgres",
               PGDATABASE="postgres", PGSSLMODE="prefer", PGAPPNAME="record")
    psql = ["psql", "-X", "-v", "ON_ERROR_STOP=0", "-q"]
    run(psql + ["-c", "CREATE TABLE IF NOT EXISTS fz (a int, b text)"], env=env)
    run(psql, env=env, input=b"BEGIN;\nINSERT INTO fz VALUES (1, 'x');\nSELECT * FROM fz;\n"
        b"SAVEPOINT s;\nSELECT 1/0;\nROLLBACK TO s;\nCOMMIT;\nSET search_path TO public;\n"
        b"\\copy fz FROM stdin\n2\ty\n3\tz\n\\.\n\\copy fz TO stdout\nLISTEN chan;\n"
        b"PREPARE p AS SELECT $1::int;\nEXECUTE p(1);\nSELECT pg_advisory_lock(1);\n"
        b"\\d fz\n")
    # Tables without rows (-I dt): no COPY of 100000 rows to record.
    run(["pgbench", "-n", "-i", "-s", "1", "-I", "dt"], env=env)
    run(psql + ["-c", "INSERT INTO pgbench_branches VALUES (1, 0)"], env=env)  # scale 1
    for mode in ("simple", "extended", "prepared"):
        run(["pgbench", "-n", "-s", "1", "-S", "-t", "5", "-M", mode], env=env)
    run(["pgbench", "-n", "-s", "1", "-t", "3", "-M", "prepared", "-b", "simple-update"], env=env)
    code = r'''
import os, psycopg
with psycopg.connect("") as c:
    c.execute("SELECT %s::int, %s::text", (1, "x")).fetchall()
    c.execute("SELECT 1", prepare=True).fetchall()
    c.execute("SELECT 1", prepare=True).fetchall()
    with c.cursor().copy("COPY fz FROM STDIN") as cp:
        cp.write_row((4, "w"))
    with c.transaction():
        c.execute("SET LOCAL work_mem = '2MB'")
    try:
        c.execute("SELECT nope")
    except Exception:
        pass
with psycopg.connect("", autocommit=True) as c:
    with c.pipeline():
        c.execute("SELECT 1"); c.execute("SELECT 2"); c.execute("SELECT pg_sleep(0)")
'''
    run([sys.executable, "-c", code], env=env)
    code = r'''
import asyncio, asyncpg
async def main():
    c = await asyncpg.connect(host="127.0.0.1", port=%d, user="postgres", database="postgres")
    await c.fetch("SELECT $1::int, $2::text", 1, "x")
    st = await c.prepare("SELECT a FROM fz WHERE a > $1")
    await st.fetch(0)
    async with c.transaction():
        await c.execute("INSERT INTO fz VALUES (5, 'v')")
    await c.copy_records_to_table("fz", records=[(6, "u")])
    await c.execute("SET application_name = 'asyncpg-rec'")
    try:
        await c.fetch("SELECT 1/0")
    except Exception:
        pass
    await c.close()
asyncio.run(main())
''' % port
    run([sys.executable, "-c", code], env=env)
    if java:
        run(psql + ["-c", "CREATE TABLE IF NOT EXISTS fzj (w int, v int)"], env=env)
        try:
            run(java, env=env)
        except subprocess.CalledProcessError as e:
            print("  pgjdbc client failed (its sessions are kept):", e.stderr.decode()[-300:])


relay = None


def main():
    global relay
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    a = ap.parse_args()
    lab_bin = os.path.join(ROOT, a.build, "pgstay-lab")
    tmp = tempfile.mkdtemp(prefix="pgstay-record-")
    base = 26000 + os.getpid() % 2000
    try:
        subprocess.run([lab_bin, "--dir", tmp, "init", "--nodes", "1", "--port", str(base),
                        "--async", "--auth", "trust", "--fast"], check=True, capture_output=True,
                       timeout=180)
        relay = Relay(base + 1)
        java = None
        jar = "/usr/share/java/postgresql.jar"
        src = os.path.join(ROOT, "tests/e2e/java/Prepared.java")
        if shutil.which("java") and os.path.exists(jar) and os.path.exists(src):
            # Source-file mode: no javac step; the table is the program's own.
            java = ["java", "-cp", jar, src, "127.0.0.1", str(relay.port), "fzj", "1"]
        clients(relay.port, java)
        time.sleep(0.5)
    finally:
        subprocess.run([lab_bin, "--dir", tmp, "destroy"], capture_output=True, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)
    for i, (fe, be) in enumerate(relay.sessions):
        head, rest = split_startup(fe)
        msgs = messages(rest)
        write("fuzz_startup", "%02d" % i, b"\0" + head + cut(msgs, MAX_FILE - len(head)))
        write("fuzz_frontend", "%02d" % i, b"\0" + cut(msgs, MAX_FILE))
        write("fuzz_frontend", "%02d-session" % i, b"\1" + cut(msgs, MAX_FILE))
        write("fuzz_backend", "%02d" % i, backend_script(be))
    print("recorded %d sessions" % len(relay.sessions))


if __name__ == "__main__":
    main()
