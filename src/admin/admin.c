/* Admin console: simple-protocol commands answered from pgstay's own state. PgBouncer 1.18's
 * SHOW commands keep its column names, order and types (tools written for it read them by name
 * or position); pgstay's extra columns come after them. */
#include "admin/admin.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include "admin/metrics.h"
#include "client/client.h"
#include "config/config.h"
#include "core/log.h"
#include "core/tls.h"
#include "failover/failover.h"
#include "failover/planned.h"
#include "pool/pool.h"
#include "proto/proto.h"
#include "proto/sqlclass.h"
#include "server/server.h"
#include "topology/topology.h"

#ifndef PGSTAY_VERSION
#define PGSTAY_VERSION "0.1.0"
#endif
/* The PgBouncer release whose console pgstay's follows: named in SHOW VERSION so that tools
 * matching "PgBouncer X.Y.Z" there pick the matching column sets. */
#define PGBOUNCER_COMPAT "1.18.0"

/* Column types, as PostgreSQL's OIDs (PgBouncer sends int4 counts and numeric totals). */
enum { T_TEXT = 25, T_INT4 = 23, T_INT8 = 20, T_NUMERIC = 1700 };

void admin_welcome(struct client *c)
{
    struct pbuf b;
    pbuf_init(&b);
    proto_build_param_status(&b, "server_version", "15.0 (pgstay " PGSTAY_VERSION ")");
    proto_build_param_status(&b, "client_encoding", "UTF8");
    proto_build_param_status(&b, "server_encoding", "UTF8");
    proto_build_param_status(&b, "DateStyle", "ISO, MDY");
    proto_build_param_status(&b, "integer_datetimes", "on");
    proto_build_param_status(&b, "standard_conforming_strings", "on");
    proto_build_key_data(&b, c->cancel_pid, c->cancel_key);
    proto_build_ready(&b, 'I');
    c->got_welcome = 1;
    client_send_pbuf(c, &b);
}

static void fmt_time(int64_t ms, char *out, size_t cap)
{
    if (!ms) {
        snprintf(out, cap, "%s", "");
        return;
    }
    ms = clock_wall_ms(ms); /* kept monotonic, shown as wall time */
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    localtime_r(&t, &tm);
    char base[32];
    strftime(base, sizeof(base), "%Y-%m-%d %H:%M:%S", &tm);
    snprintf(out, cap, "%s.%03d", base, (int)(ms % 1000));
}

/* PgBouncer's connect_time/request_time: wall time to the second, in UTC. */
static const char *fmt_utc(int64_t mono_ms, char *out, size_t cap)
{
    time_t t = (time_t)(clock_wall_ms(mono_ms) / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, cap, "%Y-%m-%d %H:%M:%S UTC", &tm);
    return out;
}

/* A result set built row by row. */
struct result {
    struct pbuf b;
    int ncols;
    int nrows;
};

struct col {
    const char *name;
    uint32_t oid;
};

static void res_begin_typed(struct result *r, int n, const struct col *cols)
{
    const char *names[64];
    uint32_t oids[64];
    if (n > 64)
        n = 64; /* no SHOW has that many */
    for (int i = 0; i < n; i++) {
        names[i] = cols[i].name;
        oids[i] = cols[i].oid;
    }
    pbuf_init(&r->b);
    r->ncols = n;
    r->nrows = 0;
    proto_build_row_desc_typed(&r->b, n, names, oids);
}

static void res_begin(struct result *r, int n, const char *const *cols)
{
    pbuf_init(&r->b);
    r->ncols = n;
    r->nrows = 0;
    proto_build_row_desc(&r->b, n, cols);
}

static void res_row(struct result *r, const char *const *vals)
{
    proto_build_data_row(&r->b, r->ncols, vals);
    r->nrows++;
}

static void res_end(struct client *c, struct result *r, const char *verb)
{
    /* PgBouncer's tag is the bare verb ("SHOW"), with no row count. */
    proto_build_command_complete(&r->b, verb);
    client_send_pbuf(c, &r->b);
}

#define NCOLS(a)    ((int)(sizeof(a) / sizeof(a[0])))
#define I2S(buf, v) (snprintf(buf, sizeof(buf), "%lld", (long long)(v)), buf)
#define U2S(buf, v) (snprintf(buf, sizeof(buf), "%llu", (unsigned long long)(v)), buf)

/* Text cells of one row, each in its own buffer. */
struct cells {
    char buf[40][48];
    const char *v[40];
    int n;
};
static const char *cell_i(struct cells *x, long long v)
{
    char *b = x->buf[x->n];
    snprintf(b, sizeof(x->buf[0]), "%lld", v);
    x->v[x->n++] = b;
    return b;
}
static const char *cell_u(struct cells *x, unsigned long long v)
{
    char *b = x->buf[x->n];
    snprintf(b, sizeof(x->buf[0]), "%llu", v);
    x->v[x->n++] = b;
    return b;
}
static const char *cell_s(struct cells *x, const char *s)
{
    x->v[x->n++] = s;
    return s;
}

static const char *mode_name(struct worker *w)
{
    return w->cfg->pool_mode == POOL_SESSION ? "session" : "transaction";
}

/* ---- the admin console's own state ---- */

int admin_init(struct worker *w)
{
    w->admin = calloc(1, sizeof(*w->admin));
    if (!w->admin)
        return -1;
    w->admin->period_start = now_ms();
    return 0;
}

void admin_free(struct worker *w)
{
    struct admin *a = w->admin;
    if (!a)
        return;
    for (int i = 0; i < a->n_disabled; i++)
        free(a->disabled[i]);
    free(a->disabled);
    for (int i = 0; i < a->n_avgs; i++)
        free(a->avgs[i].database);
    free(a->avgs);
    free(a);
    w->admin = NULL;
}

static int disabled_index(struct admin *a, const char *db)
{
    for (int i = 0; i < a->n_disabled; i++)
        if (!strcmp(a->disabled[i], db))
            return i;
    return -1;
}

/* Every worker's objects are the console's to show and act on: its commands run with the world
 * stopped (src/app/worker.c), so it walks each worker's lists as its own. */
