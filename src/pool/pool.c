/* Session pooling: lend a server per client session, queue clients when full, reset on return. */
#include "pool/pool.h"
#include "pool/prepared.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "failover/failover.h"
#include "proto/proto.h"
#include "topology/backoff.h"
#include "topology/topology.h"

static int session_releasable(const struct client *c)
{
    return 0;
}

/* Between transactions, with nothing pending and nothing that pins the session. */
static int transaction_releasable(const struct client *c)
{
    return !c->pin_reason && c->pending == 0 && c->unsynced == 0 && c->fwd_left == 0 &&
           c->txn_status == 'I' && !c->in_copy_in;
}

const struct pool_mode_ops pool_modes[2] = {
    [POOL_SESSION] = {"session", 1, session_releasable},
    [POOL_TRANSACTION] = {"transaction", 0, transaction_releasable},
};

struct pool *pool_get(struct worker *w, const char *database, const char *user, int role)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->pools)
    {
        struct pool *p = container_of(pos, struct pool, node);
        if (p->role == role && !strcmp(p->database, database) && !strcmp(p->user, user))
            return p;
    }
    struct pool *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->w = w;
    p->role = role;
    p->database = strdup(database);
    p->user = strdup(user);
    if (!p->database || !p->user) {
        free(p->database);
        free(p->user);
        free(p);
        return NULL;
    }
    list_init(&p->idle);
    list_init(&p->waiting);
    list_append(&w->pools, &p->node);
    return p;
}

/* Where new servers of this pool go now: the writer, or a reader; NULL = hold. */
static struct node *target_node(struct pool *p)
{
    struct worker *w = p->w;
    if (p->role == ROLE_WRITER)
        return w->topo->writer;
    struct node *nd = topology_pick_reader(w);
    if (!nd && w->cfg->readonly_fallback == FALLBACK_WRITER)
        nd = w->topo->writer;
    return nd;
}

/* May a server on nd serve this pool now? (A demoted or fenced node no longer may.) */
static int node_fits(struct pool *p, struct node *nd)
{
    struct topology *t = p->w->topo;
    if (p->role == ROLE_WRITER)
        return nd == t->writer;
    if (nd->role == NODE_STANDBY)
        return 1;
    return nd == t->writer && p->w->cfg->readonly_fallback == FALLBACK_WRITER;
}

static int name_ok(const char *n)
{
    for (; *n; n++)
        if (!(isalnum((unsigned char)*n) || *n == '_' || *n == '.'))
            return 0;
    return 1;
}

static void append_set_literal(struct pbuf *b, const char *name, const char *value)
{
    char head[160];
    snprintf(head, sizeof(head), "SET %s = '", name);
    pbuf_put(b, head, strlen(head));
    for (const char *v = value; *v; v++) {
        if (*v == '\'')
            pbuf_put_u8(b, '\'');
        pbuf_put_u8(b, (uint8_t)*v);
    }
    pbuf_put(b, "';", 2);
}

/* The value server s has now for a setting (reported, left by a client, or from its startup). */
static const char *server_value(struct server *s, const char *name)
{
    const char *v = kv_get(&s->applied, name);
    if (!v)
        v = server_param(s, name);
    if (!v)
        v = kv_get(&s->startup, name);
    return v;
}

/* The SQL that gives server s the session settings client c expects; empty if none. Settings
 * another client left behind are reset, the client's own are set where they differ. */
static void build_setup(struct server *s, struct client *c, struct pbuf *b)
{
    for (int i = s->applied.n - 1; i >= 0; i--) {
        const char *name = s->applied.items[i].name;
        if (kv_get(&c->sets, name) || kv_get(&c->params, name))
            continue;
        char stmt[128];
        snprintf(stmt, sizeof(stmt), "RESET %s;", name);
        pbuf_put(b, stmt, strlen(stmt));
        kv_del(&s->applied, name);
    }
    for (int i = 0; i < c->params.n; i++) {
        const char *name = c->params.items[i].name, *value = c->params.items[i].value;
        if (kv_get(&c->sets, name) || !name_ok(name))
            continue; /* a SET of the same name comes after and wins */
        const char *have = server_value(s, name);
        if (have && strcmp(have, value) == 0)
            continue;
        append_set_literal(b, name, value);
        if (kv_get(&s->startup, name) || server_param(s, name))
            kv_set(&s->applied, name, value);
    }
    for (int i = 0; i < c->sets.n; i++) {
        const char *name = c->sets.items[i].name, *value = c->sets.items[i].value;
        if (!name_ok(name))
            continue;
        const char *have = kv_get(&s->applied, name);
        if (have && strcmp(have, value) == 0)
            continue;
        char stmt[512];
        snprintf(stmt, sizeof(stmt), "SET %s TO %s;", name, value);
        pbuf_put(b, stmt, strlen(stmt));
        kv_set(&s->applied, name, value);
    }
    if (b->len > 0)
        pbuf_put_u8(b, 0);
}

