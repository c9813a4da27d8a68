"""Seeded random interleaving of raw clients on a small transaction-mode pool.

Several raw clients at once, each in its own thread, run a random (seeded) sequence of: simple
queries answering a marker unique to the client, extended Parse/Bind/Execute with a Sync or
with a Flush (the batch left open for later steps), BEGIN/COMMIT/ROLLBACK, errors inside and
outside a block, SET application_name / search_path (simple or extended, in or out of a block),
and leaving at random points (Terminate, plain close, close mid-batch or mid-message), after
which the client comes back as a new session.

Every answer is checked whole: the exact message types, the client's own marker, its own
settings (a small model of what PostgreSQL keeps: SETs committed, rolled back, or lost with an
implicit transaction), every ParameterStatus naming only its own values. After every step that
leaves its session idle, the client's checker (a separate client with its own startup
application_name) runs `SELECT current_setting('search_path'), current_setting('application_name'),
'marker-N'` and must get exactly its own defaults and marker: whatever a client left on a server
must not reach the next one.

Environment: INTERLEAVE_SEED, INTERLEAVE_SECONDS (per pool size), INTERLEAVE_LOSS_SECONDS (the
variant with random server losses, per pool size)."""
import os
import random
import re
import socket
import struct
import threading
import time

import psycopg
import pytest

from wire import Raw, error_fields, msg, startup_packet

SEED = int(os.environ.get("INTERLEAVE_SEED", "20240611"))
SECONDS = float(os.environ.get("INTERLEAVE_SECONDS", "20"))
CLIENTS = 4


def Q(sql):
    return msg(b"Q", sql.encode() + b"\0")


def P(sql, name=""):
    return msg(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + b"\0\0")


def B(stmt="", portal=""):
    return msg(b"B", portal.encode() + b"\0" + stmt.encode() + b"\0" + struct.pack("!HHH", 0, 0, 0))


def E(portal="", maxrows=0):
    return msg(b"E", portal.encode() + b"\0" + struct.pack("!I", maxrows))


SYNC = msg(b"S")
FLUSH = msg(b"H")
TERM = msg(b"X")


def values(body):
    (n,) = struct.unpack("!H", body[:2])
    pos, out = 2, []
    for _ in range(n):
        (ln,) = struct.unpack("!i", body[pos:pos + 4])
        pos += 4
        if ln < 0:
            out.append(None)
        else:
            out.append(body[pos:pos + ln].decode())
            pos += ln
    return out


KNOWN = set(b"123CDEIKNRSTZnst")  # message types a client may see here


class Mismatch(AssertionError):
    pass


class Conn(Raw):
    """A raw client that reads answers, keeping ParameterStatus and notices aside."""

    def __init__(self, port, who, app=None, timeout=10):
        super().__init__(port, timeout=timeout)
        self.who = who
        self.param_status = []  # (name, value) as received
        self.on_status = None
        extra = {"application_name": app} if app is not None else None
        self.send(startup_packet(extra=extra))
        got = self.until(b"Z")
        if any(t == b"E" for t, _ in got):
            raise Mismatch("%s: login failed: %r" % (who, got))

    def next(self):
        """The next message that is not a ParameterStatus or a notice."""
        while True:
            t, body = self.read_msg()
            if t[0] not in KNOWN:
                raise Mismatch("%s: unexpected message type %r %r" % (self.who, t, body[:80]))
            if t == b"S":
                k, v = body.split(b"\0")[:2]
                self.param_status.append((k.decode(), v.decode()))
                if self.on_status:
                    self.on_status(k.decode(), v.decode())
                continue
            if t == b"N":
                continue
            return t, body

    def until(self, last):
        out = []
        while True:
            t, body = self.next()
            out.append((t, body))
            if t == last or (t == b"E" and error_fields(body).get("S") == "FATAL"):
                return out

    def expect(self, want_types, what):
        """Read exactly len(want_types) messages of those types (b"*" matches any)."""
        got = []
        for w in want_types:
            t, body = self.next()
            got.append((t, body))
            if w != b"*" and t != w:
                raise Mismatch("%s: %s: wanted %r, got %r" % (
                    self.who, what, want_types, [(t_, b_[:120]) for t_, b_ in got]))
        return got


def check_sql(marker):
    return ("select current_setting('search_path'), current_setting('application_name'), '%s'"
            % marker)


def row_of(got):
    rows = [values(b) for t, b in got if t == b"D"]
    assert len(rows) == 1, got
    return rows[0]


def summary(data):
    """A short readable form of the messages sent."""
    out, pos = [], 0
    while pos + 5 <= len(data):
        t = data[pos:pos + 1]
        (ln,) = struct.unpack("!I", data[pos + 1:pos + 5])
        body = data[pos + 5:pos + 1 + ln]
        if t in (b"Q", b"P"):
            sql = body.split(b"\0")[1 if t == b"P" else 0].decode()
            out.append("%s(%s)" % (t.decode(), sql[:70]))
        else:
            out.append(t.decode())
        pos += 1 + ln
    if pos < len(data):
        out.append("<%d bytes of a message>" % (len(data) - pos))
    return " ".join(out)


