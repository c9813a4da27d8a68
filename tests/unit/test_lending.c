/* Model check of the lending rule: a real pgstay worker (transaction pooling) runs in this
 * process between test clients and a fake PostgreSQL server, both on non-blocking localhost
 * sockets in the same thread. Random interleavings of client messages (simple and extended
 * protocol, pipelining, Flush, BEGIN/COMMIT, errors), client exits (Terminate, plain close with
 * unsynced work or unread results), server delays, partial answers and server losses are
 * driven step by step; after each step the loop runs until quiescent and every server idle in
 * a pool must have nothing pending, as pgstay sees it and as the fake server (the ground
 * truth) sees it. Clients check that every answer is well framed, that a result row is one of
 * their own (a token echoed by the fake server), and, once the fake server answered
 * everything, that no request of theirs was left unanswered.
 *
 * Each seed runs in a child process (this program again, LENDING_CHILD=pool_size:seed:steps),
 * which prints the last steps of a failing sequence. Environment: LENDING_SEED (first seed),
 * LENDING_RUNS (seeds per pool size), LENDING_STEPS (steps per seed), LENDING_VERBOSE=1 for
 * pgstay's debug log, LENDING_TRACE_RX=1 to add what each client received to the trace. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "client/client.h"
#include "config/config.h"
#include "core/log.h"
#include "app/worker.h"
#include "pool/pool.h"
#include "pool/prepared.h"
#include "proto/proto.h"
#include "server/server.h"
#include "topology/topology.h"

#include "../harness/pgfake.h"

/* ---- random numbers ---- */

static uint64_t rng;

static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

static int pct(int p)
{
    return (int)(rnd() % 100) < p;
}

/* ---- test clients ---- */

struct tcl {
    int fd; /* -1: gone */
    int id;
    int ready;       /* got its first ReadyForQuery (logged in) */
    int fatal;       /* got a FATAL: pgstay closes it */
    int outstanding; /* Queries and Syncs sent, not answered by ReadyForQuery */
    int unsynced;    /* extended messages since its last Sync */
    char txn;        /* from its last ReadyForQuery */
    int noread;      /* steps left not reading what it is sent */
    int seq, last_row;
    int named; /* its named statements so far */
    struct dbuf in, out;
};

#define CL_MAX 8
static struct tcl cl[CL_MAX];
static int next_client_id;

static void c_gone(struct tcl *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    db_free(&c->in);
    db_free(&c->out);
}

static void c_send(struct tcl *c, struct pbuf *b)
{
    db_pbuf(&c->out, b);
    write_some(c->fd, &c->out, SIZE_MAX);
}

/* Check and consume what pgstay sent the client. */
static void c_parse(struct tcl *c)
{
    char types[64];
    int n_got = 0;
    while (c->fd >= 0 && c->in.len >= 5) {
        uint8_t type = c->in.p[0];
        uint32_t len = rd32(c->in.p + 1);
        if (len < 4 || len > (1u << 20) || !proto_be_type_known(type))
            FAILF("client %d: not a well-framed message: type 0x%02x, length %u", c->id, type, len);
        if (c->in.len < 1 + (size_t)len)
            return;
        const uint8_t *body = c->in.p + 5;
        size_t blen = len - 4;
        switch (type) {
        case BE_AUTH:
            if (blen < 4 || rd32(body) != AUTH_REQ_OK || c->ready)
                FAILF("client %d: unexpected authentication message", c->id);
            break;
        case BE_READY:
            if (blen != 1 || !strchr("ITE", body[0]))
                FAILF("client %d: bad ReadyForQuery", c->id);
            if (!c->ready) {
                c->ready = 1;
            } else {
                if (c->outstanding <= 0)
                    FAILF("client %d: a ReadyForQuery it did not ask for", c->id);
                c->outstanding--;
            }
            c->txn = (char)body[0];
            break;
        case BE_DATA_ROW: {
            char want[24], got[64] = "";
            snprintf(want, sizeof(want), "c%d:", c->id);
            struct msg_reader r;
            mr_init(&r, body, blen);
            uint16_t ncol = mr_u16(&r);
            uint32_t l = mr_u32(&r);
            const uint8_t *v = r.bad || l >= sizeof(got) ? NULL : mr_bytes(&r, l);
            if (ncol != 1 || !v)
                FAILF("client %d: a result row that is none of its own", c->id);
            memcpy(got, v, l);
            got[l] = 0;
            if (strncmp(got, want, strlen(want)) != 0)
                FAILF("client %d: got another client's row \"%s\"", c->id, got);
            int seq = atoi(got + strlen(want));
            if (seq <= c->last_row || seq > c->seq)
                FAILF("client %d: row \"%s\" out of order (last %d, sent up to %d)", c->id, got,
                      c->last_row, c->seq);
            c->last_row = seq;
            break;
        }
        case BE_ERROR: {
            struct pg_error e;
            if (proto_parse_error(body, blen, &e) != PROTO_OK)
                FAILF("client %d: malformed ErrorResponse", c->id);
            if (!strcmp(e.severity, "FATAL"))
                c->fatal = 1;
            break;
        }
        case BE_KEY_DATA:
        case BE_PARAM_STATUS:
        case BE_ROW_DESC:
        case BE_COMMAND_COMPLETE:
        case BE_PARSE_COMPLETE:
        case BE_BIND_COMPLETE:
        case BE_CLOSE_COMPLETE:
        case BE_NO_DATA:
        case BE_PARAM_DESC:
        case BE_EMPTY_QUERY:
        case BE_PORTAL_SUSPENDED:
        case BE_NOTICE:
            break;
        default:
            FAILF("client %d: unexpected message '%c'", c->id, type);
        }
        if (n_got < (int)sizeof(types) - 1)
            types[n_got++] = (char)type;
        db_eat(&c->in, 1 + (size_t)len);
    }
    if (n_got && getenv("LENDING_TRACE_RX")) {
        types[n_got] = 0;
        note("client %d: received %s", c->id, types);
    }
}