#define FOR_EACH_WORKER(w, x)                                                                  \
    for (int x##_i = 0; x##_i < (w)->world->n; x##_i++)                                        \
        for (struct worker *x = (w)->world->workers[x##_i]; x; x = NULL)

/* The process's counters: every worker's. */
static void stats_sum(struct worker *w, struct worker_stats *out)
{
    memset(out, 0, sizeof(*out));
    FOR_EACH_WORKER(w, x)
    {
        out->clients_accepted += x->stats.clients_accepted;
        out->clients_rejected += x->stats.clients_rejected;
        out->servers_opened += x->stats.servers_opened;
        out->bytes_client_to_server += x->stats.bytes_client_to_server;
        out->bytes_server_to_client += x->stats.bytes_server_to_client;
        out->queries += x->stats.queries;
        for (int i = 0; i < (int)(sizeof(out->pins) / sizeof(out->pins[0])); i++)
            out->pins[i] += x->stats.pins[i];
    }
}

int admin_db_disabled(struct worker *w, const char *database)
{
    return w->admin && w->admin->n_disabled > 0 && disabled_index(w->admin, database) >= 0;
}

void admin_db_totals(struct worker *w, const char *database, struct pool_stats *sum)
{
    memset(sum, 0, sizeof(*sum));
    FOR_EACH_WORKER(w, x)
    {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &x->pools)
        {
            struct pool *p = container_of(pos, struct pool, node);
            if (!database || !strcmp(p->database, database))
                stats_add(sum, &p->stats);
        }
        stats_kept_sum(x, database, sum);
    }
}

/* Distinct database (or user) names of the pools and of the counters freed pools left, in
 * first-seen order; *n of them, in a malloc'd array of borrowed strings. */
static const char **distinct_names(struct worker *w, int users, int *n)
{
    int cap = 16;
    const char **v = malloc(sizeof(*v) * (size_t)cap);
    *n = 0;
    if (!v)
        return NULL;
    struct list *pos, *tmp;
    for (int pass = 0; pass < 2 * w->world->n; pass++) {
        struct worker *x = w->world->workers[pass / 2];
        list_for_each_safe(pos, tmp, pass % 2 == 0 ? &x->pools : &x->stats_kept)
        {
            const char *name;
            if (pass % 2 == 0) {
                struct pool *p = container_of(pos, struct pool, node);
                name = users ? p->user : p->database;
            } else {
                struct stats_kept *k = container_of(pos, struct stats_kept, node);
                name = users ? k->user : k->database;
            }
            int i = 0;
            while (i < *n && strcmp(v[i], name))
                i++;
            if (i < *n)
                continue;
            if (*n == cap) {
                const char **nv = realloc(v, sizeof(*v) * (size_t)(cap *= 2));
                if (!nv)
                    return v;
                v = nv;
            }
            v[(*n)++] = name;
        }
    }
    return v;
}

static struct admin_db_avg *avg_find(struct admin *a, const char *db)
{
    for (int i = 0; i < a->n_avgs; i++)
        if (!strcmp(a->avgs[i].database, db))
            return &a->avgs[i];
    return NULL;
}

static uint64_t per(uint64_t n, uint64_t d)
{
    return d ? n / d : 0;
}

/* End of a stats_period: averages of what each database did during it. */
static void roll_averages(struct worker *w, int64_t now)
{
    struct admin *a = w->admin;
    int64_t dur_ms = now - a->period_start;
    a->period_start = now;
    if (dur_ms <= 0)
        return;
    for (int i = 0; i < a->n_avgs; i++)
        a->avgs[i].seen = 0;
    int n;
    const char **dbs = distinct_names(w, 0, &n);
    for (int i = 0; dbs && i < n; i++) {
        struct admin_db_avg *e = avg_find(a, dbs[i]);
        if (!e) {
            struct admin_db_avg *na = realloc(a->avgs, sizeof(*na) * (size_t)(a->n_avgs + 1));
            if (!na)
                break;
            a->avgs = na;
            e = &a->avgs[a->n_avgs];
            memset(e, 0, sizeof(*e));
            e->database = strdup(dbs[i]);
            if (!e->database)
                break;
            a->n_avgs++;
        }
        struct pool_stats cur;
        admin_db_totals(w, dbs[i], &cur);
        const struct pool_stats *o = &e->prev;
        uint64_t dx = cur.xact_count - o->xact_count, dq = cur.query_count - o->query_count;
        e->xact_count = per(dx * 1000, (uint64_t)dur_ms);
        e->query_count = per(dq * 1000, (uint64_t)dur_ms);
        e->recv = per((cur.bytes_recv - o->bytes_recv) * 1000, (uint64_t)dur_ms);
        e->sent = per((cur.bytes_sent - o->bytes_sent) * 1000, (uint64_t)dur_ms);
        e->xact_time = per(cur.xact_us - o->xact_us, dx);
        e->query_time = per(cur.query_us - o->query_us, dq);
        e->wait_time = per((cur.wait_us - o->wait_us) * 1000, (uint64_t)dur_ms);
        e->prev = cur;
        e->seen = 1;
    }
    free(dbs);
    /* Databases that left no pool and no counters: forget their averages. */
    for (int i = 0; i < a->n_avgs;) {
        if (a->avgs[i].seen) {
            i++;
            continue;
        }
        free(a->avgs[i].database);
        a->avgs[i] = a->avgs[--a->n_avgs];
    }
}

/* ---- SHOW ---- */

/* What SHOW POOLS counts for one pool, from one walk of the client and server lists. */
struct pool_counts {
    int cl_active, cl_waiting, cl_held, cl_login;
    int sv_active, sv_idle, sv_tested, sv_login;
    int64_t maxwait_ms;
};

static int same_pool(const struct pool *p, const struct pool *q)
{
    return q && p->role == q->role && !strcmp(p->database, q->database) &&
           !strcmp(p->user, q->user);
}

static void count_pool_on(struct worker *w, struct pool *p, struct pool_counts *k, int64_t now);

/* A pool is one per worker: SHOW POOLS counts them all as one. */
static void count_pool(struct worker *w, struct pool *p, struct pool_counts *k, int64_t now)
{
    memset(k, 0, sizeof(*k));
    FOR_EACH_WORKER(w, x)
    {
        count_pool_on(x, p, k, now);
    }
}

/* p's first pool among the workers (the one whose row SHOW POOLS shows)? */
static int first_of_key(struct worker *w, struct pool *p)
{
    for (int i = 0; i < w->world->n; i++) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &w->world->workers[i]->pools)
        {
            struct pool *q = container_of(pos, struct pool, node);
            if (same_pool(p, q))
                return q == p;
        }
    }
    return 1;
}

static void count_pool_on(struct worker *w, struct pool *p, struct pool_counts *k, int64_t now)
{
    for (int st = 0; st < CL_CLOSING; st++) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &w->clients[st])
        {
            struct client *x = container_of(pos, struct client, node);
            if (!same_pool(p, x->pool) || x->is_admin)
                continue;
            if (x->held || x->pause_held)
                k->cl_held++;
            if (st == CL_WAITING) {
                k->cl_waiting++;
                if (now - x->wait_since > k->maxwait_ms)
                    k->maxwait_ms = now - x->wait_since;
            } else if (st == CL_LOGIN) {
                k->cl_login++;
            } else {
                /* PgBouncer's cl_active: linked to a server, or idle with nothing waiting. */
                k->cl_active++;
            }
        }
    }
    for (int st = 0; st < SV_CLOSING; st++) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &w->servers[st])
        {
            struct server *s = container_of(pos, struct server, node);
            if (!same_pool(p, s->pool))
                continue;
            if (st == SV_IDLE)
                k->sv_idle++;
            else if (st == SV_RESETTING)
                k->sv_tested++; /* PgBouncer's "tested": running the reset query */
            else if (st == SV_CONNECTING || st == SV_LOGIN)
                k->sv_login++;
            else
                k->sv_active++;
        }
    }
}