static void link_pair(struct pool *p, struct server *s, struct client *c)
{
    list_del(&c->pool_node);
    p->n_waiting--;
    if (c->held) {
        c->held = 0;
        failover_note_served(p->w);
    }
    c->server = s;
    s->client = c;
    s->last_used = now_ms();
    log_debug("C-%llu: gets S-%llu on %s", (unsigned long long)c->id, (unsigned long long)s->id,
              s->nd->name);
    struct pbuf sql, wire;
    pbuf_init(&sql);
    pbuf_init(&wire);
    int n_ready = 0;
    build_setup(s, c, &sql);
    if (sql.len > 0) {
        proto_build_query(&wire, (const char *)sql.data);
        n_ready++;
    }
    /* Transaction mode: statements are prepared lazily; keep the server's cache bounded. */
    if (p->w->cfg->pool_mode == POOL_TRANSACTION)
        n_ready += plan_evict(s, &wire);
    /* Session mode: the protocol-level prepared statements it had on its previous server. */
    else if (c->n_prepared > 0) {
        for (int i = 0; i < c->n_prepared; i++)
            pbuf_put(&wire, c->prepared[i].msg, c->prepared[i].len);
        size_t off = proto_begin_msg(&wire, FE_SYNC);
        proto_end_msg(&wire, off);
        n_ready++;
    }
    pbuf_free(&sql);
    if (n_ready == 0 || wire.failed) {
        pbuf_free(&wire);
        server_change_state(s, SV_ACTIVE);
        client_linked(c);
        return;
    }
    if (c->got_welcome) {
        /* Sent ahead of the client's own request: no extra round trip. */
        server_send_internal(s, wire.data, wire.len, n_ready);
        pbuf_free(&wire);
        server_change_state(s, SV_ACTIVE);
        client_linked(c);
        return;
    }
    server_change_state(s, SV_SETUP);
    server_send_internal(s, wire.data, wire.len, n_ready);
    pbuf_free(&wire);
}

static void mark_held(struct pool *p)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &p->waiting)
    {
        struct client *c = container_of(pos, struct client, pool_node);
        if (!c->held) {
            c->held = 1;
            failover_note_held(p->w);
        }
    }
}

void pool_kick(struct pool *p)
{
    struct worker *w = p->w;
    while (!list_empty(&p->waiting)) {
        if (p->role == ROLE_WRITER && failover_holding(w)) {
            mark_held(p);
            return;
        }
        struct list *first = list_first(&p->idle);
        if (first) {
            struct server *s = container_of(first, struct server, pool_node);
            list_del(&s->pool_node);
            if (!node_fits(p, s->nd)) {
                server_close(s, "its node no longer has the role this pool needs");
                continue;
            }
            struct client *c = container_of(list_first(&p->waiting), struct client, pool_node);
            link_pair(p, s, c);
            continue;
        }
        struct node *nd = target_node(p);
        if (!nd) {
            mark_held(p);
            return;
        }
        if (login_backoff_wait(p, nd))
            return; /* a login failed: the next waits (server_login_retry), clients too */
        /* Open as many as are waiting, within pool_size and the concurrent-login bound. */
        int want = p->n_waiting - p->n_connecting;
        while (want > 0 && p->n_servers < w->cfg->pool_size &&
               p->n_connecting < w->cfg->server_connect_concurrency) {
            struct client *c = container_of(list_first(&p->waiting), struct client, pool_node);
            struct server *s = server_open(w, p, nd, p->user, p->database);
            if (!s)
                break;
            for (int i = 0; i < c->params.n; i++)
                kv_set(&s->startup, c->params.items[i].name, c->params.items[i].value);
            want--;
        }
        return;
    }
}

void pool_kick_all(struct worker *w)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->pools)
    {
        pool_kick(container_of(pos, struct pool, node));
    }
}

