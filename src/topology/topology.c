/* Topology: one probe connection per node, every health_check_period; who is writer, who reads. */
#include "topology/topology.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "failover/failover.h"
#include "pool/pool.h"
#include "server/server.h"

/* Role, timeline and WAL position in one round trip. pg_walfile_name() carries the insert
 * timeline on a primary; a standby's comes from its control file. */
static const char PROBE_SQL[] =
    "SELECT pg_is_in_recovery(), "
    "CASE WHEN pg_is_in_recovery() THEN (SELECT timeline_id FROM pg_control_checkpoint()) "
    "ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, "
    "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END";

const char *node_role_name(int role)
{
    switch (role) {
    case NODE_PRIMARY:
        return "primary";
    case NODE_STANDBY:
        return "standby";
    case NODE_DOWN:
        return "down";
    case NODE_FENCED:
        return "fenced";
    default:
        return "unknown";
    }
}

uint64_t lsn_parse(const char *s)
{
    unsigned int hi = 0, lo = 0;
    if (!s || sscanf(s, "%X/%X", &hi, &lo) != 2)
        return 0;
    return ((uint64_t)hi << 32) | lo;
}

struct node *topology_find(struct worker *w, const char *name)
{
    for (int i = 0; i < w->topo->n_nodes; i++)
        if (!strcmp(w->topo->nodes[i].name, name))
            return &w->topo->nodes[i];
    return NULL;
}

/* Decide the writer from the latest probe results (failover contract 4). */
static void evaluate(struct topology *t)
{
    struct worker *w = t->w;
    uint32_t max_tli = 0;
    int n_primary = 0;
    for (int i = 0; i < t->n_nodes; i++) {
        struct node *nd = &t->nodes[i];
        if (nd->role == NODE_PRIMARY || nd->role == NODE_FENCED) {
            if (nd->timeline > max_tli)
                max_tli = nd->timeline;
        }
    }
    struct node *writer = NULL;
    for (int i = 0; i < t->n_nodes; i++) {
        struct node *nd = &t->nodes[i];
        if (nd->role != NODE_PRIMARY && nd->role != NODE_FENCED)
            continue;
        if (nd->timeline < max_tli) {
            if (nd->role != NODE_FENCED) {
                log_error("node %s: FENCED: claims to be primary on timeline %u, but timeline %u "
                          "exists: no traffic goes to it",
                          nd->name, nd->timeline, max_tli);
                nd->role = NODE_FENCED;
                nd->generation++;
                pool_drop_node(w, nd);
            }
            continue;
        }
        nd->role = NODE_PRIMARY;
        n_primary++;
        writer = nd;
    }
    if (n_primary > 1) {
        if (t->writer || !t->split_logged)
            log_error("%d nodes claim to be primary on timeline %u: holding writes, never guessing",
                      n_primary, max_tli);
        t->split_logged = 1;
        writer = NULL;
    } else {
        t->split_logged = 0;
    }
    /* Replica lag against the writer. */
    for (int i = 0; i < t->n_nodes; i++) {
        struct node *nd = &t->nodes[i];
        if (nd->role == NODE_STANDBY && writer)
            nd->lag_bytes = writer->lsn > nd->lsn ? writer->lsn - nd->lsn : 0;
    }
    if (writer == t->writer)
        return;
    struct node *old = t->writer;
    if (old) {
        t->writer = NULL;
        failover_writer_lost(w, old, writer ? "another node became the writer" : "writer lost");
    }
    if (writer) {
        t->writer = writer;
        writer->generation++;
        failover_writer_found(w, writer);
    }
}

static void mark_down(struct topology *t, struct node *nd, const char *why)
{
    if (nd->role != NODE_DOWN)
        log_info("node %s: down: %s", nd->name, why);
    nd->role = NODE_DOWN;
    nd->fails++;
    nd->probe_sent = 0;
    if (nd == t->writer) {
        t->writer = NULL;
        failover_writer_lost(t->w, nd, why);
    }
    /* Reader connections to it are as dead as writer ones. */
    struct list *pos, *tmp;
    for (int st = SV_IDLE; st <= SV_RESETTING; st++) {
        list_for_each_safe(pos, tmp, &t->w->servers[st])
        {
            struct server *s = container_of(pos, struct server, node);
            if (s->nd == nd && s->pool)
                server_close(s, "its node is down");
        }
    }
    evaluate(t);
}

static void probe_on_row(struct server *s, int ncols, const char **vals)
{
    struct node *nd = s->probe_arg;
    if (ncols < 3 || !vals[0])
        return;
    nd->in_recovery = vals[0][0] == 't';
    nd->timeline = vals[1] ? (uint32_t)strtoul(vals[1], NULL, 10) : 0;
    nd->lsn = lsn_parse(vals[2]);
    nd->got_row = 1;
}

static void send_probe(struct topology *t, struct node *nd)
{
    if (!nd->probe || nd->probe->state != SV_PROBE || nd->probe_sent)
        return;
    nd->got_row = 0;
    nd->probe_sent = now_ms();
    nd->probe_sent_us = now_us();
    server_run_internal(nd->probe, PROBE_SQL);
}