static void show_pools(struct client *c)
{
    static const struct col cols[] = {
        {"database", T_TEXT},
        {"user", T_TEXT},
        {"cl_active", T_INT4},
        {"cl_waiting", T_INT4},
        {"cl_active_cancel_req", T_INT4},
        {"cl_waiting_cancel_req", T_INT4},
        {"sv_active", T_INT4},
        {"sv_active_cancel", T_INT4},
        {"sv_being_canceled", T_INT4},
        {"sv_idle", T_INT4},
        {"sv_used", T_INT4},
        {"sv_tested", T_INT4},
        {"sv_login", T_INT4},
        {"maxwait", T_INT4},
        {"maxwait_us", T_INT4},
        {"pool_mode", T_TEXT},
        /* pgstay's */
        {"role", T_TEXT},
        {"cl_held", T_INT4},
        {"cl_login", T_INT4},
    };
    struct result r;
    res_begin_typed(&r, NCOLS(cols), cols);
    struct list *pos, *tmp;
    int64_t now = now_ms();
    FOR_EACH_WORKER(c->w, ww)
    list_for_each_safe(pos, tmp, &ww->pools)
    {
        struct pool *p = container_of(pos, struct pool, node);
        if (!first_of_key(c->w, p))
            continue;
        struct pool_counts k;
        count_pool(c->w, p, &k, now);
        struct cells x = {.n = 0};
        cell_s(&x, p->database);
        cell_s(&x, p->user);
        cell_i(&x, k.cl_active);
        cell_i(&x, k.cl_waiting);
        cell_i(&x, 0);
        cell_i(&x, 0);
        cell_i(&x, k.sv_active);
        cell_i(&x, 0);
        cell_i(&x, 0);
        cell_i(&x, k.sv_idle);
        cell_i(&x, 0);
        cell_i(&x, k.sv_tested);
        cell_i(&x, k.sv_login);
        cell_i(&x, k.maxwait_ms / 1000);
        cell_i(&x, (k.maxwait_ms % 1000) * 1000);
        cell_s(&x, mode_name(c->w));
        cell_s(&x, p->role == ROLE_WRITER ? "writer" : "reader");
        cell_i(&x, k.cl_held);
        cell_i(&x, k.cl_login);
        res_row(&r, x.v);
    }
    res_end(c, &r, "SHOW");
}

static const char *client_state_name(const struct client *x)
{
    switch (x->state) {
    case CL_LOGIN:
        return "login";
    case CL_WAITING:
        return "waiting";
    default:
        return "active";
    }
}

static const char *server_state_name(int st)
{
    switch (st) {
    case SV_IDLE:
        return "idle";
    case SV_RESETTING:
        return "tested";
    case SV_CONNECTING:
    case SV_LOGIN:
        return "new";
    default:
        return "active";
    }
}

static const char *pgstay_server_state(int st)
{
    static const char *const n[] = {"connecting", "login",     "idle",  "setup",
                                    "active",     "resetting", "probe", "closing"};
    return st >= 0 && st < SV_NSTATES ? n[st] : "?";
}

static const char *pgstay_client_state(int st)
{
    static const char *const n[] = {"login", "waiting", "active", "idle", "closing"};
    return st >= 0 && st < CL_NSTATES ? n[st] : "?";
}

/* The columns SHOW CLIENTS and SHOW SERVERS share in PgBouncer. */
#define SOCKET_COLS                                                                                \
    {"type", T_TEXT}, {"user", T_TEXT}, {"database", T_TEXT}, {"state", T_TEXT}, {"addr", T_TEXT}, \
        {"port", T_INT4}, {"local_addr", T_TEXT}, {"local_port", T_INT4},                          \
        {"connect_time", T_TEXT}, {"request_time", T_TEXT}, {"wait", T_INT4}, {"wait_us", T_INT4}, \
        {"close_needed", T_INT4}, {"ptr", T_TEXT}, {"link", T_TEXT}, {"remote_pid", T_INT4},       \
        {"tls", T_TEXT},                                                                           \
    {                                                                                              \
        "application_name", T_TEXT                                                                 \
    }

/* The local end of a socket, as PgBouncer's local_addr and local_port. */
static void local_end(int fd, char *addr, size_t cap, int *port)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    addr[0] = 0;
    *port = 0;
    if (fd < 0 || getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &sin->sin_addr, addr, (socklen_t)cap);
        *port = ntohs(sin->sin_port);
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &sin6->sin6_addr, addr, (socklen_t)cap);
        *port = ntohs(sin6->sin6_port);
    } else {
        snprintf(addr, cap, "unix");
    }
}

static void show_clients(struct client *c)
{
    static const struct col cols[] = {
        SOCKET_COLS,
        /* pgstay's */
        {"id", T_INT8},
        {"server", T_INT8},
        {"held", T_TEXT},
        {"pinned", T_TEXT},
        {"role", T_TEXT},
        {"pgstay_state", T_TEXT},
        {"worker", T_INT4},
    };
    struct result r;
    res_begin_typed(&r, NCOLS(cols), cols);
    int64_t now = now_ms();
    FOR_EACH_WORKER(c->w, ww)
    for (int st = 0; st < CL_CLOSING; st++) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &ww->clients[st])
        {
            struct client *x = container_of(pos, struct client, node);
            char ip[INET6_ADDRSTRLEN] = "", laddr[INET6_ADDRSTRLEN], ct[40], rt[40], ptr[24],
                 link[24];
            int lport;
            if (x->addr_family == AF_INET || x->addr_family == AF_INET6)
                inet_ntop(x->addr_family == AF_INET ? AF_INET : AF_INET6, x->addr_ip, ip,
                          sizeof(ip));
            local_end(conn_fd(&x->conn), laddr, sizeof(laddr), &lport);
            int64_t waited = st == CL_WAITING ? now - x->wait_since : 0;
            snprintf(ptr, sizeof(ptr), "%p", (void *)x);
            snprintf(link, sizeof(link), "%p", (void *)x->server);
            const char *app = kv_get(&x->params, "application_name");
            struct cells v = {.n = 0};
            cell_s(&v, "C");
            cell_s(&v, x->user ? x->user : "");
            cell_s(&v, x->database ? x->database : "");
            cell_s(&v, client_state_name(x));
            cell_s(&v, ip);
            cell_i(&v, x->addr_port);
            cell_s(&v, laddr);
            cell_i(&v, lport);
            cell_s(&v, fmt_utc((int64_t)x->connect_s * 1000, ct, sizeof(ct)));
            cell_s(&v, fmt_utc(x->last_active ? x->last_active : (int64_t)x->connect_s * 1000, rt,
                               sizeof(rt)));
            cell_i(&v, waited / 1000);
            cell_i(&v, (waited % 1000) * 1000);
            cell_i(&v, 0);
            cell_s(&v, ptr);
            cell_s(&v, x->server ? link : "");
            cell_i(&v, 0);
            cell_s(&v, conn_is_tls(&x->conn) ? conn_tls_version(&x->conn) : "");
            cell_s(&v, app ? app : "");
            cell_u(&v, x->id);
            if (x->server)
                cell_u(&v, x->server->id);
            else
                cell_s(&v, NULL);
            cell_s(&v, (x->held || x->pause_held) ? "yes" : "no");
            cell_s(&v, x->pin_reason ? pin_reason_name(x->pin_reason) : "");
            cell_s(&v, x->is_admin ? "admin" : x->role == ROLE_WRITER ? "writer" : "reader");
            cell_s(&v, pgstay_client_state(x->state));
            cell_i(&v, ww->index);
            res_row(&r, v.v);
        }
    }
    res_end(c, &r, "SHOW");
}