class Player:
    """One client's random life: sessions one after another, each a random walk of steps."""

    def __init__(self, port, idx, defaults, rng, deadline, log):
        self.port = port
        self.idx = idx
        self.defaults = defaults
        self.rng = rng
        self.deadline = deadline
        self.log = log
        self.gen = 0
        self.n = 0
        self.steps = 0
        self.checks = 0
        self.conn = None
        self.checker = Conn(port, "checker-%d" % idx, app="chk-%d" % idx)
        self.foreign = []  # ParameterStatus of other clients' values received

    # ---- the model of this session ----

    def new_session(self):
        self.gen += 1
        app = None
        if self.rng.random() < 0.5:
            app = "start-%d-%d" % (self.idx, self.gen)
        self.conn = Conn(self.port, "client-%d.%d" % (self.idx, self.gen), app=app)
        self.note("logged in, told %r" % [kv for kv in self.conn.param_status
                                          if kv[0] == "application_name"])
        self.conn.on_status = lambda k, v: self.note("<- ParameterStatus %s=%r" % (k, v))
        send = self.conn.send
        self.conn.send = lambda data: (self.note(summary(data)), send(data))
        self.committed = {"search_path": self.defaults["search_path"],
                          "application_name": app if app is not None else self.defaults["application_name"]}
        self.cur = dict(self.committed)
        self.block = False     # in a transaction block
        self.failed = False    # the block failed
        self.unsynced = False  # an extended batch is open (Flush, no Sync yet)
        self.own_apps = {self.committed["application_name"], self.defaults["application_name"]}
        self.note("connect app=%r" % app)

    def note(self, what):
        self.log.append((time.time(), self.idx, self.gen, what))

    def marker(self):
        self.n += 1
        return "m-%d-%d-%d" % (self.idx, self.gen, self.n)

    def holds_server(self):
        return self.block or self.unsynced

    def end_of_request(self, status):
        """A ReadyForQuery: its status must be the model's; an implicit transaction commits."""
        want = b"E" if self.failed else b"T" if self.block else b"I"
        if status != want:
            raise Mismatch("%s: ReadyForQuery %r, wanted %r" % (self.conn.who, status, want))
        if not self.block:
            self.committed = dict(self.cur)

    def check_param_status(self):
        """Every ParameterStatus names this client's own values: a foreign one is recorded
        (not raised, so that the walk goes on and other failures show too)."""
        for k, v in self.conn.param_status:
            if k == "application_name" and v not in self.own_apps:
                self.foreign.append("%s (step %d) was told application_name=%r (its own: %r)" % (
                    self.conn.who, self.steps, v, sorted(self.own_apps)))
        self.conn.param_status.clear()
        for k, v in self.checker.param_status:
            if k == "application_name" and v != "chk-%d" % self.idx:
                self.foreign.append("checker-%d (after client step %d) was told "
                                    "application_name=%r" % (self.idx, self.steps, v))
        self.checker.param_status.clear()

    # ---- steps ----

    def step_select_simple(self):
        m = self.marker()
        c = self.conn
        c.send(Q(check_sql(m)))
        got = c.expect([b"T", b"D", b"C", b"Z"], "simple select " + m)
        self.expect_row(got, m)
        self.end_of_request(got[-1][1])

    def step_select_extended(self, sync):
        m = self.marker()
        c = self.conn
        c.send(P(check_sql(m)) + B() + E() + (SYNC if sync else FLUSH))
        got = c.expect([b"1", b"2", b"D", b"C"] + ([b"Z"] if sync else []),
                       "extended select %s %s" % (m, "Sync" if sync else "Flush"))
        self.expect_row(got, m)
        if sync:
            self.unsynced = False
            self.end_of_request(got[-1][1])
        else:
            self.unsynced = True

    def expect_row(self, got, m):
        row = row_of(got)
        want = [self.cur["search_path"], self.cur["application_name"], m]
        if row != want:
            raise Mismatch("%s: got %r, wanted %r (block=%s unsynced=%s)" % (
                self.conn.who, row, want, self.block, self.unsynced))

    def step_sync(self):
        self.conn.send(SYNC)
        got = self.conn.expect([b"Z"], "Sync")
        self.unsynced = False
        self.end_of_request(got[-1][1])

    def step_set(self, extended, sync):
        name = self.rng.choice(["search_path", "application_name"])
        self.n += 1
        if name == "search_path":
            value = "sp_%d_%d_%d" % (self.idx, self.gen, self.n)
            sql = "set search_path = %s" % value
        else:
            value = "app-%d-%d-%d" % (self.idx, self.gen, self.n)
            sql = "set application_name = '%s'" % value
            self.own_apps.add(value)
        c = self.conn
        self.cur[name] = value
        if not extended:
            c.send(Q(sql))
            got = c.expect([b"C", b"Z"], sql)
            self.end_of_request(got[-1][1])
        else:
            c.send(P(sql) + B() + E() + (SYNC if sync else FLUSH))
            got = c.expect([b"1", b"2", b"C"] + ([b"Z"] if sync else []),
                           "extended %s %s" % (sql, "Sync" if sync else "Flush"))
            if sync:
                self.unsynced = False
                self.end_of_request(got[-1][1])
            else:
                self.unsynced = True

    def step_begin(self):
        self.conn.send(Q("begin"))
        got = self.conn.expect([b"C", b"Z"], "begin")
        self.block = True
        self.end_of_request(got[-1][1])

    def step_end(self, commit):
        self.conn.send(Q("commit" if commit else "rollback"))
        got = self.conn.expect([b"C", b"Z"], "commit" if commit else "rollback")
        tag = got[0][1].rstrip(b"\0")
        want = b"COMMIT" if commit and not self.failed else b"ROLLBACK"
        if tag != want:
            raise Mismatch("%s: tag %r, wanted %r" % (self.conn.who, tag, want))
        if want == b"COMMIT":
            self.committed = dict(self.cur)
        else:
            self.cur = dict(self.committed)
        self.block = self.failed = False
        self.end_of_request(got[-1][1])

    def step_error(self):
        self.conn.send(Q("select 1/0"))
        got = self.conn.expect([b"E", b"Z"], "select 1/0")
        code = error_fields(got[0][1]).get("C")
        if code != "22012":
            raise Mismatch("%s: error %r" % (self.conn.who, error_fields(got[0][1])))
        if self.block:
            self.failed = True
        self.end_of_request(got[-1][1])

    def leave(self):
        c = self.conn
        how = self.rng.choice(["terminate", "close", "close-mid-batch", "close-mid-message",
                               "terminate-mid-batch"])
        self.note("leave %s (block=%s unsynced=%s)" % (how, self.block, self.unsynced))
        m = "never-seen-%d-%d" % (self.idx, self.gen)
        try:
            if how == "terminate":
                c.send(TERM)
            elif how == "close-mid-batch":
                c.send(P("set search_path = leaked_%d" % self.idx) + B() + E() + P(check_sql(m)) + B() + E())
            elif how == "terminate-mid-batch":
                c.send(P("set application_name = 'leaked-%d'" % self.idx) + B() + E() + TERM)
            elif how == "close-mid-message":
                whole = Q(check_sql(m))
                c.send(whole[:len(whole) // 2])
        except OSError:
            pass
        c.close()
        self.conn = None

    def check(self):
        """The checker gets exactly its own defaults and marker."""
        m = "marker-%d-%d" % (self.idx, self.checks)
        self.checks += 1
        self.checker.send(Q(check_sql(m)))
        got = self.checker.expect([b"T", b"D", b"C", b"Z"], "check " + m)
        row = row_of(got)
        want = [self.defaults["search_path"], "chk-%d" % self.idx, m]
        if row != want or got[-1][1] != b"I":
            raise Mismatch("checker-%d after client-%d.%d's step %d: got %r status %r, wanted %r" % (
                self.idx, self.idx, self.gen, self.steps, row, got[-1][1], want))

    def step(self):
        self.conn and self.conn.s.settimeout(10)
        r = self.rng.random()
        if self.conn is None:
            self.new_session()
            return
        if self.failed:
            # a failed block: only its end, or leaving
            if r < 0.1:
                return self.leave()
            return self.step_end(commit=r < 0.5)
        if self.unsynced:
            if r < 0.1:
                return self.leave()
            if r < 0.45:
                return self.step_sync()
            if r < 0.75:
                return self.step_select_extended(sync=self.rng.random() < 0.5)
            return self.step_set(extended=True, sync=self.rng.random() < 0.5)
        if r < 0.06:
            return self.leave()
        if r < 0.22:
            return self.step_select_simple()
        if r < 0.38:
            return self.step_select_extended(sync=self.rng.random() < 0.6)
        if r < 0.58:
            kind = self.rng.random()
            return self.step_set(extended=kind < 0.5, sync=kind < 0.3)
        if r < 0.68:
            return self.step_begin() if not self.block else self.step_select_simple()
        if r < 0.80:
            return self.step_end(commit=self.rng.random() < 0.5) if self.block else self.step_begin()
        if r < 0.86:
            return self.step_error()
        return self.step_select_simple()

    def run(self):
        try:
            self.play()
        finally:
            for c in (self.conn, self.checker):
                try:
                    c and c.close()
                except OSError:
                    pass

    def play(self):
        while time.time() < self.deadline:
            self.step()
            self.steps += 1
            if self.conn is None or not self.holds_server():
                self.check()
            if self.conn:
                self.check_param_status()
        if self.conn is not None:
            self.leave()
        self.checker.send(TERM)
        self.checker.close()


def defaults(lab):
    with psycopg.connect(lab.dsn(1), autocommit=True) as c:
        return {n: c.execute("select current_setting(%s)", (n,)).fetchone()[0]
                for n in ("search_path", "application_name")}


@pytest.mark.parametrize("pool_size", [1, 2])
def test_random_interleaving(cluster1, make_proxy, pool_size):
    p = make_proxy(cluster1, pool_mode="transaction", pool_size=pool_size,
                   query_wait_timeout="10s")
    dflt = defaults(cluster1)
    seed = SEED * 10 + pool_size
    deadline = time.time() + SECONDS
    log = []
    players = [Player(p.port, i, dflt, random.Random(seed * 100 + i), deadline, log)
               for i in range(CLIENTS)]
    errors = []

    def run(pl):
        try:
            pl.run()
        except BaseException as e:  # noqa: BLE001 - reported in the test's thread
            errors.append((pl.idx, e))

    threads = [threading.Thread(target=run, args=(pl,), daemon=True) for pl in players]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, deadline + 25 - time.time()))
    hung = [pl.idx for pl, t in zip(players, threads) if t.is_alive()]

    def history(idx, n=12):
        lines = ["  %.3f client-%d.%d %s" % (ts - deadline + SECONDS, i, g, w)
                 for ts, i, g, w in log if i == idx]
        return "\n".join(lines[-n:])

    if errors or hung:
        lines = []
        for idx, e in errors:
            lines.append("client %d: %s: %s\n%s" % (idx, type(e).__name__, e, history(idx)))
        for idx in hung:
            lines.append("client %d hung\n%s" % (idx, history(idx)))
        pytest.fail("seed %d, pool_size %d:\n%s" % (seed, pool_size, "\n".join(lines)))
    foreign = [f for pl in players for f in pl.foreign]
    assert not foreign, "%d ParameterStatus messages with another client's value, first:\n%s" % (
        len(foreign), "\n".join(foreign[:8]))
    total = sum(pl.steps for pl in players)
    assert total > 50, "too few steps: %d" % total


