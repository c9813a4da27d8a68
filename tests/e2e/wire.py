"""A raw PostgreSQL v3 client for tests that must send what no driver would (bad input)."""
import socket
import struct
import time


def startup_packet(user="postgres", database="postgres", version=(3, 0), extra=None):
    body = struct.pack("!HH", *version)
    params = {"user": user, "database": database}
    params.update(extra or {})
    for k, v in params.items():
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def msg(t, body=b""):
    return t + struct.pack("!I", len(body) + 4) + body


class Raw:
    def __init__(self, port, timeout=5):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def _fill(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk

    def read_msg(self):
        self._fill(5)
        t = self.buf[:1]
        (ln,) = struct.unpack("!I", self.buf[1:5])
        self._fill(1 + ln)
        body = self.buf[5:1 + ln]
        self.buf = self.buf[1 + ln:]
        return t, body

    def read_byte(self):
        self._fill(1)
        b = self.buf[:1]
        self.buf = self.buf[1:]
        return b

    def login_trust(self, user="postgres", database="postgres"):
        """Startup and read up to ReadyForQuery (trust auth)."""
        self.send(startup_packet(user, database))
        while True:
            t, body = self.read_msg()
            if t == b"E":
                raise RuntimeError("login failed: %r" % error_fields(body))
            if t == b"Z":
                return

    def read_until_error_or_close(self):
        """Messages until an ErrorResponse (returned as fields) or the connection closes (None)."""
        try:
            while True:
                t, body = self.read_msg()
                if t == b"E":
                    return error_fields(body)
        except (EOFError, ConnectionResetError, socket.timeout):
            return None

    def closed(self):
        """True if the server closed the connection (after any pending messages)."""
        try:
            while True:
                self.read_msg()
        except (EOFError, ConnectionResetError):
            return True
        except socket.timeout:
            return False

    def collect(self):
        """Messages up to and including ReadyForQuery: (messages, closed). closed is True if the
        connection ended first (EOF or reset)."""
        out = []
        try:
            while True:
                t, body = self.read_msg()
                out.append((t, body))
                if t == b"Z":
                    return out, False
        except (EOFError, ConnectionResetError):
            return out, True

    def query(self, sql):
        self.send(query(sql))
        return self.collect()

    def closed_within(self, seconds):
        """True if the peer closes the connection before `seconds` pass (messages are skipped)."""
        deadline = time.time() + seconds
        try:
            while True:
                left = deadline - time.time()
                if left <= 0:
                    return False
                self.s.settimeout(left)
                self.read_msg()
        except (EOFError, ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def error_within(self, seconds):
        """The first ErrorResponse's fields, or None if the connection closes (or `seconds` pass)."""
        deadline = time.time() + seconds
        try:
            while True:
                left = deadline - time.time()
                if left <= 0:
                    return None
                self.s.settimeout(left)
                t, body = self.read_msg()
                if t == b"E":
                    return error_fields(body)
        except (EOFError, ConnectionResetError, socket.timeout):
            return None

    def close(self):
        self.s.close()


def error_fields(body):
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return fields


# ---- for the bad-peer tests (test_bad_peers.py) ----

def neg_len(t, n=-5):
    """A message header with a negative length (PostgreSQL reads the length as int32)."""
    return t + struct.pack("!i", n)


def header(t, length):
    """A message header alone, promising `length` bytes (length field included)."""
    return t + struct.pack("!I", length)


def parse(sql, name=""):
    return msg(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!H", 0))


def bind(portal="", stmt="", params=()):
    body = portal.encode() + b"\0" + stmt.encode() + b"\0" + struct.pack("!HH", 0, len(params))
    for p in params:
        body += struct.pack("!I", len(p)) + p
    return msg(b"B", body + struct.pack("!H", 0))


def execute(portal="", max_rows=0):
    return msg(b"E", portal.encode() + b"\0" + struct.pack("!I", max_rows))


def describe(kind, name=""):
    return msg(b"D", kind + name.encode() + b"\0")


SYNC = msg(b"S")
TERMINATE = msg(b"X")


def query(sql):
    return msg(b"Q", sql.encode() + b"\0")