static void show_servers(struct client *c)
{
    static const struct col cols[] = {
        SOCKET_COLS,
        /* pgstay's */
        {"id", T_INT8},
        {"node", T_TEXT},
        {"client", T_INT8},
        {"role", T_TEXT},
        {"pgstay_state", T_TEXT},
        {"worker", T_INT4},
    };
    struct result r;
    res_begin_typed(&r, NCOLS(cols), cols);
    FOR_EACH_WORKER(c->w, ww)
    for (int st = 0; st < SV_CLOSING; st++) {
        if (st == SV_PROBE)
            continue; /* topology's own connections: SHOW NODES */
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &ww->servers[st])
        {
            struct server *s = container_of(pos, struct server, node);
            char laddr[INET6_ADDRSTRLEN], ct[40], rt[40], ptr[24], link[24];
            int lport;
            local_end(conn_fd(&s->conn), laddr, sizeof(laddr), &lport);
            snprintf(ptr, sizeof(ptr), "%p", (void *)s);
            snprintf(link, sizeof(link), "%p", (void *)s->client);
            const char *app = server_param(s, "application_name");
            struct cells v = {.n = 0};
            cell_s(&v, "S");
            cell_s(&v, s->user);
            cell_s(&v, s->database);
            cell_s(&v, server_state_name(s->state));
            cell_s(&v, s->nd ? s->nd->host : "");
            cell_i(&v, s->nd ? s->nd->port : 0);
            cell_s(&v, laddr);
            cell_i(&v, lport);
            cell_s(&v, fmt_utc(s->connected_at, ct, sizeof(ct)));
            cell_s(&v, fmt_utc(s->last_used ? s->last_used : s->connected_at, rt, sizeof(rt)));
            cell_i(&v, 0);
            cell_i(&v, 0);
            cell_i(&v, s->close_needed);
            cell_s(&v, ptr);
            cell_s(&v, s->client ? link : "");
            cell_i(&v, s->be_pid);
            cell_s(&v, conn_is_tls(&s->conn) ? conn_tls_version(&s->conn) : "");
            cell_s(&v, app ? app : "");
            cell_u(&v, s->id);
            cell_s(&v, s->nd ? s->nd->name : "");
            if (s->client)
                cell_u(&v, s->client->id);
            else
                cell_s(&v, NULL);
            cell_s(&v, s->pool && s->pool->role == ROLE_READER ? "reader" : "writer");
            cell_s(&v, pgstay_server_state(s->state));
            cell_i(&v, ww->index);
            res_row(&r, v.v);
        }
    }
    res_end(c, &r, "SHOW");
}

/* SHOW STATS, STATS_TOTALS, STATS_AVERAGES: one row per database, as PgBouncer. */
enum stats_kind { STATS_ALL, STATS_TOTALS, STATS_AVERAGES };

static void show_stats(struct client *c, enum stats_kind kind)
{
    static const struct col all[] = {
        {"database", T_TEXT},
        {"total_xact_count", T_NUMERIC},
        {"total_query_count", T_NUMERIC},
        {"total_received", T_NUMERIC},
        {"total_sent", T_NUMERIC},
        {"total_xact_time", T_NUMERIC},
        {"total_query_time", T_NUMERIC},
        {"total_wait_time", T_NUMERIC},
        {"avg_xact_count", T_NUMERIC},
        {"avg_query_count", T_NUMERIC},
        {"avg_recv", T_NUMERIC},
        {"avg_sent", T_NUMERIC},
        {"avg_xact_time", T_NUMERIC},
        {"avg_query_time", T_NUMERIC},
        {"avg_wait_time", T_NUMERIC},
        /* pgstay's: PgBouncer before 1.8 had it, and exporters written then still read it. */
        {"total_requests", T_NUMERIC},
    };
    static const struct col part[] = {
        {"database", T_TEXT},          {"xact_count", T_NUMERIC}, {"query_count", T_NUMERIC},
        {"bytes_received", T_NUMERIC}, {"bytes_sent", T_NUMERIC}, {"xact_time", T_NUMERIC},
        {"query_time", T_NUMERIC},     {"wait_time", T_NUMERIC},
    };
    struct result r;
    if (kind == STATS_ALL)
        res_begin_typed(&r, NCOLS(all), all);
    else
        res_begin_typed(&r, NCOLS(part), part);
    int n;
    const char **dbs = distinct_names(c->w, 0, &n);
    for (int i = 0; dbs && i < n; i++) {
        struct pool_stats t;
        admin_db_totals(c->w, dbs[i], &t);
        struct admin_db_avg zero, *a = avg_find(c->w->admin, dbs[i]);
        if (!a) {
            memset(&zero, 0, sizeof(zero));
            a = &zero;
        }
        struct cells v = {.n = 0};
        cell_s(&v, dbs[i]);
        if (kind != STATS_AVERAGES) {
            cell_u(&v, t.xact_count);
            cell_u(&v, t.query_count);
            cell_u(&v, t.bytes_recv);
            cell_u(&v, t.bytes_sent);
            cell_u(&v, t.xact_us);
            cell_u(&v, t.query_us);
            cell_u(&v, t.wait_us);
        }
        if (kind != STATS_TOTALS) {
            cell_u(&v, a->xact_count);
            cell_u(&v, a->query_count);
            cell_u(&v, a->recv);
            cell_u(&v, a->sent);
            cell_u(&v, a->xact_time);
            cell_u(&v, a->query_time);
            cell_u(&v, a->wait_time);
        }
        if (kind == STATS_ALL)
            cell_u(&v, t.query_count);
        res_row(&r, v.v);
    }
    free(dbs);
    res_end(c, &r, "SHOW");
}

static void show_lists(struct client *c)
{
    static const struct col cols[] = {{"list", T_TEXT}, {"items", T_INT4}};
    struct worker *w = c->w;
    int n_db, n_users, n_pools = 0, used_clients = 0, used_servers = 0;
    free(distinct_names(w, 0, &n_db));
    free(distinct_names(w, 1, &n_users));
    int login_clients = 0;
    FOR_EACH_WORKER(w, x)
    {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &x->pools)
        {
            if (first_of_key(w, container_of(pos, struct pool, node)))
                n_pools++;
        }
        for (int st = 0; st < CL_CLOSING; st++)
            used_clients += x->n_clients[st];
        for (int st = 0; st < SV_CLOSING; st++)
            if (st != SV_PROBE)
                used_servers += x->n_servers[st];
        login_clients += x->n_clients[CL_LOGIN];
    }
    /* pgstay frees what it does not use (no object caches) and resolves through libevent. */
    const struct {
        const char *name;
        int n;
    } rows[] = {
        {"databases", n_db},
        {"users", n_users},
        {"pools", n_pools},
        {"free_clients", 0},
        {"used_clients", used_clients},
        {"login_clients", login_clients},
        {"free_servers", 0},
        {"used_servers", used_servers},
        {"dns_names", 0},
        {"dns_zones", 0},
        {"dns_queries", 0},
        {"dns_pending", 0},
    };
    struct result r;
    res_begin_typed(&r, NCOLS(cols), cols);
    for (int i = 0; i < NCOLS(rows); i++) {
        char num[24];
        const char *vals[2] = {rows[i].name, I2S(num, rows[i].n)};
        res_row(&r, vals);
    }
    res_end(c, &r, "SHOW");
}

