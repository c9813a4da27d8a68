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

/* ---- random numbers and the trace printed on failure ---- */

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

#define TRACE_N 64
static char trace[TRACE_N][120];
static int trace_n;
static uint64_t cur_seed;
static int cur_step;

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *t = trace[trace_n++ % TRACE_N];
    int n = snprintf(t, sizeof(trace[0]), "%5d ", cur_step);
    vsnprintf(t + n, sizeof(trace[0]) - (size_t)n, fmt, ap);
    va_end(ap);
}

/* Fail with the seed and the last steps, so the sequence can be replayed and shrunk. */
#define FAILF(...)                                                                                 \
    do {                                                                                           \
        dump_trace();                                                                              \
        fail_msg(__VA_ARGS__);                                                                     \
    } while (0)

static void dump_pgstay(void);

static void dump_trace(void)
{
    dump_pgstay();
    fprintf(stderr, "lending model check failed: seed %llu, step %d; last steps:\n",
            (unsigned long long)cur_seed, cur_step);
    int from = trace_n > TRACE_N ? trace_n - TRACE_N : 0;
    for (int i = from; i < trace_n; i++)
        fprintf(stderr, "  %s\n", trace[i % TRACE_N]);
}

/* ---- byte buffers ---- */

struct dbuf {
    uint8_t *p;
    size_t len, cap;
};

