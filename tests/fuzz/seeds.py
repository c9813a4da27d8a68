#!/usr/bin/python3
"""Hand-built seed inputs for the fuzz targets, written into tests/fuzz/corpus/<target>/hand-*.

The messages are what PostgreSQL and its clients send (protocol 3.0), built here so that the
backend target's scripts, which must answer pgstay's own requests, log in and answer the way a
real server does (SCRAM included: the fuzz targets fix the client nonce). Real client streams
recorded from psql, pgbench, psycopg, asyncpg and pgjdbc are added by record.py.

Run again after changing a target's input format: /usr/bin/python3 tests/fuzz/seeds.py
"""
import base64
import hashlib
import hmac
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
NONCE = "fuzzfuzzfuzzfuzzfuzzfuzz"  # scram_set_test_nonce() in fuzz.c and fuzz_backend.c


def msg(t, body=b""):
    return t.encode() + struct.pack("!I", len(body) + 4) + body


def cstr(s):
    return (s if isinstance(s, bytes) else s.encode()) + b"\0"


def startup(params, version=0x30000):
    body = struct.pack("!I", version) + b"".join(cstr(k) + cstr(v) for k, v in params) + b"\0"
    return struct.pack("!I", len(body) + 4) + body


def ssl_request():
    return struct.pack("!II", 8, 80877103)


def gss_request():
    return struct.pack("!II", 8, 80877104)


def cancel(pid, key):
    return struct.pack("!IIII", 16, 80877102, pid, key)


# ---- frontend messages ----

def query(sql):
    return msg("Q", cstr(sql))


def parse(name, sql, types=()):
    return msg("P", cstr(name) + cstr(sql) + struct.pack("!H", len(types)) +
               b"".join(struct.pack("!I", t) for t in types))


def bind(portal, stmt, params=()):
    body = cstr(portal) + cstr(stmt) + struct.pack("!H", 0) + struct.pack("!H", len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!I", len(p)) + p
    return msg("B", body + struct.pack("!H", 0))


def describe(kind, name):
    return msg("D", kind.encode() + cstr(name))


def execute(portal="", rows=0):
    return msg("E", cstr(portal) + struct.pack("!I", rows))


def close(kind, name):
    return msg("C", kind.encode() + cstr(name))


SYNC, FLUSH, TERMINATE = msg("S"), msg("H"), msg("X")


def copy_data(b):
    return msg("d", b)


COPY_DONE = msg("c")


def password(p):
    return msg("p", cstr(p))


def sasl_initial(mech, data):
    return msg("p", cstr(mech) + struct.pack("!i", len(data)) + data)


# ---- backend messages ----

def auth(code, data=b""):
    return msg("R", struct.pack("!I", code) + data)


def param(k, v):
    return msg("S", cstr(k) + cstr(v))


def key_data(pid, key):
    return msg("K", struct.pack("!II", pid, key))


def ready(s="I"):
    return msg("Z", s.encode())


def row_desc(*names):
    body = struct.pack("!H", len(names))
    for n in names:
        body += cstr(n) + struct.pack("!IhIhih", 0, 0, 25, -1, -1, 0)
    return msg("T", body)


def data_row(*vals):
    body = struct.pack("!H", len(vals))
    for v in vals:
        body += struct.pack("!i", -1) if v is None else struct.pack("!I", len(v)) + v.encode()
    return msg("D", body)


def complete(tag):
    return msg("C", cstr(tag))


def error(sev, code, text, extra=b""):
    return msg("E", b"S" + cstr(sev) + b"V" + cstr(sev) + b"C" + cstr(code) + b"M" + cstr(text) +
               extra + b"\0")


def notice(code, text):
    return msg("N", b"SNOTICE\0VNOTICE\0C" + cstr(code) + b"M" + cstr(text) + b"\0")


PARAMS = (param("server_version", "15.8") + param("server_encoding", "UTF8") +
          param("client_encoding", "UTF8") + param("DateStyle", "ISO, MDY") +
          param("integer_datetimes", "on") + param("standard_conforming_strings", "on") +
          param("TimeZone", "UTC") + param("application_name", "fuzz") +
          param("IntervalStyle", "postgres") + param("is_superuser", "off") +
          param("session_authorization", "app"))
WELCOME = PARAMS + key_data(4242, 0x5eed) + ready("I")


def scram_login(password="app", salt=b"pgstay-fuzz-salt", iters=4096):
    """The three answers of a server to pgstay's SCRAM-SHA-256 login, as PostgreSQL sends them."""
    client_first_bare = "n=,r=%s" % NONCE  # pgstay sends no user name (PostgreSQL ignores it)
    nonce = NONCE + "SERVERNONCEserverNonce"
    server_first = "r=%s,s=%s,i=%d" % (nonce, base64.b64encode(salt).decode(), iters)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iters)
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    final_wo_proof = "c=biws,r=%s" % nonce
    auth_msg = ",".join([client_first_bare, server_first, final_wo_proof]).encode()
    server_sig = hmac.new(server_key, auth_msg, hashlib.sha256).digest()
    server_final = "v=" + base64.b64encode(server_sig).decode()
    return [
        auth(10, cstr("SCRAM-SHA-256") + b"\0"),
        auth(11, server_first.encode()),
        auth(12, server_final.encode()) + auth(0) + WELCOME,
    ]