static long clients_pump(void)
{
    long moved = 0;
    for (int i = 0; i < CL_MAX; i++) {
        struct tcl *c = &cl[i];
        if (c->fd < 0)
            continue;
        ssize_t w = write_some(c->fd, &c->out, SIZE_MAX);
        moved += w > 0 ? w : 0;
        if (c->noread)
            continue;
        ssize_t n = read_some(c->fd, &c->in);
        if (n > 0)
            moved += n;
        c_parse(c);
        if (n < 0) {
            /* Cut in the middle of a message: its server was lost mid-answer (nothing could
             * follow that the client would read right), the one case pgstay closes it. */
            note("client %d: closed by pgstay%s%s", c->id, c->fatal ? " (FATAL)" : "",
                 c->in.len ? " in the middle of a message" : "");
            c_gone(c);
            moved++;
        }
    }
    return moved;
}

static void c_connect(struct tcl *c)
{
    memset(c, 0, sizeof(*c));
    c->id = ++next_client_id;
    c->txn = 'I';
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(c->fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)hcfg.listen_port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    nodelay(c->fd);
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    const char *names[2] = {"user", "database"}, *values[2] = {"app", "app"};
    struct pbuf b;
    pbuf_init(&b);
    proto_build_startup(&b, 2, names, values);
    c_send(c, &b);
}

/* ---- client messages ---- */

static void m_query(struct pbuf *b, const char *sql)
{
    proto_build_query(b, sql);
}

static void m_parse(struct pbuf *b, const char *name, const char *sql)
{
    size_t off = proto_begin_msg(b, FE_PARSE);
    pbuf_put_str(b, name);
    pbuf_put_str(b, sql);
    pbuf_put_u16(b, 0);
    proto_end_msg(b, off);
}

static void m_bind(struct pbuf *b, const char *stmt)
{
    size_t off = proto_begin_msg(b, FE_BIND);
    pbuf_put_str(b, "");
    pbuf_put_str(b, stmt);
    pbuf_put_u16(b, 0);
    pbuf_put_u16(b, 0);
    pbuf_put_u16(b, 0);
    proto_end_msg(b, off);
}

static void m_describe(struct pbuf *b, uint8_t kind, const char *name)
{
    size_t off = proto_begin_msg(b, FE_DESCRIBE);
    pbuf_put_u8(b, kind);
    pbuf_put_str(b, name);
    proto_end_msg(b, off);
}

static void m_execute(struct pbuf *b)
{
    size_t off = proto_begin_msg(b, FE_EXECUTE);
    pbuf_put_str(b, "");
    pbuf_put_u32(b, 0);
    proto_end_msg(b, off);
}

static void m_close(struct pbuf *b, uint8_t kind, const char *name)
{
    size_t off = proto_begin_msg(b, FE_CLOSE);
    pbuf_put_u8(b, kind);
    pbuf_put_str(b, name);
    proto_end_msg(b, off);
}

static void m_empty(struct pbuf *b, uint8_t type)
{
    size_t off = proto_begin_msg(b, type);
    proto_end_msg(b, off);
}