def test_flushed_set_before_sync(cluster1, make_proxy):
    """The minimal case the random walk found: a SET answered after a Flush, before its Sync
    (pool_size 1: the next client gets the same server)."""
    p = make_proxy(cluster1, pool_mode="transaction", pool_size=1, query_wait_timeout="10s")
    dflt = defaults(cluster1)
    a = Conn(p.port, "a")
    a.send(P("set search_path = flushed_a") + B() + E() + FLUSH)
    a.expect([b"1", b"2", b"C"], "SET, Flush")
    a.send(SYNC)
    a.expect([b"Z"], "Sync")
    chk = Conn(p.port, "checker")
    chk.send(Q(check_sql("c")))
    got_other = row_of(chk.expect([b"T", b"D", b"C", b"Z"], "checker"))
    a.send(Q(check_sql("a")))
    got_own = row_of(a.expect([b"T", b"D", b"C", b"Z"], "a again"))
    for c in (a, chk):
        c.send(TERM)
        c.close()
    assert got_other[0] == dflt["search_path"], "another client got a's search_path: %r" % got_other
    assert got_own[0] == "flushed_a", "a lost its own search_path: %r" % got_own


def test_parameter_status_of_previous_client(cluster1, make_proxy):
    """The other case the random walk found: a client lent the server another client just
    used is first told that client's application_name (ParameterStatus), then its own."""
    p = make_proxy(cluster1, pool_mode="transaction", pool_size=1, query_wait_timeout="10s")
    a = Conn(p.port, "a", app="app-of-a")
    b = Conn(p.port, "b")
    a.send(Q(check_sql("a")))
    a.expect([b"T", b"D", b"C", b"Z"], "a")
    b.param_status.clear()
    b.send(Q(check_sql("b")))
    b.expect([b"T", b"D", b"C", b"Z"], "b")
    told = [v for k, v in b.param_status if k == "application_name"]
    for c in (a, b):
        c.send(TERM)
        c.close()
    assert "app-of-a" not in told, "b was told a's application_name: %r" % told


