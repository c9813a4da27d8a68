/* The shared test harness (see pgfake.h): the fake PostgreSQL server, the in-process worker, the
 * loop that runs both until quiescent, and the pool invariant. */
#include "pgfake.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "client/client.h"
#include "pool/pool.h"
#include "pool/prepared.h"
#include "proto/proto.h"
#include "server/server.h"
#include "topology/topology.h"

/* ---- the trace printed on failure ---- */

static char trace[TRACE_N][120];
static int trace_n;
uint64_t cur_seed;
int cur_step;
void (*harness_dump_extra)(void);
long (*harness_pump_extra)(void);
int harness_quiet;
struct worker hw;
struct config hcfg;
struct fs fs;
static char tmpdir[64];

void note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *t = trace[trace_n++ % TRACE_N];
    int n = snprintf(t, sizeof(trace[0]), "%5d ", cur_step);
    vsnprintf(t + n, sizeof(trace[0]) - (size_t)n, fmt, ap);
    va_end(ap);
}

void trace_reset(void)
{
    trace_n = 0;
}

static void dump_pgstay(void);

void harness_fail(const char *fmt, ...)
{
    if (!harness_quiet) {
        dump_pgstay();
        if (harness_dump_extra)
            harness_dump_extra();
        fprintf(stderr, "check failed: seed %llu, step %d; last steps:\n",
                (unsigned long long)cur_seed, cur_step);
        int from = trace_n > TRACE_N ? trace_n - TRACE_N : 0;
        for (int i = from; i < trace_n; i++)
            fprintf(stderr, "  %s\n", trace[i % TRACE_N]);
    }
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}

/* ---- byte buffers ---- */