/* A statement text carrying the client's token (a row comes back unless it fails first). */
static void stmt_text(struct tcl *c, char *sql, size_t cap, int fail)
{
    c->seq++;
    snprintf(sql, cap, "SELECT 'c%d:%d'%s", c->id, c->seq, fail ? " AS error" : "");
}

/* The test clients, printed with a failure (after pgstay's state). */
static void dump_clients(void)
{
    for (int i = 0; i < CL_MAX; i++)
        if (cl[i].fd >= 0) {
            struct sockaddr_in sin;
            socklen_t l = sizeof(sin);
            getsockname(cl[i].fd, (struct sockaddr *)&sin, &l);
            fprintf(stderr,
                    "  client %d (fd %d port %d): ready %d outstanding %d unsynced %d txn %c in "
                    "%zu out %zu\n",
                    cl[i].id, cl[i].fd, ntohs(sin.sin_port), cl[i].ready, cl[i].outstanding,
                    cl[i].unsynced, cl[i].txn, cl[i].in.len, cl[i].out.len);
        }
}

/* ---- settling: the fake server answers everything, clients end what they hold ---- */

static void release_all(void)
{
    for (int i = 0; i < fs.n; i++) {
        fs.c[i].hold = 0;
        fs.c[i].wlimit = -1;
    }
}

static void settle_and_check_answered(void)
{
    for (int i = 0; i < CL_MAX; i++)
        cl[i].noread = 0;
    for (int round = 0; round < 2 * CL_MAX + 4; round++) {
        release_all();
        quiesce();
        check_invariant();
        /* A client with an open transaction or unsynced messages holds its server: it ends
         * them, so that clients waiting for the pool get theirs. */
        int sent = 0;
        for (int i = 0; i < CL_MAX; i++) {
            struct tcl *c = &cl[i];
            if (c->fd < 0 || !c->ready || c->fatal || (c->outstanding && !c->unsynced))
                continue;
            struct pbuf b;
            pbuf_init(&b);
            if (c->unsynced) {
                m_empty(&b, FE_SYNC);
                c->unsynced = 0;
            } else if (c->txn != 'I') {
                m_query(&b, "ROLLBACK");
            } else {
                pbuf_free(&b);
                continue;
            }
            note("settle: client %d ends its %s", c->id, b.data[0] == FE_SYNC ? "batch" : "txn");
            c->outstanding++;
            c_send(c, &b);
            sent = 1;
        }
        if (!sent)
            break;
    }
    release_all();
    quiesce();
    check_invariant();
    for (int i = 0; i < CL_MAX; i++) {
        struct tcl *c = &cl[i];
        if (c->fd < 0 || c->fatal)
            continue;
        if (!c->ready)
            FAILF("client %d: never welcomed", c->id);
        if (c->outstanding)
            FAILF("client %d: %d request(s) never answered", c->id, c->outstanding);
    }
}

/* ---- random steps ---- */

static struct tcl *pick_client(void)
{
    int n = 0, idx[CL_MAX];
    for (int i = 0; i < CL_MAX; i++)
        if (cl[i].fd >= 0 && cl[i].ready && !cl[i].fatal)
            idx[n++] = i;
    return n ? &cl[idx[rnd() % (unsigned)n]] : NULL;
}

static struct fconn *pick_backend(int busy_first)
{
    int n = 0, idx[FS_MAX];
    for (int pass = busy_first ? 0 : 1; pass < 2 && n == 0; pass++)
        for (int i = 0; i < fs.n; i++) {
            struct fconn *f = &fs.c[i];
            if (f->fd < 0 || !f->started || f->probe)
                continue;
            if (pass == 0 && !(f->in.len || f->hold || f->unsynced || f->txn != 'I'))
                continue;
            idx[n++] = i;
        }
    return n ? &fs.c[idx[rnd() % (unsigned)n]] : NULL;
}