# ---- random server losses ----
#
# The same walk while a killer, on its own direct connection to the node, terminates one random
# pool server at random moments (pg_terminate_backend). pgstay's contract in transaction mode:
# a request running on the terminated backend gets an ErrorResponse (57P01 from PostgreSQL,
# 08006 from pgstay; 08007 when a COMMIT was in flight) and then ReadyForQuery, or its connection
# is closed; an idle client never notices; a transaction block that lost its server answers with
# an error and then its ROLLBACK; the block's SETs are gone, committed settings stay.

LOSS_SECONDS = float(os.environ.get("INTERLEAVE_LOSS_SECONDS", "12"))
LOSS_CODES = ("57P01", "08006", "08007")
KILL_SQL = ("select pid from pg_stat_activity where application_name <> 'pgstay-probe' "
            "and backend_type = 'client backend' and pid <> pg_backend_pid() "
            "and datname = current_database() order by pid")


def direct(lab):
    return psycopg.connect(lab.dsn(1), autocommit=True)


def last_type(data):
    """The type of the last whole message in data."""
    pos, t = 0, None
    while pos + 5 <= len(data):
        (ln,) = struct.unpack("!I", data[pos + 1:pos + 5])
        if pos + 1 + ln > len(data):
            break
        t = data[pos:pos + 1].decode()
        pos += 1 + ln
    return t