void db_add(struct dbuf *b, const void *p, size_t n)
{
    if (n == 0)
        return; /* an empty script chunk: no pointer arithmetic on an empty buffer */
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->len + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        HCHECK(b->p);
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

void db_eat(struct dbuf *b, size_t n)
{
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

void db_free(struct dbuf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

void db_pbuf(struct dbuf *b, struct pbuf *pb)
{
    HCHECK(!pb->failed);
    db_add(b, pb->data, pb->len);
    pbuf_free(pb);
}

uint32_t rd32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* Read what is there; returns bytes read, -1 at EOF or error. */
ssize_t read_some(int fd, struct dbuf *b)
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
ssize_t write_some(int fd, struct dbuf *b, size_t limit)
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
void nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

int unread_bytes(int fd)
{
    int n = 0;
    if (fd < 0 || ioctl(fd, FIONREAD, &n) < 0)
        return 0;
    return n;
}

/* ---- the fake PostgreSQL server ---- */

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
        HCHECK(c->stmts);
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

void f_close(struct fconn *c)
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

struct fconn *f_by_socket(int server_fd)
{
    struct sockaddr_in a, b;
    socklen_t la = sizeof(a);
    if (server_fd < 0 || getsockname(server_fd, (struct sockaddr *)&a, &la) < 0)
        return NULL;
    for (int i = 0; i < fs.n; i++) {
        socklen_t lb = sizeof(b);
        if (fs.c[i].fd >= 0 && getpeername(fs.c[i].fd, (struct sockaddr *)&b, &lb) == 0 &&
            a.sin_port == b.sin_port)
            return &fs.c[i];
    }
    return NULL;
}

struct fconn *f_by_pid(uint32_t pid)
{
    for (int i = 0; i < fs.n; i++)
        if (fs.c[i].fd >= 0 && fs.c[i].pid == pid)
            return &fs.c[i];
    return NULL;
}

/* Has the backend received something it owes an answer to? A Flush with nothing unflushed
 * asks for nothing (a client's bare Flush is forwarded, and its server lent back at once). */
int f_unanswered(const struct fconn *c)
{
    size_t off = 0;
    while (off < c->in.len) {
        if (c->in.len - off < 5 || c->in.p[off] != FE_FLUSH || rd32(c->in.p + off + 1) != 4)
            return 1;
        off += 5;
    }
    return 0;
}

void f_error(struct dbuf *o, const char *state, const char *msg)
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
    } else if (starts(q, "COPY") && strstr(q, "TO STDOUT")) {
        /* COPY out: one text row (a COPY FROM STDIN is taken in f_message). */
        uint8_t h[] = {BE_COPY_OUT, 0, 0, 0, 9, 0, 0, 1, 0, 0};
        db_add(o, h, sizeof(h));
        uint8_t d[] = {BE_COPY_DATA, 0, 0, 0, 7, 'r', 'o', 'w', '\n'};
        db_add(o, d, sizeof(d));
        f_empty_msg(o, BE_COPY_DONE);
        proto_build_command_complete(&b, "COPY 1");
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

/* A scripted connection's next chunk, if any is left. */
static void f_script_next(struct fconn *c)
{
    struct fscript *s = c->script;
    if (s->next < s->n) {
        db_add(&c->out, s->chunk[s->next], s->len[s->next]);
        s->next++;
    }
}

/* What PostgreSQL does with a message it cannot take: FATAL 08P01, then it closes. */
static void f_fatal(struct fconn *c, const char *msg)
{
    struct pbuf b;
    pbuf_init(&b);
    proto_build_error(&b, "FATAL", "08P01", msg, NULL);
    db_pbuf(&c->out, &b);
    write_some(c->fd, &c->out, SIZE_MAX);
    f_close(c);
}

static void f_startup(struct fconn *c, const uint8_t *p, uint32_t len)
{
    struct startup_pkt sp;
    const char *err = NULL;
    HCHECK((proto_parse_startup(p, len, &sp, &err)) == PROTO_OK);
    if (sp.code == PROTO_SSL_CODE || sp.code == PROTO_GSSENC_CODE) {
        db_add(&c->out, "N", 1);
        return;
    }
    if (sp.code == PROTO_CANCEL_CODE) {
        f_close(c);
        return;
    }
    HCHECK((sp.code) == PROTO_V3);
    const char *app = startup_param(&sp, "application_name");
    c->probe = app && !strcmp(app, "pgstay-probe");
    c->started = 1;
    c->pid = fs.next_pid++;
    c->txn = 'I';
    if (!c->probe && fs.script_next) {
        c->script = fs.script_next;
        fs.script_next = NULL;
        f_script_next(c);
        return;
    }
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
    if (c->script) {
        if (type == FE_QUERY || type == FE_SYNC || type == FE_FLUSH || type == FE_FUNCTION_CALL ||
            type == FE_PASSWORD)
            f_script_next(c);
        return;
    }
    if (c->copy_in) {
        /* COPY FROM STDIN: data is taken, Flush and Sync ignored, as PostgreSQL does. */
        if (type == FE_COPY_DATA || type == FE_FLUSH || type == FE_SYNC)
            return;
        if (type == FE_COPY_DONE || type == FE_COPY_FAIL) {
            c->copy_in = 0;
            if (type == FE_COPY_DONE) {
                struct pbuf b;
                pbuf_init(&b);
                proto_build_command_complete(&b, "COPY 1");
                db_pbuf(o, &b);
            } else {
                f_error(o, "57014", "COPY from stdin failed");
                if (c->txn == 'T')
                    c->txn = 'E';
            }
            f_ready(c, o);
            f_flush(c);
            return;
        }
        f_fatal(c, "unexpected message type during COPY from stdin");
        return;
    }
    if (c->skipping && type != FE_SYNC) {
        /* After an extended-protocol error PostgreSQL ignores everything up to Sync, a simple
         * Query included (the test clients sync before a Query, as libpq does). */
        if (type != FE_FLUSH)
            c->unsynced++;
        if (type == FE_QUERY || type == FE_FUNCTION_CALL)
            c->ignored++; /* a request that gets no ReadyForQuery, ever */
        return;
    }
    if (type == FE_QUERY) {
        /* A Query ends the implicit transaction of unsynced extended messages, as Sync does. */
        c->unsynced = 0;
        /* Statements split at ';' (no test SQL has one inside a literal). */
        char *q = strndup((const char *)body, len);
        HCHECK(q);
        if (starts(q, "COPY") && strstr(q, "FROM STDIN") && c->txn != 'E') {
            /* COPY in: its answer comes at CopyDone or CopyFail. */
            uint8_t g[] = {BE_COPY_IN, 0, 0, 0, 9, 0, 0, 1, 0, 0};
            db_add(o, g, sizeof(g));
            c->copy_in = 1;
            free(q);
            f_flush(c);
            return;
        }
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
        if (r.bad && fs.lenient) {
            f_fatal(c, "invalid message format");
            return;
        }
        HCHECK(!r.bad);
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
        if (fs.lenient) {
            f_fatal(c, "invalid frontend message type");
            return;
        }
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
            HCHECK(len >= 8 && len < 10000);
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
        if (len < 4 || len > (1u << 24)) {
            if (fs.lenient) {
                f_fatal(c, "invalid message length");
                return;
            }
            FAILF("fake server: bad message length %u from pgstay", len);
        }
        if (c->in.len < 1 + (size_t)len)
            return;
        uint8_t type = c->in.p[0];
        uint8_t *m = malloc(len);
        HCHECK(m);
        memcpy(m, c->in.p + 5, len - 4);
        db_eat(&c->in, 1 + (size_t)len);
        if (!c->probe)
            note("backend %u: got '%c' (%u bytes)", c->pid, type, len);
        f_message(c, type, m, len - 4);
        free(m);
    }
}

/* Accept, read, answer, write. Returns the bytes moved. */
long fs_pump(void)
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

/* ---- the worker and the loop ---- */

/* Run everything until nothing moves: fake server, clients and pgstay's loop. */
void quiesce(void)
{
    int idle = 0;
    for (int round = 0; round < 20000; round++) {
        long moved = fs_pump() + (harness_pump_extra ? harness_pump_extra() : 0);
        event_base_loop(hw.base, EVLOOP_NONBLOCK);
        int unread = 0;
        for (int st = 0; st < SV_NSTATES; st++) {
            struct list *pos;
            list_for_each(pos, &hw.servers[st])
            {
                struct server *s = container_of(pos, struct server, node);
                if (conn_fd(&s->conn) >= 0 && st != SV_CLOSING)
                    unread += unread_bytes(conn_fd(&s->conn));
            }
        }
        for (int st = 0; st < CL_NSTATES; st++) {
            struct list *pos;
            list_for_each(pos, &hw.clients[st])
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
            list_for_each(pos, &hw.clients[st])
            {
                struct client *c = container_of(pos, struct client, node);
                /* c->more, not client_more(c): looking must not allocate. */
                if (c->more && c->more->term && c->more->term_timer &&
                    evtimer_pending(c->more->term_timer, NULL))
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
    if (!hw.base)
        return;
    for (int st = 0; st < CL_NSTATES; st++) {
        struct list *pos;
        list_for_each(pos, &hw.clients[st])
        {
            struct client *c = container_of(pos, struct client, node);
            fprintf(stderr,
                    "  C-%llu %s state %d pending %d unsynced %d txn %c server S-%llu fwd_left %u "
                    "in %zu out %zu unread %d fail_current %d txn_lost %d skip_left %u local_batch "
                    "%d\n",
                    (unsigned long long)c->id, client_addr(c), st, c->pending, c->unsynced,
                    c->txn_status, c->server ? (unsigned long long)c->server->id : 0ull,
                    c->fwd_left, conn_avail(&c->conn), conn_unsent(&c->conn),
                    unread_bytes(conn_fd(&c->conn)), c->fail_current, c->txn_lost, c->skip_left,
                    c->local_batch);
        }
    }
    for (int st = 0; st < SV_NSTATES; st++) {
        struct list *pos;
        list_for_each(pos, &hw.servers[st])
        {
            struct server *s = container_of(pos, struct server, node);
            fprintf(stderr,
                    "  S-%llu pid %u state %d client C-%llu swallow %d fwd_left %u plan %d txn %c "
                    "in %zu\n",
                    (unsigned long long)s->id, s->be_pid, st,
                    s->client ? (unsigned long long)s->client->id : 0ull, s->swallow, s->fwd_left,
                    s->stmts.tail - s->stmts.head, s->txn_status, conn_avail(&s->conn));
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
}

/* ---- the invariant ---- */

void check_invariant(void)
{
    struct list *pp;
    list_for_each(pp, &hw.pools)
    {
        struct pool *p = container_of(pp, struct pool, node);
        if (p->n_servers > hcfg.pool_size)
            FAILF("pool %s/%s has %d servers, pool_size %d", p->user, p->database, p->n_servers,
                  hcfg.pool_size);
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
                snprintf(why, sizeof(why), "%zu buffered and %d unread bytes from the server", in,
                         unread_bytes(fd));
            else if (out)
                snprintf(why, sizeof(why), "%zu bytes not sent to the server", out);
            if (!*why) {
                /* The ground truth: the fake server's side of that connection. */
                struct fconn *f = f_by_socket(fd);
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
        list_for_each(pos, &hw.clients[st])
        {
            struct client *c = container_of(pos, struct client, node);
            if (c->server && c->server->client != c)
                FAILF("C-%llu's server is linked to another client", (unsigned long long)c->id);
            if (st == CL_IDLE && c->server)
                FAILF("C-%llu is idle with a server", (unsigned long long)c->id);
        }
    }
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    HCHECK((bind(fd, (struct sockaddr *)&sin, sizeof(sin))) == 0);
    socklen_t l = sizeof(sin);
    getsockname(fd, (struct sockaddr *)&sin, &l);
    close(fd);
    return ntohs(sin.sin_port);
}

void fs_start(void)
{
    memset(&fs, 0, sizeof(fs));
    fs.next_pid = 1000;
    fs.lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fs.lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sin = {.sin_family = AF_INET};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    HCHECK((bind(fs.lfd, (struct sockaddr *)&sin, sizeof(sin))) == 0);
    HCHECK((listen(fs.lfd, 64)) == 0);
    socklen_t l = sizeof(sin);
    getsockname(fs.lfd, (struct sockaddr *)&sin, &l);
    fs.port = ntohs(sin.sin_port);
    fcntl(fs.lfd, F_SETFL, fcntl(fs.lfd, F_GETFL) | O_NONBLOCK);
}

void fs_stop(void)
{
    for (int i = 0; i < fs.n; i++)
        f_close(&fs.c[i]);
    close(fs.lfd);
    fs.lfd = -1;
}

void worker_start(const char *settings, int listen)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/pgstay_harness_XXXXXX");
    HCHECK(mkdtemp(tmpdir));
    char path[128], users[128];
    snprintf(path, sizeof(path), "%s/pgstay.ini", tmpdir);
    snprintf(users, sizeof(users), "%s/userlist.txt", tmpdir);
    FILE *f = fopen(users, "w");
    HCHECK(f);
    fprintf(f, "\"app\" \"app\"\n\"postgres\" \"postgres\"\n");
    fclose(f);
    int port = 0;
    for (int attempt = 0; attempt < 5; attempt++) {
        port = free_port();
        f = fopen(path, "w");
        HCHECK(f);
        fprintf(f,
                "[pgstay]\nlisten_addr = 127.0.0.1\nlisten_port = %d\n%s"
                "auth_type = trust\nauth_file = userlist.txt\n"
                "health_check_user = postgres\nhealth_check_dbname = postgres\n"
                "[nodes]\nfake = host=127.0.0.1 port=%d\n",
                port, settings, fs.port);
        fclose(f);
        char err[512];
        if (config_load(path, &hcfg, err, sizeof(err)) != 0)
            FAILF("harness config: %s", err);
        HCHECK((worker_init(&hw, &hcfg)) == 0);
        if (!listen) {
            /* worker_connect_pair hands clients to the writer endpoint's accept callback. */
            hw.listen_ctx[ROLE_WRITER].w = &hw;
            hw.listen_ctx[ROLE_WRITER].role = ROLE_WRITER;
            break;
        }
        if (worker_listen(&hw) == 0)
            break;
        worker_free(&hw);
        config_free(&hcfg);
        port = 0;
    }
    HCHECK(port != 0);
    /* Until the fake server is known as the writer (its first probe answered). */
    for (int i = 0; i < 2000 && !hw.topo->writer; i++) {
        quiesce();
        if (!hw.topo->writer)
            usleep(1000);
    }
    HCHECK(hw.topo->writer);
}

int worker_connect_pair(void)
{
    int sv[2];
    HCHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
    /* An address for the logs, as a TCP client would have. */
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(5432)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    client_accept(NULL, sv[1], (struct sockaddr *)&sin, sizeof(sin), &hw.listen_ctx[ROLE_WRITER]);
    return sv[0];
}

void worker_stop(void)
{
    quiesce();
    worker_free(&hw);
    config_free(&hcfg);
    fs_stop();
    char p[128];
    snprintf(p, sizeof(p), "%s/pgstay.ini", tmpdir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/userlist.txt", tmpdir);
    unlink(p);
    rmdir(tmpdir);
}
