/* The fuzz targets' shared client side (see fuzz.h): one in-process worker, clients on socket
 * pairs that check every byte pgstay sends them, and the bystander. */
#include "fuzz.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "client/client.h"
#include "core/log.h"
#include "pool/pool.h"
#include "proto/proto.h"
#include "proto/scram.h"
#include "server/server.h"

/* Every test client, for the harness's pump and failure dump. */
#define FZ_CLIENTS 4
static struct fz_client *live[FZ_CLIENTS];
static int initialized;
static uint64_t bystander_seq;

/* The client's own outgoing stream, parsed to know what it asked for. */
struct out_parse {
    struct dbuf pending;
    int typed;   /* past the startup packets: typed messages */
    int dead;    /* it sent something unframeable: pgstay closes it, nothing more is counted */
    size_t skip; /* body bytes of a message already counted */
};
static struct out_parse outp[FZ_CLIENTS];

static int slot_of(struct fz_client *c)
{
    for (int i = 0; i < FZ_CLIENTS; i++)
        if (live[i] == c)
            return i;
    return -1;
}

static long pump_clients(void)
{
    long moved = 0;
    for (int i = 0; i < FZ_CLIENTS; i++) {
        struct fz_client *c = live[i];
        if (!c || c->fd < 0 || c->eof)
            continue;
        size_t before = c->received;
        fz_client_read(c);
        moved += (long)(c->received - before) + c->eof;
    }
    return moved;
}

static void dump_clients(void)
{
    for (int i = 0; i < FZ_CLIENTS; i++) {
        struct fz_client *c = live[i];
        if (c)
            fprintf(stderr,
                    "  test client %d: fd %d logged_in %d requests %d readies %d fatal %d eof %d "
                    "txn %c last '%c'\n",
                    i, c->fd, c->logged_in, c->requests, c->readies, c->fatal, c->eof, c->txn,
                    c->last_type ? c->last_type : '-');
    }
}

void fz_init(const char *settings)
{
    if (initialized)
        return;
    initialized = 1;
    signal(SIGPIPE, SIG_IGN);
    log_verbosity = getenv("FUZZ_VERBOSE")
                        ? LOG_DEBUG
                        : -1; /* -1: not even errors (a fuzzed peer makes many) */
    harness_pump_extra = pump_clients;
    harness_dump_extra = dump_clients;
    fs_start();
    fs.lenient = 1;
    worker_start(settings, 0);
}

void fz_client_open(struct fz_client *c)
{
    memset(c, 0, sizeof(*c));
    c->txn = 'I';
    c->fd = worker_connect_pair();
    int i = 0;
    while (i < FZ_CLIENTS && live[i])
        i++;
    HCHECK(i < FZ_CLIENTS);
    live[i] = c;
    memset(&outp[i], 0, sizeof(outp[i]));
}

void fz_client_close(struct fz_client *c)
{
    int i = slot_of(c);
    if (i >= 0) {
        live[i] = NULL;
        db_free(&outp[i].pending);
    }
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    db_free(&c->in);
}

/* Count the requests in what the client sent (each one earns exactly one ReadyForQuery). */
static void watch_outgoing(struct fz_client *c, const uint8_t *p, size_t n)
{
    struct out_parse *o = &outp[slot_of(c)];
    if (o->dead)
        return;
    db_add(&o->pending, p, n);
    for (;;) {
        struct dbuf *b = &o->pending;
        if (!o->typed) {
            if (b->len < 4)
                return;
            uint32_t len = rd32(b->p);
            if (len < 8 || len > PROTO_STARTUP_MAX) {
                o->dead = 1;
                return;
            }
            if (b->len < len)
                return;
            uint32_t code = rd32(b->p + 4);
            if (code == PROTO_SSL_CODE || code == PROTO_GSSENC_CODE)
                c->encrypt_ask++;
            else if (code == PROTO_CANCEL_CODE)
                o->dead = 1;
            else
                o->typed = 1;
            db_eat(b, len);
            continue;
        }
        if (o->skip) {
            size_t k = o->skip < b->len ? o->skip : b->len;
            db_eat(b, k);
            o->skip -= k;
            if (o->skip)
                return;
        }
        if (b->len < 5)
            return;
        uint32_t len = rd32(b->p + 1);
        if (len < 4) {
            o->dead = 1;
            return;
        }
        /* Counted at its header: pgstay may answer a request it is told to drop (after an
         * error) before its body has all arrived, as it never forwards it. */
        uint8_t t = b->p[0];
        if (t == FE_QUERY || t == FE_SYNC || t == FE_FUNCTION_CALL)
            c->requests++;
        db_eat(b, 5);
        o->skip = len - 4;
    }
}

