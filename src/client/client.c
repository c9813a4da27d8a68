/* The client state machine: accept, startup packet, then the query loop and what a lost server means. */
#include "client/client.h"

#include <arpa/inet.h>
#include <sys/socket.h>
#include <ctype.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/rand.h>

#include "client/auth.h"
#include "client/track.h"
#include "core/conn.h"
#include "core/log.h"
#include "core/tls.h"
#include "pool/backoff.h"
#include "pool/pool.h"
#include "pool/prepared.h"
#include "proto/frame.h"
#include "proto/proto.h"
#include "proto/sqlclass.h"
#include "server/server.h"
#include "topology/topology.h"

/* A Query or Parse this small is looked at whole (SET tracking, pins, COMMIT). */
#define INSPECT_MAX (16 * 1024)
/* Longest authentication message a client may send (SCRAM messages are a few hundred bytes). */
#define AUTH_MSG_MAX 8192

/* ---- name/value lists ---- */

/* Names are PostgreSQL setting names, which are case-insensitive (ASCII, as guc.c compares
 * them): a startup TimeZone and a SET timezone are one setting, and a server's list of applied
 * settings must hold it once or one spelling is reset under the other (test_isolation). */
void kv_set(struct kvlist *l, const char *name, const char *value)
{
    for (int i = 0; i < l->n; i++) {
        if (strcasecmp(l->items[i].name, name) == 0) {
            if (strcmp(l->items[i].value, value) != 0) {
                char *v = strdup(value);
                if (!v)
                    return;
                free(l->items[i].value);
                l->items[i].value = v;
            }
            return;
        }
    }
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 8;
        struct kv *items = realloc(l->items, (size_t)cap * sizeof(*items));
        if (!items)
            return;
        l->items = items;
        l->cap = cap;
    }
    char *n = strdup(name), *v = strdup(value);
    if (!n || !v) {
        free(n);
        free(v);
        return;
    }
    l->items[l->n].name = n;
    l->items[l->n].value = v;
    l->n++;
}

static uint64_t kv_item_hash(const char *name, const char *value)
{
    uint64_t h = 1469598103934665603ULL;
    for (const char *p = name; *p; p++)
        h = (h ^ (uint8_t)*p) * 1099511628211ULL;
    h = (h ^ '=') * 1099511628211ULL;
    for (const char *p = value; *p; p++)
        h = (h ^ (uint8_t)*p) * 1099511628211ULL;
    return h;
}

uint64_t kv_hash(const struct kvlist *l)
{
    /* A sum: the order of the items (kv_del reorders) does not matter, and one item's hash
     * can be taken out again (welcome_key). */
    uint64_t sum = 0;
    for (int i = 0; i < l->n; i++)
        sum += kv_item_hash(l->items[i].name, l->items[i].value);
    return sum;
}

/* The key of the welcome a client may share with others (pool_welcome_find). With
 * application_name_add_host every client's application_name is its own: it is left out of the
 * key, and each client is told its own (welcome_value), so logins still need no server. */
static uint64_t welcome_key(const struct client *c)
{
    uint64_t key = kv_hash(&c->params);
    const char *app =
        c->w->cfg->application_name_add_host ? kv_get(&c->params, "application_name") : NULL;
    return app ? key - kv_item_hash("application_name", app) : key;
}

static const char *welcome_value(const struct client *c, const char *name, const char *value)
{
    const char *own = c->w->cfg->application_name_add_host && !strcmp(name, "application_name")
                          ? kv_get(&c->params, name)
                          : NULL;
    return own ? own : value;
}

const char *kv_get(const struct kvlist *l, const char *name)
{
    for (int i = 0; i < l->n; i++)
        if (strcasecmp(l->items[i].name, name) == 0)
            return l->items[i].value;
    return NULL;
}

void kv_del(struct kvlist *l, const char *name)
{
    for (int i = 0; i < l->n; i++) {
        if (strcasecmp(l->items[i].name, name) == 0) {
            free(l->items[i].name);
            free(l->items[i].value);
            l->items[i] = l->items[--l->n];
            return;
        }
    }
}

void kv_clear(struct kvlist *l)
{
    for (int i = 0; i < l->n; i++) {
        free(l->items[i].name);
        free(l->items[i].value);
    }
    free(l->items);
    memset(l, 0, sizeof(*l));
}

const char *client_reported(struct client *c, const char *name)
{
    const char *v = kv_get(&c->reported, name);
    return v ? v : (c->pool ? kv_get(&c->pool->base, name) : NULL);
}

void client_note_reported(struct client *c, const char *name, const char *value)
{
    const char *base = c->pool ? kv_get(&c->pool->base, name) : NULL;
    if (base && strcmp(base, value) == 0)
        kv_del(&c->reported, name);
    else
        kv_set(&c->reported, name, value);
}

/* This session's state can no longer follow it to another server: count it, say why. */
void client_pin(struct client *c, int reason)
{
    c->pin_reason = reason;
    c->w->stats.pins[reason]++;
    if (c->server)
        c->server->dirty = 1;
    log_debug("C-%llu: pinned to its server: %s", (unsigned long long)c->id, pin_reason_name(reason));
}

/* ---- prepared statements to replay ---- */

/* Past this many bytes of Parse messages a session is pinned instead of tracked. */
#define PREPARED_MAX_BYTES (1024 * 1024)

static void prepared_del(struct client *c, const char *name)
{
    for (int i = 0; i < client_more(c)->n_prepared; i++) {
        if (strcmp(client_more(c)->prepared[i].name, name) == 0) {
            client_more(c)->prepared_bytes -= client_more(c)->prepared[i].len;
            free(client_more(c)->prepared[i].name);
            free(client_more(c)->prepared[i].msg);
            client_more(c)->prepared[i] = client_more(c)->prepared[--client_more(c)->n_prepared];
            return;
        }
    }
}

static void prepared_clear(struct client *c)
{
    for (int i = 0; i < client_more(c)->n_prepared; i++) {
        free(client_more(c)->prepared[i].name);
        free(client_more(c)->prepared[i].msg);
    }
    client_more(c)->n_prepared = 0;
    client_more(c)->prepared_bytes = 0;
}

static void prepared_add(struct client *c, const char *name, const uint8_t *m, uint32_t len)
{
    prepared_del(c, name);
    int keep_msg = 1;
    if (client_more(c)->prepared_bytes + len > PREPARED_MAX_BYTES) {
        /* Past what pgstay keeps to replay: the session stays on its server, which has the
         * statement; the name (and its server-side name) is still needed for its Binds. */
        if (!c->pin_reason)
            client_pin(c, PIN_PREPARED_LIMIT);
        keep_msg = 0;
    }
    if (client_more(c)->n_prepared == client_more(c)->cap_prepared) {
        int cap = client_more(c)->cap_prepared ? client_more(c)->cap_prepared * 2 : 8;
        struct prepared *p = realloc(client_more(c)->prepared, (size_t)cap * sizeof(*p));
        if (!p)
            return;
        client_more(c)->prepared = p;
        client_more(c)->cap_prepared = cap;
    }
    struct prepared *p = &client_more(c)->prepared[client_more(c)->n_prepared];
    p->name = strdup(name);
    p->msg = keep_msg ? malloc(len) : NULL;
    p->hash = 0;
    if (!p->name || (keep_msg && !p->msg)) {
        free(p->name);
        free(p->msg);
        return;
    }
    if (keep_msg)
        memcpy(p->msg, m, len);
    p->len = keep_msg ? len : 0;
    client_more(c)->n_prepared++;
    client_more(c)->prepared_bytes += p->len;
}

/* Session mode: a named Parse sent; kept for replay only once the server accepted it. */
static void parse_sent(struct client *c, const char *name, const uint8_t *m, uint32_t len)
{
    if (client_more(c)->n_pend == client_more(c)->cap_pend) {
        int cap = client_more(c)->cap_pend ? client_more(c)->cap_pend * 2 : 4;
        struct pending_parse *pp = realloc(client_more(c)->pend, (size_t)cap * sizeof(*pp));
        if (!pp)
            return;
        client_more(c)->pend = pp;
        client_more(c)->cap_pend = cap;
    }
    struct pending_parse *pp = &client_more(c)->pend[client_more(c)->n_pend];
    /* An unnamed Parse waits here too (answers are in order), with nothing to keep. */
    if (!*name)
        len = 0;
    pp->name = strdup(name);
    pp->msg = malloc(len ? len : 1);
    if (!pp->name || !pp->msg) {
        free(pp->name);
        free(pp->msg);
        return;
    }
    memcpy(pp->msg, m, len);
    pp->len = len;
    pp->batch = client_more(c)->batches_sent;
    client_more(c)->n_pend++;
}

static void pend_pop(struct client *c, int keep)
{
    struct pending_parse *pp = &client_more(c)->pend[0];
    if (keep && pp->len > 0)
        prepared_add(c, pp->name, pp->msg, pp->len);
    free(pp->name);
    free(pp->msg);
    memmove(client_more(c)->pend, client_more(c)->pend + 1, (size_t)(--client_more(c)->n_pend) * sizeof(*client_more(c)->pend));
}

void client_parse_answered(struct client *c)
{
    /* Answers come in order: a ParseComplete is for the oldest Parse still waiting. */
    if (client_more(c)->n_pend > 0)
        pend_pop(c, 1);
}