static void probe_on_ready(struct server *s)
{
    struct node *nd = s->probe_arg;
    struct topology *t = s->w->topo;
    if (!nd->probe_sent) {
        /* Just logged in: probe at once. */
        send_probe(t, nd);
        return;
    }
    nd->probe_sent = 0;
    nd->latency_us = now_us() - nd->probe_sent_us;
    if (!nd->got_row) {
        mark_down(t, nd, "probe query failed");
        return;
    }
    nd->last_ok = now_ms();
    nd->fails = 0;
    int role = nd->in_recovery ? NODE_STANDBY : NODE_PRIMARY;
    if (nd->role == NODE_FENCED && role == NODE_PRIMARY) {
        /* stays fenced unless evaluate finds it on the newest timeline */
    } else if (nd->role != role) {
        log_info("node %s: %s (timeline %u)", nd->name, node_role_name(role), nd->timeline);
        if (nd->role != NODE_UNKNOWN && nd->role != NODE_DOWN)
            nd->generation++;
        nd->role = role;
    }
    if (nd == t->writer && role != NODE_PRIMARY) {
        t->writer = NULL;
        failover_writer_lost(t->w, nd, "the writer is in recovery");
    }
    evaluate(t);
    if (role == NODE_STANDBY && t->w->cfg->readonly_port > 0)
        pool_kick_all(t->w);
}

static void probe_on_fail(struct server *s, const char *why)
{
    struct node *nd = s->probe_arg;
    if (nd->probe == s)
        nd->probe = NULL;
    mark_down(s->w->topo, nd, why);
}

static void open_probe(struct topology *t, struct node *nd)
{
    struct worker *w = t->w;
    nd->probe_sent = 0;
    struct server *s = server_open(w, NULL, nd, w->cfg->health_check_user, w->cfg->health_check_dbname);
    if (!s)
        return;
    s->on_row = probe_on_row;
    s->on_ready = probe_on_ready;
    s->on_fail = probe_on_fail;
    s->probe_arg = nd;
    nd->probe = s;
}

static void schedule(struct topology *t);

static void probe_all(struct topology *t)
{
    int64_t now = now_ms();
    for (int i = 0; i < t->n_nodes; i++) {
        struct node *nd = &t->nodes[i];
        if (!nd->probe) {
            open_probe(t, nd);
            continue;
        }
        if (nd->probe_sent && now - nd->probe_sent > t->w->cfg->health_check_timeout) {
            struct server *s = nd->probe;
            nd->probe = NULL;
            s->on_fail = NULL;
            server_close(s, "probe timeout (health_check_timeout)");
            mark_down(t, nd, "probe timeout (health_check_timeout)");
            continue;
        }
        send_probe(t, nd);
    }
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct topology *t = arg;
    probe_all(t);
    schedule(t);
}

static void schedule(struct topology *t)
{
    struct config *cfg = t->w->cfg;
    int ms = (t->writer && !t->fast) ? cfg->health_check_period : cfg->health_check_fast_period;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(t->timer, &tv);
}

void topology_probe_now(struct worker *w, const char *why)
{
    struct topology *t = w->topo;
    log_debug("probing every node now: %s", why);
    probe_all(t);
}

void topology_set_fast(struct worker *w, int fast)
{
    struct topology *t = w->topo;
    if (t->fast == fast)
        return;
    t->fast = fast;
    evtimer_del(t->timer);
    schedule(t);
}

struct node *topology_pick_reader(struct worker *w)
{
    struct topology *t = w->topo;
    struct node *best = NULL;
    for (int i = 0; i < t->n_nodes; i++) {
        struct node *nd = &t->nodes[i];
        if (nd->role != NODE_STANDBY || !t->writer)
            continue;
        if ((long)nd->lag_bytes > w->cfg->max_replica_lag)
            continue;
        if (!best || nd->n_servers < best->n_servers)
            best = nd;
    }
    return best;
}

int topology_init(struct worker *w)
{
    struct topology *t = calloc(1, sizeof(*t));
    if (!t)
        return -1;
    t->w = w;
    w->topo = t;
    t->n_nodes = w->cfg->n_nodes;
    for (int i = 0; i < t->n_nodes; i++) {
        struct node *nd = &t->nodes[i];
        snprintf(nd->name, sizeof(nd->name), "%s", w->cfg->nodes[i].name);
        snprintf(nd->host, sizeof(nd->host), "%s", w->cfg->nodes[i].host);
        nd->port = w->cfg->nodes[i].port;
    }
    t->timer = evtimer_new(w->base, timer_cb, t);
    t->fast = 1;
    probe_all(t);
    schedule(t);
    return 0;
}

void topology_free(struct worker *w)
{
    struct topology *t = w->topo;
    if (!t)
        return;
    for (int i = 0; i < t->n_nodes; i++) {
        if (t->nodes[i].probe) {
            t->nodes[i].probe->on_fail = NULL;
            t->nodes[i].probe = NULL;
        }
    }
    event_free(t->timer);
    free(t);
    w->topo = NULL;
}