class Lost(Exception):
    """An ErrorResponse saying the request's server was lost."""

    def __init__(self, fields):
        super().__init__("%s %s" % (fields.get("C"), fields.get("M")))
        self.fields = fields
        self.code = fields.get("C")
        self.fatal = fields.get("S") == "FATAL"


class LConn(Conn):
    """A raw client whose reads raise Lost at an error of a lost server."""

    def next(self):
        t, body = super().next()
        if t == b"E":
            f = error_fields(body)
            if f.get("C") in LOSS_CODES:
                raise Lost(f)
        return t, body


class Killer:
    """Terminates one random pool server (never a probe, never itself) at random moments."""

    def __init__(self, lab, rng, deadline, log):
        self.lab = lab
        self.rng = rng
        self.deadline = deadline
        self.log = log
        self.started = []  # times a termination was issued
        self.killed = 0
        self.error = None

    def since(self, t):
        """Could a termination have hit after time t (a signal lands a little later)?"""
        return any(k >= t - 0.3 for k in self.started)

    def run(self):
        try:
            with direct(self.lab) as d:
                while time.time() < self.deadline - 0.5:
                    time.sleep(self.rng.uniform(0.05, 0.5))
                    pids = [r[0] for r in d.execute(KILL_SQL).fetchall()]
                    if not pids:
                        continue
                    pid = self.rng.choice(pids)
                    self.started.append(time.time())
                    if d.execute("select pg_terminate_backend(%s)", (pid,)).fetchone()[0]:
                        self.killed += 1
                        self.log.append((time.time(), -1, 0, "killed backend %d" % pid))
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e


