/* The Prometheus endpoint: every counter pgstay keeps, rendered at scrape time (nothing is
 * kept for it on the data path), served by libevent's HTTP server on the worker's loop. */
#include "admin/metrics.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>

#include "admin/admin.h"
#include "client/client.h"
#include "config/config.h"
#include "core/log.h"
#include "failover/failover.h"
#include "pool/pool.h"
#include "pool/stats.h"
#include "proto/sqlclass.h"
#include "server/server.h"
#include "topology/topology.h"

#ifndef PGSTAY_VERSION
#define PGSTAY_VERSION "0.1.0"
#endif

struct metrics {
    struct evhttp *http;
    struct evhttp_bound_socket *bound; /* its listening socket: handed over by pgstay -R */
};

/* A growing text buffer (a scrape is a few kB per pool and node). */
struct out {
    char *p;
    size_t len, cap;
    int failed;
};

static void put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct out *o, const char *fmt, ...)
{
    if (o->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->p + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->failed = 1;
            return;
        }
        if ((size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        size_t cap = (o->cap + (size_t)n) * 2;
        char *np = realloc(o->p, cap);
        if (!np) {
            o->failed = 1;
            return;
        }
        o->p = np;
        o->cap = cap;
    }
}

/* A label value as the exposition format wants it: \, " and newline escaped. */
static const char *esc(const char *s, char *buf, size_t cap)
{
    size_t n = 0;
    for (; s && *s && n + 3 < cap; s++) {
        if (*s == '\\' || *s == '"') {
            buf[n++] = '\\';
            buf[n++] = *s;
        } else if (*s == '\n') {
            buf[n++] = '\\';
            buf[n++] = 'n';
        } else {
            buf[n++] = *s;
        }
    }
    buf[n] = 0;
    return buf;
}

static void help(struct out *o, const char *name, const char *type, const char *text)
{
    put(o, "# HELP %s %s\n# TYPE %s %s\n", name, text, name, type);
}

/* One pool's labels, as {database="…",user="…",role="…"} without the braces. */
struct plabels {
    char s[600];
};

static const char *pool_labels(struct plabels *l, const char *db, const char *user, int role)
{
    char d[256], u[256];
    snprintf(l->s, sizeof(l->s), "database=\"%s\",user=\"%s\",role=\"%s\"", esc(db, d, sizeof(d)),
             esc(user, u, sizeof(u)), role == ROLE_WRITER ? "writer" : "reader");
    return l->s;
}

/* A histogram whose buckets are counted one by one (not cumulative) with bounds in µs (or ms
 * with scale 1000): Prometheus wants cumulative counts and bounds in seconds. */
static void histogram(struct out *o, const char *name, const char *labels, const uint64_t *hist,
                      const int64_t *bounds, int n, double scale, double sum_s)
{
    uint64_t cum = 0;
    const char *sep = labels && *labels ? "," : "";
    for (int i = 0; i < n - 1; i++) {
        cum += hist[i];
        put(o, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels ? labels : "", sep,
            (double)bounds[i] / scale, (unsigned long long)cum);
    }
    cum += hist[n - 1];
    put(o, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels ? labels : "", sep,
        (unsigned long long)cum);
    if (labels && *labels) {
        put(o, "%s_sum{%s} %.6f\n", name, labels, sum_s);
        put(o, "%s_count{%s} %llu\n", name, labels, (unsigned long long)cum);
    } else {
        put(o, "%s_sum %.6f\n", name, sum_s);
        put(o, "%s_count %llu\n", name, (unsigned long long)cum);
    }
}

/* A counter of struct worker_stats (at byte offset off), summed over the workers. */
static uint64_t stat_of(struct worker *w, size_t off)
{
    uint64_t n = 0;
    for (int i = 0; i < w->world->n; i++)
        n += *(const uint64_t *)((const char *)&w->world->workers[i]->stats + off);
    return n;
}

/* Pool counters: the live pools' and those freed pools left (so no counter ever goes down). */
typedef void (*stat_fn)(struct out *o, const char *labels, const struct pool_stats *st);

/* One series per (database, user, role): each worker has its own pool of it (and may keep the
 * counters of a freed one), which add up here. The world is stopped (metrics_cb, or the
 * console). */
struct pool_key_sum {
    const char *database, *user;
    int role;
    int live; /* a pool of it exists (its connection gauges are shown) */
    struct pool_stats st;
};

static int key_add(struct pool_key_sum **v, int *n, int *cap, const char *db, const char *user,
                   int role, int live, const struct pool_stats *st)
{
    for (int i = 0; i < *n; i++) {
        struct pool_key_sum *e = &(*v)[i];
        if (e->role == role && !strcmp(e->database, db) && !strcmp(e->user, user)) {
            stats_add(&e->st, st);
            e->live |= live;
            return 0;
        }
    }
    if (*n == *cap) {
        int nc = *cap ? *cap * 2 : 16;
        struct pool_key_sum *nv = realloc(*v, sizeof(*nv) * (size_t)nc);
        if (!nv)
            return -1;
        *v = nv;
        *cap = nc;
    }
    struct pool_key_sum *e = &(*v)[(*n)++];
    memset(e, 0, sizeof(*e));
    e->database = db;
    e->user = user;
    e->role = role;
    e->live = live;
    stats_add(&e->st, st);
    return 0;
}

static struct pool_key_sum *pool_keys(struct worker *w, int *n)
{
    struct pool_key_sum *v = NULL;
    int cap = 0;
    *n = 0;
    for (int i = 0; i < w->world->n; i++) {
        struct worker *x = w->world->workers[i];
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &x->pools)
        {
            struct pool *p = container_of(pos, struct pool, node);
            key_add(&v, n, &cap, p->database, p->user, p->role, 1, &p->stats);
        }
        list_for_each_safe(pos, tmp, &x->stats_kept)
        {
            struct stats_kept *k = container_of(pos, struct stats_kept, node);
            key_add(&v, n, &cap, k->database, k->user, k->role, 0, &k->st);
        }
    }
    return v;
}