static void show_databases(struct client *c)
{
    static const struct col cols[] = {
        {"name", T_TEXT},
        {"host", T_TEXT},
        {"port", T_INT4},
        {"database", T_TEXT},
        {"force_user", T_TEXT},
        {"pool_size", T_INT4},
        {"min_pool_size", T_INT4},
        {"reserve_pool", T_INT4},
        {"pool_mode", T_TEXT},
        {"max_connections", T_INT4},
        {"current_connections", T_INT4},
        {"paused", T_INT4},
        {"disabled", T_INT4},
        /* pgstay's: the node its writer pools use now */
        {"writer", T_TEXT},
    };
    struct worker *w = c->w;
    struct result r;
    res_begin_typed(&r, NCOLS(cols), cols);
    int n;
    const char **dbs = distinct_names(w, 0, &n);
    /* A disabled database is listed even when nothing of it is left. */
    for (int i = 0; i < w->admin->n_disabled; i++) {
        int j = 0;
        while (dbs && j < n && strcmp(dbs[j], w->admin->disabled[i]))
            j++;
        if (dbs && j == n) {
            const char **nd = realloc(dbs, sizeof(*dbs) * (size_t)(n + 1));
            if (!nd)
                break;
            dbs = nd;
            dbs[n++] = w->admin->disabled[i];
        }
    }
    struct node *wr = w->topo->writer;
    for (int i = 0; dbs && i < n; i++) {
        int conns = 0;
        FOR_EACH_WORKER(w, x)
        for (int st = 0; st < SV_CLOSING; st++) {
            struct list *pos, *tmp;
            list_for_each_safe(pos, tmp, &x->servers[st])
            {
                struct server *s = container_of(pos, struct server, node);
                if (s->pool && !strcmp(s->pool->database, dbs[i]))
                    conns++;
            }
        }
        struct cells v = {.n = 0};
        cell_s(&v, dbs[i]);
        cell_s(&v, wr ? wr->host : NULL);
        if (wr)
            cell_i(&v, wr->port);
        else
            cell_s(&v, NULL);
        cell_s(&v, dbs[i]);
        cell_s(&v, NULL);
        cell_i(&v, config_pool_size(w->cfg, dbs[i], NULL));
        cell_i(&v, w->cfg->min_pool_size);
        cell_i(&v, w->cfg->reserve_pool_size);
        cell_s(&v, mode_name(w));
        cell_i(&v, 0);
        cell_i(&v, conns);
        cell_i(&v, failover_paused(w, dbs[i]));
        cell_i(&v, admin_db_disabled(w, dbs[i]));
        cell_s(&v, wr ? wr->name : NULL);
        res_row(&r, v.v);
    }
    free(dbs);
    res_end(c, &r, "SHOW");
}

static void show_users(struct client *c)
{
    static const struct col cols[] = {{"name", T_TEXT}, {"pool_mode", T_TEXT}};
    struct result r;
    res_begin_typed(&r, NCOLS(cols), cols);
    int n;
    const char **users = distinct_names(c->w, 1, &n);
    for (int i = 0; users && i < n; i++) {
        const char *vals[2] = {users[i], NULL}; /* NULL: no per-user pool_mode */
        res_row(&r, vals);
    }
    free(users);
    res_end(c, &r, "SHOW");
}

static void show_config(struct client *c)
{
    static const struct col cols[] = {
        {"key", T_TEXT}, {"value", T_TEXT}, {"default", T_TEXT}, {"changeable", T_TEXT}};
    struct result r;
    res_begin_typed(&r, NCOLS(cols), cols);
    struct config_key_view kv;
    for (int i = 0; config_key_show(c->w->cfg, i, &kv) == 0; i++) {
        const char *vals[4] = {kv.name, kv.value, kv.def, kv.reloadable ? "yes" : "no"};
        res_row(&r, vals);
    }
    res_end(c, &r, "SHOW");
}

static void show_mem(struct client *c)
{
    static const struct col cols[] = {{"name", T_TEXT},
                                      {"size", T_INT4},
                                      {"used", T_INT4},
                                      {"free", T_INT4},
                                      {"memtotal", T_INT4}};
    struct worker *w = c->w;
    int clients = 0, servers = 0, pools = 0, bufs = 0, free_bufs = 0;
    FOR_EACH_WORKER(w, ww)
    {
    free_bufs += ww->loop.n_free;
    for (int st = 0; st < CL_NSTATES; st++) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &ww->clients[st])
        {
            struct client *x = container_of(pos, struct client, node);
            clients++;
            bufs += (x->conn.in.data != NULL) + (x->conn.out.data != NULL);
        }
    }
    for (int st = 0; st < SV_NSTATES; st++) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &ww->servers[st])
        {
            struct server *s = container_of(pos, struct server, node);
            servers++;
            bufs += (s->conn.in.data != NULL) + (s->conn.out.data != NULL);
        }
    }
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &ww->pools)
    {
        pools++;
    }
    }
    const struct {
        const char *name;
        int size, used, free;
    } rows[] = {
        {"pool_cache", (int)sizeof(struct pool), pools, 0},
        {"server_cache", (int)sizeof(struct server), servers, 0},
        {"client_cache", (int)sizeof(struct client), clients, 0},
        {"iobuf_cache", CONN_BLOCK, bufs, free_bufs},
    };
    struct result r;
    res_begin_typed(&r, NCOLS(cols), cols);
    for (int i = 0; i < NCOLS(rows); i++) {
        struct cells v = {.n = 0};
        cell_s(&v, rows[i].name);
        cell_i(&v, rows[i].size);
        cell_i(&v, rows[i].used);
        cell_i(&v, rows[i].free);
        cell_i(&v, (long long)rows[i].size * (rows[i].used + rows[i].free));
        res_row(&r, v.v);
    }
    res_end(c, &r, "SHOW");
}

static void show_version(struct client *c)
{
    static const struct col cols[] = {{"version", T_TEXT}};
    struct result r;
    res_begin_typed(&r, 1, cols);
    const char *vals[1] = {"pgstay " PGSTAY_VERSION " (PgBouncer " PGBOUNCER_COMPAT " compatible)"};
    res_row(&r, vals);
    res_end(c, &r, "SHOW");
}

/* pgstay's own process totals (what SHOW STATS showed before it took PgBouncer's form). */
static void show_totals(struct client *c)
{
    static const struct col cols[] = {{"name", T_TEXT}, {"value", T_NUMERIC}};
    struct worker_stats sum;
    stats_sum(c->w, &sum);
    struct worker_stats *st = &sum;
    struct pool_stats t;
    admin_db_totals(c->w, NULL, &t);
    /* PgBouncer's process averages over the last stats_period, from the databases': rates add
     * up, times per transaction and per request are weighted by how many there were. */
    struct admin_db_avg avg;
    memset(&avg, 0, sizeof(avg));
    const struct admin *ad = c->w->admin;
    uint64_t xact_us = 0, query_us = 0;
    for (int i = 0; i < ad->n_avgs; i++) {
        const struct admin_db_avg *e = &ad->avgs[i];
        avg.xact_count += e->xact_count;
        avg.query_count += e->query_count;
        avg.recv += e->recv;
        avg.sent += e->sent;
        avg.wait_time += e->wait_time;
        xact_us += e->xact_time * e->xact_count;
        query_us += e->query_time * e->query_count;
    }
    avg.xact_time = per(xact_us, avg.xact_count);
    avg.query_time = per(query_us, avg.query_count);
    const struct {
        const char *name;
        uint64_t v;
    } rows[] = {
        {"total_xact_count", t.xact_count},
        {"total_query_count", t.query_count},
        {"total_client_bytes", t.bytes_recv},
        {"total_server_bytes", t.bytes_sent},
        {"total_xact_time", t.xact_us},
        {"total_query_time", t.query_us},
        {"total_wait_time", t.wait_us},
        {"avg_xact_count", avg.xact_count},
        {"avg_query_count", avg.query_count},
        {"avg_client_bytes", avg.recv},
        {"avg_server_bytes", avg.sent},
        {"avg_xact_time", avg.xact_time},
        {"avg_query_time", avg.query_time},
        {"avg_wait_time", avg.wait_time},
        /* pgstay's */
        {"clients_accepted", st->clients_accepted},
        {"clients_rejected", st->clients_rejected},
        {"servers_opened", st->servers_opened},
    };
    struct result r;
    res_begin_typed(&r, NCOLS(cols), cols);
    for (int i = 0; i < NCOLS(rows); i++) {
        char num[24];
        const char *vals[2] = {rows[i].name, U2S(num, rows[i].v)};
        res_row(&r, vals);
    }
    res_end(c, &r, "SHOW");
}