class LossPlayer(Player):
    """A Player whose server may be terminated under it at any moment."""

    def __init__(self, port, idx, defaults, rng, deadline, log, killer):
        super().__init__(port, idx, defaults, rng, deadline, log)
        self.checker.send(TERM)
        self.checker.close()
        self.checker = LConn(port, "checker-%d" % idx, app="chk-%d" % idx)
        self.killer = killer
        self.stats = {}
        self.known_flush = []  # Flush batches of a lost block left unanswered (see below)

    def count(self, what):
        self.stats[what] = self.stats.get(what, 0) + 1

    def new_session(self):
        self.gen += 1
        app = None
        if self.rng.random() < 0.5:
            app = "start-%d-%d" % (self.idx, self.gen)
        self.session_at = time.time()
        self.conn = LConn(self.port, "client-%d.%d" % (self.idx, self.gen), app=app)
        self.note("logged in, told %r" % [kv for kv in self.conn.param_status
                                          if kv[0] == "application_name"])
        self.conn.on_status = lambda k, v: self.note("<- ParameterStatus %s=%r" % (k, v))
        send = self.conn.send

        def sending(data):
            self.note(summary(data))
            self.last_end = last_type(data)  # Q, S, H or X
            send(data)

        self.conn.send = sending
        self.last_end = None
        self.committed = {"search_path": self.defaults["search_path"],
                          "application_name": app if app is not None else self.defaults["application_name"]}
        self.cur = dict(self.committed)
        self.block = self.failed = self.unsynced = False
        self.lost_unsynced = False  # a Flush batch lost its server: nothing until its Sync
        self.block_at = 0.0
        self.own_apps = {self.committed["application_name"], self.defaults["application_name"]}
        self.note("connect app=%r" % app)

    # ---- steps that know about losses ----

    def step_begin(self):
        self.block_at = time.time()
        super().step_begin()

    def step_end(self, commit):
        if not (commit and not self.failed and self.killer.since(self.block_at)):
            return super().step_end(commit)
        # The block may have lost its server while idle: its COMMIT is then answered ROLLBACK.
        self.conn.send(Q("commit"))
        got = self.conn.expect([b"C", b"Z"], "commit")
        tag = got[0][1].rstrip(b"\0")
        if tag == b"COMMIT":
            self.committed = dict(self.cur)
        elif tag == b"ROLLBACK":
            self.count("commit of a lost block answered ROLLBACK")
            self.cur = dict(self.committed)
        else:
            raise Mismatch("%s: tag %r" % (self.conn.who, tag))
        self.block = self.failed = False
        self.end_of_request(got[-1][1])

    def step_sync(self):
        super().step_sync()
        self.lost_unsynced = False

    def flush_may_hang(self):
        """A block whose server was terminated while it was idle: pgstay answers an extended
        batch ended by a Flush only at its Sync (test_flush_after_lost_block). Not asked for
        when known; when a termination lands meanwhile, the wait is short and noted."""
        return self.block and not self.unsynced and self.killer.since(self.block_at)

    def step_select_extended(self, sync):
        if not sync and self.flush_may_hang():
            sync = True
        return self.flushed(lambda: Player.step_select_extended(self, sync), sync)

    def step_set(self, extended, sync):
        if extended and not sync and self.flush_may_hang():
            sync = True
        return self.flushed(lambda: Player.step_set(self, extended, sync), sync or not extended)

    def flushed(self, fn, sync):
        if sync or not self.block:
            return fn()
        self.conn.s.settimeout(3)
        try:
            return fn()
        except socket.timeout:
            if not self.killer.since(self.block_at):
                raise
            self.known_flush.append("%s (step %d)" % (self.conn.who, self.steps))
            self.note("no answer to a Flush in a block that lost its server: Sync")
            self.conn.s.settimeout(10)
            self.conn.send(SYNC)
            try:
                self.conn.expect([b"E"], "Sync after an unanswered Flush")
            except Lost as lost:
                if lost.code != "08006":
                    raise
            self.lost_unsynced = False
            self.unsynced = True
            self.last_end = "S"
            raise Lost({"C": "08006", "S": "ERROR", "M": "(already read)"}) from None
        finally:
            if self.conn:
                self.conn.s.settimeout(10)

    def recover(self, lost):
        """After the error of a lost server: the rest of the answer, and the model."""
        c = self.conn
        self.note("lost: %s %s (block=%s unsynced=%s, last sent %s)" % (
            lost.code, lost.fields.get("M", "")[:90], self.block, self.unsynced, self.last_end))
        self.count("error %s: %s" % (lost.code, lost.fields.get("M", "")[:70]))
        if lost.fatal:
            self.count("closed after FATAL")
            if not c.closed():
                raise Mismatch("%s: FATAL %s but the connection stays open" % (c.who, lost.code))
            c.close()
            self.conn = None
            return
        before = dict(self.cur)
        if lost.code == "08007":
            # A COMMIT was in flight: it may or may not have committed.
            if self.last_end not in ("Q", "S"):
                raise Mismatch("%s: 08007 after a %r" % (c.who, self.last_end))
            if self.failed:
                before = dict(self.committed)  # a failed block never commits
            self.block = self.failed = False
            self.cur = dict(self.committed)
        elif self.block:
            self.failed = True
            self.cur = dict(self.committed)
        else:
            self.cur = dict(self.committed)
        if self.last_end in ("Q", "S"):
            got = c.expect([b"Z"], "ReadyForQuery after " + lost.code)
            self.unsynced = self.lost_unsynced = False
            self.end_of_request(got[-1][1])
            if not self.block and before != self.cur:
                self.resolve(before)
        else:
            # The batch's answers end with the error; its Sync gets a ReadyForQuery.
            self.unsynced = self.lost_unsynced = True

    def resolve(self, applied):
        """A request that set something was lost outside a block: it may or may not have run,
        so either the settings before it or the ones it made are right (then they stay)."""
        m = self.marker()
        self.conn.send(Q(check_sql(m)))
        got = self.conn.expect([b"T", b"D", b"C", b"Z"], "settings after a loss " + m)
        row = row_of(got)
        if row == [applied["search_path"], applied["application_name"], m]:
            self.count("lost request's SET kept")
            self.cur = dict(applied)
        elif row == [self.cur["search_path"], self.cur["application_name"], m]:
            self.count("lost request's SET dropped")
        else:
            raise Mismatch("%s: after a loss got %r, wanted %r or %r" % (
                self.conn.who, row, self.cur, applied))
        self.end_of_request(got[-1][1])

    def step(self):
        start = time.time()
        try:
            if self.conn is not None and self.lost_unsynced:
                if self.rng.random() < 0.1:
                    return self.leave()
                return self.step_sync()
            return super().step()
        except Lost as lost:
            while True:
                try:
                    return self.recover(lost)
                except Lost as again:
                    lost = again
        except (EOFError, ConnectionResetError, BrokenPipeError) as e:
            if self.conn is None or not self.killer.since(min(start, self.session_at)):
                raise
            self.note("connection closed: %r" % e)
            self.count("closed without FATAL")
            self.conn.close()
            self.conn = None

    def check(self):
        """The checker may lose its server too (its request was running on it): then again."""
        for _ in range(5):
            try:
                return super().check()
            except Lost as lost:
                self.count("checker error %s: %s" % (lost.code, lost.fields.get("M", "")[:70]))
                got = self.checker.expect([b"Z"], "checker ReadyForQuery after " + lost.code)
                if got[-1][1] != b"I":
                    raise Mismatch("checker-%d: ReadyForQuery %r after a loss" % (self.idx, got))
        raise Mismatch("checker-%d lost its server five times in a row" % self.idx)


def show(p, what):
    """Admin console rows as dicts."""
    with psycopg.connect(p.dsn(dbname="pgstay"), autocommit=True, prepare_threshold=None) as c:
        cur = c.execute(what)
        cols = [d.name for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]