static void each_pool_stats(struct worker *w, struct out *o, stat_fn fn)
{
    int n;
    struct pool_key_sum *v = pool_keys(w, &n);
    for (int i = 0; i < n; i++) {
        struct plabels l;
        fn(o, pool_labels(&l, v[i].database, v[i].user, v[i].role), &v[i].st);
    }
    free(v);
}

static const char *u64s(uint64_t v, char *b, size_t cap)
{
    snprintf(b, cap, "%llu", (unsigned long long)v);
    return b;
}
static const char *secs(uint64_t us, char *b, size_t cap)
{
    snprintf(b, cap, "%.6f", (double)us / 1e6);
    return b;
}

static void m_xacts(struct out *o, const char *l, const struct pool_stats *st)
{
    char b[32];
    put(o, "pgstay_transactions_total{%s} %s\n", l, u64s(st->xact_count, b, sizeof(b)));
}
static void m_queries(struct out *o, const char *l, const struct pool_stats *st)
{
    char b[32];
    put(o, "pgstay_queries_total{%s} %s\n", l, u64s(st->query_count, b, sizeof(b)));
}
static void m_recv(struct out *o, const char *l, const struct pool_stats *st)
{
    char b[32];
    put(o, "pgstay_client_received_bytes_total{%s} %s\n", l, u64s(st->bytes_recv, b, sizeof(b)));
}
static void m_sent(struct out *o, const char *l, const struct pool_stats *st)
{
    char b[32];
    put(o, "pgstay_client_sent_bytes_total{%s} %s\n", l, u64s(st->bytes_sent, b, sizeof(b)));
}
static void m_xact_time(struct out *o, const char *l, const struct pool_stats *st)
{
    char b[32];
    put(o, "pgstay_transaction_seconds_total{%s} %s\n", l, secs(st->xact_us, b, sizeof(b)));
}
static void m_query_hist(struct out *o, const char *l, const struct pool_stats *st)
{
    histogram(o, "pgstay_query_duration_seconds", l, st->query_hist, stats_bucket_us,
              STATS_NBUCKETS, 1e6, (double)st->query_us / 1e6);
}
static void m_wait_hist(struct out *o, const char *l, const struct pool_stats *st)
{
    histogram(o, "pgstay_client_wait_seconds", l, st->wait_hist, stats_bucket_us, STATS_NBUCKETS,
              1e6, (double)st->wait_us / 1e6);
}