static void db_add(struct dbuf *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->len + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        assert_non_null(b->p);
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void db_eat(struct dbuf *b, size_t n)
{
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

static void db_free(struct dbuf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

static void db_pbuf(struct dbuf *b, struct pbuf *pb)
{
    assert_false(pb->failed);
    db_add(b, pb->data, pb->len);
    pbuf_free(pb);
}

static uint32_t rd32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* Read what is there; returns bytes read, -1 at EOF or error. */
static ssize_t read_some(int fd, struct dbuf *b)
{
    ssize_t total = 0;
    for (;;) {
        uint8_t tmp[16384];
        ssize_t n = recv(fd, tmp, sizeof(tmp), MSG_DONTWAIT);
        if (n > 0) {
            db_add(b, tmp, (size_t)n);
            total += n;
            continue;
        }
        if (n == 0)
            return -1;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return total;
        return -1;
    }
}

/* Write up to limit bytes of b; returns bytes written, -1 on error. */
static ssize_t write_some(int fd, struct dbuf *b, size_t limit)
{
    size_t n = b->len < limit ? b->len : limit;
    if (n == 0)
        return 0;
    ssize_t w = send(fd, b->p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -1;
    db_eat(b, (size_t)w);
    return w;
}

/* As libpq and PostgreSQL do: without it a small message waits for the peer's delayed ACK
 * (Nagle), and the loop looks quiescent while a message is still on its way. */
static void nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static int unread_bytes(int fd)
{
    int n = 0;
    if (fd < 0 || ioctl(fd, FIONREAD, &n) < 0)
        return 0;
    return n;
}

/* ---- the fake PostgreSQL server ---- */

struct fstmt {
    char *name;
    char *text;
};

struct fconn {
    int fd; /* -1: closed */
    int started, probe;
    uint32_t pid;
    struct dbuf in;   /* received, not processed yet (while held) */
    struct dbuf obuf; /* extended-protocol answers not flushed yet (no Flush/Sync so far) */
    struct dbuf out;  /* to write */
    int hold;         /* steps left before it answers again (0: answers at once) */
    long wlimit;      /* bytes it may still write before stopping (partial answer); -1: any */
    char txn;         /* 'I', 'T', 'E' */
    int skipping;     /* an extended-protocol error: messages ignored up to Sync */
    int unsynced;     /* extended-protocol messages since the last Sync */
    struct fstmt *stmts;
    int n_stmts, cap_stmts;
    char *portal; /* the unnamed portal's statement text */
};

#define FS_MAX 256

static struct fs {
    int lfd;
    int port;
    struct fconn c[FS_MAX];
    int n;
    uint32_t next_pid;
} fs;

static struct fstmt *f_find(struct fconn *c, const char *name)
{
    for (int i = 0; i < c->n_stmts; i++)
        if (!strcmp(c->stmts[i].name, name))
            return &c->stmts[i];
    return NULL;
}

static void f_del(struct fconn *c, const char *name)
{
    struct fstmt *s = f_find(c, name);
    if (!s)
        return;
    free(s->name);
    free(s->text);
    *s = c->stmts[--c->n_stmts];
}

static void f_add(struct fconn *c, const char *name, const char *text)
{
    f_del(c, name);
    if (c->n_stmts == c->cap_stmts) {
        c->cap_stmts = c->cap_stmts ? c->cap_stmts * 2 : 8;
        c->stmts = realloc(c->stmts, (size_t)c->cap_stmts * sizeof(*c->stmts));
        assert_non_null(c->stmts);
    }
    c->stmts[c->n_stmts].name = strdup(name);
    c->stmts[c->n_stmts].text = strdup(text);
    c->n_stmts++;
}

static void f_clear_stmts(struct fconn *c)
{
    while (c->n_stmts > 0)
        f_del(c, c->stmts[0].name);
    free(c->portal);
    c->portal = NULL;
}

static void f_close(struct fconn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    db_free(&c->in);
    db_free(&c->obuf);
    db_free(&c->out);
    f_clear_stmts(c);
    free(c->stmts);
    c->stmts = NULL;
    c->cap_stmts = 0;
}

static struct fconn *f_by_pid(uint32_t pid)
{
    for (int i = 0; i < fs.n; i++)
        if (fs.c[i].fd >= 0 && fs.c[i].pid == pid)
            return &fs.c[i];
    return NULL;
}

/* Has the backend received something it owes an answer to? A Flush with nothing unflushed
 * asks for nothing (a client's bare Flush is forwarded, and its server lent back at once). */
static int f_unanswered(const struct fconn *c)
{
    size_t off = 0;
    while (off < c->in.len) {
        if (c->in.len - off < 5 || c->in.p[off] != FE_FLUSH || rd32(c->in.p + off + 1) != 4)
            return 1;
        off += 5;
    }
    return 0;
}

static void f_error(struct dbuf *o, const char *state, const char *msg)
{
    struct pbuf b;
    pbuf_init(&b);
    proto_build_error(&b, "ERROR", state, msg, NULL);
    db_pbuf(o, &b);
}

static void f_empty_msg(struct dbuf *o, uint8_t type)
{
    uint8_t m[5] = {type, 0, 0, 0, 4};
    db_add(o, m, sizeof(m));
}

/* Does the statement start with word (case-insensitive, after blanks)? */
static int starts(const char *q, const char *word)
{
    while (*q == ' ' || *q == '\n' || *q == '\t')
        q++;
    size_t n = strlen(word);
    return strncasecmp(q, word, n) == 0 && (q[n] == 0 || q[n] == ' ' || q[n] == ';');
}

static int is_txn_end(const char *q)
{
    return starts(q, "COMMIT") || starts(q, "END") || starts(q, "ROLLBACK") || starts(q, "ABORT");
}

/* A client's token: the text between the first pair of single quotes. */
static int token_of(const char *q, char *tok, size_t cap)
{
    const char *a = strchr(q, '\'');
    const char *b = a ? strchr(a + 1, '\'') : NULL;
    if (!b || (size_t)(b - a - 1) >= cap)
        return 0;
    memcpy(tok, a + 1, (size_t)(b - a - 1));
    tok[b - a - 1] = 0;
    return 1;
}

static int has_rows(const char *q)
{
    char tok[64];
    return strstr(q, "pg_is_in_recovery") || (starts(q, "SELECT") && token_of(q, tok, sizeof(tok)));
}

static void f_row_desc(struct dbuf *o, const char *q)
{
    struct pbuf b;
    pbuf_init(&b);
    if (strstr(q, "pg_is_in_recovery")) {
        const char *names[4] = {"pg_is_in_recovery", "timeline", "lsn", "system_identifier"};
        proto_build_row_desc(&b, 4, names);
    } else {
        const char *names[1] = {"token"};
        proto_build_row_desc(&b, 1, names);
    }
    db_pbuf(o, &b);
}

/* Run one statement as PostgreSQL would; rowdesc: a simple Query (RowDescription first).
 * Returns -1 after an ErrorResponse. */
static int f_exec(struct fconn *c, const char *q, struct dbuf *o, int rowdesc)
{
    struct pbuf b;
    pbuf_init(&b);
    if (c->txn == 'E' && !is_txn_end(q)) {
        pbuf_free(&b);
        f_error(o, "25P02",
                "current transaction is aborted, commands ignored until end of "
                "transaction block");
        return -1;
    }
    if (strstr(q, "error")) {
        pbuf_free(&b);
        f_error(o, "42000", "the statement failed as asked");
        if (c->txn == 'T')
            c->txn = 'E';
        return -1;
    }
    if (starts(q, "BEGIN") || starts(q, "START")) {
        if (c->txn == 'I')
            c->txn = 'T';
        proto_build_command_complete(&b, "BEGIN");
    } else if (starts(q, "COMMIT") || starts(q, "END")) {
        proto_build_command_complete(&b, c->txn == 'E' ? "ROLLBACK" : "COMMIT");
        c->txn = 'I';
    } else if (starts(q, "ROLLBACK") || starts(q, "ABORT")) {
        proto_build_command_complete(&b, "ROLLBACK");
        c->txn = 'I';
    } else if (starts(q, "DISCARD")) {
        if (c->txn != 'I') {
            pbuf_free(&b);
            f_error(o, "25001", "DISCARD ALL cannot run inside a transaction block");
            c->txn = 'E';
            return -1;
        }
        f_clear_stmts(c);
        proto_build_command_complete(&b, "DISCARD ALL");
    } else if (starts(q, "SET")) {
        proto_build_command_complete(&b, "SET");
    } else if (starts(q, "RESET")) {
        proto_build_command_complete(&b, "RESET");
    } else if (strstr(q, "pg_is_in_recovery")) {
        if (rowdesc)
            f_row_desc(o, q);
        const char *vals[4] = {"f", "1", "0/3000000", "7000000000000000001"};
        proto_build_data_row(&b, 4, vals);
        proto_build_command_complete(&b, "SELECT 1");
    } else if (has_rows(q)) {
        char tok[64];
        token_of(q, tok, sizeof(tok));
        if (rowdesc)
            f_row_desc(o, q);
        const char *vals[1] = {tok};
        proto_build_data_row(&b, 1, vals);
        proto_build_command_complete(&b, "SELECT 1");
    } else {
        proto_build_command_complete(&b, "SELECT 0");
    }
    db_pbuf(o, &b);
    return 0;
}

static void f_ready(struct fconn *c, struct dbuf *o)
{
    struct pbuf b;
    pbuf_init(&b);
    proto_build_ready(&b, c->txn);
    db_pbuf(o, &b);
}

static void f_startup(struct fconn *c, const uint8_t *p, uint32_t len)
{
    struct startup_pkt sp;
    const char *err = NULL;
    assert_int_equal(proto_parse_startup(p, len, &sp, &err), PROTO_OK);
    if (sp.code == PROTO_SSL_CODE || sp.code == PROTO_GSSENC_CODE) {
        db_add(&c->out, "N", 1);
        return;
    }
    if (sp.code == PROTO_CANCEL_CODE) {
        f_close(c);
        return;
    }
    assert_int_equal(sp.code, PROTO_V3);
    const char *app = startup_param(&sp, "application_name");
    c->probe = app && !strcmp(app, "pgstay-probe");
    c->started = 1;
    c->pid = fs.next_pid++;
    c->txn = 'I';
    struct pbuf b;
    pbuf_init(&b);
    proto_build_auth(&b, AUTH_REQ_OK, NULL, 0);
    proto_build_param_status(&b, "server_version", "16.4");
    proto_build_param_status(&b, "server_encoding", "UTF8");
    proto_build_param_status(&b, "client_encoding", "UTF8");
    proto_build_param_status(&b, "DateStyle", "ISO, MDY");
    proto_build_param_status(&b, "integer_datetimes", "on");
    proto_build_param_status(&b, "standard_conforming_strings", "on");
    proto_build_param_status(&b, "TimeZone", "UTC");
    proto_build_param_status(&b, "application_name", app ? app : "");
    proto_build_key_data(&b, c->pid, c->pid * 7u + 1u);
    proto_build_ready(&b, 'I');
    db_pbuf(&c->out, &b);
}

static void f_flush(struct fconn *c)
{
    if (c->obuf.len) {
        db_add(&c->out, c->obuf.p, c->obuf.len);
        c->obuf.len = 0;
    }
}

/* One whole message of an established connection. */
static void f_message(struct fconn *c, uint8_t type, const uint8_t *body, size_t len)
{
    struct msg_reader r;
    mr_init(&r, body, len);
    struct dbuf *o = &c->obuf;
    if (type == FE_TERMINATE) {
        f_close(c);
        return;
    }
    if (c->skipping && type != FE_SYNC) {
        /* After an extended-protocol error PostgreSQL ignores everything up to Sync, a simple
         * Query included (the test clients sync before a Query, as libpq does). */
        if (type != FE_FLUSH)
            c->unsynced++;
        return;
    }
    if (type == FE_QUERY) {
        /* A Query ends the implicit transaction of unsynced extended messages, as Sync does. */
        c->unsynced = 0;
        /* Statements split at ';' (no test SQL has one inside a literal). */
        char *q = strndup((const char *)body, len);
        assert_non_null(q);
        int any = 0;
        char *save = NULL;
        for (char *st = strtok_r(q, ";", &save); st; st = strtok_r(NULL, ";", &save)) {
            while (*st == ' ')
                st++;
            if (!*st)
                continue;
            any = 1;
            if (f_exec(c, st, o, 1) < 0)
                break;
        }
        if (!any)
            f_empty_msg(o, BE_EMPTY_QUERY);
        free(q);
        free(c->portal);
        c->portal = NULL;
        f_del(c, "");
        f_ready(c, o);
        f_flush(c);
        return;
    }
    if (type == FE_SYNC) {
        c->skipping = 0;
        c->unsynced = 0;
        if (c->txn == 'I') {
            free(c->portal);
            c->portal = NULL;
        }
        f_ready(c, o);
        f_flush(c);
        return;
    }
    if (type == FE_FLUSH) {
        f_flush(c);
        return;
    }
    c->unsynced++;
    switch (type) {
    case FE_PARSE: {
        const char *name = mr_str(&r), *q = mr_str(&r);
        assert_false(r.bad);
        if (c->txn == 'E' && !is_txn_end(q)) {
            f_error(o, "25P02", "current transaction is aborted");
            c->skipping = 1;
            return;
        }
        if (*name && f_find(c, name)) {
            f_error(o, "42P05", "prepared statement already exists");
            if (c->txn == 'T')
                c->txn = 'E';
            c->skipping = 1;
            return;
        }
        f_add(c, name, q);
        f_empty_msg(o, BE_PARSE_COMPLETE);
        return;
    }
    case FE_BIND: {
        mr_str(&r);
        const char *stmt = mr_str(&r);
        struct fstmt *s = f_find(c, stmt);
        if (!s || (c->txn == 'E' && !is_txn_end(s->text))) {
            f_error(o, s ? "25P02" : "26000",
                    s ? "current transaction is aborted" : "prepared statement does not exist");
            if (c->txn == 'T')
                c->txn = 'E';
            c->skipping = 1;
            return;
        }
        free(c->portal);
        c->portal = strdup(s->text);
        f_empty_msg(o, BE_BIND_COMPLETE);
        return;
    }
    case FE_DESCRIBE: {
        uint8_t kind = mr_u8(&r);
        const char *name = mr_str(&r);
        const char *text = NULL;
        if (kind == 'S') {
            struct fstmt *s = f_find(c, name);
            text = s ? s->text : NULL;
        } else if (!*name) {
            text = c->portal;
        }
        if (!text) {
            f_error(o, kind == 'S' ? "26000" : "34000", "no such statement or portal");
            if (c->txn == 'T')
                c->txn = 'E';
            c->skipping = 1;
            return;
        }
        if (kind == 'S') {
            uint8_t t[7] = {BE_PARAM_DESC, 0, 0, 0, 6, 0, 0};
            db_add(o, t, sizeof(t));
        }
        if (has_rows(text))
            f_row_desc(o, text);
        else
            f_empty_msg(o, BE_NO_DATA);
        return;
    }
    case FE_EXECUTE: {
        const char *portal = mr_str(&r);
        if (*portal || !c->portal) {
            f_error(o, "34000", "portal does not exist");
            if (c->txn == 'T')
                c->txn = 'E';
            c->skipping = 1;
            return;
        }
        char *text = strdup(c->portal);
        if (f_exec(c, text, o, 0) < 0)
            c->skipping = 1;
        free(text);
        return;
    }
    case FE_CLOSE: {
        uint8_t kind = mr_u8(&r);
        const char *name = mr_str(&r);
        if (kind == 'S')
            f_del(c, name);
        else if (!*name) {
            free(c->portal);
            c->portal = NULL;
        }
        f_empty_msg(o, BE_CLOSE_COMPLETE);
        return;
    }
    default:
        FAILF("fake server: unexpected message '%c' from pgstay", type);
    }
}

/* Process the whole messages received (unless held). */
static void f_process(struct fconn *c)
{
    while (c->fd >= 0 && !c->hold) {
        if (!c->started) {
            if (c->in.len < 4)
                return;
            uint32_t len = rd32(c->in.p);
            assert_true(len >= 8 && len < 10000);
            if (c->in.len < len)
                return;
            uint8_t pkt[10000];
            memcpy(pkt, c->in.p, len);
            db_eat(&c->in, len);
            f_startup(c, pkt, len);
            continue;
        }
        if (c->in.len < 5)
            return;
        uint32_t len = rd32(c->in.p + 1);
        if (len < 4 || len > (1u << 24))
            FAILF("fake server: bad message length %u from pgstay", len);
        if (c->in.len < 1 + (size_t)len)
            return;
        uint8_t type = c->in.p[0];
        uint8_t *m = malloc(len);
        assert_non_null(m);
        memcpy(m, c->in.p + 5, len - 4);
        db_eat(&c->in, 1 + (size_t)len);
        f_message(c, type, m, len - 4);
        free(m);
    }
}

/* Accept, read, answer, write. Returns the bytes moved. */
static long fs_pump(void)
{
    long moved = 0;
    for (;;) {
        int fd = accept(fs.lfd, NULL, NULL);
        if (fd < 0)
            break;
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        nodelay(fd);
        int slot = 0;
        while (slot < fs.n && fs.c[slot].fd >= 0)
            slot++;
        if (slot == FS_MAX)
            FAILF("fake server: more than %d connections at once", FS_MAX);
        if (slot == fs.n)
            fs.n++;
        struct fconn *c = &fs.c[slot];
        memset(c, 0, sizeof(*c));
        c->fd = fd;
        c->wlimit = -1;
        c->txn = 'I';
        moved++;
    }
    for (int i = 0; i < fs.n; i++) {
        struct fconn *c = &fs.c[i];
        if (c->fd < 0)
            continue;
        ssize_t n = read_some(c->fd, &c->in);
        if (n < 0) {
            f_close(c); /* pgstay closed it */
            moved++;
            continue;
        }
        moved += n;
        f_process(c);
        if (c->fd < 0)
            continue;
        size_t limit = c->wlimit < 0 ? SIZE_MAX : (size_t)c->wlimit;
        ssize_t w = write_some(c->fd, &c->out, limit);
        if (w < 0) {
            f_close(c);
            continue;
        }
        if (c->wlimit >= 0)
            c->wlimit -= w;
        moved += w;
    }
    return moved;
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

static struct worker w;
static struct config cfg;
static char tmpdir[64];

static void c_connect(struct tcl *c)
{
    memset(c, 0, sizeof(*c));
    c->id = ++next_client_id;
    c->txn = 'I';
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(c->fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)cfg.listen_port)};
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

/* ---- the worker and the loop ---- */

/* Read-only walk of one of pgstay's lists. */
#define list_for_each(pos, head) for ((pos) = (head)->next; (pos) != (head); (pos) = (pos)->next)

/* Run everything until nothing moves: fake server, clients and pgstay's loop. */
static void quiesce(void)
{
    int idle = 0;
    for (int round = 0; round < 20000; round++) {
        long moved = fs_pump() + clients_pump();
        event_base_loop(w.base, EVLOOP_NONBLOCK);
        int unread = 0;
        for (int st = 0; st < SV_NSTATES; st++) {
            struct list *pos;
            list_for_each(pos, &w.servers[st])
            {
                struct server *s = container_of(pos, struct server, node);
                if (conn_fd(&s->conn) >= 0 && st != SV_CLOSING)
                    unread += unread_bytes(conn_fd(&s->conn));
            }
        }
        for (int st = 0; st < CL_NSTATES; st++) {
            struct list *pos;
            list_for_each(pos, &w.clients[st])
            {
                struct client *c = container_of(pos, struct client, node);
                if (conn_fd(&c->conn) >= 0 && st != CL_CLOSING)
                    unread += unread_bytes(conn_fd(&c->conn));
            }
        }
        /* A client whose server was terminated in the middle of something waits (on a timer)
         * for a probe to tell an administrator's kill from a shutdown: not quiescent until it
         * knows. (An idle one learns it at its next request, with no timer.) */
        int verdicts = 0;
        for (int st = 0; st < CL_CLOSING; st++) {
            struct list *pos;
            list_for_each(pos, &w.clients[st])
            {
                struct client *c = container_of(pos, struct client, node);
                if (client_more(c)->term && client_more(c)->term_timer && evtimer_pending(client_more(c)->term_timer, NULL))
                    verdicts++;
            }
        }
        if (verdicts)
            usleep(500);
        if (moved == 0 && unread == 0 && !verdicts) {
            if (++idle >= 3)
                return;
        } else {
            idle = 0;
        }
    }
    FAILF("the loop never became quiescent");
}

/* pgstay's clients and servers, printed with a failure. */
static void dump_pgstay(void)
{
    if (!w.base)
        return;
    for (int st = 0; st < CL_NSTATES; st++) {
        struct list *pos;
        list_for_each(pos, &w.clients[st])
        {
            struct client *c = container_of(pos, struct client, node);
            fprintf(stderr,
                    "  C-%llu %s state %d pending %d unsynced %d txn %c server S-%llu fwd_left %u "
                    "in %zu out %zu unread %d fail_current %d txn_lost %d skip_left %u local_batch "
                    "%d\n",
                    (unsigned long long)c->id, client_addr(c), st, c->pending, c->unsynced, c->txn_status,
                    c->server ? (unsigned long long)c->server->id : 0ull, c->fwd_left,
                    conn_avail(&c->conn),
                    conn_unsent(&c->conn),
                    unread_bytes(conn_fd(&c->conn)), c->fail_current,
                    c->txn_lost, c->skip_left, c->local_batch);
        }
    }
    for (int st = 0; st < SV_NSTATES; st++) {
        struct list *pos;
        list_for_each(pos, &w.servers[st])
        {
            struct server *s = container_of(pos, struct server, node);
            fprintf(stderr,
                    "  S-%llu pid %u state %d client C-%llu swallow %d fwd_left %u plan %d txn %c "
                    "in %zu\n",
                    (unsigned long long)s->id, s->be_pid, st,
                    s->client ? (unsigned long long)s->client->id : 0ull, s->swallow, s->fwd_left,
                    s->stmts.tail - s->stmts.head, s->txn_status,
                    conn_avail(&s->conn));
        }
    }
    for (int i = 0; i < fs.n; i++) {
        struct fconn *f = &fs.c[i];
        if (f->fd >= 0)
            fprintf(stderr,
                    "  backend %u%s: in %zu obuf %zu out %zu hold %d wlimit %ld txn %c unsynced "
                    "%d skipping %d\n",
                    f->pid, f->probe ? " (probe)" : "", f->in.len, f->obuf.len, f->out.len, f->hold,
                    f->wlimit, f->txn, f->unsynced, f->skipping);
    }
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

/* ---- the invariant ---- */

static void check_invariant(void)
{
    struct list *pp;
    list_for_each(pp, &w.pools)
    {
        struct pool *p = container_of(pp, struct pool, node);
        if (p->n_servers > cfg.pool_size)
            FAILF("pool %s/%s has %d servers, pool_size %d", p->user, p->database, p->n_servers,
                  cfg.pool_size);
        struct list *pos;
        list_for_each(pos, &p->idle)
        {
            struct server *s = container_of(pos, struct server, pool_node);
            char why[200] = "";
            size_t in = conn_avail(&s->conn), out = conn_unsent(&s->conn);
            int fd = conn_fd(&s->conn);
            if (s->state != SV_IDLE)
                snprintf(why, sizeof(why), "state %d on the idle list", s->state);
            else if (s->client)
                snprintf(why, sizeof(why), "still linked to a client");
            else if (!plan_empty(s))
                snprintf(why, sizeof(why), "response plan not empty");
            else if (s->swallow || s->fwd_left)
                snprintf(why, sizeof(why), "swallow %d, fwd_left %u", s->swallow, s->fwd_left);
            else if (s->txn_status != 'I')
                snprintf(why, sizeof(why), "transaction status '%c'", s->txn_status);
            else if (s->reset_pending || s->cancel_hold)
                snprintf(why, sizeof(why), "a reset or cancel pending");
            else if (in || unread_bytes(fd))
                snprintf(why, sizeof(why), "%zu buffered and %d unread bytes from the server",
                         in, unread_bytes(fd));
            else if (out)
                snprintf(why, sizeof(why), "%zu bytes not sent to the server",
                         out);
            if (!*why) {
                /* The ground truth: the fake server's side of that connection. */
                struct fconn *f = f_by_pid(s->be_pid);
                if (!f)
                    snprintf(why, sizeof(why), "its backend (pid %u) is gone", s->be_pid);
                else if (f_unanswered(f) || f->obuf.len || f->out.len)
                    snprintf(why, sizeof(why),
                             "backend pid %u has %zu bytes unanswered, %zu + %zu not delivered",
                             f->pid, f->in.len, f->obuf.len, f->out.len);
                else if (f->unsynced || f->skipping)
                    snprintf(why, sizeof(why), "backend pid %u has %d unsynced messages", f->pid,
                             f->unsynced);
                else if (f->txn != 'I')
                    snprintf(why, sizeof(why), "backend pid %u is in transaction state '%c'",
                             f->pid, f->txn);
            }
            if (*why)
                FAILF("S-%llu idle in its pool with something pending: %s",
                      (unsigned long long)s->id, why);
        }
    }
    /* Links are consistent both ways. */
    for (int st = 0; st < CL_NSTATES; st++) {
        struct list *pos;
        list_for_each(pos, &w.clients[st])
        {
            struct client *c = container_of(pos, struct client, node);
            if (c->server && c->server->client != c)
                FAILF("C-%llu's server is linked to another client", (unsigned long long)c->id);
            if (st == CL_IDLE && c->server)
                FAILF("C-%llu is idle with a server", (unsigned long long)c->id);
        }
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

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    socklen_t l = sizeof(sin);
    getsockname(fd, (struct sockaddr *)&sin, &l);
    close(fd);
    return ntohs(sin.sin_port);
}

static void fs_start(void)
{
    memset(&fs, 0, sizeof(fs));
    fs.next_pid = 1000;
    fs.lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fs.lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sin = {.sin_family = AF_INET};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fs.lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(fs.lfd, 64), 0);
    socklen_t l = sizeof(sin);
    getsockname(fs.lfd, (struct sockaddr *)&sin, &l);
    fs.port = ntohs(sin.sin_port);
    fcntl(fs.lfd, F_SETFL, fcntl(fs.lfd, F_GETFL) | O_NONBLOCK);
}

static void worker_start(int pool_size)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/pgstay_lending_XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    char path[128], users[128];
    snprintf(path, sizeof(path), "%s/pgstay.ini", tmpdir);
    snprintf(users, sizeof(users), "%s/userlist.txt", tmpdir);
    FILE *f = fopen(users, "w");
    assert_non_null(f);
    fprintf(f, "\"app\" \"app\"\n\"postgres\" \"postgres\"\n");
    fclose(f);
    int port = 0;
    for (int attempt = 0; attempt < 5; attempt++) {
        port = free_port();
        f = fopen(path, "w");
        assert_non_null(f);
        fprintf(f,
                "[pgstay]\nlisten_addr = 127.0.0.1\nlisten_port = %d\npool_mode = transaction\n"
                "pool_size = %d\nauth_type = trust\nauth_file = userlist.txt\n"
                "health_check_user = postgres\nhealth_check_dbname = postgres\n"
                "[nodes]\nfake = host=127.0.0.1 port=%d\n",
                port, pool_size, fs.port);
        fclose(f);
        char err[512];
        assert_int_equal(config_load(path, &cfg, err, sizeof(err)), 0);
        assert_int_equal(worker_init(&w, &cfg), 0);
        if (worker_listen(&w) == 0)
            break;
        worker_free(&w);
        config_free(&cfg);
        port = 0;
    }
    assert_true(port != 0);
    /* Until the fake server is known as the writer (its first probe answered). */
    for (int i = 0; i < 2000 && !w.topo->writer; i++) {
        quiesce();
        usleep(1000);
    }
    assert_non_null(w.topo->writer);
}

static void worker_stop(void)
{
    for (int i = 0; i < CL_MAX; i++)
        c_gone(&cl[i]);
    quiesce();
    worker_free(&w);
    config_free(&cfg);
    for (int i = 0; i < fs.n; i++)
        f_close(&fs.c[i]);
    close(fs.lfd);
    char p[128];
    snprintf(p, sizeof(p), "%s/pgstay.ini", tmpdir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/userlist.txt", tmpdir);
    unlink(p);
    rmdir(tmpdir);
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
    trace_n = 0;
    rng = seed * 0x9E3779B97F4A7C15ull + 1;
    next_client_id = 0;
    for (int i = 0; i < CL_MAX; i++)
        cl[i].fd = -1;
    fs_start();
    worker_start(pool_size);
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
    worker_stop();
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