static void show_nodes(struct client *c)
{
    static const char *const cols[] = {"name",
                                       "host",
                                       "port",
                                       "role",
                                       "writer",
                                       "timeline",
                                       "lsn",
                                       "lag_bytes",
                                       "latency_us",
                                       "servers",
                                       "fails",
                                       "health",
                                       "system_identifier",
                                       "max_timeline",
                                       "note",
                                       "source"};
    struct result r;
    res_begin(&r, 16, cols);
    struct topology *t = c->w->topo;
    for (int i = 0; i < t->n_nodes; i++) {
        struct node *nd = &t->nodes[i];
        if (!node_listed(nd))
            continue; /* a free slot */
        char port[16], tli[16], lsn[32], lag[24], lat[24], sv[16], fails[16], sysid[24], maxtli[16];
        snprintf(lsn, sizeof(lsn), "%X/%X", (unsigned)(nd->lsn >> 32), (unsigned)nd->lsn);
        snprintf(sysid, sizeof(sysid), "%llu", (unsigned long long)nd->sysid);
        char source[64];
        topology_role_source(t, nd, source, sizeof(source));
        const char *vals[16] = {nd->name,
                                nd->host,
                                I2S(port, nd->port),
                                node_role_name(nd->role),
                                nd == t->writer ? "yes" : "no",
                                I2S(tli, nd->timeline),
                                lsn,
                                I2S(lag, nd->lag_bytes),
                                I2S(lat, nd->latency_us),
                                I2S(sv, nd->n_servers),
                                I2S(fails, nd->fails),
                                topology_health_name(t, nd),
                                nd->sysid ? sysid : NULL,
                                I2S(maxtli, t->max_tli),
                                nd->note[0] ? nd->note : NULL,
                                source};
        res_row(&r, vals);
    }
    res_end(c, &r, "SHOW");
}

static void show_failovers(struct client *c)
{
    static const char *const cols[] = {
        "id",           "old_writer",       "new_writer",   "reason",     "writer_lost",
        "hold_started", "new_writer_seen",  "first_served", "hold_ended", "hold_ms",
        "clients_held", "failed_in_flight", "timed_out"};
    struct result r;
    res_begin(&r, 13, cols);
    struct failover *fo = c->w->fo;
    int first = fo->n_events > FAILOVER_MAX_EVENTS ? fo->n_events - FAILOVER_MAX_EVENTS : 0;
    for (int i = first; i < fo->n_events; i++) {
        struct failover_event *ev = &fo->events[i % FAILOVER_MAX_EVENTS];
        char id[16], t[5][40], hold[24], held[16], failed[16], to[16];
        fmt_time(ev->writer_lost, t[0], sizeof(t[0]));
        fmt_time(ev->hold_started, t[1], sizeof(t[1]));
        fmt_time(ev->new_writer_seen, t[2], sizeof(t[2]));
        fmt_time(ev->first_served, t[3], sizeof(t[3]));
        fmt_time(ev->hold_ended, t[4], sizeof(t[4]));
        const char *vals[13] = {I2S(id, ev->id),
                                ev->old_writer,
                                ev->new_writer,
                                ev->reason,
                                t[0],
                                t[1],
                                ev->new_writer_seen ? t[2] : NULL,
                                ev->first_served ? t[3] : NULL,
                                ev->hold_ended ? t[4] : NULL,
                                ev->hold_ended ? I2S(hold, ev->hold_ended - ev->hold_started)
                                               : NULL,
                                I2S(held, ev->clients_held),
                                I2S(failed, ev->failed_in_flight),
                                I2S(to, ev->timed_out)};
        res_row(&r, vals);
    }
    res_end(c, &r, "SHOW");
}

static void show_pins(struct client *c)
{
    static const char *const cols[] = {"reason", "count"};
    struct result r;
    res_begin(&r, 2, cols);
    struct worker_stats sum;
    stats_sum(c->w, &sum);
    for (int i = 1; i < PIN_NREASONS; i++) {
        char n[24];
        const char *vals[2] = {pin_reason_name(i), I2S(n, sum.pins[i])};
        res_row(&r, vals);
    }
    res_end(c, &r, "SHOW");
}

static void simple_ok(struct client *c, const char *tag)
{
    struct pbuf b;
    pbuf_init(&b);
    proto_build_command_complete(&b, tag);
    client_send_pbuf(c, &b);
}

static void error(struct client *c, const char *msg)
{
    client_send_error(c, SQLSTATE_SYNTAX_ERROR, msg);
}

static void ready(struct client *c)
{
    struct pbuf b;
    pbuf_init(&b);
    proto_build_ready(&b, 'I');
    client_send_pbuf(c, &b);
}

/* ---- verbs ---- */

/* The next word of *p: a "quoted" identifier (case kept, "" for a quote), or a run up to a
 * blank, '=' or ','; *p moves past it. 0 if there is none or it does not fit. */
static int next_word(const char **p, char *out, size_t cap)
{
    const char *s = *p;
    size_t n = 0;
    while (isspace((unsigned char)*s))
        s++;
    if (*s == '"') {
        for (s++; *s; s++) {
            if (*s == '"' && s[1] == '"')
                s++;
            else if (*s == '"')
                break;
            if (n + 1 >= cap)
                return 0;
            out[n++] = *s;
        }
        if (*s != '"')
            return 0;
        s++;
    } else {
        while (*s && !isspace((unsigned char)*s) && *s != '=' && *s != ',') {
            if (n + 1 >= cap)
                return 0;
            out[n++] = *s++;
        }
    }
    out[n] = 0;
    *p = s;
    return n > 0;
}

static int at_end(const char *p)
{
    while (isspace((unsigned char)*p))
        p++;
    return *p == 0;
}

/* Every pool of a database (NULL: every pool): its servers close, idle ones now, the others
 * when their client is done with them (PgBouncer's RECONNECT). */
static int reconnect(struct worker *w0, const char *db)
{
    int n = 0;
    FOR_EACH_WORKER(w0, w)
    for (int st = SV_CONNECTING; st < SV_CLOSING; st++) {
        if (st == SV_PROBE)
            continue;
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &w->servers[st])
        {
            struct server *s = container_of(pos, struct server, node);
            if (!s->pool || (db && strcmp(s->pool->database, db)))
                continue;
            n++;
            if (st == SV_IDLE) {
                server_close(s, "RECONNECT"); /* takes it off its pool's idle list */
            } else {
                s->close_needed = 1;
            }
        }
    }
    return n;
}

/* KILL db: every client and server of the database goes at once. */
static void kill_db_on(struct worker *w, const char *db);

static void kill_db(struct worker *w, const char *db)
{
    FOR_EACH_WORKER(w, x)
    {
        kill_db_on(x, db);
    }
}