static int of_key(const struct pool *p, const struct pool_key_sum *e)
{
    return p && p->role == e->role && !strcmp(p->database, e->database) &&
           !strcmp(p->user, e->user);
}

/* Clients (which 0) or servers (which 1) of one pool, by the state names of the metric. */
static void count_conns(struct worker *w, const struct pool_key_sum *p, int which, int k[4])
{
    if (which == 0) {
        for (int st = 0; st < CL_CLOSING; st++) {
            struct list *pos, *tmp;
            list_for_each_safe(pos, tmp, &w->clients[st])
            {
                struct client *c = container_of(pos, struct client, node);
                if (!of_key(c->pool, p) || c->is_admin)
                    continue;
                if (c->held || c->pause_held)
                    k[3]++;
                k[st == CL_WAITING ? 1 : st == CL_LOGIN ? 2 : 0]++;
            }
        }
        return;
    }
    for (int st = 0; st < SV_CLOSING; st++) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &w->servers[st])
        {
            struct server *s = container_of(pos, struct server, node);
            if (!of_key(s->pool, p))
                continue;
            k[st == SV_IDLE ? 1 : st == SV_RESETTING ? 2 : st <= SV_LOGIN ? 3 : 0]++;
        }
    }
}

static void pools_section(struct worker *w, struct out *o)
{
    static const char *const names[2] = {"pgstay_client_connections", "pgstay_server_connections"};
    static const char *const helps[2] = {
        "Client connections per pool and state (active: linked or idle; waiting: for a server; "
        "login; held: waiting because there is no writer or PAUSE, also counted in its state)",
        "Server connections per pool and state (active, idle, tested: running the reset query, "
        "login)"};
    static const char *const states[2][4] = {{"active", "waiting", "login", "held"},
                                             {"active", "idle", "tested", "login"}};
    /* One family at a time: the exposition format wants each family's samples together. */
    for (int which = 0; which < 2; which++) {
        help(o, names[which], "gauge", helps[which]);
        int n;
        struct pool_key_sum *v = pool_keys(w, &n);
        for (int e = 0; e < n; e++) {
            const struct pool_key_sum *p = &v[e];
            if (!p->live)
                continue;
            int k[4] = {0, 0, 0, 0};
            for (int i = 0; i < w->world->n; i++)
                count_conns(w->world->workers[i], p, which, k);
            struct plabels l;
            pool_labels(&l, p->database, p->user, p->role);
            for (int i = 0; i < 4; i++)
                put(o, "%s{%s,state=\"%s\"} %d\n", names[which], l.s, states[which][i], k[i]);
        }
        free(v);
    }
    help(o, "pgstay_transactions_total", "counter",
         "Transactions completed (a statement outside a transaction block counts as one)");
    each_pool_stats(w, o, m_xacts);
    help(o, "pgstay_queries_total", "counter",
         "Requests (Query, Sync, FunctionCall) sent to servers");
    each_pool_stats(w, o, m_queries);
    help(o, "pgstay_client_received_bytes_total", "counter", "Bytes received from clients");
    each_pool_stats(w, o, m_recv);
    help(o, "pgstay_client_sent_bytes_total", "counter", "Bytes sent to clients from servers");
    each_pool_stats(w, o, m_sent);
    help(o, "pgstay_transaction_seconds_total", "counter", "Time spent in transactions on servers");
    each_pool_stats(w, o, m_xact_time);
    help(o, "pgstay_query_duration_seconds", "histogram",
         "Time a server had requests in flight, from the first request to its ReadyForQuery");
    each_pool_stats(w, o, m_query_hist);
    help(o, "pgstay_client_wait_seconds", "histogram",
         "Time a client waited for a server (ms resolution)");
    each_pool_stats(w, o, m_wait_hist);
}