def backend_input(flags, chunks):
    return bytes([flags]) + b"".join(struct.pack("!H", len(c)) + c for c in chunks)


def result(token):
    return row_desc("token") + data_row(token) + complete("SELECT 1")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "hand-" + name), "wb") as f:
        f.write(data)


def backend_seeds():
    """fuzz_backend: flags (bit 0 session, bits 1-3 scenario) and the server's chunks."""
    logins = {
        "trust": [auth(0) + WELCOME],
        "cleartext": [auth(3), auth(0) + WELCOME],
        "md5": [auth(5, b"salt"), auth(0) + WELCOME],
        "scram": scram_login(),
    }
    # Scenario: what the client does (fuzz_backend.c), and the server's answers to it.
    answers = {
        0: [result("a") + ready()],
        1: [msg("1") + msg("2") + row_desc("token") + data_row("b") + complete("SELECT 1") +
            ready()],
        2: [msg("G", b"\0\0\1\0\0"), complete("COPY 2") + ready()],
        3: [complete("BEGIN") + ready("T"), result("c") + ready("T"), complete("COMMIT") + ready()],
        4: [result("d") + ready(), result("e") + ready(),
            msg("1") + msg("2") + row_desc("token") + data_row("f") + complete("SELECT 1") +
            ready()],
        5: [msg("H", b"\0\0\1\0\0") + msg("d", b"1\tx\n") + msg("c") + complete("COPY 1") +
            ready()],
        6: [complete("SET") + param("search_path", "fuzz") + ready(), result("g") + ready()],
        7: [],
    }
    for login, lchunks in logins.items():
        for sc, ans in answers.items():
            for session in (0, 1):
                if login != "trust" and (sc not in (0, 3) or session):
                    continue
                flags = session | sc << 1
                write("fuzz_backend", "%s-s%d-%s" % (login, sc, "session" if session else "txn"),
                      backend_input(flags, lchunks + ans))
    # Bad servers: what the catalogue names, as seeds to grow from.
    bad = {
        "login-fatal": [error("FATAL", "28P01", "password authentication failed for user app")],
        "error-no-sqlstate": [auth(0) + WELCOME, msg("E", b"SERROR\0Mno sqlstate\0\0") + ready()],
        "unknown-type": [auth(0) + WELCOME, msg("Y", b"what") + ready()],
        "absurd-length": [auth(0) + WELCOME, b"T\x7f\xff\xff\xff"],
        "ready-unknown-status": [auth(0) + WELCOME, result("a") + ready("X")],
        "second-auth-ok": [auth(0) + WELCOME, auth(0) + result("a") + ready()],
        "unasked-answer": [auth(0) + WELCOME, result("a") + ready() + result("z") + ready()],
        "mid-result-fatal": [auth(0) + WELCOME, row_desc("token") + data_row("a") +
                             error("FATAL", "57P01",
                                   "terminating connection due to administrator command")],
        "mid-result-error": [auth(0) + WELCOME, row_desc("token") + data_row("a") +
                             error("ERROR", "22012", "division by zero") + ready()],
        "notice-notify-param": [auth(0) + WELCOME,
                                notice("01000", "hello") + param("TimeZone", "Europe/Paris") +
                                msg("A", struct.pack("!I", 7) + cstr("chan") + cstr("payload")) +
                                result("a") + ready()],
        "scram-huge-iterations": scram_login()[:1] + [
            auth(11, ("r=%sX,s=c2FsdA==,i=999999999" % NONCE).encode())],
        "scram-bad-nonce": scram_login()[:1] + [auth(11, b"r=other,s=c2FsdA==,i=4096")],
        "scram-bad-final": scram_login()[:2] + [auth(12, b"v=AAAA") + auth(0) + WELCOME],
        "copy-in-then-close": [auth(0) + WELCOME, msg("G", b"\0\0\1\0\0")],
        "negotiate-version": [msg("v", struct.pack("!II", 0, 1) + cstr("_pq_.x")) + auth(0) +
                              WELCOME, result("a") + ready()],
        "malformed-error": [auth(0) + WELCOME, row_desc("token") + msg("E", b"SERROR\0C2201") +
                            ready()],
        "partial-row": [auth(0) + WELCOME, row_desc("token") + data_row("abcdef")[:9]],
    }
    for name, chunks in bad.items():
        write("fuzz_backend", "bad-" + name, backend_input(0, chunks))
        write("fuzz_backend", "bad-" + name + "-session", backend_input(1, chunks))


