/* Admin console: simple-protocol commands answered from pgstay's own state. */
#include "admin/admin.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/buffer.h>

#include "client/client.h"
#include "core/log.h"
#include "core/tls.h"
#include "failover/failover.h"
#include "pool/pool.h"
#include "proto/proto.h"
#include "proto/sqlclass.h"
#include "server/server.h"
#include "topology/topology.h"

#ifndef PGSTAY_VERSION
#define PGSTAY_VERSION "0.1.0"
#endif

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

/* A result set built row by row. */
struct result {
    struct pbuf b;
    int ncols;
    int nrows;
};

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
    char tag[64];
    snprintf(tag, sizeof(tag), "%s %d", verb, r->nrows);
    proto_build_command_complete(&r->b, tag);
    client_send_pbuf(c, &r->b);
}

#define I2S(buf, v) (snprintf(buf, sizeof(buf), "%lld", (long long)(v)), buf)

static void show_pools(struct client *c)
{
    static const char *const cols[] = {"database", "user", "role", "cl_active", "cl_waiting",
                                       "sv_active", "sv_idle", "sv_used", "sv_login", "maxwait_ms",
                                       "pool_mode"};
    struct result r;
    res_begin(&r, 11, cols);
    struct list *pos, *tmp;
    int64_t now = now_ms();
    list_for_each_safe(pos, tmp, &c->w->pools)
    {
        struct pool *p = container_of(pos, struct pool, node);
        int active = 0, idle = 0, used = 0;
        for (int st = SV_IDLE; st <= SV_RESETTING; st++) {
            struct list *sp, *st2;
            list_for_each_safe(sp, st2, &c->w->servers[st])
            {
                struct server *s = container_of(sp, struct server, node);
                if (s->pool != p)
                    continue;
                if (st == SV_IDLE)
                    idle++;
                else if (st == SV_RESETTING)
                    used++;
                else
                    active++;
            }
        }
        int64_t maxwait = 0;
        int clactive = 0;
        struct list *cp, *ct;
        list_for_each_safe(cp, ct, &p->waiting)
        {
            struct client *wc = container_of(cp, struct client, pool_node);
            if (now - wc->wait_since > maxwait)
                maxwait = now - wc->wait_since;
        }
        list_for_each_safe(cp, ct, &c->w->clients[CL_ACTIVE])
        {
            if (container_of(cp, struct client, node)->pool == p)
                clactive++;
        }
        char a[5][24];
        char mw[24];
        const char *vals[11] = {p->database,
                                p->user,
                                p->role == ROLE_WRITER ? "writer" : "reader",
                                I2S(a[0], clactive),
                                I2S(a[1], p->n_waiting),
                                I2S(a[2], active),
                                I2S(a[3], idle),
                                I2S(a[4], used),
                                NULL,
                                I2S(mw, maxwait),
                                c->w->cfg->pool_mode == POOL_SESSION ? "session" : "transaction"};
        char login[24];
        vals[8] = I2S(login, p->n_connecting);
        res_row(&r, vals);
    }
    res_end(c, &r, "SHOW");
}

static const char *client_state_name(int st)
{
    static const char *const n[] = {"login", "waiting", "active", "idle", "closing"};
    return st >= 0 && st < CL_NSTATES ? n[st] : "?";
}

static const char *server_state_name(int st)
{
    static const char *const n[] = {"connecting", "login", "idle", "setup", "active", "resetting", "probe", "closing"};
    return st >= 0 && st < SV_NSTATES ? n[st] : "?";
}

static void show_clients(struct client *c)
{
    static const char *const cols[] = {"id",     "user", "database", "state", "addr",
                                       "server", "held", "pinned",   "tls"};
    struct result r;
    res_begin(&r, 9, cols);
    for (int st = 0; st < CL_CLOSING; st++) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &c->w->clients[st])
        {
            struct client *x = container_of(pos, struct client, node);
            char id[24], sv[24];
            const char *vals[9] = {I2S(id, x->id),
                                   x->user ? x->user : "",
                                   x->database ? x->database : "",
                                   client_state_name(x->state),
                                   client_addr(x),
                                   x->server ? I2S(sv, x->server->id) : NULL,
                                   (x->held || x->pause_held) ? "yes" : "no",
                                   x->pin_reason ? pin_reason_name(x->pin_reason) : "",
                                   conn_is_tls(&x->conn) ? conn_tls_version(&x->conn) : NULL};
            res_row(&r, vals);
        }
    }
    res_end(c, &r, "SHOW");
}