@pytest.mark.parametrize("pool_size", [1, 3])
def test_random_interleaving_with_server_losses(cluster1, make_proxy, pool_size):
    p = make_proxy(cluster1, pool_mode="transaction", pool_size=pool_size,
                   query_wait_timeout="10s")
    dflt = defaults(cluster1)
    seed = SEED * 10 + 5 + pool_size
    deadline = time.time() + LOSS_SECONDS
    log = []
    killer = Killer(cluster1, random.Random(seed * 100 + 99), deadline, log)
    players = [LossPlayer(p.port, i, dflt, random.Random(seed * 100 + i), deadline, log, killer)
               for i in range(CLIENTS)]
    errors = []

    def run(pl):
        try:
            pl.run()
        except BaseException as e:  # noqa: BLE001 - reported in the test's thread
            errors.append((pl.idx, e))

    threads = [threading.Thread(target=run, args=(pl,), daemon=True) for pl in players]
    kt = threading.Thread(target=killer.run, daemon=True)
    for t in threads + [kt]:
        t.start()
    for t in threads + [kt]:
        t.join(max(1.0, deadline + 25 - time.time()))
    hung = [pl.idx for pl, t in zip(players, threads) if t.is_alive()]

    def history(idx, n=20):
        own = [e for e in log if e[1] == idx][-n:]
        since = own[0][0] if own else 0
        return "\n".join("  %.3f %s %s" % (ts - deadline + LOSS_SECONDS,
                                           "client-%d.%d" % (i, g) if i >= 0 else "killer", w)
                         for ts, i, g, w in sorted(log) if ts >= since and i in (idx, -1))

    if errors or hung or killer.error or kt.is_alive():
        lines = []
        for idx, e in errors:
            lines.append("client %d: %s: %s\n%s" % (idx, type(e).__name__, e, history(idx)))
        for idx in hung:
            lines.append("client %d hung\n%s" % (idx, history(idx)))
        if killer.error or kt.is_alive():
            lines.append("killer: %r (alive %s)" % (killer.error, kt.is_alive()))
        pytest.fail("seed %d, pool_size %d:\n%s" % (seed, pool_size, "\n".join(lines)))
    foreign = [f for pl in players for f in pl.foreign]
    assert not foreign, "%d ParameterStatus messages with another client's value, first:\n%s" % (
        len(foreign), "\n".join(foreign[:8]))
    total = sum(pl.steps for pl in players)
    assert total > 50, "too few steps: %d" % total
    assert killer.killed >= 5, "too few terminations: %d" % killer.killed

    # Every client gone or idle for a second: no server left in a transient state.
    chk = LConn(p.port, "final-checker", app="chk-final")
    time.sleep(1.0)
    servers = [s for s in show(p, "SHOW SERVERS") if s["state"] != "probe"]
    odd = [s for s in servers if s["state"] not in ("idle", "active")]
    assert not odd, "servers in a transient state: %r" % odd
    held = [s for s in servers if s["client"] is not None]
    assert not held, "servers still linked to a client: %r" % held
    pools = show(p, "SHOW POOLS")
    for pool in pools:
        # cl_active is PgBouncer's: idle clients count (the checker is one); that no client is
        # linked to a server is checked above, from the servers' side
        busy = {k: pool[k] for k in ("cl_waiting", "sv_active", "sv_used", "sv_tested", "sv_login")
                if int(pool[k]) != 0}
        assert not busy, "pool %s/%s not at rest: %r" % (pool["database"], pool["user"], busy)
    chk.send(Q(check_sql("final")))
    got = chk.expect([b"T", b"D", b"C", b"Z"], "final check")
    assert row_of(got) == [dflt["search_path"], "chk-final", "final"] and got[-1][1] == b"I", got
    chk.send(TERM)
    chk.close()

    stats = {}
    for pl in players:
        for k, v in pl.stats.items():
            stats[k] = stats.get(k, 0) + v
    known = [k for pl in players for k in pl.known_flush]
    print("\nseed %d pool_size %d: %d steps, %d terminations, %s%s" % (
        seed, pool_size, total, killer.killed, stats,
        "; Flush of a lost block unanswered: %s" % known if known else ""))


