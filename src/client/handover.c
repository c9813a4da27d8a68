/* A logged-in client's session as bytes, for a restart that keeps the client (pgstay -R). */
#include "client/handover.h"

#include <stdlib.h>
#include <string.h>

#include "client/client.h"
#include "config/config.h"
#include "core/log.h"
#include "pool/pool.h"
#include "pool/prepared.h"
#include "proto/proto.h"
#include "server/server.h"

/* A record larger than this is not sent (one SOCK_SEQPACKET datagram; a client with that much
 * state is rare and simply finishes on the old process). */
#define HANDOVER_MAX 60000

static int track_quiet(const struct track *t)
{
    return t->n == 0 && t->n_txn == 0 && t->batch.n_ops == 0 && t->batch_execs == 0;
}

/* Everything but where it stands (idle, or linked in session mode) that a move needs. */
static int session_quiet(const struct client *c)
{
    if (c->is_admin || !c->got_welcome || !c->pool)
        return 0;
    /* Between transactions, nothing in flight: the next byte either way starts afresh. */
    if (c->pending || c->unsynced || c->fwd_left || c->skip_left || c->txn_status != 'I' ||
        c->in_copy_in || c->in_copy_out || c->txn_lost || c->lost_notice_pending ||
        c->fail_current || c->discard_copy || c->batch_rollback || c->batch_error ||
        c->local_batch || c->held || c->pause_held || c->pause_waiting || c->out_blocked ||
        c->flight_blocked || c->fd_short)
        return 0;
    /* A pinned session's state is on a server; TLS keys are this process's. */
    if (c->pin_reason || c->conn.tls || c->conn.dead || c->conn.fd < 0)
        return 0;
    /* Bytes read but not handled, or not yet sent: they would be lost with this process.
     * Bytes still in the kernel's socket buffer are fine: they travel with the socket. */
    if (conn_avail(&c->conn) > 0 || conn_unsent(&c->conn) > 0)
        return 0;
    const struct client_more *m = c->more;
    if (m && (m->term || m->n_pend || m->n_stmt_ops || !track_quiet(&m->track)))
        return 0;
    if (m) {
        for (int i = 0; i < m->n_prepared; i++)
            if (!m->prepared[i].msg)
                return 0; /* past what is kept to replay (pinned anyway) */
    }
    return 1;
}

int client_movable(const struct client *c)
{
    return c->state == CL_IDLE && !c->server && session_quiet(c);
}

int client_release_for_handover(struct client *c)
{
    struct server *s = c->server;
    if (c->state != CL_ACTIVE || !s || c->w->cfg->pool_mode != POOL_SESSION || !session_quiet(c))
        return 0;
    /* The server must have nothing on its way to the client either: an answer half read, or
     * bytes read and not yet forwarded, would be lost with it. */
    if (s->state != SV_ACTIVE || s->fwd_left || s->txn_status != 'I' || !plan_empty(s) ||
        conn_avail(&s->conn) > 0)
        return 0;
    /* Session mode keeps what a new server needs (startup parameters, SETs, prepared
     * statements; what it cannot keep pins the session, and pinned sessions stay): the
     * server is reset into its pool, as after a failover the session is rebuilt elsewhere. */
    c->server = NULL;
    s->client = NULL;
    client_change_state(c, CL_IDLE);
    pool_take_back(s, 0, 0, 0);
    return 1;
}

static void put_kv(struct pbuf *b, const struct kvlist *l)
{
    pbuf_put_u32(b, (uint32_t)l->n);
    for (int i = 0; i < l->n; i++) {
        pbuf_put_str(b, l->items[i].name);
        pbuf_put_str(b, l->items[i].value);
    }
}

/* A string that may be NULL: a presence byte first. */
static void put_opt(struct pbuf *b, const char *s)
{
    pbuf_put_u8(b, s != NULL);
    if (s)
        pbuf_put_str(b, s);
}

static void put_op(struct pbuf *b, const struct track_stmt *st)
{
    pbuf_put_u8(b, st->kind);
    put_opt(b, st->name);
    put_opt(b, st->stmt);
}

static void put_blob(struct pbuf *b, const void *p, uint32_t n)
{
    pbuf_put_u32(b, n);
    if (n)
        pbuf_put(b, p, n);
}

void client_export(const struct client *c, struct pbuf *b)
{
    pbuf_put_u32(b, HANDOVER_VERSION);
    pbuf_put_u32(b, (uint32_t)(c->id >> 32));
    pbuf_put_u32(b, (uint32_t)c->id);
    pbuf_put_u8(b, c->role);
    pbuf_put_u8(b, c->addr_family);
    pbuf_put_u16(b, c->addr_port);
    pbuf_put(b, c->addr_ip, sizeof(c->addr_ip));
    pbuf_put_u32(b, c->connect_s);
    /* The cancel key the client holds: a cancel sent to the new process must still find it. */
    pbuf_put_u32(b, c->cancel_pid);
    pbuf_put_u32(b, c->cancel_key);
    pbuf_put_u8(b, c->resetup);
    pbuf_put_str(b, c->user);
    pbuf_put_str(b, c->database);
    put_kv(b, &c->params);
    /* Everything it was told in ParameterStatus (c->reported keeps only what differs from
     * this process's pool base, which the new process does not have): the new process tells
     * it only what differs from this. */
    const struct kvlist *base = &c->pool->base;
    int n = c->reported.n;
    for (int i = 0; i < base->n; i++)
        if (!kv_get(&c->reported, base->items[i].name))
            n++;
    pbuf_put_u32(b, (uint32_t)n);
    for (int i = 0; i < c->reported.n; i++) {
        pbuf_put_str(b, c->reported.items[i].name);
        pbuf_put_str(b, c->reported.items[i].value);
    }
    for (int i = 0; i < base->n; i++) {
        if (kv_get(&c->reported, base->items[i].name))
            continue;
        pbuf_put_str(b, base->items[i].name);
        pbuf_put_str(b, base->items[i].value);
    }
    const struct client_more *m = c->more;
    pbuf_put_u8(b, m != NULL);
    if (m) {
        put_kv(b, &m->sets);
        put_op(b, &m->unnamed_op);
        put_op(b, &m->portal_op);
        put_blob(b, m->unnamed_msg, m->unnamed_len);
        pbuf_put_u32(b, (uint32_t)m->n_prepared);
        for (int i = 0; i < m->n_prepared; i++) {
            const struct prepared *p = &m->prepared[i];
            pbuf_put_str(b, p->name);
            put_blob(b, p->msg, p->len);
            pbuf_put_u32(b, (uint32_t)(p->hash >> 32));
            pbuf_put_u32(b, (uint32_t)p->hash);
        }
    }
    if (b->len > HANDOVER_MAX)
        b->failed = 1;
}