static void show_servers(struct client *c)
{
    static const char *const cols[] = {"id",   "user",        "database", "state",
                                       "node", "backend_pid", "client",   "tls"};
    struct result r;
    res_begin(&r, 8, cols);
    for (int st = 0; st < SV_CLOSING; st++) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &c->w->servers[st])
        {
            struct server *s = container_of(pos, struct server, node);
            char id[24], pid[24], cl[24];
            const char *vals[8] = {I2S(id, s->id),
                                   s->user,
                                   s->database,
                                   server_state_name(s->state),
                                   s->nd ? s->nd->name : "",
                                   I2S(pid, s->be_pid),
                                   s->client ? I2S(cl, s->client->id) : NULL,
                                   conn_is_tls(&s->conn) ? conn_tls_version(&s->conn) : NULL};
            res_row(&r, vals);
        }
    }
    res_end(c, &r, "SHOW");
}

static void show_nodes(struct client *c)
{
    static const char *const cols[] = {"name", "host", "port", "role", "writer", "timeline", "lsn",
                                       "lag_bytes", "latency_us", "servers", "fails", "health",
                                       "system_identifier", "max_timeline", "note"};
    struct result r;
    res_begin(&r, 15, cols);
    struct topology *t = c->w->topo;
    for (int i = 0; i < t->n_nodes; i++) {
        struct node *nd = &t->nodes[i];
        char port[16], tli[16], lsn[32], lag[24], lat[24], sv[16], fails[16], sysid[24], maxtli[16];
        snprintf(lsn, sizeof(lsn), "%X/%X", (unsigned)(nd->lsn >> 32), (unsigned)nd->lsn);
        snprintf(sysid, sizeof(sysid), "%llu", (unsigned long long)nd->sysid);
        const char *vals[15] = {nd->name, nd->host, I2S(port, nd->port), node_role_name(nd->role),
                                nd == t->writer ? "yes" : "no", I2S(tli, nd->timeline), lsn,
                                I2S(lag, nd->lag_bytes), I2S(lat, nd->latency_us),
                                I2S(sv, nd->n_servers), I2S(fails, nd->fails),
                                topology_health_name(t, nd), nd->sysid ? sysid : NULL,
                                I2S(maxtli, t->max_tli), nd->note[0] ? nd->note : NULL};
        res_row(&r, vals);
    }
    res_end(c, &r, "SHOW");
}

static void show_failovers(struct client *c)
{
    static const char *const cols[] = {"id", "old_writer", "new_writer", "reason", "writer_lost",
                                       "hold_started", "new_writer_seen", "first_served", "hold_ended",
                                       "hold_ms", "clients_held", "failed_in_flight", "timed_out"};
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
        const char *vals[13] = {I2S(id, ev->id), ev->old_writer, ev->new_writer, ev->reason,
                                t[0], t[1], ev->new_writer_seen ? t[2] : NULL,
                                ev->first_served ? t[3] : NULL, ev->hold_ended ? t[4] : NULL,
                                ev->hold_ended ? I2S(hold, ev->hold_ended - ev->hold_started) : NULL,
                                I2S(held, ev->clients_held), I2S(failed, ev->failed_in_flight),
                                I2S(to, ev->timed_out)};
        res_row(&r, vals);
    }
    res_end(c, &r, "SHOW");
}

static void show_stats(struct client *c)
{
    static const char *const cols[] = {"clients_accepted", "clients_rejected", "servers_opened",
                                       "queries", "bytes_client_to_server", "bytes_server_to_client"};
    struct result r;
    res_begin(&r, 6, cols);
    struct worker_stats *st = &c->w->stats;
    char a[6][24];
    const char *vals[6] = {I2S(a[0], st->clients_accepted), I2S(a[1], st->clients_rejected),
                           I2S(a[2], st->servers_opened), I2S(a[3], st->queries),
                           I2S(a[4], st->bytes_client_to_server), I2S(a[5], st->bytes_server_to_client)};
    res_row(&r, vals);
    res_end(c, &r, "SHOW");
}