static void step_client(struct tcl *c)
{
    struct pbuf b;
    pbuf_init(&b);
    char sql[96], name[16];
    int r = (int)(rnd() % 100);
    if (c->unsynced && (r < 36 || (r >= 81 && r < 85))) {
        /* A simple Query after unsynced extended messages: libpq syncs first (PostgreSQL
         * would ignore the Query after an error in them). */
        m_empty(&b, FE_SYNC);
        c->outstanding++;
        c->unsynced = 0;
        note("client %d: Sync before its Query", c->id);
    }
    if (r < 22) {
        stmt_text(c, sql, sizeof(sql), 0);
        m_query(&b, sql);
        c->outstanding++;
        c->unsynced = 0;
        note("client %d: Query %s", c->id, sql);
    } else if (r < 30) {
        const char *t = pct(60) ? "BEGIN" : pct(60) ? "COMMIT" : "ROLLBACK";
        m_query(&b, t);
        c->outstanding++;
        c->unsynced = 0;
        note("client %d: Query %s", c->id, t);
    } else if (r < 36) {
        stmt_text(c, sql, sizeof(sql), 1);
        m_query(&b, sql);
        c->outstanding++;
        c->unsynced = 0;
        note("client %d: Query %s (fails)", c->id, sql);
    } else if (r < 60) {
        /* Parse/Bind/Describe/Execute of a fresh statement, then Sync, Flush or nothing. */
        int fail = pct(10);
        stmt_text(c, sql, sizeof(sql), fail);
        name[0] = 0;
        if (pct(30))
            snprintf(name, sizeof(name), "s%d", (int)(rnd() % 3));
        m_parse(&b, name, sql);
        m_bind(&b, name);
        if (pct(50))
            m_describe(&b, 'P', "");
        m_execute(&b);
        c->unsynced += 3;
        int end = (int)(rnd() % 3);
        if (end == 0) {
            m_empty(&b, FE_SYNC);
            c->outstanding++;
            c->unsynced = 0;
        } else if (end == 1) {
            m_empty(&b, FE_FLUSH);
        }
        note("client %d: Parse \"%s\" %s/Bind/Execute%s", c->id, name, sql,
             end == 0   ? "/Sync"
             : end == 1 ? "/Flush"
                        : " (unsynced)");
    } else if (r < 64) {
        snprintf(name, sizeof(name), "s%d", (int)(rnd() % 3));
        m_close(&b, 'S', name);
        c->unsynced++;
        note("client %d: Close %s", c->id, name);
    } else if (r < 66) {
        m_parse(&b, "", pct(50) ? "BEGIN" : "COMMIT");
        m_bind(&b, "");
        m_execute(&b);
        m_empty(&b, FE_SYNC);
        c->outstanding++;
        c->unsynced = 0;
        note("client %d: extended BEGIN/COMMIT + Sync", c->id);
    } else if (r < 78) {
        m_empty(&b, FE_SYNC);
        c->outstanding++;
        c->unsynced = 0;
        note("client %d: Sync", c->id);
    } else if (r < 81) {
        m_empty(&b, FE_FLUSH);
        note("client %d: Flush", c->id);
    } else if (r < 85) {
        /* Pipelined: two Queries at once. */
        stmt_text(c, sql, sizeof(sql), 0);
        m_query(&b, sql);
        stmt_text(c, sql, sizeof(sql), pct(30));
        m_query(&b, sql);
        c->outstanding += 2;
        c->unsynced = 0;
        note("client %d: two Queries pipelined", c->id);
    } else if (r < 89) {
        c->noread = 1 + (int)(rnd() % 4);
        pbuf_free(&b);
        note("client %d: stops reading for %d steps", c->id, c->noread);
        return;
    } else if (r < 94) {
        m_empty(&b, FE_TERMINATE);
        db_pbuf(&c->out, &b);
        write_some(c->fd, &c->out, SIZE_MAX);
        note("client %d: Terminate (outstanding %d, unsynced %d, txn %c)", c->id, c->outstanding,
             c->unsynced, c->txn);
        c_gone(c);
        return;
    } else {
        pbuf_free(&b);
        note("client %d: plain close (outstanding %d, unsynced %d, txn %c, unread %zu)", c->id,
             c->outstanding, c->unsynced, c->txn, c->in.len);
        c_gone(c);
        return;
    }
    c_send(c, &b);
}