/* Whether node i has its series: a free slot has none, and a name is shown once. A reload that
 * moves a node (or adds back one still draining) leaves a removed node of the same name until it
 * drains; Prometheus rejects a whole scrape that names a series twice, so the name is the node
 * in [nodes] now (SHOW NODES lists both). */
static int node_shown(const struct topology *t, int i)
{
    const struct node *nd = &t->nodes[i];
    if (!node_listed(nd))
        return 0;
    for (int j = 0; j < t->n_nodes; j++) {
        const struct node *o = &t->nodes[j];
        if (j == i || !node_listed(o) || strcmp(o->name, nd->name) != 0)
            continue;
        int o_first = (o->role == NODE_REMOVED) == (nd->role == NODE_REMOVED)
                          ? j < i
                          : nd->role == NODE_REMOVED;
        if (o_first)
            return 0;
    }
    return 1;
}

static void nodes_section(struct worker *w, struct out *o)
{
    struct topology *t = w->topo;
    static const int roles[] = {NODE_UNKNOWN, NODE_PRIMARY, NODE_STANDBY, NODE_DOWN,
                                NODE_FENCED,  NODE_FOREIGN, NODE_REMOVED};
    help(o, "pgstay_node_role", "gauge", "1 for the role each node has now (as SHOW NODES)");
    for (int i = 0; i < t->n_nodes; i++) {
        if (!node_shown(t, i))
            continue;
        char n[160];
        esc(t->nodes[i].name, n, sizeof(n));
        for (size_t r = 0; r < sizeof(roles) / sizeof(roles[0]); r++)
            put(o, "pgstay_node_role{node=\"%s\",role=\"%s\"} %d\n", n, node_role_name(roles[r]),
                t->nodes[i].role == roles[r]);
    }
    help(o, "pgstay_node_state", "gauge", "1 for the health each node has now (as SHOW NODES)");
    static const char *const states[] = {"up", "suspect", "down", "unknown", "removed"};
    for (int i = 0; i < t->n_nodes; i++) {
        if (!node_shown(t, i))
            continue;
        char n[160];
        esc(t->nodes[i].name, n, sizeof(n));
        const char *h = topology_health_name(t, &t->nodes[i]);
        for (int s = 0; s < 5; s++)
            put(o, "pgstay_node_state{node=\"%s\",state=\"%s\"} %d\n", n, states[s],
                !strcmp(h, states[s]));
    }
    help(o, "pgstay_node_writer", "gauge", "1 for the node that is pgstay's writer now");
    for (int i = 0; i < t->n_nodes; i++) {
        if (!node_shown(t, i))
            continue;
        char n[160];
        put(o, "pgstay_node_writer{node=\"%s\"} %d\n", esc(t->nodes[i].name, n, sizeof(n)),
            &t->nodes[i] == t->writer);
    }
    help(o, "pgstay_node_timeline", "gauge", "The node's timeline, as its last probe said");
    for (int i = 0; i < t->n_nodes; i++) {
        if (!node_shown(t, i))
            continue;
        char n[160];
        put(o, "pgstay_node_timeline{node=\"%s\"} %u\n", esc(t->nodes[i].name, n, sizeof(n)),
            t->nodes[i].timeline);
    }
    help(o, "pgstay_node_lag_bytes", "gauge", "Replay lag of the node behind the writer");
    for (int i = 0; i < t->n_nodes; i++) {
        if (!node_shown(t, i))
            continue;
        char n[160];
        put(o, "pgstay_node_lag_bytes{node=\"%s\"} %llu\n", esc(t->nodes[i].name, n, sizeof(n)),
            (unsigned long long)t->nodes[i].lag_bytes);
    }
    help(o, "pgstay_node_probe_latency_seconds", "gauge", "Round trip of the node's last probe");
    for (int i = 0; i < t->n_nodes; i++) {
        if (!node_shown(t, i))
            continue;
        char n[160];
        put(o, "pgstay_node_probe_latency_seconds{node=\"%s\"} %.6f\n",
            esc(t->nodes[i].name, n, sizeof(n)), (double)t->nodes[i].latency_us / 1e6);
    }
    help(o, "pgstay_node_server_connections", "gauge", "Pool connections open on the node");
    for (int i = 0; i < t->n_nodes; i++) {
        if (!node_shown(t, i))
            continue;
        char n[160];
        put(o, "pgstay_node_server_connections{node=\"%s\"} %d\n",
            esc(t->nodes[i].name, n, sizeof(n)), t->nodes[i].n_servers);
    }
}

