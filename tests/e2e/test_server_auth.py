"""A server's side of the login, bounded: a fake PostgreSQL (a small script speaking the protocol)
asks for a billion SCRAM iterations, or says AuthenticationOk before proving it knows the
password. pgstay refuses at once, says why in its log, and its loop stays responsive."""
import socket
import struct
import threading
import time

from wire import msg

AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_OK = 10, 11, 0


class FakeLab:
    """What Pgstay needs of a lab: one node, on the fake server's port."""

    def __init__(self, port):
        self.nodes = 1
        self.port = port

    def node_port(self, n):
        return self.port


class FakeServer:
    """Answers every connection with SCRAM, then misbehaves as told (mode)."""

    def __init__(self, mode):
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.logins = 0
        self.stop = False
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while not self.stop:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.one, args=(s,), daemon=True).start()

    def one(self, s):
        s.settimeout(5)
        try:
            f = s.makefile("rb")
            (n,) = struct.unpack("!I", f.read(4))
            first = f.read(n - 4)  # the StartupMessage, or an SSLRequest
            if self.mode == "ssl_inject":
                # 'S', then plaintext a man in the middle slipped in before the handshake
                # (CVE-2021-23222's class): it must never be read as the server's answer.
                assert n == 8 and struct.unpack("!I", first)[0] == 80877103
                self.logins += 1
                s.sendall(b"S" + msg(b"R", struct.pack("!I", AUTH_OK)) + msg(b"Z", b"I"))
                s.recv(1024)
                return
            s.sendall(msg(b"R", struct.pack("!I", AUTH_SASL) + b"SCRAM-SHA-256\0\0"))
            t = f.read(1)
            (n,) = struct.unpack("!I", f.read(4))
            body = f.read(n - 4)
            assert t == b"p"
            first = body[body.index(b"\0") + 5:]  # mechanism, then int32 length
            nonce = first.split(b"r=", 1)[1].split(b",")[0]
            self.logins += 1
            if self.mode == "iterations":
                sf = b"r=" + nonce + b"srv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1000000000"
                s.sendall(msg(b"R", struct.pack("!I", AUTH_SASL_CONTINUE) + sf))
            else:  # early AuthenticationOk, then a session as if logged in
                s.sendall(msg(b"R", struct.pack("!I", AUTH_OK)) + msg(b"Z", b"I"))
            s.recv(1024)
        except Exception:
            pass
        finally:
            s.close()

    def close(self):
        self.stop = True
        self.sock.close()


def check(make_proxy, mode, expect, **settings):
    fake = FakeServer(mode)
    try:
        p = make_proxy(FakeLab(fake.port), start=False, auth_type="trust", **settings)
        p.start(wait_writer=False)
        deadline = time.time() + 5
        while expect not in p.log() and time.time() < deadline:
            time.sleep(0.05)
        assert expect in p.log(), p.log()[-2000:]
        # The loop never stalled: the admin console answers at once, again and again.
        for _ in range(3):
            t0 = time.time()
            rows = p.admin("SHOW NODES")
            assert time.time() - t0 < 1.0
            assert not any(r[4] == "yes" for r in rows), rows
        assert fake.logins >= 1
    finally:
        fake.close()


def test_scram_iterations_above_ceiling_refused(make_proxy):
    check(make_proxy, "iterations",
          "asks for 1000000000 SCRAM iterations, above server_scram_max_iterations (100000)")


def test_authentication_ok_before_scram_signature_refused(make_proxy):
    check(make_proxy, "early_ok",
          "AuthenticationOk before its SCRAM signature was verified: refused")


def test_plaintext_after_ssl_response_refused(make_proxy):
    check(make_proxy, "ssl_inject", "received unencrypted data after SSL response",
          server_tls_sslmode="prefer")