void client_batch_answered(struct client *c)
{
    client_more(c)->batches_done++;
    /* What was not accepted by the end of its batch was skipped after an error. */
    while (client_more(c)->n_pend > 0 && client_more(c)->pend[0].batch < client_more(c)->batches_done)
        pend_pop(c, 0);
}

void client_stmt_add(struct client *c, const char *name, const uint8_t *msg, uint32_t len,
                     uint64_t hash)
{
    prepared_add(c, name, msg, len);
    const struct prepared *p = client_stmt_find(c, name);
    if (p)
        ((struct prepared *)p)->hash = hash;
}

const struct prepared *client_stmt_find(struct client *c, const char *name)
{
    for (int i = 0; i < client_more(c)->n_prepared; i++)
        if (strcmp(client_more(c)->prepared[i].name, name) == 0)
            return &client_more(c)->prepared[i];
    return NULL;
}

void client_stmt_del(struct client *c, const char *name)
{
    prepared_del(c, name);
}

void client_stmt_del_hash(struct client *c, uint64_t hash)
{
    for (int i = client_more(c)->n_prepared - 1; i >= 0; i--)
        if (client_more(c)->prepared[i].hash == hash)
            prepared_del(c, client_more(c)->prepared[i].name);
}

void client_stmt_clear(struct client *c)
{
    prepared_clear(c);
}

static void stmt_ops_clear(struct client *c);
static void term_wait(struct client *c);
static int output_full(struct client *c);
static int term_settle(struct client *c);
static void lost_decide(struct client *c, const char *why, const char *sqlstate, const char *message);

/* ---- state and teardown ---- */

const char *client_addr(const struct client *c)
{
    /* For log lines and SHOW CLIENTS: one at a time per thread. */
    static __thread char buf[64];
    char ip[INET6_ADDRSTRLEN];
    if (c->addr_family == AF_INET) {
        inet_ntop(AF_INET, c->addr_ip, ip, sizeof(ip));
        snprintf(buf, sizeof(buf), "%s:%u", ip, c->addr_port);
    } else if (c->addr_family == AF_INET6) {
        inet_ntop(AF_INET6, c->addr_ip, ip, sizeof(ip));
        snprintf(buf, sizeof(buf), "[%s]:%u", ip, c->addr_port);
    } else {
        snprintf(buf, sizeof(buf), "unix");
    }
    return buf;
}

void client_change_state(struct client *c, enum client_state st)
{
    struct worker *w = c->w;
    list_del(&c->node);
    w->n_clients[c->state]--;
    if (st == CL_CLOSING && c->state != CL_CLOSING && w->world)
        atomic_fetch_sub_explicit(&w->world->n_clients, 1, memory_order_relaxed);
    c->state = st;
    list_append(&w->clients[st], &c->node);
    w->n_clients[st]++;
    /* Handing over to a new process (pgstay -R): a client that just became idle may go now,
     * once the current callbacks return (its reply flushed, nothing more read). */
    if (w->handing_over && st == CL_IDLE)
        worker_schedule_reap(w);
}

void client_send(struct client *c, const void *p, size_t n)
{
    if (c->state != CL_CLOSING)
        conn_write(&c->conn, p, n);
}

void client_send_pbuf(struct client *c, struct pbuf *b)
{
    if (!b->failed)
        client_send(c, b->data, b->len);
    pbuf_free(b);
}

void client_close(struct client *c, const char *sqlstate, const char *reason)
{
    if (c->state == CL_CLOSING)
        return;
    const struct config *cfg = c->w->cfg;
    if (sqlstate) {
        struct pbuf b;
        pbuf_init(&b);
        proto_build_error(&b, "FATAL", sqlstate, reason, NULL);
        client_send_pbuf(c, &b);
        if (cfg->log_pooler_errors)
            log_warn("C-%llu %s: pooler error: %s %s", (unsigned long long)c->id, client_addr(c),
                     sqlstate, reason);
    }
    /* PgBouncer's log_disconnections line: who, why, and how long it was connected. */
    long long age = (long long)(now_ms() / 1000) - (long long)c->connect_s;
    if (cfg->log_disconnections)
        log_info("C-%llu %s %s/%s: closing because: %s (age=%llds)", (unsigned long long)c->id,
                 client_addr(c), c->user ? c->user : "-", c->database ? c->database : "-", reason,
                 age);
    else
        log_debug("C-%llu %s: closing because: %s (age=%llds)", (unsigned long long)c->id,
                  client_addr(c), reason, age);
    if (c->state == CL_WAITING)
        pool_cancel_wait(c);
    if (c->server) {
        struct server *s = c->server;
        c->server = NULL;
        s->client = NULL;
        /* A server in the middle of something is finished by pgstay, or closed: never handed
         * to the next client as it is. */
        pool_take_back(s, c->pending, c->unsynced, c->fwd_left > 0 || c->in_copy_in);
    }
    conn_read_stop(&c->conn);
    client_change_state(c, CL_CLOSING);
    worker_schedule_reap(c->w);
}

void client_free(struct client *c)
{
    /* A final error (a FATAL) reaches the client before the socket goes. */
    conn_close_after_send(&c->conn);
    list_del(&c->node);
    c->w->n_clients[c->state]--;
    if (c->state != CL_CLOSING && c->w->world)
        atomic_fetch_sub_explicit(&c->w->world->n_clients, 1, memory_order_relaxed);
    if (c->pool)
        c->pool->n_clients--;
    if (!c->names_shared) {
        free(c->user);
        free(c->database);
    }
    kv_clear(&c->params);
    kv_clear(&c->reported);
    struct client_more *m = c->more;
    if (m) {
        kv_clear(&m->sets);
        track_free(&m->track);
        free(m->unnamed_msg);
        while (m->n_pend > 0)
            pend_pop(c, 0);
        free(m->pend);
        free(m->term);
        if (m->term_timer)
            event_free(m->term_timer);
        stmt_ops_clear(c);
        prepared_clear(c);
        free(m->prepared);
        free(m);
    }
    free(c->scram);
    free(c);
}

struct client_more *client_more_alloc(struct client *c)
{
    c->more = calloc(1, sizeof(*c->more));
    if (!c->more) {
        /* Nearly every path of the session would need an exit for this; none can do better
         * than stopping, and a proxy that cannot allocate a few hundred bytes cannot serve. */
        log_error("C-%llu: out of memory for its session state: exiting", (unsigned long long)c->id);
        abort();
    }
    return c->more;
}

struct client *client_find_by_cancel(struct worker *w, uint32_t pid, uint32_t key)
{
    static const int states[] = {CL_ACTIVE, CL_WAITING, CL_IDLE};
    for (size_t i = 0; i < sizeof(states) / sizeof(states[0]); i++) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &w->clients[states[i]])
        {
            struct client *c = container_of(pos, struct client, node);
            if (c->cancel_pid == pid && c->cancel_key == key)
                return c;
        }
    }
    return NULL;
}

/* ---- errors towards the client ---- */

static void send_ready(struct client *c, char status)
{
    struct pbuf b;
    pbuf_init(&b);
    proto_build_ready(&b, status);
    client_send_pbuf(c, &b);
    c->txn_status = status;
}

void client_send_error(struct client *c, const char *sqlstate, const char *msg)
{
    struct pbuf b;
    pbuf_init(&b);
    proto_build_error(&b, "ERROR", sqlstate, msg, NULL);
    client_send_pbuf(c, &b);
    if (c->w->cfg->log_pooler_errors)
        log_warn("C-%llu %s: pooler error: %s %s", (unsigned long long)c->id, client_addr(c),
                 sqlstate, msg);
}

/* ---- accepting ---- */

static void client_read_cb(void *arg)
{
    client_process(arg);
}

static void client_write_cb(void *arg)
{
    /* The client drained what its server sent: let the server's traffic flow again. */
    struct client *c = arg;
    if (c->out_blocked) {
        c->out_blocked = 0;
        client_process(c);
    }
    if (c->server && c->state == CL_ACTIVE)
        server_process(c->server);
}

/* The TLS handshake with a client is done: what follows is its StartupMessage, encrypted. */
static void client_tls_ready(struct client *c)
{
    char alpn[32];
    conn_tls_alpn(&c->conn, alpn, sizeof(alpn));
    if (c->tls_direct && strcmp(alpn, "postgresql") != 0) {
        /* As PostgreSQL 17: direct TLS is only for clients that say they speak PostgreSQL, so
         * that a TLS connection meant for another protocol cannot be replayed here. */
        client_close(c, SQLSTATE_PROTOCOL_VIOLATION,
                     "received direct SSL connection request without ALPN protocol negotiation "
                     "extension");
        return;
    }
    log_debug("C-%llu %s: TLS established (%s, %s%s)", (unsigned long long)c->id, client_addr(c),
              conn_tls_version(&c->conn), conn_tls_cipher(&c->conn),
              c->tls_direct ? ", direct" : "");
}

static void client_event_cb(void *arg, int what)
{
    struct client *c = arg;
    if (what & CONN_EOF) {
        client_close(c, NULL, "client disconnected");
    } else if (what & CONN_ERROR) {
        char why[320];
        snprintf(why, sizeof(why), "client connection error: %s", conn_strerror(&c->conn));
        client_close(c, NULL, why);
    } else if (what & CONN_TLS) {
        client_tls_ready(c);
    }
}

static const struct conn_cbs client_cbs = {
    .on_read = client_read_cb,
    .on_drain = client_write_cb,
    .on_event = client_event_cb,
};