static void failover_section(struct worker *w, struct out *o)
{
    struct failover *fo = w->fo;
    help(o, "pgstay_failovers_total", "counter", "Failovers started (the writer was lost)");
    put(o, "pgstay_failovers_total %d\n", fo->n_events);
    help(o, "pgstay_failover_in_progress", "gauge", "1 while there is no writer after losing one");
    put(o, "pgstay_failover_in_progress %d\n", fo->current != NULL);
    help(o, "pgstay_failover_hold_seconds", "histogram",
         "How long each failover held requests, from the writer's loss to a new writer");
    histogram(o, "pgstay_failover_hold_seconds", NULL, fo->hold_hist, failover_hold_bucket_ms,
              FAILOVER_HOLD_BUCKETS, 1e3, (double)fo->hold_ms_sum / 1e3);
    int held = 0;
    for (int i = 0; i < w->world->n; i++) {
        struct worker *x = w->world->workers[i];
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &x->clients[CL_WAITING])
        {
            held += container_of(pos, struct client, node)->held;
        }
        list_for_each_safe(pos, tmp, &x->clients[CL_ACTIVE])
        {
            held += container_of(pos, struct client, node)->pause_held;
        }
    }
    help(o, "pgstay_clients_held", "gauge",
         "Clients whose request is held now (no writer, or PAUSE)");
    put(o, "pgstay_clients_held %d\n", held);
    help(o, "pgstay_clients_held_total", "counter", "Clients held by failovers");
    put(o, "pgstay_clients_held_total %llu\n", (unsigned long long)fo->clients_held_total);
    help(o, "pgstay_held_requests_timed_out_total", "counter",
         "Held requests that failed after failover_timeout");
    put(o, "pgstay_held_requests_timed_out_total %llu\n", (unsigned long long)fo->timed_out_total);
    help(o, "pgstay_requests_failed_in_flight_total", "counter",
         "Requests in flight on a lost server that got an error, by SQLSTATE");
    for (int i = 0; i < fo->n_failed; i++)
        put(o, "pgstay_requests_failed_in_flight_total{sqlstate=\"%s\"} %llu\n",
            fo->failed[i].sqlstate, (unsigned long long)fo->failed[i].n);
    help(o, "pgstay_paused", "gauge", "1 while PAUSE is in effect");
    put(o, "pgstay_paused %d\n", fo->paused);
    help(o, "pgstay_pins_total", "counter",
         "Sessions pinned to their server (transaction mode), by reason");
    for (int i = 1; i < PIN_NREASONS; i++)
        put(o, "pgstay_pins_total{reason=\"%s\"} %llu\n", pin_reason_name(i),
            (unsigned long long)stat_of(w, offsetof(struct worker_stats, pins) +
                                        (size_t)i * sizeof(uint64_t)));
}