void pool_request(struct pool *p, struct client *c)
{
    if (c->state == CL_WAITING)
        return;
    client_change_state(c, CL_WAITING);
    list_append(&p->waiting, &c->pool_node);
    p->n_waiting++;
    pool_kick(p);
}

void pool_cancel_wait(struct client *c)
{
    struct pool *p = c->pool;
    if (!p || list_empty(&c->pool_node))
        return;
    list_del(&c->pool_node);
    p->n_waiting--;
    c->held = 0;
}

void pool_release(struct server *s, int reusable)
{
    struct worker *w = s->w;
    struct pool *p = s->pool;
    s->client = NULL;
    if (!p || s->state == SV_CLOSING)
        return;
    if (!reusable) {
        server_close(s, "released in an unknown state");
        return;
    }
    if (!node_fits(p, s->nd)) {
        server_close(s, "its node no longer has the role this pool needs");
        return;
    }
    if ((POOL_OPS(w)->reset_on_release || s->dirty) && w->cfg->server_reset_query &&
        *w->cfg->server_reset_query) {
        kv_clear(&s->applied);
        plan_forget_all(s);
        s->dirty = 0;
        server_change_state(s, SV_RESETTING);
        server_run_internal(s, w->cfg->server_reset_query);
        return;
    }
    pool_server_ready(s);
}

void pool_after_ready(struct client *c)
{
    struct server *s = c->server;
    if (!s || !POOL_OPS(c->w)->releasable(c) || !plan_empty(s))
        return;
    c->server = NULL;
    s->client = NULL;
    client_change_state(c, CL_IDLE);
    pool_release(s, s->state == SV_ACTIVE && s->txn_status == 'I' && s->fwd_left == 0);
}

void pool_server_ready(struct server *s)
{
    struct pool *p = s->pool;
    server_change_state(s, SV_IDLE);
    list_append(&p->idle, &s->pool_node);
    pool_kick(p);
}

void pool_login_failed(struct pool *p, const uint8_t *err_msg, size_t len, const char *why)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &p->waiting)
    {
        struct client *c = container_of(pos, struct client, pool_node);
        pool_cancel_wait(c);
        client_send(c, err_msg, len);
        client_close(c, NULL, why);
    }
}

void pool_drop_node(struct worker *w, struct node *nd)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->servers[SV_IDLE])
    {
        struct server *s = container_of(pos, struct server, node);
        if (s->nd == nd)
            server_close(s, "its node changed role");
    }
}

/* ---- cancel ---- */

/* A one-shot connection carrying a CancelRequest to the server's node. */
struct cancel_conn {
    struct bufferevent *bev;
    uint8_t pkt[16];
};

static void cancel_free(struct cancel_conn *cc)
{
    bufferevent_free(cc->bev);
    free(cc);
}

static void cancel_write_cb(struct bufferevent *bev, void *arg)
{
    cancel_free(arg);
}

static void cancel_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct cancel_conn *cc = arg;
    if (what & BEV_EVENT_CONNECTED) {
        bufferevent_write(bev, cc->pkt, sizeof(cc->pkt));
        return;
    }
    cancel_free(cc);
}

void cancel_forward(struct worker *w, uint32_t pid, uint32_t key)
{
    struct client *c = client_find_by_cancel(w, pid, key);
    if (!c || !c->server || !c->server->nd) {
        log_debug("cancel request for no running query");
        return;
    }
    struct server *s = c->server;
    struct cancel_conn *cc = calloc(1, sizeof(*cc));
    if (!cc)
        return;
    struct pbuf b;
    pbuf_init(&b);
    proto_build_cancel(&b, s->be_pid, s->be_key);
    if (b.failed || b.len != sizeof(cc->pkt)) {
        pbuf_free(&b);
        free(cc);
        return;
    }
    memcpy(cc->pkt, b.data, b.len);
    pbuf_free(&b);
    cc->bev = bufferevent_socket_new(w->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!cc->bev) {
        free(cc);
        return;
    }
    bufferevent_setcb(cc->bev, NULL, cancel_write_cb, cancel_event_cb, cc);
    bufferevent_enable(cc->bev, EV_WRITE);
    log_info("C-%llu: cancel forwarded to S-%llu (backend pid %u on %s)", (unsigned long long)c->id,
             (unsigned long long)s->id, s->be_pid, s->nd->name);
    if (bufferevent_socket_connect_hostname(cc->bev, w->dns, AF_UNSPEC, s->nd->host, s->nd->port) < 0)
        cancel_free(cc);
}