void client_attach_fd(struct client *c, int fd)
{
    conn_accept(&c->conn, &c->w->loop, fd, &client_cbs, c);
}

void client_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                   void *arg)
{
    client_accept_fd(arg, fd, sa, salen, 0);
}

void client_accept_fd(struct listen_ctx *ctx, int fd, struct sockaddr *sa, int salen, int fd_short)
{
    struct worker *w = ctx->w;
    int role = ctx->role;
    struct client *c = calloc(1, sizeof(*c));
    if (!c) {
        evutil_closesocket(fd);
        return;
    }
    /* Every worker's clients count against max_client_conn (those closing do not). */
    int live = atomic_fetch_add_explicit(&w->world->n_clients, 1, memory_order_relaxed);
    net_tune_client(fd);
    c->w = w;
    c->id = worker_new_id(w);
    c->connect_s = (uint32_t)(now_ms() / 1000);
    c->role = role;
    c->txn_status = 'I';
    c->last_active = now_ms();
    list_init(&c->pool_node);
    list_init(&c->node);
    c->state = CL_LOGIN;
    list_append(&w->clients[CL_LOGIN], &c->node);
    w->n_clients[CL_LOGIN]++;
    /* Kept as bytes (an idle client is mostly this struct), shown by client_addr. */
    c->addr_family = (uint8_t)sa->sa_family;
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)sa;
        memcpy(c->addr_ip, &sin->sin_addr, 4);
        c->addr_port = ntohs(sin->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)sa;
        memcpy(c->addr_ip, &sin6->sin6_addr, 16);
        c->addr_port = ntohs(sin6->sin6_port);
    }
    conn_accept(&c->conn, &w->loop, fd, &client_cbs, c);
    w->stats.clients_accepted++;
    /* Over max_client_conn: refused once its startup packet is read, as PostgreSQL does, so
     * the client sees the error and not a broken SSL negotiation. */
    c->over_limit = live >= w->cfg->max_client_conn;
    c->fd_short = (uint8_t)fd_short;
    log_debug("C-%llu %s: connected to the %s endpoint", (unsigned long long)c->id, client_addr(c),
              role == ROLE_WRITER ? "writer" : "reader");
}

/* ---- startup ---- */