char *metrics_render(struct worker *w, size_t *len)
{
    struct out o = {.p = malloc(16384), .len = 0, .cap = 16384, .failed = 0};
    if (!o.p)
        return NULL;
    o.p[0] = 0;
    help(&o, "pgstay_info", "gauge", "pgstay's version and pool mode");
    put(&o, "pgstay_info{version=\"%s\",pool_mode=\"%s\"} 1\n", PGSTAY_VERSION,
        w->cfg->pool_mode == POOL_SESSION ? "session" : "transaction");
    help(&o, "pgstay_clients_accepted_total", "counter", "Client connections accepted");
    put(&o, "pgstay_clients_accepted_total %llu\n", (unsigned long long)stat_of(w, offsetof(struct worker_stats, clients_accepted)));
    help(&o, "pgstay_clients_rejected_total", "counter", "Client connections refused");
    put(&o, "pgstay_clients_rejected_total %llu\n", (unsigned long long)stat_of(w, offsetof(struct worker_stats, clients_rejected)));
    help(&o, "pgstay_server_connections_opened_total", "counter",
         "Server connections opened (probes included)");
    put(&o, "pgstay_server_connections_opened_total %llu\n",
        (unsigned long long)stat_of(w, offsetof(struct worker_stats, servers_opened)));
    pools_section(w, &o);
    nodes_section(w, &o);
    failover_section(w, &o);
    if (o.failed) {
        free(o.p);
        return NULL;
    }
    *len = o.len;
    return o.p;
}

static void metrics_cb(struct evhttp_request *req, void *arg)
{
    struct worker *w = arg;
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET &&
        evhttp_request_get_command(req) != EVHTTP_REQ_HEAD) {
        evhttp_send_error(req, 405, "only GET");
        return;
    }
    size_t len;
    /* Every worker's pools and clients are read: with the world stopped (core/world.h). */
    world_stop(w);
    char *text = metrics_render(w, &len);
    world_start(w);
    if (!text) {
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        free(text);
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    evbuffer_add(b, text, len);
    free(text);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; version=0.0.4; charset=utf-8");
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}

static void other_cb(struct evhttp_request *req, void *arg)
{
    evhttp_send_error(req, 404, "pgstay serves /metrics only");
}

int metrics_start(struct worker *w)
{
    return metrics_start_fd(w, -1);
}

int metrics_fd(struct worker *w)
{
    if (!w->admin || !w->admin->metrics || !w->admin->metrics->bound)
        return -1;
    return (int)evhttp_bound_socket_get_fd(w->admin->metrics->bound);
}

int metrics_start_fd(struct worker *w, int fd)
{
    const char *spec = w->cfg->metrics_listen;
    if (!spec || !*spec)
        return 0;
    char host[256];
    const char *colon = strrchr(spec, ':');
    char *end;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    if (!colon || colon == spec || (size_t)(colon - spec) >= sizeof(host) || *end || port < 0 ||
        port > 65535) {
        log_error("metrics_listen \"%s\": expected host:port", spec);
        return -1;
    }
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = 0;
    /* [::1]:9127 */
    char *h = host;
    if (h[0] == '[' && h[strlen(h) - 1] == ']') {
        h[strlen(h) - 1] = 0;
        h++;
    }
    struct metrics *m = calloc(1, sizeof(*m));
    if (!m || !(m->http = evhttp_new(w->base))) {
        free(m);
        log_error("metrics_listen: out of memory");
        return -1;
    }
    evhttp_set_allowed_methods(m->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
    evhttp_set_cb(m->http, "/metrics", metrics_cb, w);
    evhttp_set_gencb(m->http, other_cb, w);
    evhttp_set_timeout(m->http, 10);
    if (fd >= 0)
        m->bound = evhttp_accept_socket_with_handle(m->http, fd);
    else
        m->bound = evhttp_bind_socket_with_handle(m->http, h, (uint16_t)port);
    if (!m->bound) {
        log_error("metrics_listen: cannot listen on %s", spec);
        evhttp_free(m->http);
        free(m);
        return -1;
    }
    w->admin->metrics = m;
    log_info("metrics on http://%s/metrics", spec);
    return 0;
}

void metrics_stop(struct worker *w)
{
    if (!w->admin || !w->admin->metrics)
        return;
    evhttp_free(w->admin->metrics->http);
    free(w->admin->metrics);
    w->admin->metrics = NULL;
}