static int get_kv(struct msg_reader *r, struct kvlist *l)
{
    uint32_t n = mr_u32(r);
    for (uint32_t i = 0; i < n && !r->bad; i++) {
        const char *name = mr_str(r);
        const char *value = mr_str(r);
        if (!r->bad)
            kv_set(l, name, value);
    }
    return r->bad ? -1 : 0;
}

static void get_op(struct msg_reader *r, struct track_stmt *st)
{
    struct track_stmt tmp = {0};
    tmp.kind = mr_u8(r);
    if (mr_u8(r))
        tmp.name = (char *)mr_str(r);
    if (mr_u8(r))
        tmp.stmt = (char *)mr_str(r);
    if (!r->bad)
        track_stmt_copy(st, &tmp);
}

struct client *client_import(struct worker *w, int fd, const uint8_t *p, size_t n)
{
    struct msg_reader r;
    mr_init(&r, p, n);
    if (mr_u32(&r) != HANDOVER_VERSION) {
        log_error("takeover: a client record of another version: its connection is dropped");
        return NULL;
    }
    struct client *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    uint64_t old_id = (uint64_t)mr_u32(&r) << 32;
    old_id |= mr_u32(&r);
    c->w = w;
    c->id = worker_new_id(w);
    atomic_fetch_add_explicit(&w->world->n_clients, 1, memory_order_relaxed);
    c->role = mr_u8(&r);
    c->addr_family = mr_u8(&r);
    c->addr_port = mr_u16(&r);
    const uint8_t *ip = mr_bytes(&r, sizeof(c->addr_ip));
    if (ip)
        memcpy(c->addr_ip, ip, sizeof(c->addr_ip));
    c->connect_s = mr_u32(&r);
    c->cancel_pid = mr_u32(&r);
    c->cancel_key = mr_u32(&r);
    c->resetup = mr_u8(&r);
    const char *user = mr_str(&r);
    const char *database = mr_str(&r);
    list_init(&c->pool_node);
    list_init(&c->node);
    if (r.bad || get_kv(&r, &c->params) < 0 || get_kv(&r, &c->reported) < 0)
        goto fail;
    if (mr_u8(&r)) {
        struct client_more *m = client_more(c);
        if (get_kv(&r, &m->sets) < 0)
            goto fail;
        get_op(&r, &m->unnamed_op);
        get_op(&r, &m->portal_op);
        uint32_t ulen = mr_u32(&r);
        const uint8_t *u = ulen ? mr_bytes(&r, ulen) : NULL;
        if (u) {
            m->unnamed_msg = malloc(ulen);
            if (!m->unnamed_msg)
                goto fail;
            memcpy(m->unnamed_msg, u, ulen);
            m->unnamed_len = m->unnamed_cap = ulen;
        }
        uint32_t np = mr_u32(&r);
        for (uint32_t i = 0; i < np && !r.bad; i++) {
            const char *name = mr_str(&r);
            uint32_t len = mr_u32(&r);
            const uint8_t *msg = mr_bytes(&r, len);
            uint64_t hash = (uint64_t)mr_u32(&r) << 32;
            hash |= mr_u32(&r);
            if (!r.bad && msg)
                client_stmt_add(c, name, msg, len, hash);
        }
    }
    if (r.bad)
        goto fail;
    c->pool = pool_get(w, database, user, c->role);
    if (!c->pool)
        goto fail;
    c->pool->n_clients++;
    c->user = c->pool->user;
    c->database = c->pool->database;
    c->names_shared = 1;
    c->got_welcome = 1;
    c->txn_status = 'I';
    c->last_active = now_ms();
    /* The server parameters it was last brought in line with are another process's: compared
     * name by name with what it was told at its first server here. */
    c->reported_hash = 0;
    c->state = CL_IDLE;
    list_append(&w->clients[CL_IDLE], &c->node);
    w->n_clients[CL_IDLE]++;
    client_attach_fd(c, fd);
    log_debug("C-%llu %s: taken over (C-%llu of the old process) as %s to %s",
              (unsigned long long)c->id, client_addr(c), (unsigned long long)old_id, c->user,
              c->database);
    return c;
fail:
    log_error("takeover: a client record does not read: its connection is dropped");
    kv_clear(&c->params);
    kv_clear(&c->reported);
    if (c->more) {
        struct client_more *m = c->more;
        kv_clear(&m->sets);
        track_stmt_clear(&m->unnamed_op);
        track_stmt_clear(&m->portal_op);
        free(m->unnamed_msg);
        for (int i = 0; i < m->n_prepared; i++) {
            free(m->prepared[i].name);
            free(m->prepared[i].msg);
        }
        free(m->prepared);
        free(m);
    }
    free(c);
    return NULL;
}