/* "-c name=value" and "--name=value" words of the options startup parameter become SETs. */
static int parse_options(struct client *c, const char *opts)
{
    char buf[1024];
    snprintf(buf, sizeof(buf), "%s", opts);
    char *save = NULL;
    int expect_c = 0;
    for (char *tok = strtok_r(buf, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
        char *kv = NULL;
        if (expect_c) {
            kv = tok;
            expect_c = 0;
        } else if (strcmp(tok, "-c") == 0) {
            expect_c = 1;
            continue;
        } else if (strncmp(tok, "-c", 2) == 0) {
            kv = tok + 2;
        } else if (strncmp(tok, "--", 2) == 0) {
            kv = tok + 2;
        } else {
            return -1;
        }
        char *eq = strchr(kv, '=');
        if (!eq || eq == kv)
            return -1;
        *eq = 0;
        for (char *p = kv; *p; p++)
            if (*p == '-')
                *p = '_';
        kv_set(&c->params, kv, eq + 1);
    }
    return expect_c ? -1 : 0;
}

/* Does this pgstay answer an SSLRequest with 'S'? (a certificate is set, TLS not disabled) */
static int tls_offered(const struct client *c)
{
    return c->w->client_tls && c->w->cfg->client_tls_sslmode != TLS_DISABLE;
}

/* 'S', then the handshake. Bytes that came with the SSLRequest were sent before the client
 * could know the answer: a man in the middle's injection (CVE-2021-23214, CVE-2021-3935), never
 * taken as part of the session. */
static void start_tls(struct client *c, size_t prefix)
{
    c->ssl_done = 1;
    if (prefix == 0) {
        if (conn_avail(&c->conn) > 0) {
            client_close(c, SQLSTATE_PROTOCOL_VIOLATION,
                         "received unencrypted data after SSL request");
            return;
        }
        client_send(c, "S", 1);
    } else {
        c->tls_direct = 1;
    }
    if (conn_start_tls(&c->conn, c->w->client_tls, 1, 0, NULL, prefix) < 0)
        client_close(c, NULL, "cannot start TLS");
}

/* The TLS rules of client_tls_sslmode, once the user is known: 0 to go on, -1 closed. */
static int check_tls(struct client *c, const char *user, const char *db)
{
    int mode = c->w->cfg->client_tls_sslmode;
    if (!conn_is_tls(&c->conn)) {
        if (mode < TLS_REQUIRE)
            return 0;
        /* PostgreSQL's hostssl-only answer, and what to change. */
        char msg[512];
        snprintf(msg, sizeof(msg),
                 "no encryption: pgstay accepts only TLS connections (client_tls_sslmode = %s) "
                 "for host \"%s\", user \"%s\", database \"%s\"; connect with sslmode=require",
                 mode == TLS_REQUIRE     ? "require"
                 : mode == TLS_VERIFY_CA ? "verify-ca"
                                         : "verify-full",
                 client_addr(c), user, db);
        client_close(c, SQLSTATE_INVALID_AUTH, msg);
        return -1;
    }
    if (mode == TLS_VERIFY_FULL) {
        /* The handshake verified the certificate (verify-ca); verify-full also wants it to be
         * this user's, as PostgreSQL's clientcert=verify-full. */
        char cn[256];
        if (!conn_tls_peer_cn(&c->conn, cn, sizeof(cn)) || strcmp(cn, user) != 0) {
            char msg[400];
            snprintf(msg, sizeof(msg),
                     "certificate validation (clientcert=verify-full) failed for user \"%s\": CN "
                     "mismatch",
                     user);
            client_close(c, SQLSTATE_INVALID_AUTH, msg);
            return -1;
        }
    }
    return 0;
}

static void handle_startup(struct client *c, const uint8_t *pkt, uint32_t len)
{
    struct startup_pkt sp;
    const char *err = NULL;
    if (proto_parse_startup(pkt, len, &sp, &err) != PROTO_OK) {
        client_close(c, SQLSTATE_PROTOCOL_VIOLATION, err);
        return;
    }
    int ssl = sp.code == PROTO_SSL_CODE, gss = sp.code == PROTO_GSSENC_CODE;
    if (ssl && !c->ssl_done && tls_offered(c)) {
        start_tls(c, 0);
        return;
    }
    if ((ssl && !c->ssl_done) || (gss && !c->gss_done)) {
        /* No TLS yet: 'N' and the client goes on in plain text (or gives up). As PostgreSQL
         * does, one SSLRequest per negotiation; a GSSENCRequest may follow it, and after that
         * one, SSL may be asked again. */
        client_send(c, "N", 1);
        c->ssl_done = ssl;
        c->gss_done = gss;
        return;
    }
    if (ssl || gss) {
        char msg[128];
        snprintf(msg, sizeof(msg), "unsupported frontend protocol %u.%u: server supports 3.0 to 3.0",
                 sp.code >> 16, sp.code & 0xffff);
        client_close(c, SQLSTATE_FEATURE_NOT_SUPPORTED, msg);
        return;
    }
    if (sp.code == PROTO_CANCEL_CODE) {
        cancel_forward(c->w, sp.cancel_pid, sp.cancel_key);
        client_close(c, NULL, "cancel request handled");
        return;
    }
    if (c->over_limit) {
        c->w->stats.clients_rejected++;
        client_close(c, SQLSTATE_TOO_MANY_CONNECTIONS,
                     "sorry, too many clients already (max_client_conn)");
        return;
    }
    uint32_t major = sp.code >> 16, minor = sp.code & 0xffff;
    if (major != 3) {
        char msg[128];
        snprintf(msg, sizeof(msg), "unsupported frontend protocol %u.%u: server supports 3.0 to 3.0",
                 major, minor);
        client_close(c, SQLSTATE_FEATURE_NOT_SUPPORTED, msg);
        return;
    }
    if (minor > 0 || sp.n_protocol_options > 0) {
        /* As PostgreSQL does: offer 3.0 and name the options not understood, then go on. */
        const char *opts[STARTUP_MAX_PARAMS];
        int n = 0;
        struct msg_reader r;
        mr_init(&r, pkt + 8, len - 8);
        /* !r.bad: proto_parse_startup checked every string, but a string without its NUL
         * would not be consumed and the loop would never end. */
        while (mr_left(&r) > 1 && n < STARTUP_MAX_PARAMS && !r.bad) {
            const char *name = mr_str(&r);
            mr_str(&r);
            if (strncmp(name, "_pq_.", 5) == 0)
                opts[n++] = name;
        }
        struct pbuf b;
        pbuf_init(&b);
        proto_build_negotiate_version(&b, 0, n, opts);
        client_send_pbuf(c, &b);
    }
    const char *user = startup_param(&sp, "user");
    if (!user || !*user) {
        client_close(c, SQLSTATE_INVALID_AUTH, "no PostgreSQL user name specified in startup packet");
        return;
    }
    const char *db = startup_param(&sp, "database");
    if (!db || !*db)
        db = user;
    if (check_tls(c, user, db) < 0)
        return;
    const char *repl = startup_param(&sp, "replication");
    if (repl && strcmp(repl, "false") && strcmp(repl, "0") && strcmp(repl, "off") && strcmp(repl, "no")) {
        client_close(c, SQLSTATE_FEATURE_NOT_SUPPORTED, "pgstay does not proxy replication connections");
        return;
    }
    c->user = strdup(user);
    c->database = strdup(db);
    for (int i = 0; i < sp.n_params; i++) {
        const char *n = sp.names[i];
        if (!strcmp(n, "user") || !strcmp(n, "database") || !strcmp(n, "replication"))
            continue;
        /* PgBouncer's ignore_startup_parameters: dropped, as if the client had not sent it. */
        if (config_list_has(c->w->cfg->ignore_startup_parameters, n))
            continue;
        if (!strcmp(n, "options")) {
            if (parse_options(c, sp.values[i]) < 0) {
                client_close(c, SQLSTATE_FEATURE_NOT_SUPPORTED,
                             "unsupported startup parameter in options: only -c name=value is supported");
                return;
            }
            continue;
        }
        kv_set(&c->params, n, sp.values[i]);
    }
    if (c->w->cfg->application_name_add_host) {
        /* PgBouncer's: "name - address:port" in pg_stat_activity tells which client host a
         * statement came from, which the pooled server connection no longer shows. */
        const char *app = kv_get(&c->params, "application_name");
        char named[400];
        snprintf(named, sizeof(named), "%s - %s", app ? app : "app", client_addr(c));
        kv_set(&c->params, "application_name", named);
    }
    c->is_admin = !strcmp(c->database, ADMIN_DBNAME) || !strcmp(c->database, ADMIN_DBNAME_ALIAS);
    if (c->fd_short && !c->is_admin) {
        c->w->stats.clients_rejected++;
        client_close(c, SQLSTATE_TOO_MANY_CONNECTIONS,
                     "sorry, too many clients already: pgstay is out of file descriptors");
        return;
    }
    if (c->is_admin && !config_list_has(c->w->cfg->admin_users, c->user) &&
        !config_list_has(c->w->cfg->stats_users, c->user)) {
        /* PgBouncer's words; what each may run is checked at every command (admin.c). */
        client_close(c, SQLSTATE_INVALID_AUTH, "not allowed");
        return;
    }
    if (c->w->shutting_down) {
        client_close(c, SQLSTATE_ADMIN_SHUTDOWN, "pgstay is shutting down");
        return;
    }
    if (!c->is_admin && c->w->session->db_disabled(c->w, c->database)) {
        /* DISABLE db: PgBouncer 1.18's words and SQLSTATE (as a live one answers). */
        char msg[160];
        snprintf(msg, sizeof(msg), "database \"%s\" is disabled", c->database);
        client_close(c, SQLSTATE_PROTOCOL_VIOLATION, msg);
        return;
    }
    c->auth_step = AUTH_STEP_METHOD;
    auth_begin(c);
}

static int is_password_message(uint8_t t)
{
    return t == FE_PASSWORD;
}

int frame_ok(struct client *c, enum frame_result r, const struct msg_hdr *h, const char *expected)
{
    char msg[96];
    switch (r) {
    case FRAME_OK:
        return 1;
    case FRAME_MORE:
        return 0;
    case FRAME_BAD_LENGTH:
        client_close(c, SQLSTATE_PROTOCOL_VIOLATION, "invalid message length");
        return 0;
    case FRAME_BAD_TYPE:
        if (!strcmp(expected, "frontend"))
            snprintf(msg, sizeof(msg), "invalid frontend message type %d", h->type);
        else
            snprintf(msg, sizeof(msg), "expected %s, got message type %d", expected, h->type);
        client_close(c, SQLSTATE_PROTOCOL_VIOLATION, msg);
        return 0;
    }
    return 0;
}

static void login_process(struct client *c)
{
    struct conn *in = &c->conn;
    while (c->state == CL_LOGIN && !output_full(c)) {
        size_t avail = conn_avail(in);
        if (c->auth_step == AUTH_STEP_STARTUP) {
            uint32_t len = 0;
            const char *err = NULL;
            if (avail >= 1 && conn_data(in)[0] == 0x16 && !c->ssl_done && tls_offered(c)) {
                /* A TLS handshake record (PostgreSQL 17's direct TLS): no startup packet can
                 * begin with this byte (it would be longer than any allowed). */
                start_tls(c, avail);
                return;
            }
            if (avail < 4)
                return;
            int r = proto_startup_len(conn_data(in), 4, &len, &err);
            if (r == PROTO_BAD) {
                /* As PostgreSQL does: no reply to what is not a startup packet (node-postgres
                 * sends Terminate first when it ends a connection at once). */
                log_info("C-%llu %s: closing: %s", (unsigned long long)c->id, client_addr(c), err);
                client_close(c, NULL, err);
                return;
            }
            if (avail < len)
                return;
            /* Taken out of the buffer before handling: a trusted client may be linked to a
             * server, and start forwarding what follows, before handle_startup returns. */
            uint8_t pkt[PROTO_STARTUP_MAX];
            memcpy(pkt, conn_data(in), len);
            conn_consume(in, len);
            handle_startup(c, pkt, len);
            continue;
        }
        /* Authentication answers: 'p' messages, small. */
        struct msg_hdr h;
        static const struct frame_rules rules = {AUTH_MSG_MAX, is_password_message};
        if (!frame_ok(c, frame_next(in, &rules, &h), &h, "password response") ||
            !frame_whole(in, &h))
            return;
        uint8_t m[PROTO_HDR_LEN + AUTH_MSG_MAX];
        memcpy(m, frame_data(in), 1 + h.len);
        conn_consume(in, 1 + h.len);
        auth_handle(c, m + PROTO_HDR_LEN, h.len - 4);
    }
}

/* A secret cancel key, unpredictable as RAND_bytes makes it, drawn from a batch. */
static uint32_t next_cancel_key(struct worker *w)
{
    if (w->n_cancel_keys == 0) {
        if (RAND_bytes((unsigned char *)w->cancel_keys, sizeof(w->cancel_keys)) != 1) {
            /* No randomness (should not happen): a key nobody can guess is impossible; one
             * that at least differs per client is the fallback, as before. */
            return (uint32_t)now_us();
        }
        w->n_cancel_keys = (int)(sizeof(w->cancel_keys) / sizeof(w->cancel_keys[0]));
    }
    uint32_t k = w->cancel_keys[--w->n_cancel_keys];
    w->cancel_keys[w->n_cancel_keys] = 0; /* a used key does not linger in memory */
    return k;
}

/* Authentication succeeded: AuthenticationOk, then a server (or the admin console). */
void client_logged_in(struct client *c)
{
    struct pbuf b;
    pbuf_init(&b);
    proto_build_auth(&b, AUTH_REQ_OK, NULL, 0);
    client_send_pbuf(c, &b);
    c->cancel_pid = worker_cancel_pid(c->w);
    c->cancel_key = next_cancel_key(c->w);
    if (c->is_admin) {
        client_change_state(c, CL_IDLE);
        c->w->session->admin_welcome(c);
        return;
    }
    c->pool = pool_get(c->w, c->database, c->user, c->role);
    if (!c->pool) {
        client_close(c, SQLSTATE_TOO_MANY_CONNECTIONS, "out of memory");
        return;
    }
    c->pool->n_clients++;
    /* The pool's copies serve as long as the client counts in n_clients (pool_gc). */
    free(c->user);
    free(c->database);
    c->user = c->pool->user;
    c->database = c->pool->database;
    c->names_shared = 1;
    if (c->w->cfg->log_connections)
        log_info("C-%llu %s: login: db=%s user=%s tls=%s", (unsigned long long)c->id,
                 client_addr(c), c->database, c->user, c->conn.tls ? "yes" : "no");
    else
        log_debug("C-%llu %s: logged in as %s to %s", (unsigned long long)c->id, client_addr(c),
                  c->user, c->database);
    client_change_state(c, CL_IDLE);
    const struct kvlist *welcome = pool_welcome_find(c->pool, welcome_key(c));
    if (welcome) {
        /* A server was set up for these very parameters before: welcome the client from what
         * it reported, as PgBouncer does; only its first statement waits for a server. */
        struct pbuf wb;
        pbuf_init(&wb);
        for (int i = 0; i < welcome->n; i++) {
            const char *name = welcome->items[i].name;
            const char *value = welcome_value(c, name, welcome->items[i].value);
            proto_build_param_status(&wb, name, value);
            client_note_reported(c, name, value);
        }
        proto_build_key_data(&wb, c->cancel_pid, c->cancel_key);
        proto_build_ready(&wb, 'I');
        client_send_pbuf(c, &wb);
        c->got_welcome = 1;
        c->txn_status = 'I';
        client_process(c);
        return;
    }
    /* The first client with these parameters: welcomed once a server is set up for them, so
     * that what it hears (and a bad parameter's error) comes from PostgreSQL. */
    c->wait_since = now_ms();
    pool_request(c->pool, c);
}

/* ---- the query loop ---- */

/* Transaction mode: the client's protocol-level statements live on the servers under
 * pgstay's names, so its DEALLOCATE of one is answered here (psycopg sends one when its
 * statement cache overflows). Returns 1 if answered. */
static int answer_deallocate(struct client *c, const char *q, size_t len)
{
    /* Every Query passes here: a cheap look at its first word spares a second lexer pass
     * (inspect_query scans it anyway). */
    size_t i = 0;
    while (i < len && isspace((unsigned char)q[i]))
        i++;
    if (len - i < 10 || strncasecmp(q + i, "deallocate", 10) != 0)
        return 0;
    struct sql_info si;
    sql_classify(q, len, &si);
    if (si.n != 1 || si.stmts[0].kind != SQL_DEALLOCATE) {
        sql_info_free(&si);
        return 0;
    }
    const char *name = si.stmts[0].name;
    int all = name == NULL;
    if (all ? c->pin_reason != 0 : client_stmt_find(c, name) == NULL) {
        sql_info_free(&si);
        return 0; /* SQL-level statements on a pinned server: the server answers */
    }
    if (all)
        prepared_clear(c);
    else
        prepared_del(c, name);
    sql_info_free(&si);
    struct pbuf b;
    pbuf_init(&b);
    proto_build_command_complete(&b, all ? "DEALLOCATE ALL" : "DEALLOCATE");
    proto_build_ready(&b, c->txn_status);
    client_send_pbuf(c, &b);
    return 1;
}

/* ---- what statements do to the session ---- */

/* Up to this many statements of one Query are followed one by one; a longer multi-statement
 * string with session effects pins instead. */
#define CLASSIFY_MAX 64

/* What the tracker follows of a statement the grammar classified (pointers into st). */
static struct track_stmt to_track(const struct sql_stmt *st)
{
    struct track_stmt t = {TK_OTHER, NULL, NULL};
    switch (st->kind) {
    case SQL_SET:
    case SQL_SET_CONFIG:
        if (st->name && st->replay) {
            t.kind = TK_SET;
            t.name = st->name;
            t.stmt = st->replay;
        }
        break;
    case SQL_RESET:
        if (st->name) {
            t.kind = TK_RESET;
            t.name = st->name;
        }
        break;
    case SQL_RESET_ALL:
    case SQL_DISCARD_ALL:
        t.kind = TK_RESET_ALL;
        break;
    case SQL_SAVEPOINT:
        t.kind = TK_SAVEPOINT;
        t.name = st->name;
        break;
    case SQL_RELEASE:
        t.kind = TK_RELEASE;
        t.name = st->name;
        break;
    case SQL_ROLLBACK_TO:
        t.kind = TK_ROLLBACK_TO;
        t.name = st->name;
        break;
    case SQL_COMMIT:
    case SQL_PREPARE_TRANSACTION:
        t.kind = TK_COMMIT;
        break;
    case SQL_ROLLBACK:
        t.kind = TK_ROLLBACK;
        break;
    default:
        break;
    }
    return t;
}

/* The statements of a text as the tracker sees them, into out (at most max: a longer
 * multi-statement string with session effects pins). Returns their number; *pin gets what the
 * text pins, if anything. out points into si, freed by the caller. */
static int classify_text(const char *q, size_t len, struct sql_info *si, struct track_stmt *out,
                         int max, int *pin)
{
    sql_classify(q, len, si);
    *pin = si->parse_error ? PIN_NONE : si->pin;
    int n = si->n;
    if (n > max) {
        for (int i = 0; i < n && !*pin; i++)
            if (to_track(&si->stmts[i]).kind != TK_OTHER)
                *pin = PIN_UNTRACKED_SET;
        return -1;
    }
    for (int i = 0; i < n; i++)
        out[i] = to_track(&si->stmts[i]);
    return n;
}

/* Transaction mode: DEALLOCATE of a statement under pgstay's name never reaches a server (see
 * answer_deallocate and pool/prepared.c); elsewhere the client's list follows what it asks. */
static void note_deallocate(struct client *c, const struct sql_info *si, int answered_here)
{
    if (si->n != 1 || si->stmts[0].kind != SQL_DEALLOCATE)
        return;
    if (si->stmts[0].name)
        prepared_del(c, si->stmts[0].name);
    else if (answered_here)
        prepared_clear(c); /* otherwise at the server's "DEALLOCATE ALL" (server.c) */
}

/* The statement kinds of a client's named and unnamed statements and unnamed portal, kept only
 * when they do something to the session (rare: the common case keeps nothing). */
static struct track_stmt *stmt_op_slot(struct client *c, const char *name, int create)
{
    if (!*name)
        return &client_more(c)->unnamed_op;
    for (int i = 0; i < client_more(c)->n_stmt_ops; i++)
        if (strcmp(client_more(c)->stmt_ops[i].name, name) == 0)
            return &client_more(c)->stmt_ops[i].st;
    if (!create)
        return NULL;
    if (client_more(c)->n_stmt_ops == client_more(c)->cap_stmt_ops) {
        int cap = client_more(c)->cap_stmt_ops ? client_more(c)->cap_stmt_ops * 2 : 4;
        struct named_op *ops = realloc(client_more(c)->stmt_ops, (size_t)cap * sizeof(*ops));
        if (!ops)
            return NULL;
        client_more(c)->stmt_ops = ops;
        client_more(c)->cap_stmt_ops = cap;
    }
    struct named_op *op = &client_more(c)->stmt_ops[client_more(c)->n_stmt_ops];
    memset(op, 0, sizeof(*op));
    op->name = strdup(name);
    if (!op->name)
        return NULL;
    client_more(c)->n_stmt_ops++;
    return &op->st;
}

static void stmt_ops_clear(struct client *c)
{
    for (int i = 0; i < client_more(c)->n_stmt_ops; i++) {
        free(client_more(c)->stmt_ops[i].name);
        track_stmt_clear(&client_more(c)->stmt_ops[i].st);
    }
    free(client_more(c)->stmt_ops);
    client_more(c)->stmt_ops = NULL;
    client_more(c)->n_stmt_ops = client_more(c)->cap_stmt_ops = 0;
    track_stmt_clear(&client_more(c)->unnamed_op);
    track_stmt_clear(&client_more(c)->portal_op);
}

static void inspect_query(struct client *c, const char *q, size_t len)
{
    struct track_stmt st[CLASSIFY_MAX];
    struct sql_info si;
    int pin = 0;
    int n = classify_text(q, len, &si, st, CLASSIFY_MAX, &pin);
    if (pin && !c->pin_reason)
        client_pin(c, pin);
    track_query(c, st, n < 0 ? 0 : n);
    note_deallocate(c, &si, 0);
    sql_info_free(&si);
}

static void inspect_parse(struct client *c, const uint8_t *m, size_t whole, int txn)
{
    struct msg_reader r;
    mr_init(&r, m + PROTO_HDR_LEN, whole - PROTO_HDR_LEN);
    const char *name = mr_str(&r);
    const char *q = mr_str(&r);
    if (r.bad)
        return;
    struct track_stmt st[CLASSIFY_MAX];
    struct sql_info si;
    int pin = 0;
    int n = classify_text(q, strlen(q), &si, st, CLASSIFY_MAX, &pin);
    if (pin && !c->pin_reason)
        client_pin(c, pin);
    /* A Parse holds one statement (the server refuses more): what it does, by its name. */
    struct track_stmt *slot = stmt_op_slot(c, name, n == 1 && st[0].kind != TK_OTHER);
    if (slot) {
        track_stmt_clear(slot);
        if (n == 1)
            track_stmt_copy(slot, &st[0]);
    }
    if (!txn)
        parse_sent(c, name, m, (uint32_t)whole);
    /* Transaction mode answers an unnamed DEALLOCATE itself (pool/prepared.c). */
    note_deallocate(c, &si, txn && !c->pin_reason && !*name);
    sql_info_free(&si);
}

/* Follow one client message on its way to the server (m: its first `have` bytes). */
static void inspect_message(struct client *c, const struct msg_hdr *h, const uint8_t *m, size_t have)
{
    int txn = c->w->cfg->pool_mode == POOL_TRANSACTION;
    struct msg_reader r;
    mr_init(&r, m + PROTO_HDR_LEN, have - PROTO_HDR_LEN);
    switch (h->type) {
    case FE_QUERY:
        /* A simple Query drops the unnamed statement and portal. */
        if (client_more(c)->unnamed_op.kind != TK_OTHER)
            track_stmt_clear(&client_more(c)->unnamed_op);
        if (client_more(c)->portal_op.kind != TK_OTHER)
            track_stmt_clear(&client_more(c)->portal_op);
        inspect_query(c, (const char *)m + PROTO_HDR_LEN, h->len - 4);
        break;
    case FE_PARSE:
        inspect_parse(c, m, have, txn);
        break;
    case FE_BIND: {
        if (client_more(c)->unnamed_op.kind == TK_OTHER && client_more(c)->n_stmt_ops == 0 && client_more(c)->portal_op.kind == TK_OTHER)
            break; /* nothing the portal could carry, nor carries now */
        const char *portal = mr_str(&r);
        const char *stmt = mr_str(&r);
        if (r.bad)
            break;
        struct track_stmt *op = stmt_op_slot(c, stmt, 0);
        if (!*portal) {
            track_stmt_clear(&client_more(c)->portal_op);
            if (op)
                track_stmt_copy(&client_more(c)->portal_op, op);
        } else if (op && op->kind != TK_OTHER && !c->pin_reason) {
            client_pin(c, PIN_UNTRACKED_SET); /* named portals are not followed */
        }
        break;
    }
    case FE_EXECUTE: {
        const char *portal = mr_str(&r);
        int faked = txn && c->server && c->server->stmts.fake_unnamed;
        if (!faked) /* a DEALLOCATE pgstay answers itself has no server answer to count */
            track_execute(c, (!r.bad && !*portal) ? &client_more(c)->portal_op : NULL);
        break;
    }
    case FE_SYNC:
        track_sync(c);
        break;
    case FE_FUNCTION_CALL:
        track_query(c, NULL, 0);
        break;
    case FE_CLOSE:
        if (!txn && mr_u8(&r) == 'S') {
            const char *name = mr_str(&r);
            if (!r.bad && *name)
                prepared_del(c, name);
        }
        break;
    default:
        break;
    }
}

/* A message larger than the read high-water mark is needed whole: let the buffer grow to it
 * (bounded by max_packet_size), and back once it is consumed. */
static void want_bytes(struct client *c, size_t need)
{
    conn_want(&c->conn, need);
}

/* The first request after an idle transaction lost its server is told why; later ones get
 * PostgreSQL's usual 25P02. */
static void build_lost_txn_error(struct client *c, struct pbuf *b)
{
    if (c->lost_notice_pending) {
        c->lost_notice_pending = 0;
        proto_build_error(b, "ERROR", SQLSTATE_CONNECTION_FAILURE,
                          "the server connection was lost during this transaction block: the "
                          "transaction was rolled back, ROLLBACK to go on",
                          NULL);
        return;
    }
    proto_build_error(b, "ERROR", SQLSTATE_IN_FAILED_TXN,
                      "current transaction is aborted, commands ignored until end of "
                      "transaction block",
                      NULL);
}

/* The kind of a text that is exactly one statement (SQL_OTHER otherwise). */
static int single_kind(const char *q, size_t len)
{
    struct sql_info si;
    sql_classify(q, len, &si);
    int kind = si.n == 1 ? si.stmts[0].kind : SQL_OTHER;
    sql_info_free(&si);
    return kind;
}

/* The first message of a batch that cannot run in the lost transaction: its error now, then
 * nothing until the Sync (as PostgreSQL skips the rest). */
static void batch_fail(struct client *c, struct pbuf *b)
{
    if (!c->batch_error)
        build_lost_txn_error(c, b);
    c->batch_error = 1;
}

/* Answer locally while the client's transaction died with its server (failover contract 3). */
static int answer_lost_txn(struct client *c, const struct msg_hdr *h, const uint8_t *body)
{
    struct pbuf b;
    pbuf_init(&b);
    if (h->type == FE_QUERY) {
        int kind = body ? single_kind((const char *)body, h->len - 4) : SQL_OTHER;
        if (kind == SQL_ROLLBACK || kind == SQL_COMMIT || kind == SQL_PREPARE_TRANSACTION) {
            proto_build_command_complete(&b, "ROLLBACK");
            proto_build_ready(&b, 'I');
            c->txn_lost = 0;
            c->txn_status = 'I';
        } else {
            build_lost_txn_error(c, &b);
            proto_build_ready(&b, 'E');
        }
    } else if (h->type == FE_PARSE) {
        int kind = SQL_OTHER;
        if (body) {
            struct msg_reader r;
            mr_init(&r, body, h->len - 4);
            mr_str(&r);
            const char *q = mr_str(&r);
            if (!r.bad)
                kind = single_kind(q, strlen(q));
        }
        if (c->batch_error) {
            /* skip until Sync */
        } else if (kind == SQL_ROLLBACK || kind == SQL_COMMIT || kind == SQL_PREPARE_TRANSACTION) {
            c->batch_rollback = 1;
            pbuf_put_u8(&b, BE_PARSE_COMPLETE);
            pbuf_put_u32(&b, 4);
        } else {
            batch_fail(c, &b);
        }
    } else if (h->type == FE_BIND || h->type == FE_DESCRIBE || h->type == FE_EXECUTE ||
               h->type == FE_CLOSE) {
        if (c->batch_rollback && !c->batch_error) {
            if (h->type == FE_BIND) {
                pbuf_put_u8(&b, BE_BIND_COMPLETE);
                pbuf_put_u32(&b, 4);
            } else if (h->type == FE_DESCRIBE) {
                pbuf_put_u8(&b, BE_NO_DATA);
                pbuf_put_u32(&b, 4);
            } else if (h->type == FE_EXECUTE) {
                proto_build_command_complete(&b, "ROLLBACK");
            } else {
                pbuf_put_u8(&b, BE_CLOSE_COMPLETE);
                pbuf_put_u32(&b, 4);
            }
        } else {
            batch_fail(c, &b);
        }
    } else if (h->type == FE_SYNC) {
        /* The error went out with the message that failed (a Flush sees it, as from
         * PostgreSQL); a Sync only ends the batch, a bare one included. */
        if (c->batch_rollback && !c->batch_error) {
            proto_build_ready(&b, 'I');
            c->txn_lost = 0;
            c->txn_status = 'I';
        } else {
            proto_build_ready(&b, 'E');
        }
        c->batch_rollback = c->batch_error = 0;
    } else if (h->type == FE_FUNCTION_CALL) {
        build_lost_txn_error(c, &b);
        proto_build_ready(&b, 'E');
    }
    client_send_pbuf(c, &b);
    return 0;
}

/* A request that cannot be served (hold timeout): error it, drop its messages up to the Sync. */
void client_fail_request(struct client *c, const char *sqlstate, const char *msg)
{
    client_send_error(c, sqlstate, msg);
    c->fail_current = 1;
}

void client_answered(struct client *c)
{
    if (c->flight_blocked && c->pending + c->unsynced < CLIENT_MAX_IN_FLIGHT / 2) {
        c->flight_blocked = 0;
        conn_kick(&c->conn);
    }
}

/* A client that does not read what it is sent is not read from either: nothing it does can
 * make pgstay buffer more than the high-water mark for it (local answers included). */
static int output_full(struct client *c)
{
    if (!conn_full(&c->conn))
        return 0;
    c->out_blocked = 1; /* resumed from client_write_cb */
    return 1;
}

void client_process(struct client *c)
{
    if (c->state == CL_LOGIN) {
        login_process(c);
        return;
    }
    if (c->state == CL_CLOSING)
        return;
    if (c->is_admin) {
        c->w->session->admin_process(c);
        return;
    }
    if (c->more && c->more->term && c->state == CL_IDLE && !term_settle(c))
        return; /* its last server was terminated: what that means is not known yet */
    struct conn *in = &c->conn;
    struct worker *w = c->w;
    for (;;) {
        if (c->state == CL_CLOSING || output_full(c))
            return;
        if (c->pending + c->unsynced >= CLIENT_MAX_IN_FLIGHT) {
            /* What pgstay keeps per message in flight is bounded too (resumed when answers
             * come back: client_answered). */
            c->flight_blocked = 1;
            return;
        }
        size_t avail = conn_avail(in);
        if (c->skip_left > 0) {
            /* The rest of a message whose server is gone. */
            size_t n = avail < c->skip_left ? avail : c->skip_left;
            if (n == 0)
                return;
            conn_consume(in, n);
            c->skip_left -= (uint32_t)n;
            continue;
        }
        if (c->fwd_left > 0) {
            if (!c->server || c->state != CL_ACTIVE)
                return;
            if (conn_full(&c->server->conn))
                return; /* resumed when the server drains */
            size_t n = avail < c->fwd_left ? avail : c->fwd_left;
            if (n == 0)
                return;
            conn_forward(in, &c->server->conn, n);
            c->fwd_left -= (uint32_t)n;
            w->stats.bytes_client_to_server += n;
            c->pool->stats.bytes_recv += n;
            continue;
        }
        struct msg_hdr h;
        const struct frame_rules rules = {(uint32_t)w->cfg->max_packet_size, proto_fe_type_known};
        if (!frame_ok(c, frame_next(in, &rules, &h), &h, "frontend"))
            return;
        if (h.type == FE_TERMINATE) {
            client_close(c, NULL, "client sent Terminate");
            return;
        }
        if (h.type == FE_PASSWORD) {
            /* Nothing asks for a password after the login: PostgreSQL ends such a session with
             * 08P01; pgstay does so itself rather than have a server end its own session over
             * it and be logged into again (test_bad_peers). */
            client_close(c, SQLSTATE_PROTOCOL_VIOLATION, "invalid frontend message type 112");
            return;
        }
        size_t whole = 1 + (size_t)h.len;
        /* Messages answered or dropped by pgstay itself: small ones are looked at whole, large
         * ones only by their type, and skipped as they arrive (never waited for whole). */
        int local = c->txn_lost || c->fail_current || c->discard_copy;
        if (local) {
            const uint8_t *m = NULL;
            if (whole <= INSPECT_MAX + PROTO_HDR_LEN) {
                if (!conn_has(in, whole))
                    return;
                m = conn_data(in);
            }
            c->skip_left = (uint32_t)whole;
            if (c->discard_copy) {
                if (h.type == FE_COPY_DONE || h.type == FE_COPY_FAIL)
                    c->discard_copy = 0;
                if (h.type == FE_COPY_DATA || h.type == FE_COPY_DONE || h.type == FE_COPY_FAIL)
                    continue;
                c->discard_copy = 0;
            }
            if (c->fail_current) {
                /* The request already got its error: drop up to its end, then ReadyForQuery. */
                if (h.type == FE_SYNC || h.type == FE_QUERY || h.type == FE_FUNCTION_CALL) {
                    c->fail_current = 0;
                    send_ready(c, c->txn_lost ? 'E' : c->txn_status);
                }
                continue;
            }
            answer_lost_txn(c, &h, m ? m + PROTO_HDR_LEN : NULL);
            continue;
        }
        if (w->cfg->pool_mode == POOL_TRANSACTION && h.type == FE_QUERY && h.len <= INSPECT_MAX &&
            c->pending == 0 && (!c->server || plan_empty(c->server))) {
            if (!conn_has(in, whole))
                return;
            const uint8_t *m = conn_data(in);
            if (answer_deallocate(c, (const char *)m + PROTO_HDR_LEN, h.len - 4)) {
                conn_consume(in, whole);
                continue;
            }
        }
        if (!c->server || c->state != CL_ACTIVE) {
            /* A Flush with nothing asked of any server since the last Sync has nothing to
             * push out: it needs no server (it would wait for one in a busy pool). */
            if (c->state == CL_IDLE && h.type == FE_FLUSH && c->pending == 0 && c->unsynced == 0) {
                conn_consume(in, whole);
                continue;
            }
            /* Transaction mode: a Parse of a statement the pool already knows, and the Sync
             * after it, need no server (PQprepare must not wait for one). */
            if (c->state == CL_IDLE && w->cfg->pool_mode == POOL_TRANSACTION && c->pending == 0 &&
                (h.type == FE_PARSE || (h.type == FE_SYNC && c->local_batch)) &&
                whole <= INSPECT_MAX) {
                if (!conn_has(in, whole))
                    return;
                const uint8_t *m = conn_data(in);
                if (plan_answer_locally(c, &h, m)) {
                    conn_consume(in, whole);
                    continue;
                }
            }
            /* A request and no server: ask the pool (held while there is no writer). */
            if (c->state == CL_IDLE) {
                c->wait_since = now_ms();
                pool_request(c->pool, c);
            }
            return;
        }
        struct conn *out = &c->server->conn;
        if (conn_full(out))
            return;
        if (w->session->paused(w, c->database) && c->role == ROLE_WRITER && c->pending == 0 &&
            c->unsynced == 0 && c->txn_status == 'I') {
            /* PAUSE: a new transaction waits for RESUME (planned switchover). */
            c->pause_held = 1;
            return;
        }
        if (c->resetup && c->pending == 0 && c->unsynced == 0 && c->txn_status == 'I') {
            /* A RESET took a startup parameter to the server's default; PostgreSQL's RESET
             * goes back to the startup value, which the next request gets. */
            c->resetup = 0;
            pool_resetup(c->server, c);
        }
        int txn = w->cfg->pool_mode == POOL_TRANSACTION;
        /* How much of the message must be at hand before anything is decided: statement
         * text whole (any length, up to max_packet_size), names of the others. */
        size_t need = PROTO_HDR_LEN;
        if (h.type == FE_QUERY || h.type == FE_PARSE)
            need = whole;
        else if (h.type == FE_BIND)
            need = whole < 1024 ? whole : 1024;
        else if (h.type == FE_DESCRIBE || h.type == FE_CLOSE || h.type == FE_EXECUTE)
            need = whole < 1024 ? whole : 1024;
        if (avail < need) {
            want_bytes(c, need);
            return;
        }
        const uint8_t *m = conn_data(in);
        inspect_message(c, &h, m, need);
        if (h.type == FE_QUERY || h.type == FE_SYNC || h.type == FE_FUNCTION_CALL) {
            client_more(c)->batches_sent++;
            c->pending++;
            c->unsynced = 0;
            w->stats.queries++;
            stats_request(c->server);
        } else if (h.type != FE_COPY_DATA && h.type != FE_COPY_DONE && h.type != FE_COPY_FAIL &&
                   h.type != FE_FLUSH) {
            c->unsynced++;
        }
        c->last_active = now_ms();
        c->local_batch = 0;
        size_t done = 0;
        if (txn) {
            /* Statement names rewritten, answers planned (pool/prepared.c). */
            done = plan_client_msg(c, c->server, &h, m, need, out);
            if (done > 0) {
                conn_consume(in, done);
                avail -= done;
            }
        }
        size_t rest = whole - done;
        size_t n = avail < rest ? avail : rest;
        if (n > 0)
            conn_forward(in, out, n);
        w->stats.bytes_client_to_server += n;
        c->pool->stats.bytes_recv += n + done; /* rewritten messages came from the client too */
        c->fwd_left = (uint32_t)(rest - n);
    }
}

/* The pool linked a server (set up with the client's parameters): welcome, then traffic. */
void client_linked(struct client *c)
{
    struct server *s = c->server;
    struct pbuf b;
    pbuf_init(&b);
    /* Linked once its setup was answered (pool.c link_pair): s->params are the client's. */
    if (c->reported_hash != s->params_hash || !c->got_welcome) {
        for (int i = 0; i < s->params.n; i++) {
            const char *name = s->params.items[i].name, *value = s->params.items[i].value;
            const char *seen = c->got_welcome ? client_reported(c, name) : NULL;
            if (seen && strcmp(seen, value) == 0)
                continue;
            proto_build_param_status(&b, name, value);
            client_note_reported(c, name, value);
        }
        c->reported_hash = s->params_hash;
    }
    if (!c->got_welcome) {
        pool_welcome_store(c->pool, welcome_key(c), &s->params);
        proto_build_key_data(&b, c->cancel_pid, c->cancel_key);
        proto_build_ready(&b, 'I');
        c->got_welcome = 1;
        c->txn_status = 'I';
    }
    client_send_pbuf(c, &b);
    client_change_state(c, CL_ACTIVE);
    client_process(c);
    /* Transaction mode: a client that only logged in gives its server straight back. */
    if (c->state == CL_ACTIVE)
        pool_after_ready(c);
}

void client_server_lost(struct client *c, const char *why)
{
    struct server *s = c->server;
    c->server = NULL;
    if (s)
        s->client = NULL;
    if (c->state == CL_CLOSING)
        return;
    if (s && s->fwd_left > 0) {
        /* The client has part of a server message: nothing can follow it that it would read
         * as a message, so the stream cannot be repaired. */
        char msg[256];
        snprintf(msg, sizeof(msg), "server connection lost in the middle of a message (%s)", why);
        client_close(c, NULL, msg);
        return;
    }
    if (client_more(c)->term && c->got_welcome) {
        /* The server ended the session with 57P01: an administrator's decision or the node
         * shutting down; which one, the next probes tell (term_verdict). Until then the
         * client's input waits, and an idle client is not even told. */
        client_more(c)->term->node = s ? s->nd : NULL;
        snprintf(client_more(c)->term->why, sizeof(client_more(c)->term->why), "%s", why);
        client_change_state(c, CL_IDLE);
        /* Something to answer or to read (a request held by PAUSE included): the verdict is
         * waited for now; an idle client learns it at its next request. */
        c->pause_held = 0;
        if (c->pending > 0 || c->unsynced > 0 || c->fwd_left > 0 || c->in_copy_in ||
            c->txn_status != 'I' || conn_avail(&c->conn) > 0)
            term_wait(c);
        return;
    }
    free(client_more(c)->term);
    client_more(c)->term = NULL;
    lost_decide(c, why, NULL, NULL);
}

/* Is the node that ended a client's session with 57P01 still healthy (1: an administrator
 * terminated that backend), lost (-1: a failover), or not known yet (0)? */
static int term_verdict(struct client *c)
{
    struct worker *w = c->w;
    struct node *nd = client_more(c)->term->node;
    /* A suspect writer is not a lost one: the next probe says which. */
    if (!nd || !w->topo->writer || (c->role == ROLE_WRITER && w->topo->writer != nd))
        return -1;
    if (w->session->paused(w, c->database))
        return -1; /* a planned switchover shutting the node down */
    if (nd->last_ok_sent_us > client_more(c)->term->at_us + TERM_SHUTDOWN_GRACE_US)
        return 1; /* a probe sent well after the termination was answered */
    if (now_ms() - client_more(c)->term->at > TERM_VERDICT_MAX_MS)
        return -1;
    return 0;
}

/* Act on a verdict: 1 if the client may go on with its input. */
static int term_settle(struct client *c)
{
    int v = term_verdict(c);
    if (v == 0) {
        term_wait(c);
        return 0;
    }
    struct client_term *t = client_more(c)->term;
    client_more(c)->term = NULL;
    if (v < 0) {
        log_info("C-%llu: its server was terminated as its node went down: a failover",
                 (unsigned long long)c->id);
        lost_decide(c, t->why, NULL, NULL);
    } else if (c->w->cfg->pool_mode == POOL_SESSION || c->pin_reason) {
        /* What PostgreSQL does: the session ends with the server's own error. */
        client_close(c, t->sqlstate, t->message);
    } else {
        /* Transaction mode: the client's session is pgstay's; only what was in flight on
         * that backend ends, with the server's own error. */
        lost_decide(c, t->why, t->sqlstate, t->message);
    }
    free(t);
    return c->state != CL_CLOSING;
}

static void term_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct client *c = arg;
    if (client_more(c)->term && term_settle(c))
        client_process(c);
}