def test_flush_after_lost_block(cluster1, make_proxy):
    """The minimal case the loss walk found: a transaction block whose server was terminated
    while it was idle sends Parse/Bind/Execute/Flush. PostgreSQL (and pgstay, for a block that
    failed on its server) answers a statement of a failed block with an ErrorResponse at once,
    Flush or not; here nothing comes until the Sync (a Flush-waiting client hangs)."""
    p = make_proxy(cluster1, pool_mode="transaction", pool_size=1, query_wait_timeout="10s")
    a = Conn(p.port, "a")
    a.send(Q("begin"))
    a.expect([b"C", b"Z"], "begin")
    # The reference: a block failed on its server answers a Flush batch at once.
    a.send(Q("select 1/0"))
    a.expect([b"E", b"Z"], "1/0")
    a.send(P("select 1") + B() + E() + FLUSH)
    assert error_fields(a.expect([b"E"], "Flush in a failed block")[0][1])["C"] == "25P02"
    a.send(SYNC + Q("rollback") + Q("begin") + Q("select pg_backend_pid()"))
    a.expect([b"Z", b"C", b"Z", b"C", b"Z"], "Sync, rollback, begin")
    pid = int(row_of(a.expect([b"T", b"D", b"C", b"Z"], "pid"))[0])
    with direct(cluster1) as d:
        assert d.execute("select pg_terminate_backend(%s)", (pid,)).fetchone()[0]
    time.sleep(0.5)
    a.send(P("select 1") + B() + E() + FLUSH)
    a.s.settimeout(3)
    try:
        t, body = a.next()
        answered = (t, error_fields(body).get("C") if t == b"E" else body)
    except socket.timeout:
        answered = None
    a.s.settimeout(10)
    a.send(SYNC)
    rest = a.until(b"Z")
    a.send(Q("rollback"))
    after = a.expect([b"C", b"Z"], "rollback")
    a.send(TERM)
    a.close()
    assert after[0][1].rstrip(b"\0") == b"ROLLBACK" and after[-1][1] == b"I", after
    assert answered is not None, ("no answer to the Flush within 3 s; at the Sync: %r" % rest)
    assert answered == (b"E", "08006"), answered


def test_idle_client_request_on_a_terminating_server(cluster1, make_proxy):
    """The other case the loss walk found (its checkers, idle clients, got 08006): a pool
    server idle in the pool is terminated; the request of an idle client, sent once
    pg_terminate_backend has returned, is handed to that server before its FATAL 57P01 arrives
    and fails with 08006 "lost while the statement was running: it may or may not have run"
    (during its setup: it never ran). An idle client must never notice a server's loss. A
    race, lost most of the time (24 of 30 tries on 2 cores); waiting for the backend to exit
    (pg_terminate_backend(pid, 1000)) makes it pass every time."""
    p = make_proxy(cluster1, pool_mode="transaction", pool_size=1, query_wait_timeout="10s")
    a = Conn(p.port, "a", app="app-a")
    b = Conn(p.port, "b", app="app-b")
    failed = []
    with direct(cluster1) as d:
        for i in range(30):
            a.send(Q("select pg_backend_pid()"))
            pid = int(row_of(a.expect([b"T", b"D", b"C", b"Z"], "pid"))[0])
            assert d.execute("select pg_terminate_backend(%s)", (pid,)).fetchone()[0]
            b.send(Q(check_sql("b-%d" % i)))
            got = b.until(b"Z")
            if got[0][0] == b"E":
                f = error_fields(got[0][1])
                failed.append((i, f.get("C"), f.get("M")))
            else:
                assert row_of(got)[1:] == ["app-b", "b-%d" % i], got
    for c in (a, b):
        c.send(TERM)
        c.close()
    assert not failed, "%d of 30 idle requests failed, first: %r" % (len(failed), failed[0])


def test_bare_sync_after_lost_block(cluster1, make_proxy):
    """Found while writing the loss walk: in a block that lost its server, a Sync with nothing
    before it is answered 25P02 + ReadyForQuery(E) by pgstay; PostgreSQL (and pgstay, for a
    block that failed on its server) answers a bare Sync of a failed block with
    ReadyForQuery(E) alone (a Sync is no command)."""
    p = make_proxy(cluster1, pool_mode="transaction", pool_size=1, query_wait_timeout="10s")
    a = Conn(p.port, "a")
    # The reference: a block failed on its server.
    a.send(Q("begin") + Q("select 1/0") + SYNC)
    ref = [t for t, _ in a.until(b"Z") + a.until(b"Z") + a.until(b"Z")]
    assert ref == [b"C", b"Z", b"E", b"Z", b"Z"], ref
    a.send(Q("rollback") + Q("begin") + Q("select pg_backend_pid()"))
    a.expect([b"C", b"Z", b"C", b"Z"], "rollback, begin")
    pid = int(row_of(a.expect([b"T", b"D", b"C", b"Z"], "pid"))[0])
    with direct(cluster1) as d:
        assert d.execute("select pg_terminate_backend(%s, 1000)", (pid,)).fetchone()[0]
    time.sleep(0.3)
    a.send(Q("select 1"))
    got = a.until(b"Z")
    assert [t for t, _ in got] == [b"E", b"Z"] and error_fields(got[0][1])["C"] == "08006", got
    a.send(SYNC)
    got = a.until(b"Z")
    a.send(Q("rollback"))
    after = a.expect([b"C", b"Z"], "rollback")
    a.send(TERM)
    a.close()
    assert after[0][1].rstrip(b"\0") == b"ROLLBACK" and after[-1][1] == b"I", after
    assert [(t, b) for t, b in got] == [(b"Z", b"E")], [
        (t, error_fields(b).get("C") if t == b"E" else b) for t, b in got]
