"""A scriptable fake PostgreSQL server for bad-server tests: one thread per connection.

By default it behaves as a healthy primary: AuthenticationOk (or SCRAM-SHA-256 for users in
`scram_users`), ParameterStatus, BackendKeyData, ReadyForQuery; it answers pgstay's topology
probe (application_name 'pgstay-probe') with one row (f, timeline 1, LSN 0/3000000, a system
identifier), `select <int>` with one row, COPY FROM STDIN, and any other statement (SET, RESET,
DISCARD ALL, BEGIN, ...) with a CommandComplete. A simple Query whose text holds `bad:NAME`
runs scenario NAME instead (see `scenario`); a user name starting with `bad_` misbehaves at
login (see `bad_login`). A CancelRequest ends a hung query with 57014, as PostgreSQL does.
"""
import base64
import hashlib
import hmac
import os
import re
import socket
import struct
import threading
import time

PROBE_PREFIX = "SELECT pg_is_in_recovery()"


def msg(t, body=b""):
    return t + struct.pack("!I", len(body) + 4) + body


def rfq(status=b"I"):
    return msg(b"Z", status)


def cmd(tag):
    return msg(b"C", tag.encode() + b"\0")


def rowdesc(names, oid=23):
    body = struct.pack("!H", len(names))
    for n in names:
        body += n.encode() + b"\0" + struct.pack("!IhIhih", 0, 0, oid, 4 if oid == 23 else -1, -1, 0)
    return msg(b"T", body)


def datarow(vals):
    body = struct.pack("!H", len(vals))
    for v in vals:
        if v is None:
            body += struct.pack("!i", -1)
        else:
            v = v.encode() if isinstance(v, str) else v
            body += struct.pack("!I", len(v)) + v
    return msg(b"D", body)


def error(sqlstate="XX000", message="fake error", severity="ERROR"):
    body = b"S" + severity.encode() + b"\0V" + severity.encode() + b"\0"
    if sqlstate:
        body += b"C" + sqlstate.encode() + b"\0"
    body += b"M" + message.encode() + b"\0\0"
    return msg(b"E", body)


class Closed(Exception):
    pass


class FakePG:
    """Listen on 127.0.0.1:<port>; `conns` counts sessions, `events` records what happened."""

    def __init__(self, scram_users=None):
        self.scram_users = scram_users or {}
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(512)
        self.port = self.ls.getsockname()[1]
        self.lock = threading.Lock()
        self.events = []
        self.next_pid = 1000
        self.sessions = {}  # pid -> Session
        self.stopping = False
        self.t = threading.Thread(target=self.accept_loop, daemon=True)
        self.t.start()

    # pgstay's Pgstay fixture reads these as it does from a lab
    nodes = 1

    def node_port(self, i):
        return self.port

    def note(self, what):
        with self.lock:
            self.events.append(what)

    def accept_loop(self):
        while not self.stopping:
            try:
                s, _ = self.ls.accept()
            except OSError:
                return
            threading.Thread(target=Session(self, s).run, daemon=True).start()

    def stop(self):
        self.stopping = True
        try:
            self.ls.close()
        except OSError:
            pass
        with self.lock:
            sessions = list(self.sessions.values())
        for s in sessions:
            s.close()