static void term_wait(struct client *c)
{
    if (!client_more(c)->term_timer)
        client_more(c)->term_timer = evtimer_new(c->w->base, term_timer_cb, c);
    struct timeval tv = {0, 10 * 1000};
    if (client_more(c)->term_timer)
        evtimer_add(client_more(c)->term_timer, &tv);
}

void client_note_terminated(struct client *c, const char *sqlstate, const char *message)
{
    free(client_more(c)->term);
    client_more(c)->term = calloc(1, sizeof(*client_more(c)->term));
    if (!client_more(c)->term)
        return;
    client_more(c)->term->at = now_ms();
    client_more(c)->term->at_us = now_us();
    snprintf(client_more(c)->term->sqlstate, sizeof(client_more(c)->term->sqlstate), "%s", sqlstate);
    snprintf(client_more(c)->term->message, sizeof(client_more(c)->term->message), "%s", message);
}

/* What a client sees of a lost server (the failover contract), or, with sqlstate and message,
 * of a backend an administrator terminated in transaction mode. */
static void lost_decide(struct client *c, const char *why, const char *sqlstate, const char *message)
{
    int in_flight = c->pending > 0 || c->unsynced > 0 || c->fwd_left > 0 || c->in_copy_in;
    int in_block = c->txn_status == 'T' || c->txn_status == 'E';
    int commit_in_flight = (c->pending > 0 || c->unsynced > 0) && track_commit_in_flight(&client_more(c)->track);
    /* Nothing in flight will be answered, and an open transaction died with its server. */
    track_lost(c, in_block);
    while (client_more(c)->n_pend > 0)
        pend_pop(c, 0);
    client_more(c)->batches_done = client_more(c)->batches_sent;
    client_change_state(c, CL_IDLE);
    if (!c->got_welcome) {
        /* Lost during setup: the session never started; try again on the next writer. */
        c->wait_since = now_ms();
        pool_request(c->pool, c);
        return;
    }
    if (!in_flight && !in_block) {
        if (c->pin_reason) {
            char msg[256];
            snprintf(msg, sizeof(msg),
                     "the server connection was lost (%s) and this session cannot be rebuilt on "
                     "another server: it used a %s",
                     why, pin_reason_name(c->pin_reason));
            client_close(c, SQLSTATE_CONNECTION_FAILURE, msg);
            return;
        }
        /* Idle: nothing to tell. The next request gets a new server with the same settings. */
        log_info("C-%llu: server lost while idle (%s): session will be rebuilt on the next request",
                 (unsigned long long)c->id, why);
        client_process(c);
        return;
    }
    if (c->pin_reason && !in_block) {
        char msg[256];
        snprintf(msg, sizeof(msg),
                 "the server connection was lost (%s) and this session cannot be rebuilt on another "
                 "server: it used a %s",
                 why, pin_reason_name(c->pin_reason));
        client_close(c, SQLSTATE_CONNECTION_FAILURE, msg);
        return;
    }
    char msg[256];
    const char *state = SQLSTATE_CONNECTION_FAILURE;
    if (commit_in_flight) {
        state = SQLSTATE_TXN_RESOLUTION_UNKNOWN;
        snprintf(msg, sizeof(msg),
                 "the server connection was lost during COMMIT (%s): the transaction may or may not "
                 "have been committed",
                 why);
        in_block = 0;
    } else if (sqlstate) {
        state = sqlstate;
        snprintf(msg, sizeof(msg), "%s", message);
    } else if (in_flight) {
        snprintf(msg, sizeof(msg),
                 "the server connection was lost while the statement was running (%s): it may or "
                 "may not have run",
                 why);
    } else {
        snprintf(msg, sizeof(msg), "the server connection was lost (%s): the transaction was rolled back", why);
    }
    c->w->session->note_failed_in_flight(c->w, state);
    log_info("C-%llu: %s", (unsigned long long)c->id, msg);
    if (c->fwd_left > 0) {
        c->skip_left = c->fwd_left;
        c->fwd_left = 0;
    }
    if (c->in_copy_in) {
        c->discard_copy = 1;
        c->in_copy_in = 0;
    }
    c->in_copy_out = 0;
    if (in_block)
        c->txn_lost = 1;
    if (c->pending > 0) {
        /* One answer per request the client is waiting on. */
        client_send_error(c, state, msg);
        send_ready(c, in_block ? 'E' : 'I');
        for (int i = 1; i < c->pending; i++) {
            client_send_error(c, sqlstate ? state : SQLSTATE_CONNECTION_FAILURE, msg);
            send_ready(c, in_block ? 'E' : 'I');
        }
        c->pending = 0;
        if (c->unsynced > 0)
            c->fail_current = 1;
    } else if (c->unsynced > 0 || c->skip_left > 0) {
        client_send_error(c, state, msg);
        c->fail_current = 1;
    } else if (in_block) {
        /* Idle in a transaction block: the next request learns its transaction is gone. */
        c->txn_lost = 1;
        c->lost_notice_pending = 1;
    }
    c->unsynced = 0;
    c->txn_status = in_block ? 'E' : 'I';
    client_process(c);
}