static void kill_db_on(struct worker *w, const char *db)
{
    for (int st = 0; st < CL_CLOSING; st++) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &w->clients[st])
        {
            struct client *x = container_of(pos, struct client, node);
            if (!x->is_admin && x->database && !strcmp(x->database, db))
                client_close(x, SQLSTATE_ADMIN_SHUTDOWN,
                             "terminating connection due to administrator command (KILL)");
        }
    }
    for (int st = SV_CONNECTING; st < SV_CLOSING; st++) {
        if (st == SV_PROBE)
            continue;
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &w->servers[st])
        {
            struct server *s = container_of(pos, struct server, node);
            if (s->pool && !strcmp(s->pool->database, db))
                server_close(s, "KILL");
        }
    }
}

static void set_disabled(struct worker *w, const char *db, int on)
{
    struct admin *a = w->admin;
    int i = disabled_index(a, db);
    if (on && i < 0) {
        char **nd = realloc(a->disabled, sizeof(*nd) * (size_t)(a->n_disabled + 1));
        if (!nd)
            return;
        a->disabled = nd;
        if ((nd[a->n_disabled] = strdup(db)) != NULL)
            a->n_disabled++;
    } else if (!on && i >= 0) {
        free(a->disabled[i]);
        a->disabled[i] = a->disabled[--a->n_disabled];
    }
}

/* SET key = value: the value bare or 'quoted' ('' for a quote). */
static void set_key(struct client *c, const char *args)
{
    char key[128], val[1024];
    const char *p = args;
    if (!next_word(&p, key, sizeof(key))) {
        error(c, "SET: expected SET key = value");
        return;
    }
    while (isspace((unsigned char)*p))
        p++;
    if (*p == '=')
        p++;
    else if (!strncasecmp(p, "TO", 2) && isspace((unsigned char)p[2]))
        p += 2;
    else {
        error(c, "SET: expected SET key = value");
        return;
    }
    while (isspace((unsigned char)*p))
        p++;
    size_t n = 0;
    if (*p == '\'') {
        for (p++; *p; p++) {
            if (*p == '\'' && p[1] == '\'')
                p++;
            else if (*p == '\'')
                break;
            if (n + 1 < sizeof(val))
                val[n++] = *p;
        }
        if (*p != '\'') {
            error(c, "SET: unterminated quoted value");
            return;
        }
        p++;
    } else {
        while (*p && !isspace((unsigned char)*p) && n + 1 < sizeof(val))
            val[n++] = *p++;
    }
    val[n] = 0;
    if (!at_end(p)) {
        error(c, "SET: expected SET key = value");
        return;
    }
    char err[512];
    if (config_set(c->w->cfg, key, val, err, sizeof(err)) < 0) {
        error(c, err);
        return;
    }
    /* What RELOAD does after its keys change: the log level, and waiting clients (a larger
     * pool_size may let them in now). */
    log_verbosity = c->w->cfg->verbose > 0 ? LOG_DEBUG : LOG_INFO;
    FOR_EACH_WORKER(c->w, x)
    {
        pool_kick_all(x);
    }
    simple_ok(c, "SET");
}

static void show(struct client *c, const char *what)
{
    static const struct {
        const char *name;
        void (*fn)(struct client *c);
    } shows[] = {
        {"POOLS", show_pools},         {"CLIENTS", show_clients},
        {"SERVERS", show_servers},     {"LISTS", show_lists},
        {"DATABASES", show_databases}, {"USERS", show_users},
        {"CONFIG", show_config},       {"MEM", show_mem},
        {"VERSION", show_version},     {"TOTALS", show_totals},
        {"NODES", show_nodes},         {"FAILOVERS", show_failovers},
        {"PINS", show_pins},
    };
    if (!strcasecmp(what, "STATS")) {
        show_stats(c, STATS_ALL);
        return;
    }
    if (!strcasecmp(what, "STATS_TOTALS")) {
        show_stats(c, STATS_TOTALS);
        return;
    }
    if (!strcasecmp(what, "STATS_AVERAGES")) {
        show_stats(c, STATS_AVERAGES);
        return;
    }
    for (int i = 0; i < NCOLS(shows); i++) {
        if (!strcasecmp(what, shows[i].name)) {
            shows[i].fn(c);
            return;
        }
    }
    error(c, "unknown SHOW command: try POOLS, CLIENTS, SERVERS, STATS, STATS_TOTALS, "
             "STATS_AVERAGES, LISTS, DATABASES, USERS, CONFIG, MEM, VERSION, TOTALS, NODES, "
             "FAILOVERS, PINS");
}