class Session:
    def __init__(self, fake, sock):
        self.f = fake
        self.s = sock
        self.buf = b""
        self.txn = b"I"
        self.user = ""
        self.cancel = threading.Event()
        self.pid = 0

    # ---- io ----
    def _fill(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise Closed()
            self.buf += chunk

    def read_exact(self, n):
        self._fill(n)
        d, self.buf = self.buf[:n], self.buf[n:]
        return d

    def read_msg(self):
        t = self.read_exact(1)
        (ln,) = struct.unpack("!I", self.read_exact(4))
        return t, self.read_exact(ln - 4)

    def send(self, data):
        self.s.sendall(data)

    def close(self):
        try:
            self.s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.s.close()

    def run(self):
        try:
            if self.startup():
                self.loop()
        except (Closed, OSError):
            pass
        finally:
            with self.f.lock:
                self.f.sessions.pop(self.pid, None)
            self.close()

    # ---- login ----
    def startup(self):
        while True:
            (ln,) = struct.unpack("!I", self.read_exact(4))
            body = self.read_exact(ln - 4)
            code = struct.unpack("!I", body[:4])[0]
            if code in (80877103, 80877104):
                self.send(b"N")
                continue
            if code == 80877102:
                pid, key = struct.unpack("!II", body[4:12])
                with self.f.lock:
                    target = self.f.sessions.get(pid)
                self.f.note("cancel")
                if target and target.key == key:
                    target.cancel.set()
                return False
            break
        parts = body[4:].split(b"\0")
        params = dict(zip([p.decode() for p in parts[0:-2:2]], [p.decode() for p in parts[1:-2:2]]))
        self.user = params.get("user", "")
        self.app = params.get("application_name", "")
        if self.user.startswith("bad_"):
            return self.bad_login(self.user)
        if self.user in self.f.scram_users:
            self.scram_login(self.f.scram_users[self.user])
        else:
            self.send(msg(b"R", struct.pack("!I", 0)))
        self.welcome()
        return True

    def welcome(self):
        with self.f.lock:
            self.f.next_pid += 1
            self.pid = self.f.next_pid
            self.key = 4242 + self.pid
            self.f.sessions[self.pid] = self
        out = b""
        for k, v in (("server_version", "15.99"), ("server_encoding", "UTF8"),
                     ("client_encoding", "UTF8"), ("DateStyle", "ISO, MDY"),
                     ("integer_datetimes", "on"), ("standard_conforming_strings", "on"),
                     ("TimeZone", "UTC"), ("application_name", self.app)):
            out += msg(b"S", k.encode() + b"\0" + v.encode() + b"\0")
        out += msg(b"K", struct.pack("!II", self.pid, self.key)) + rfq()
        self.send(out)

    def scram_first(self):
        """AuthenticationSASL, then the client's first message: (client nonce, bare)."""
        self.send(msg(b"R", struct.pack("!I", 10) + b"SCRAM-SHA-256\0\0"))
        t, body = self.read_msg()
        mech, rest = body.split(b"\0", 1)
        (n,) = struct.unpack("!i", rest[:4])
        first = rest[4:4 + n].decode()
        bare = first.split(",", 2)[2]
        cnonce = dict(kv.split("=", 1) for kv in bare.split(","))["r"]
        return cnonce, bare

    def scram_login(self, password, bad_sig=False):
        cnonce, bare = self.scram_first()
        salt, iters = os.urandom(16), 4096
        nonce = cnonce + "fakeserver"
        sfirst = "r=%s,s=%s,i=%d" % (nonce, base64.b64encode(salt).decode(), iters)
        self.send(msg(b"R", struct.pack("!I", 11) + sfirst.encode()))
        t, body = self.read_msg()
        final = body.decode()
        without_proof = final.rsplit(",p=", 1)[0]
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iters)
        server_key = hmac.new(salted, b"Server Key", "sha256").digest()
        auth_msg = ",".join([bare, sfirst, without_proof]).encode()
        sig = hmac.new(server_key, auth_msg, "sha256").digest()
        if bad_sig:
            sig = bytes(32)
        self.send(msg(b"R", struct.pack("!I", 12) + b"v=" + base64.b64encode(sig)))
        self.send(msg(b"R", struct.pack("!I", 0)))

    def bad_login(self, user):
        self.f.note("login " + user)
        if user == "bad_scram_huge":
            self.scram_first()
            self.send(msg(b"R", struct.pack("!I", 11) + b"r=" + b"x" * (1 << 20)))
        elif user == "bad_scram_garbage":
            self.scram_first()
            self.send(msg(b"R", struct.pack("!I", 11) + b"\xff\x00garbage,,,="))
        elif user == "bad_scram_nonce":
            self.scram_first()
            self.send(msg(b"R", struct.pack("!I", 11) + b"r=notyournonce,s=QUJD,i=4096"))
        elif user == "bad_scram_iterations":
            cnonce, _ = self.scram_first()
            self.send(msg(b"R", struct.pack("!I", 11) +
                          ("r=%sx,s=QUJD,i=-1" % cnonce).encode()))
        elif user == "bad_scram_signature":
            self.scram_login("bad_scram_signature", bad_sig=True)
            self.welcome()
            return True
        elif user == "bad_scram_final_first":
            self.send(msg(b"R", struct.pack("!I", 12) + b"v=AAAA"))
        elif user == "bad_auth_method":
            self.send(msg(b"R", struct.pack("!I", 99)))
        elif user == "bad_auth_short":
            self.send(msg(b"R", b"\0\0"))
        elif user == "bad_fatal_no_sqlstate":
            self.send(msg(b"E", b"SFATAL\0Mno sqlstate here\0\0"))
        elif user == "bad_login_data":
            self.send(msg(b"R", struct.pack("!I", 0)) + rowdesc(["x"]) + datarow(["1"]))
        # then hang up (pgstay must not wait for more)
        time.sleep(0.2)
        return False

    # ---- queries ----
    def loop(self):
        while True:
            t, body = self.read_msg()
            if t == b"X":
                self.f.note("terminate")
                return
            if t == b"Q":
                sql = body.rstrip(b"\0").decode(errors="replace")
                m = re.search(r"bad:(\w+)", sql)
                if m:
                    self.f.note("scenario " + m.group(1))
                    if self.scenario(m.group(1)) is False:
                        return
                    continue
                self.simple(sql)
            elif t in (b"P", b"B", b"D", b"E", b"C", b"H"):
                self.extended(t, body)
            elif t == b"S":
                self.send(rfq(self.txn))
            # CopyData/Done/Fail outside COPY: ignored, as PostgreSQL does

    def answer(self, sql, describe=True):
        s = sql.strip().rstrip(";").strip()
        if s.startswith(PROBE_PREFIX):
            return (rowdesc(["r", "tl", "lsn", "sysid"], oid=25) +
                    datarow(["f", "1", "0/3000000", "7000000000000000001"]) + cmd("SELECT 1"))
        m = re.match(r"(?is)select\s+(-?\d+)$", s)
        if m:
            return (rowdesc(["?column?"]) if describe else b"") + datarow([m.group(1)]) + cmd("SELECT 1")
        word = (s.split() or [""])[0].upper()
        if word in ("BEGIN", "START"):
            self.txn = b"T"
            return cmd("BEGIN")
        if word in ("COMMIT", "END", "ROLLBACK", "ABORT"):
            self.txn = b"I"
            return cmd("ROLLBACK" if word in ("ROLLBACK", "ABORT") else "COMMIT")
        if word == "DISCARD":
            return cmd("DISCARD ALL")
        if not s:
            return msg(b"I")
        return cmd(word or "SELECT 0")

    def simple(self, sql):
        if re.match(r"(?is)\s*copy\s.*from\s+stdin", sql):
            self.copy_in()
            return
        out = b""
        for part in sql.split(";"):
            if part.strip() or not out:
                out += self.answer(part)
        self.send(out + rfq(self.txn))

    def copy_in(self, close_after=None):
        self.send(msg(b"G", struct.pack("!bH", 0, 1) + struct.pack("!h", 0)))
        n = 0
        while True:
            t, body = self.read_msg()
            if t == b"d":
                n += 1
                if close_after is not None and n >= close_after:
                    self.f.note("closed mid-copy")
                    raise Closed()
            elif t == b"c":
                self.send(cmd("COPY %d" % n) + rfq(self.txn))
                return
            elif t == b"f":
                self.send(error("57014", "COPY from stdin failed") + rfq(self.txn))
                return

    def extended(self, t, body):
        if t == b"P":
            name, rest = body.split(b"\0", 1)
            self.stmt = rest.split(b"\0", 1)[0].decode()
            self.send(msg(b"1"))
        elif t == b"B":
            self.send(msg(b"2"))
        elif t == b"D":
            a = self.answer(self.stmt)
            self.send(a[:a.index(b"D")] if a.startswith(b"T") else msg(b"n"))
        elif t == b"E":
            self.send(self.answer(self.stmt, describe=False))
        elif t == b"C":
            self.send(msg(b"3"))

    # ---- bad behaviour, by name (the affected query only) ----
    def scenario(self, name):
        head = rowdesc(["x"]) + datarow(["1"])
        S = {
            "error_no_sqlstate": lambda: error(None, "an error without SQLSTATE") + rfq(self.txn),
            "error_empty": lambda: msg(b"E", b"\0") + rfq(self.txn),
            "error_unterminated": lambda: msg(b"E", b"SERROR\0C42000\0Mno end") + rfq(self.txn),
            "fatal_no_sqlstate": lambda: error(None, "FATAL without SQLSTATE", "FATAL"),
            "unknown_type": lambda: msg(b"~", b"what is this") + rfq(self.txn),
            "unknown_type_mid_result": lambda: head + msg(b"\x01", b"x") + cmd("SELECT 1") + rfq(),
            "negative_length": lambda: head + b"D" + struct.pack("!i", -100) + b"\0" * 16,
            "length_below_4": lambda: b"C" + struct.pack("!i", 2) + rfq(),
            "ready_absurd_length": lambda: head + cmd("SELECT 1") + b"Z" + struct.pack("!I", 100 << 20) + b"I" * 4096,
            "complete_absurd_length": lambda: head + b"C" + struct.pack("!I", 64 << 20) + b"S" * 4096,
            "datarow_absurd_length": lambda: rowdesc(["x"]) + b"D" + struct.pack("!I", 0x7ffffff0) + b"\0\1" + b"x" * 65536,
            "ready_unknown_status": lambda: head + cmd("SELECT 1") + rfq(b"X"),
            "ready_long_body": lambda: head + cmd("SELECT 1") + msg(b"Z", b"II"),
            "ready_empty_body": lambda: head + cmd("SELECT 1") + msg(b"Z"),
            "second_auth_ok": lambda: head + msg(b"R", struct.pack("!I", 0)) + cmd("SELECT 1") + rfq(),
            "auth_request_mid_result": lambda: head + msg(b"R", struct.pack("!I", 3)) + cmd("SELECT 1") + rfq(),
            "copydata_mid_result": lambda: head + msg(b"d", b"junk\n") + cmd("SELECT 1") + rfq(),
            "copydone_mid_result": lambda: head + msg(b"c") + cmd("SELECT 1") + rfq(),
            "key_data_mid_result": lambda: head + msg(b"K", struct.pack("!II", 1, 2)) + cmd("SELECT 1") + rfq(),
            "unsolicited_after_ready": lambda: head + cmd("SELECT 1") + rfq(self.txn) + head + cmd("SELECT 1") + rfq(self.txn),
            "copy_out_unasked": lambda: head + cmd("SELECT 1") + rfq(self.txn) + msg(b"H", b"\0\0\0") + msg(b"d", b"junk\n"),
        }
        if name in S:
            data = S[name]()
            self.send(data)
            if name in ("fatal_no_sqlstate", "negative_length", "length_below_4", "datarow_absurd_length",
                        "ready_absurd_length", "complete_absurd_length"):
                time.sleep(0.5)
                return False
            return True
        if name == "unsolicited_later":
            self.send(head + cmd("SELECT 1") + rfq(self.txn))
            time.sleep(0.3)
            self.send(head + cmd("SELECT 1") + rfq(self.txn))
            return True
        if name in ("hang", "hang_ignore_cancel"):
            self.send(head)
            while not (self.cancel.wait(0.05) and name == "hang"):
                if self.f.stopping:
                    return False
                self.cancel.clear()  # hang_ignore_cancel: noted, ignored
                # a client that left: pgstay terminates or closes this connection
                self.s.settimeout(0.001)
                try:
                    d = self.s.recv(65536)
                    if not d:
                        self.f.note("closed while hung")
                        return False
                    self.buf += d
                except socket.timeout:
                    pass
                finally:
                    self.s.settimeout(None)
            self.cancel.clear()
            self.send(error("57014", "canceling statement due to user request") + rfq(self.txn))
            return True
        if name == "close_mid_copy":
            self.copy_in(close_after=2)
            return True
        if name == "close_mid_result":
            self.send(head)
            return False
        raise ValueError(name)