def frontend_seeds():
    """fuzz_frontend: flags (bit 0 session, bit 1 all at once), then the client's messages."""
    streams = {
        "simple": query("SELECT 'a'") + TERMINATE,
        "multi": query("SELECT 1; SELECT 'b'") + query("") + TERMINATE,
        "txn": query("BEGIN") + query("SELECT 'c'") + query("COMMIT"),
        "txn-error": query("BEGIN") + query("SELECT 'x' AS error") + query("SELECT 1") +
                     query("ROLLBACK"),
        "extended": parse("", "SELECT 'd'") + bind("", "") + describe("P", "") + execute() + SYNC,
        "named": parse("s1", "SELECT 'e'", (25,)) + describe("S", "s1") + SYNC +
                 bind("", "s1") + execute() + SYNC + bind("", "s1") + execute() + SYNC +
                 close("S", "s1") + SYNC,
        "flush": parse("", "SELECT 'f'") + FLUSH + bind("", "") + execute() + FLUSH + SYNC,
        "extended-error": parse("", "SELECT 'x' AS error") + bind("", "") + execute() + SYNC +
                          query("SELECT 1"),
        "copy-in": query("COPY t FROM STDIN") + copy_data(b"1\tx\n") + copy_data(b"2\ty\n") +
                   COPY_DONE,
        "copy-fail": query("COPY t FROM STDIN") + copy_data(b"1\n") + msg("f", cstr("no")),
        "copy-out": query("COPY t TO STDOUT"),
        "set": query("SET search_path TO fuzz") + query("SET LOCAL work_mem = '1MB'") +
               query("RESET search_path") + query("SELECT set_config('TimeZone', 'UTC', false)"),
        "pins": query("CREATE TEMP TABLE t (a int)") + query("SELECT pg_advisory_lock(1)") +
                query("LISTEN chan") + query("PREPARE p AS SELECT 1") + query("SELECT 'g'"),
        "discard": query("DISCARD ALL") + query("DEALLOCATE ALL") + query("SELECT 'h'"),
        "pipeline": parse("", "BEGIN") + bind("", "") + execute() +
                    parse("", "SELECT 'i'") + bind("", "") + execute() +
                    parse("", "COMMIT") + bind("", "") + execute() + SYNC,
        "unsynced-then-query": parse("", "SELECT 'j'") + bind("", "") + execute() +
                               query("SELECT 'k'"),
        "function-call": msg("F", struct.pack("!IHHIH", 1598, 0, 0, 0, 0)) + SYNC,
        "garbage-type": msg("~", b"xx") + query("SELECT 1"),
        "negative-length": b"Q\xff\xff\xff\xf0" + query("SELECT 1"),
        "terminate-then-data": TERMINATE + query("SELECT 1"),
        "bind-before-parse": bind("", "nope") + execute() + SYNC,
        "copy-data-outside": copy_data(b"oops") + COPY_DONE + query("SELECT 1"),
        "second-startup": startup([("user", "app"), ("database", "app")]) + query("SELECT 1"),
    }
    for name, s in streams.items():
        for flags in (0, 1, 2, 3):
            write("fuzz_frontend", "%s-%d" % (name, flags), bytes([flags]) + s)