void fz_client_send(struct fz_client *c, const void *p, size_t n)
{
    if (c->fd < 0 || c->eof)
        return;
    watch_outgoing(c, p, n);
    /* A socket pair takes a few hundred kB at once; the rest waits for pgstay to read. */
    const uint8_t *q = p;
    while (n > 0) {
        ssize_t w = send(c->fd, q, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w > 0) {
            q += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            quiesce();
        else
            return; /* pgstay closed it */
    }
}

void fz_client_startup(struct fz_client *c)
{
    const char *names[3] = {"user", "database", "application_name"};
    const char *values[3] = {"app", "app", "fuzz"};
    struct pbuf b;
    pbuf_init(&b);
    proto_build_startup(&b, 3, names, values);
    fz_client_send(c, b.data, b.len);
    pbuf_free(&b);
}

/* One whole message from pgstay, checked against what a client may receive at this point. */
static void check_msg(struct fz_client *c, uint8_t t, const uint8_t *body, size_t blen)
{
    if (c->fatal)
        FAILF("a message '%c' after a FATAL error", t);
    if (!proto_be_type_known(t))
        FAILF("a message of unknown type 0x%02x reached the client", t);
    switch (t) {
    case BE_AUTH:
    case BE_KEY_DATA:
    case BE_NEGOTIATE_VERSION:
        if (c->logged_in)
            FAILF("'%c' after the login's ReadyForQuery", t);
        break;
    case BE_READY:
        if (blen != 1 || !memchr("ITE", body[0], 3))
            FAILF("ReadyForQuery with a bad body (length %zu)", blen);
        if (!c->logged_in) {
            c->logged_in = 1;
        } else if (++c->readies > c->requests) {
            FAILF("ReadyForQuery %d for %d requests", c->readies, c->requests);
        }
        c->txn = (char)body[0];
        c->copy_in = c->copy_out = 0;
        break;
    case BE_ERROR: {
        struct pg_error e;
        if (proto_parse_error(body, blen, &e) != PROTO_OK) {
            char hex[200] = "";
            for (size_t i = 0; i < blen && i < 64; i++)
                snprintf(hex + 3 * i, 4, "%02x ", body[i]);
            FAILF("a malformed ErrorResponse reached the client: %s", hex);
        }
        c->errors++;
        if (e.severity && (!strcmp(e.severity, "FATAL") || !strcmp(e.severity, "PANIC")))
            c->fatal = 1;
        c->copy_in = c->copy_out = 0;
        break;
    }
    case BE_COPY_OUT:
    case BE_COPY_BOTH:
        c->copy_out = 1;
        break;
    case BE_COPY_IN:
        c->copy_in = 1;
        break;
    case BE_COPY_DATA:
        if (!c->copy_out)
            FAILF("CopyData outside a COPY");
        break;
    case BE_COPY_DONE:
        if (!c->copy_out)
            FAILF("CopyDone outside a COPY");
        c->copy_out = 0;
        break;
    case BE_DATA_ROW: {
        struct msg_reader r;
        mr_init(&r, body, blen);
        uint16_t ncol = mr_u16(&r);
        uint32_t l = mr_u32(&r);
        if (c->rows++ == 0 && ncol >= 1 && !r.bad && l < sizeof(c->row)) {
            const uint8_t *v = mr_bytes(&r, l);
            if (v) {
                memcpy(c->row, v, l);
                c->row[l] = 0;
            }
        }
        break;
    }
    default:
        break;
    }
    c->last_type = (char)t;
}

void fz_client_read(struct fz_client *c)
{
    if (c->fd < 0)
        return;
    ssize_t n = read_some(c->fd, &c->in);
    if (n < 0)
        c->eof = 1;
    else
        c->received += (size_t)n;
    for (;;) {
        /* Before login, each SSLRequest or GSSENCRequest gets one byte (no TLS offered). */
        if (!c->logged_in && c->encrypt_ask > 0 && c->in.len >= 1 && c->in.p[0] == 'N' &&
            c->last_type == 0) {
            c->encrypt_ask--;
            db_eat(&c->in, 1);
            continue;
        }
        if (c->in.len < 5)
            break;
        uint32_t len = rd32(c->in.p + 1);
        if (len < 4 || len > PROTO_MSG_MAX)
            FAILF("a message with length %u reached the client", len);
        if (c->in.len < 1 + (size_t)len)
            break;
        check_msg(c, c->in.p[0], c->in.p + 5, len - 4);
        db_eat(&c->in, 1 + (size_t)len);
    }
    /* At EOF a last message may be cut short: pgstay closes a client whose server was lost
     * in the middle of forwarding one (nothing could follow it that the client would read
     * right), as a network failure would. */
}

void fz_bystander(void)
{
    struct fz_client b;
    fz_client_open(&b);
    fz_client_startup(&b);
    quiesce();
    if (!b.logged_in || b.errors)
        FAILF("bystander: not logged in (errors %d, eof %d)", b.errors, b.eof);
    char sql[64], tok[32];
    snprintf(tok, sizeof(tok), "by:%llu", (unsigned long long)++bystander_seq);
    snprintf(sql, sizeof(sql), "SELECT '%s'", tok);
    struct pbuf q;
    pbuf_init(&q);
    proto_build_query(&q, sql);
    fz_client_send(&b, q.data, q.len);
    pbuf_free(&q);
    quiesce();
    if (b.readies != 1 || b.errors || b.rows != 1 || strcmp(b.row, tok) || b.txn != 'I')
        FAILF("bystander: readies %d errors %d rows %d row \"%s\" (want \"%s\") txn %c", b.readies,
              b.errors, b.rows, b.row, tok, b.txn);
    struct pbuf x;
    pbuf_init(&x);
    proto_build_terminate(&x);
    fz_client_send(&b, x.data, x.len);
    pbuf_free(&x);
    fz_client_close(&b);
    quiesce();
}

void fz_drop_idle_servers(void)
{
    struct list *pp;
    list_for_each(pp, &hw.pools)
    {
        struct pool *p = container_of(pp, struct pool, node);
        while (!list_empty(&p->idle)) {
            struct server *s = container_of(p->idle.next, struct server, pool_node);
            server_close(s, "fuzz: a fresh server for the next run");
        }
    }
    quiesce();
}

void fz_set_pool_mode(int mode)
{
    if (hcfg.pool_mode == mode)
        return;
    fz_drop_idle_servers();
    hcfg.pool_mode = mode;
}

/* Servers still finishing what a departed client left (SV_RESETTING) once nothing moves wait
 * for an answer that will not come: a client's Query after an extended-protocol error it had
 * not synced, which PostgreSQL ignores (no ReadyForQuery, ever), while pgstay counted it as a
 * request. pgstay bounds that with SERVER_DRAIN_TIMEOUT_MS; the run makes that time pass (no
 * real sleep) and lets the housekeeping tick close them, as it would 10 s later. */
static void expire_drains(void)
{
    struct list *pos;
    int n = 0;
    list_for_each(pos, &hw.servers[SV_RESETTING])
    {
        struct server *s = container_of(pos, struct server, node);
        /* Only where the backend (the ground truth) will indeed never answer. */
        struct fconn *f = f_by_socket(conn_fd(&s->conn));
        if (!f || !(f->skipping || f->ignored || f->script))
            FAILF("S-%llu is stuck finishing a departed client's requests, though its backend "
                  "owes it nothing",
                  (unsigned long long)s->id);
        s->last_used -= SERVER_DRAIN_TIMEOUT_MS + 1;
        n++;
    }
    if (n) {
        event_active(hw.tick, EV_TIMEOUT, 0);
        quiesce();
    }
}

void fz_end_run(void)
{
    quiesce();
    expire_drains();
    check_invariant();
    for (int i = 0; i < FZ_CLIENTS; i++)
        if (live[i])
            FAILF("test client %d left open", i);
    if (hw.n_clients[CL_LOGIN] + hw.n_clients[CL_WAITING] + hw.n_clients[CL_ACTIVE] +
            hw.n_clients[CL_IDLE] >
        0)
        FAILF("pgstay still has clients after every test client closed");
}