static void show_pins(struct client *c)
{
    static const char *const cols[] = {"reason", "count"};
    struct result r;
    res_begin(&r, 2, cols);
    for (int i = 1; i < PIN_NREASONS; i++) {
        char n[24];
        const char *vals[2] = {pin_reason_name(i), I2S(n, c->w->stats.pins[i])};
        res_row(&r, vals);
    }
    res_end(c, &r, "SHOW");
}

static void show_version(struct client *c)
{
    static const char *const cols[] = {"version"};
    struct result r;
    res_begin(&r, 1, cols);
    const char *vals[1] = {"pgstay " PGSTAY_VERSION};
    res_row(&r, vals);
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

/* Run one command; returns 1 if ReadyForQuery is to be sent later (PAUSE in progress). */
static int run_command(struct client *c, char *q)
{
    /* Normalise: trim, drop trailing semicolons, upper-case. */
    size_t n = strlen(q);
    while (n > 0 && (isspace((unsigned char)q[n - 1]) || q[n - 1] == ';'))
        q[--n] = 0;
    while (*q && isspace((unsigned char)*q))
        q++;
    for (char *p = q; *p; p++)
        *p = (char)toupper((unsigned char)*p);
    if (!*q) {
        struct pbuf b;
        pbuf_init(&b);
        proto_build_empty_query(&b);
        client_send_pbuf(c, &b);
        return 0;
    }
    if (!strncmp(q, "SHOW ", 5)) {
        const char *what = q + 5;
        while (isspace((unsigned char)*what))
            what++;
        if (!strcmp(what, "POOLS"))
            show_pools(c);
        else if (!strcmp(what, "CLIENTS"))
            show_clients(c);
        else if (!strcmp(what, "SERVERS"))
            show_servers(c);
        else if (!strcmp(what, "NODES"))
            show_nodes(c);
        else if (!strcmp(what, "FAILOVERS"))
            show_failovers(c);
        else if (!strcmp(what, "STATS"))
            show_stats(c);
        else if (!strcmp(what, "PINS"))
            show_pins(c);
        else if (!strcmp(what, "VERSION"))
            show_version(c);
        else
            error(c, "unknown SHOW command: try POOLS, CLIENTS, SERVERS, NODES, FAILOVERS, STATS, PINS, VERSION");
        return 0;
    }
    if (!strcmp(q, "PAUSE")) {
        failover_pause(c->w);
        if (failover_pause_done(c->w)) {
            simple_ok(c, "PAUSE");
            return 0;
        }
        c->pause_waiting = 1;
        c->wait_since = now_ms();
        return 1;
    }
    if (!strcmp(q, "RESUME")) {
        if (!c->w->fo->paused) {
            error(c, "pgstay is not paused");
            return 0;
        }
        failover_resume(c->w);
        simple_ok(c, "RESUME");
        return 0;
    }
    if (!strcmp(q, "RELOAD")) {
        if (c->w->reload(c->w) < 0)
            error(c, "reload failed: the running configuration is kept (see the log)");
        else
            simple_ok(c, "RELOAD");
        return 0;
    }
    if (!strcmp(q, "SHUTDOWN")) {
        simple_ok(c, "SHUTDOWN");
        c->w->begin_shutdown(c->w);
        return 0;
    }
    error(c, "unknown command: SHOW …, PAUSE, RESUME, RELOAD, SHUTDOWN");
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
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->clients[CL_IDLE])
    {
        struct client *c = container_of(pos, struct client, node);
        if (!c->is_admin || !c->pause_waiting)
            continue;
        if (failover_pause_done(w)) {
            c->pause_waiting = 0;
            simple_ok(c, "PAUSE");
            ready(c);
            admin_process(c);
        } else if (now_ms() - c->wait_since > w->cfg->pause_timeout) {
            c->pause_waiting = 0;
            failover_resume(w);
            client_send_error(c, "57014", "PAUSE timed out waiting for transactions to finish (pause_timeout): resumed");
            ready(c);
            admin_process(c);
        }
    }
}