def startup_seeds():
    """fuzz_startup: flags (bits 0-1 auth: trust, md5, SCRAM; bits 2-4 pieces), stream."""
    base = [("user", "app"), ("database", "app")]
    streams = {
        "plain": startup(base) + query("SELECT 1") + TERMINATE,
        "ssl-then-startup": ssl_request() + startup(base),
        "gss-ssl-startup": gss_request() + ssl_request() + startup(base),
        "ssl-twice": ssl_request() + ssl_request() + startup(base),
        "cancel": cancel(1234, 5678),
        "protocol-3.2": startup(base + [("_pq_.compression", "on")], 0x30002),
        "protocol-2": startup(base, 0x20000),
        "options": startup(base + [("options", "-c search_path=fuzz --work_mem=1MB"),
                                   ("application_name", "psql"), ("client_encoding", "UTF8")]),
        "replication": startup(base + [("replication", "database")]),
        "no-user": startup([("database", "app")]),
        "admin-db": startup([("user", "app"), ("database", "pgstay")]),
        "bad-length": struct.pack("!I", 3) + b"\0\0\0\0",
        "too-long": struct.pack("!I", 100000) + b"\0\3\0\0",
        "password": startup(base) + password("app"),
        "sasl": startup(base) + sasl_initial("SCRAM-SHA-256", b"n,,n=,r=clientnonceclientnonce"),
        "sasl-bad-mech": startup(base) + sasl_initial("SCRAM-SHA-1", b"n,,n=,r=x"),
        "sasl-final": startup(base) +
                      sasl_initial("SCRAM-SHA-256", b"n,,n=,r=clientnonceclientnonce") +
                      msg("p", b"c=biws,r=clientnonceclientnonce" + NONCE.encode() +
                          b",p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
    }
    for name, s in streams.items():
        for auth_kind in (0, 1, 2):
            write("fuzz_startup", "%s-%d" % (name, auth_kind), bytes([auth_kind]) + s)
    write("fuzz_startup", "plain-pieces", bytes([6 << 2]) + streams["plain"])


def sqlclass_seeds():
    stmts = [
        "SELECT 1", "BEGIN", "START TRANSACTION ISOLATION LEVEL SERIALIZABLE", "COMMIT AND CHAIN",
        "ROLLBACK", "SAVEPOINT a", "RELEASE SAVEPOINT a", "ROLLBACK TO a",
        "PREPARE TRANSACTION 'x'", "SET search_path TO a, \"B\", pg_temp",
        "SET TIME ZONE 'UTC'", "SET TIME ZONE LOCAL", "SET LOCAL work_mem = '4MB'",
        "SET SESSION AUTHORIZATION app", "SET ROLE app", "SET NAMES 'UTF8'",
        "SET XML OPTION DOCUMENT", "SET statement_timeout = 5", "SET x.y TO DEFAULT",
        "SET work_mem FROM CURRENT", "SET TRANSACTION READ ONLY", "RESET ALL", "RESET work_mem",
        "DISCARD ALL", "DEALLOCATE ALL", "DEALLOCATE PREPARE s1",
        "SELECT set_config('search_path', 'a,b', false)",
        "SELECT set_config('work_mem', '1MB', true)", "SELECT set_config('x.y', NULL, false)",
        "CREATE TEMP TABLE t (a int)", "CREATE TABLE pg_temp.t (a int)",
        "SELECT * INTO TEMP t FROM x", "SELECT pg_advisory_lock(1)",
        "SELECT pg_try_advisory_xact_lock(1)", "LISTEN chan", "PREPARE p AS SELECT $1",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1", "LOAD 'auto_explain'",
        "SELECT nextval('s')", "SELECT dblink_connect('x')",
        "SELECT 1; SET work_mem = 64; COMMIT", "SELECT 'a;b'; SELECT $$x;y$$",
        "/* comment */ SET -- c\n search_path = x", "SELECT (", "",
        "DO $$BEGIN PERFORM 1; END$$", "SET search_path = E'a\\'b'",
        "SET datestyle = iso, dmy", "SET client_min_messages = warning",
    ]
    for i, s in enumerate(stmts):
        write("fuzz_sqlclass", "%02d" % i, s.encode())


def config_seeds():
    write("fuzz_config", "full", b"""; pgstay.ini
[pgstay]
listen_addr = 127.0.0.1
listen_port = 6432
readonly_port = 6433
pool_mode = transaction
pool_size = 20
max_client_conn = 10000
auth_type = scram-sha-256
auth_file = userlist.txt
admin_users = admin, ops
server_reset_query = DISCARD ALL
server_connect_timeout = 5s
query_wait_timeout = 2min
client_idle_timeout = 0
health_check_period = 100ms
failover_timeout = 30s
max_replica_lag = 16MB
readonly_fallback = error
max_packet_size = 1GB
verbose = 1

[nodes]
n1 = host=127.0.0.1 port=5432
n2 = host=localhost port=5433
n3 = host='db three' port=5434
""")
    write("fuzz_config", "minimal", b"[pgstay]\nlisten_port = 6432\n[nodes]\nn1 = host=127.0.0.1\n")
    write("fuzz_config", "bad", b"[pgstay]\npool_size = -1\nunknown = x\n[nodes]\nn1 = port=\n")
    write("fuzz_config", "units", b"[pgstay]\nquery_wait_timeout = 1h\nmax_packet_size = 64kB\n"
          b"tcp_user_timeout = 250ms\ntcp_keepalive = off\n")


def userlist_seeds():
    write("fuzz_userlist", "mixed", b'''"app" "app"
"md5user" "md5a3556571e93b0d20722ba62be61e8c2d"
"scram" "SCRAM-SHA-256$4096:cGdzdGF5LWZ1enotc2FsdA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
;; comment
"quo""ted" "pa ss"
''')
    write("fuzz_userlist", "bad", b'"unterminated\n"a" b\n"x" "SCRAM-SHA-256$x$y"\n')


if __name__ == "__main__":
    backend_seeds()
    frontend_seeds()
    startup_seeds()
    sqlclass_seeds()
    config_seeds()
    userlist_seeds()