void client_check_timeouts(struct worker *w, int64_t now)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->clients[CL_LOGIN])
    {
        struct client *c = container_of(pos, struct client, node);
        if (now - c->last_active > w->cfg->client_login_timeout)
            client_close(c, SQLSTATE_PROTOCOL_VIOLATION, "client_login_timeout");
    }
    list_for_each_safe(pos, tmp, &w->clients[CL_WAITING])
    {
        struct client *c = container_of(pos, struct client, node);
        int holding = c->held;
        int limit = holding ? w->cfg->failover_timeout : w->cfg->query_wait_timeout;
        if (limit <= 0 || now - c->wait_since <= limit)
            continue;
        pool_cancel_wait(c);
        client_change_state(c, CL_IDLE);
        /* Held by PAUSE while a writer answers: that is what the client is told, not a
         * failover that is not happening (and no failover counts it). */
        int pause_only = holding && w->topo->writer && !w->topo->suspect &&
                         w->session->paused(w, c->database);
        const char *why =
            pause_only ? "the database is paused (PAUSE): failover_timeout reached while waiting "
                         "for RESUME"
            : holding  ? "no writer is available: failover_timeout reached while waiting for a new "
                         "primary"
                       : "query_wait_timeout: no server connection became free in time";
        if (holding && !pause_only)
            w->session->note_timed_out(w);
        /* The server's own error when its logins are failing. */
        const struct login_backoff *lb = holding ? NULL : login_backoff_of(c->pool);
        const char *state = holding && !pause_only ? SQLSTATE_CONNECTION_FAILURE
                                                   : SQLSTATE_QUERY_WAIT_TIMEOUT;
        if (lb) {
            state = lb->sqlstate;
            why = lb->message;
        }
        if (!c->got_welcome) {
            client_close(c, state, why);
            continue;
        }
        /* The connection stays usable: the held request gets the error. */
        client_fail_request(c, state, why);
        client_process(c);
    }
    if (w->cfg->query_timeout > 0 || w->cfg->idle_transaction_timeout > 0 ||
        w->cfg->transaction_timeout > 0) {
        int64_t now_u = now_us();
        list_for_each_safe(pos, tmp, &w->clients[CL_ACTIVE])
        {
            struct client *c = container_of(pos, struct client, node);
            struct server *s = c->server;
            if (!s || c->is_admin)
                continue;
            /* PgBouncer's query_timeout: a request running this long (a network problem,
             * statement_timeout being the server's own) ends both connections. */
            if (w->cfg->query_timeout > 0 && s->query_start &&
                now_u - s->query_start > (int64_t)w->cfg->query_timeout * 1000) {
                /* PgBouncer's words first (what log alerts match), PostgreSQL's SQLSTATE. */
                client_close(c, SQLSTATE_QUERY_CANCELED,
                             "query timeout: the request ran longer than query_timeout");
                if (s->state != SV_CLOSING)
                    server_close(s, "query_timeout"); /* not drained: its query may run on */
                continue;
            }
            /* PgBouncer's transaction_timeout: a transaction (or a statement outside one) open
             * this long, busy or idle, ends both connections with PgBouncer's FATAL 08P01
             * "transaction timeout"; the server is closed, which rolls the transaction back. */
            if (w->cfg->transaction_timeout > 0 && s->xact_start &&
                now_u - s->xact_start > (int64_t)w->cfg->transaction_timeout * 1000) {
                client_close(c, SQLSTATE_PROTOCOL_VIOLATION, "transaction timeout");
                if (s->state != SV_CLOSING)
                    server_close(s, "transaction_timeout");
                continue;
            }
            /* idle_transaction_timeout: inside a transaction, nothing asked since the last
             * answer; PostgreSQL's idle_in_transaction_session_timeout says it with 25P03. */
            if (w->cfg->idle_transaction_timeout > 0 && (c->txn_status == 'T' || c->txn_status == 'E') &&
                c->pending == 0 && !s->query_start) {
                int64_t since = c->last_active * 1000 > s->ready_at ? c->last_active * 1000 : s->ready_at;
                if (now_u - since > (int64_t)w->cfg->idle_transaction_timeout * 1000)
                    client_close(c, SQLSTATE_IDLE_IN_TXN_TIMEOUT,
                                 "idle transaction timeout: idle in a transaction longer than "
                                 "idle_transaction_timeout");
            }
        }
    }
    if (w->cfg->client_idle_timeout > 0) {
        list_for_each_safe(pos, tmp, &w->clients[CL_ACTIVE])
        {
            struct client *c = container_of(pos, struct client, node);
            if (c->pending == 0 && now - c->last_active > w->cfg->client_idle_timeout)
                client_close(c, SQLSTATE_IDLE_TIMEOUT, "client_idle_timeout");
        }
        list_for_each_safe(pos, tmp, &w->clients[CL_IDLE])
        {
            struct client *c = container_of(pos, struct client, node);
            if (now - c->last_active > w->cfg->client_idle_timeout)
                client_close(c, SQLSTATE_IDLE_TIMEOUT, "client_idle_timeout");
        }
    }
}