static void step(void)
{
    /* Held backends and deaf clients count down. */
    for (int i = 0; i < fs.n; i++) {
        struct fconn *f = &fs.c[i];
        if (f->hold > 0 && --f->hold == 0)
            note("backend %u: answers again", f->pid);
        if (f->wlimit >= 0 && f->hold == 0 && pct(50)) {
            f->wlimit = -1;
            note("backend %u: sends the rest", f->pid);
        }
    }
    for (int i = 0; i < CL_MAX; i++)
        if (cl[i].noread > 0)
            cl[i].noread--;
    int r = (int)(rnd() % 100);
    if (r < 8) {
        for (int i = 0; i < CL_MAX; i++) {
            if (cl[i].fd < 0) {
                c_connect(&cl[i]);
                note("client %d: connects", cl[i].id);
                return;
            }
        }
        r = 20;
    }
    if (r < 14) {
        struct fconn *f = pick_backend(0);
        if (f) {
            f->hold = 1 + (int)(rnd() % 5);
            note("backend %u: holds its answers for %d steps", f->pid, f->hold);
            return;
        }
    } else if (r < 18) {
        struct fconn *f = pick_backend(0);
        if (f) {
            f->wlimit = 1 + (long)(rnd() % 24);
            f->hold = 0;
            note("backend %u: sends only %ld more bytes for now", f->pid, f->wlimit);
            return;
        }
    } else if (r < 22) {
        struct fconn *f = pick_backend(pct(70));
        if (f) {
            /* Lost: a crash (the connection just closes), or pg_terminate_backend (a FATAL
             * 57P01 goes out first, after whatever it had sent). */
            int fatal = pct(30);
            note("backend %u: %s (unanswered %zu, txn %c, unsynced %d)", f->pid,
                 fatal ? "terminated (FATAL 57P01)" : "connection lost", f->in.len, f->txn,
                 f->unsynced);
            if (fatal) {
                struct pbuf b;
                pbuf_init(&b);
                proto_build_error(&b, "FATAL", "57P01",
                                  "terminating connection due to administrator command", NULL);
                db_pbuf(&f->out, &b);
                write_some(f->fd, &f->out, SIZE_MAX);
            }
            f_close(f);
            return;
        }
    }
    struct tcl *c = pick_client();
    if (c)
        step_client(c);
}

/* ---- one run ---- */

static void lending_stop(void)
{
    for (int i = 0; i < CL_MAX; i++)
        c_gone(&cl[i]);
    worker_stop();
}

static uint64_t env_u64(const char *name, uint64_t dflt)
{
    const char *v = getenv(name);
    return v && *v ? strtoull(v, NULL, 0) : dflt;
}

static void run(uint64_t seed, int pool_size, int steps)
{
    cur_seed = seed;
    cur_step = 0;
    trace_reset();
    rng = seed * 0x9E3779B97F4A7C15ull + 1;
    next_client_id = 0;
    for (int i = 0; i < CL_MAX; i++)
        cl[i].fd = -1;
    fs_start();
    char settings[96];
    snprintf(settings, sizeof(settings), "pool_mode = transaction\npool_size = %d\n", pool_size);
    worker_start(settings, 1);
    int nc = 2 + (int)(rnd() % 4);
    for (int i = 0; i < nc; i++) {
        c_connect(&cl[i]);
        note("client %d: connects", cl[i].id);
    }
    for (cur_step = 1; cur_step <= steps; cur_step++) {
        step();
        quiesce();
        check_invariant();
        if (cur_step % 97 == 0)
            settle_and_check_answered();
    }
    settle_and_check_answered();
    lending_stop();
}

/* Each seed runs in a process of its own (this program again): libpg_query cannot be used
 * again once a worker's cleanup released it, and a crash names its seed. */
static void random_runs(int pool_size, uint64_t seed0)
{
    seed0 = env_u64("LENDING_SEED", seed0);
    int runs = (int)env_u64("LENDING_RUNS", 3);
    int steps = (int)env_u64("LENDING_STEPS", 700);
    for (int i = 0; i < runs; i++) {
        uint64_t seed = seed0 + (uint64_t)i;
        printf("lending: pool_size %d, seed %llu, %d steps\n", pool_size, (unsigned long long)seed,
               steps);
        fflush(stdout);
        fflush(stderr);
        char arg[64];
        snprintf(arg, sizeof(arg), "%d:%llu:%d", pool_size, (unsigned long long)seed, steps);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            setenv("LENDING_CHILD", arg, 1);
            execl("/proc/self/exe", "test_lending", (char *)NULL);
            _exit(127);
        }
        int status = 0;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            fail_msg("pool_size %d, seed %llu failed (replay: LENDING_SEED=%llu LENDING_RUNS=1)",
                     pool_size, (unsigned long long)seed, (unsigned long long)seed);
    }
}

static void test_pool_size_1(void **state)
{
    random_runs(1, 1000);
}

static void test_pool_size_2(void **state)
{
    random_runs(2, 2000);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    harness_pump_extra = clients_pump;
    harness_dump_extra = dump_clients;
    log_verbosity = env_u64("LENDING_VERBOSE", 0) ? LOG_DEBUG : LOG_ERROR;
    const char *child = getenv("LENDING_CHILD");
    if (child) {
        /* One seed, outside cmocka's runner: a failed check exits non-zero. */
        int pool_size = 0, steps = 0;
        unsigned long long seed = 0;
        if (sscanf(child, "%d:%llu:%d", &pool_size, &seed, &steps) != 3)
            return 2;
        run(seed, pool_size, steps);
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool_size_1),
        cmocka_unit_test(test_pool_size_2),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