/* Run one command; returns 1 if ReadyForQuery is to be sent later (PAUSE in progress). */
static int run_command(struct client *c, char *q)
{
    /* Trim blanks and trailing semicolons; keywords are matched without regard to case, names
     * (databases, keys, values) keep theirs. */
    size_t n = strlen(q);
    while (n > 0 && (isspace((unsigned char)q[n - 1]) || q[n - 1] == ';'))
        q[--n] = 0;
    while (*q && isspace((unsigned char)*q))
        q++;
    if (!*q) {
        struct pbuf b;
        pbuf_init(&b);
        proto_build_empty_query(&b);
        client_send_pbuf(c, &b);
        return 0;
    }
    struct worker *w = c->w;
    const char *p = q;
    char verb[32], arg[256];
    /* Checked at every command, not only at login: a reload that takes a user out of
     * admin_users or stats_users stops them at their next command (PgBouncer's words). */
    int is_admin_user = config_list_has(w->cfg->admin_users, c->user);
    if (!is_admin_user && !config_list_has(w->cfg->stats_users, c->user)) {
        log_info("C-%llu admin %s: no longer in admin_users or stats_users",
                 (unsigned long long)c->id, c->user);
        client_close(c, SQLSTATE_INVALID_AUTH, "not allowed");
        return 1;
    }
    if (!next_word(&p, verb, sizeof(verb))) {
        error(c, "unknown command");
        return 0;
    }
    if (!is_admin_user && strcasecmp(verb, "SHOW") != 0) {
        error(c, "admin access needed");
        return 0;
    }
    if (!strcasecmp(verb, "SET")) {
        set_key(c, p);
        return 0;
    }
    int has_arg = next_word(&p, arg, sizeof(arg));
    if (!at_end(p)) {
        error(c, "too many arguments");
        return 0;
    }
    if (!strcasecmp(verb, "SHOW")) {
        if (!has_arg)
            error(c, "SHOW: what? (SHOW POOLS, CLIENTS, SERVERS, STATS, NODES, FAILOVERS, …)");
        else
            show(c, arg);
        return 0;
    }
    if (!strcasecmp(verb, "PAUSE")) {
        struct admin *a = w->admin;
        if (a->n_pauses == ADMIN_MAX_PAUSES) {
            error(c, "too many PAUSE commands waiting at once");
            return 0;
        }
        if (has_arg) {
            failover_pause_db(w, arg);
        } else {
            failover_pause(w);
            planned_pause_taken(w); /* a planned switchover's hold does not end this one */
        }
        if (failover_pause_done(w, has_arg ? arg : NULL)) {
            simple_ok(c, "PAUSE");
            return 0;
        }
        /* Answered by admin_check_pause once the transactions in flight are done. */
        struct admin_pause *ap = &a->pauses[a->n_pauses++];
        ap->client = c->id;
        ap->planned = 0;
        snprintf(ap->database, sizeof(ap->database), "%s", has_arg ? arg : "");
        c->pause_waiting = 1;
        c->wait_since = now_ms();
        return 1;
    }
    if (!strcasecmp(verb, "SWITCHOVER")) {
        /* Patroni's before_stop hook (contrib/patroni/pgstay-patroni-hook): node is about to
         * stop. If it is the writer: PAUSE now, answered once the transactions in flight are
         * done, and RESUME by itself on the next writer (failover/planned.c). */
        struct admin *a = w->admin;
        struct node *nd = has_arg ? topology_find(w, arg) : NULL;
        if (!nd) {
            error(c, has_arg ? "SWITCHOVER: no such node in [nodes]"
                             : "SWITCHOVER: which node is about to stop? (its name in [nodes])");
            return 0;
        }
        if (a->n_pauses == ADMIN_MAX_PAUSES) {
            error(c, "too many PAUSE commands waiting at once");
            return 0;
        }
        char why[128];
        snprintf(why, sizeof(why), "SWITCHOVER %s from C-%llu", nd->name,
                 (unsigned long long)c->id);
        if (!planned_begin(w, nd, 0, why) || failover_pause_done(w, NULL)) {
            simple_ok(c, "SWITCHOVER");
            return 0;
        }
        struct admin_pause *ap = &a->pauses[a->n_pauses++];
        ap->client = c->id;
        ap->database[0] = 0;
        ap->planned = 1;
        c->pause_waiting = 1;
        c->wait_since = now_ms();
        return 1;
    }
    if (!strcasecmp(verb, "RESUME")) {
        if (has_arg) {
            if (failover_resume_db(w, arg) < 0)
                error(c, w->fo->paused ? "that database is not paused on its own: pgstay is "
                                         "paused as a whole (RESUME)"
                                       : "that database is not paused");
            else
                simple_ok(c, "RESUME");
            return 0;
        }
        if (!w->fo->paused && !w->fo->n_paused_dbs) {
            error(c, "pgstay is not paused");
            return 0;
        }
        failover_resume(w);
        simple_ok(c, "RESUME");
        return 0;
    }
    if (!strcasecmp(verb, "RECONNECT")) {
        int k = reconnect(w, has_arg ? arg : NULL);
        log_info("RECONNECT %s: %d server connections to close", has_arg ? arg : "(all)", k);
        simple_ok(c, "RECONNECT");
        return 0;
    }
    if (!strcasecmp(verb, "KILL")) {
        if (!has_arg) {
            error(c, "KILL: which database?");
            return 0;
        }
        log_info("KILL %s: closing its clients and servers", arg);
        kill_db(w, arg);
        simple_ok(c, "KILL");
        return 0;
    }
    if (!strcasecmp(verb, "DISABLE") || !strcasecmp(verb, "ENABLE")) {
        int on = !strcasecmp(verb, "DISABLE");
        if (!has_arg) {
            error(c, on ? "DISABLE: which database?" : "ENABLE: which database?");
            return 0;
        }
        set_disabled(w, arg, on);
        log_info("%s %s: new clients %s", on ? "DISABLE" : "ENABLE", arg,
                 on ? "are refused" : "are accepted again");
        simple_ok(c, on ? "DISABLE" : "ENABLE");
        return 0;
    }
    if (has_arg) {
        error(c, "too many arguments");
        return 0;
    }
    if (!strcasecmp(verb, "RELOAD")) {
        if (w->reload(w) < 0)
            error(c, "reload failed: the running configuration is kept (see the log)");
        else
            simple_ok(c, "RELOAD");
        return 0;
    }
    if (!strcasecmp(verb, "SHUTDOWN")) {
        simple_ok(c, "SHUTDOWN");
        w->begin_shutdown(w);
        return 0;
    }
    error(c, "unknown command: SHOW …, PAUSE, RESUME, SWITCHOVER node, RECONNECT [db], KILL db, "
             "DISABLE db, ENABLE db, SET key = value, RELOAD, SHUTDOWN");
    return 0;
}

void admin_process(struct client *c)
{
    struct conn *in = &c->conn;
    while (c->state != CL_CLOSING && !c->pause_waiting) {
        struct msg_hdr h;
        static const struct frame_rules rules = {64 * 1024, proto_fe_type_known};
        if (!frame_ok(c, frame_next(in, &rules, &h), &h, "frontend") || !frame_whole(in, &h))
            return;
        const uint8_t *m = frame_data(in);
        if (h.type == FE_TERMINATE) {
            client_close(c, NULL, "admin client sent Terminate");
            return;
        }
        if (h.type != FE_QUERY) {
            conn_consume(in, 1 + h.len);
            if (h.type == FE_SYNC) {
                error(c, "the admin console speaks the simple query protocol only");
                ready(c);
            }
            continue;
        }
        char q[1024];
        size_t ql = h.len - 4 < sizeof(q) - 1 ? h.len - 4 : sizeof(q) - 1;
        memcpy(q, m + PROTO_HDR_LEN, ql);
        q[ql] = 0;
        conn_consume(in, 1 + h.len);
        log_info("C-%llu admin %s: %s", (unsigned long long)c->id, c->user, q);
        if (run_command(c, q))
            return;
        ready(c);
    }
}

void admin_check_pause(struct worker *w)
{
    /* worker_free runs the loop once more after admin_free: the 1 s tick may fire in it */
    if (!w->admin)
        return;
    int64_t now = now_ms();
    if (now - w->admin->period_start >= w->cfg->stats_period)
        roll_averages(w, now);
    struct admin *a = w->admin;
    for (int i = 0; i < a->n_pauses;) {
        struct admin_pause *ap = &a->pauses[i];
        struct client *c = NULL;
        FOR_EACH_WORKER(w, ww)
        {
            struct list *pos, *tmp;
            list_for_each_safe(pos, tmp, &ww->clients[CL_IDLE])
            {
                struct client *x = container_of(pos, struct client, node);
                if (x->id == ap->client && x->is_admin && x->pause_waiting)
                    c = x;
            }
        }
        /* Its client is gone, or this is its answer: the entry goes first (the answer may run
         * the client's next PAUSE, which adds one). */
        char db[sizeof(ap->database)];
        snprintf(db, sizeof(db), "%s", ap->database);
        int planned = ap->planned;
        const char *database = db[0] ? db : NULL;
        int done = c && failover_pause_done(w, database);
        int late = c && !done && now_ms() - c->wait_since > w->cfg->pause_timeout;
        if (c && !done && !late) {
            i++;
            continue;
        }
        a->pauses[i] = a->pauses[--a->n_pauses];
        if (!c)
            continue;
        if (done) {
            c->pause_waiting = 0;
            simple_ok(c, planned ? "SWITCHOVER" : "PAUSE");
            ready(c);
            admin_process(c);
        } else if (planned) {
            /* The node stops anyway (Patroni does not wait for ever): new transactions stay
             * held for the next writer; those still running will be cut. */
            c->pause_waiting = 0;
            client_send_error(c, "57014",
                              "SWITCHOVER: transactions still in flight after pause_timeout; new "
                              "ones stay held until the next writer");
            ready(c);
            admin_process(c);
        } else {
            c->pause_waiting = 0;
            if (database)
                failover_resume_db(w, database);
            else
                failover_resume(w);
            client_send_error(
                c, "57014",
                "PAUSE timed out waiting for transactions to finish (pause_timeout): resumed");
            ready(c);
            admin_process(c);
        }
    }
}
