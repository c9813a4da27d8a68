"""A raw PostgreSQL v3 client for tests that must send what no driver would (bad input)."""
import socket
import struct


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

    def close(self):
        self.s.close()


def error_fields(body):
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return fields
