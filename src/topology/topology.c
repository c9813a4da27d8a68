/* Topology: one probe connection per node; who is writer, who reads; what pgstay remembers.
 * The probe connections themselves belong to the session layer above (they are server
 * connections without a pool): topology drives them through topology_hooks' probe_* calls. */
#include "topology/topology.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "topology/patroni.h"

/* Role, timeline, WAL position and cluster identity in one round trip. pg_walfile_name() carries
 * the insert timeline on a primary; a standby's is the newer of its control file's and the one
 * its WAL receiver streams (the control file's only moves at a restartpoint). */
static const char PROBE_SQL[] =
    "SELECT pg_is_in_recovery(), "
    "CASE WHEN pg_is_in_recovery() THEN GREATEST((SELECT timeline_id FROM pg_control_checkpoint()), "
    "(SELECT received_tli FROM pg_stat_wal_receiver)) "
    "ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, "
    "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, "
    "(SELECT system_identifier FROM pg_control_system())";

/* While there is no writer, a standby is probed again this soon after it answers, so that a
 * promotion is seen within about this long. */
#define HOLD_REPROBE_US 1000

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
    case NODE_FOREIGN:
        return "foreign";
    case NODE_REMOVED:
        return "removed";
    default:
        return "unknown";
    }
}

const char *topology_health_name(struct topology *t, struct node *nd)
{
    if (nd->role == NODE_REMOVED)
        return "removed";
    if (nd->role == NODE_DOWN)
        return "down";
    if ((nd == t->writer && t->suspect) || nd->suspect)
        return "suspect";
    if (!nd->claim)
        return "unknown";
    return "up";
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
        if (w->topo->nodes[i].role != NODE_REMOVED && node_listed(&w->topo->nodes[i]) &&
            !strcmp(w->topo->nodes[i].name, name))
            return &w->topo->nodes[i];
    return NULL;
}

static void set_note(struct node *nd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_note(struct node *nd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(nd->note, sizeof(nd->note), fmt, ap);
    va_end(ap);
}

/* Reconnect or probe nd again once the current callbacks return (or after us microseconds). */
static void kick_node(struct node *nd, int us)
{
    if (us <= 0) {
        event_active(nd->kick, EV_TIMEOUT, 0);
        return;
    }
    struct timeval tv = {0, us};
    evtimer_add(nd->kick, &tv);
}

static void writer_suspect(struct topology *t, const char *why)
{
    if (t->suspect || !t->writer)
        return;
    t->suspect = 1;
    t->suspect_since = now_ms();
    log_warn("writer %s is suspect (%s): new requests are held, nothing is closed; lost after %d "
             "failed probes",
             t->writer->name, why, t->w->cfg->health_check_fall);
    topology_set_fast(t->w, 1);
}

static void writer_clear(struct topology *t)
{
    if (!t->suspect)
        return;
    log_warn("writer %s answered again %lld ms after it became suspect: resuming, nothing closed",
             t->writer->name, (long long)(now_ms() - t->suspect_since));
    t->suspect = 0;
    t->corroborated = 0;
    topology_set_fast(t->w, 0);
    t->hooks->kick_all(t->w);
}

/* The writer is no longer the writer: held requests wait for the next one. */
static void lose_writer(struct topology *t, const char *why)
{
    struct node *old = t->writer;
    /* failover_writer_lost reads suspect_since for when the hold started. */
    t->hooks->writer_lost(t->w, old, why);
    t->writer = NULL;
    t->suspect = 0;
    t->corroborated = 0;
}

static void set_role(struct topology *t, struct node *nd, int role)
{
    if (nd->role == role)
        return;
    int old = nd->role;
    switch (role) {
    case NODE_FENCED:
        log_error("node %s: FENCED: claims to be primary on timeline %u, but timeline %u exists: no "
                  "traffic goes to it until it follows timeline %u as a standby",
                  nd->name, nd->timeline, t->max_tli, t->max_tli);
        break;
    case NODE_FOREIGN:
        log_error("node %s: system identifier %" PRIu64 " is not the cluster's (%" PRIu64
                  "): never used",
                  nd->name, nd->sysid, t->sysid);
        break;
    default:
        if (old == NODE_FENCED)
            log_warn("node %s: rejoined as a standby of timeline %u: no longer fenced", nd->name,
                     nd->timeline);
        else
            log_info("node %s: %s (timeline %u)", nd->name, node_role_name(role), nd->timeline);
    }
    if (old != NODE_UNKNOWN && old != NODE_DOWN)
        nd->generation++;
    nd->role = role;
    if (role == NODE_FENCED || role == NODE_FOREIGN)
        t->hooks->node_dropped(t->w, nd, "its node is fenced");
    if (role == NODE_PRIMARY || role == NODE_STANDBY)
        nd->note[0] = 0;
}

/* The cluster's system identifier, adopted once for good: the one every answering node shares,
 * or a strict majority of them; several with no majority: hold. */
static void adopt_sysid(struct topology *t)
{
    if (t->sysid)
        return;
    uint64_t ids[CONFIG_MAX_NODES];
    int counts[CONFIG_MAX_NODES], n = 0, total = 0;
    for (int i = 0; i < t->n_nodes; i++) {
        struct node *nd = &t->nodes[i];
        if (nd->role == NODE_DOWN || !nd->claim || !nd->sysid)
            continue;
        total++;
        int j = 0;
        while (j < n && ids[j] != nd->sysid)
            j++;
        if (j == n) {
            ids[n] = nd->sysid;
            counts[n++] = 0;
        }
        counts[j]++;
    }
    if (n == 0)
        return;
    int best = 0;
    for (int j = 1; j < n; j++)
        if (counts[j] > counts[best])
            best = j;
    if (n > 1 && counts[best] * 2 <= total) {
        if (!t->sysid_logged)
            log_error("the nodes belong to %d clusters (system identifiers) and none has a majority: "
                      "no writer is chosen until one does",
                      n);
        t->sysid_logged = 1;
        return;
    }
    t->sysid = ids[best];
    log_info("cluster system identifier %" PRIu64 " (%d of %d answering nodes)", t->sysid,
             counts[best], total);
}

/* topology_source = patroni: the leader Patroni named, once its probes say it is a primary of
 * the cluster (not fenced, not newly suspect); NULL with the reason otherwise. While Patroni does
 * not answer, the writer in use stays as long as it is that leader and answers, and no other node
 * is taken: holding beats guessing. */
static struct node *patroni_writer(struct topology *t, char *why, size_t cap)
{
    struct node *ld = t->pat_leader;
    if (!t->pat_answered) {
        snprintf(why, cap, "Patroni has not answered yet");
        return NULL;
    }
    if (!ld) {
        snprintf(why, cap, "Patroni names no running leader");
        return NULL;
    }
    if (!t->pat_fresh && ld != t->writer) {
        snprintf(why, cap, "Patroni does not answer: no new writer is chosen without it");
        return NULL;
    }
    if (ld->role == NODE_PRIMARY && !(ld->suspect && ld != t->writer))
        return ld;
    const char *what = ld->role == NODE_STANDBY ? "in recovery"
                       : ld->role == NODE_DOWN  ? "down"
                       : ld->suspect            ? "suspect"
                                                : node_role_name(ld->role);
    snprintf(why, cap, "Patroni names %s leader but it is %s", ld->name, what);
    return NULL;
}

void topology_role_source(struct topology *t, struct node *nd, char *out, size_t cap)
{
    static const char *const names[] = {"unknown", "leader", "replica", "absent"};
    if (!t->patroni) {
        snprintf(out, cap, "probe");
        return;
    }
    snprintf(out, cap, "patroni %s%s%s%s", names[nd->patroni_role], nd->patroni_state[0] ? " " : "",
             nd->patroni_state, t->pat_answered && !t->pat_fresh ? " (stale)" : "");
}

/* Decide the writer from the latest probe results (failover contract 4). */
static void evaluate(struct topology *t)
{
    struct worker *w = t->w;
    if (!t->started) {
        for (int i = 0; i < t->n_nodes; i++)
            if (!t->nodes[i].answered)
                return;
        t->started = 1;
        log_info("every node answered or failed its first probe (%lld ms): choosing the writer",
                 (long long)(now_ms() - t->start_ms));
    }
    adopt_sysid(t);
    if (!t->sysid)
        return;
    for (int i = 0; i < t->n_nodes; i++) {
        struct node *nd = &t->nodes[i];
        if (nd->role != NODE_DOWN && nd->claim && nd->sysid == t->sysid && nd->timeline > t->max_tli) {
            if (t->max_tli)
                log_info("highest timeline seen is now %u (node %s)", nd->timeline, nd->name);
            t->max_tli = nd->timeline;
        }
    }
    struct node *writer = NULL;
    int n_primary = 0, n_fenced = 0;
    for (int i = 0; i < t->n_nodes; i++) {
        struct node *nd = &t->nodes[i];
        if (nd->role == NODE_DOWN || !nd->claim)
            continue;
        int role;
        if (nd->sysid != t->sysid)
            role = NODE_FOREIGN;
        else if (nd->claim == NODE_PRIMARY)
            role = nd->timeline < t->max_tli ? NODE_FENCED : NODE_PRIMARY;
        else
            role = nd->role == NODE_FENCED && nd->timeline < t->max_tli ? NODE_FENCED : NODE_STANDBY;
        set_role(t, nd, role);
        if (role == NODE_FOREIGN)
            set_note(nd, "system identifier %" PRIu64 " is not the cluster's (%" PRIu64 "): never used",
                     nd->sysid, t->sysid);
        if (role == NODE_FENCED) {
            n_fenced++;
            set_note(nd, "%s on timeline %u, below the highest seen (%u): fenced until it rejoins as a "
                     "standby",
                     nd->claim == NODE_PRIMARY ? "primary" : "standby", nd->timeline, t->max_tli);
        }
        if (role != NODE_PRIMARY)
            continue;
        n_primary++;
        writer = nd;
    }
    /* A node that just failed a probe is not taken as a new writer until it answers. */
    if (writer && n_primary == 1 && writer->suspect && writer != t->writer)
        writer = NULL;
    char pat_reason[sizeof(t->hold_reason)] = "";
    if (t->patroni) {
        writer = patroni_writer(t, pat_reason, sizeof(pat_reason));
        n_primary = writer ? 1 : 0; /* the leader lock fences the others, not the timeline alone */
    }
    if (n_primary > 1) {
        if (t->writer || !t->split_logged)
            log_error("%d nodes claim to be primary on timeline %u: holding writes, never guessing",
                      n_primary, t->max_tli);
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
    /* Why there is no writer, said once per change, and beside the fenced nodes. */
    char reason[sizeof(t->hold_reason)] = "";
    if (!writer && pat_reason[0])
        snprintf(reason, sizeof(reason), "%s", pat_reason);
    else if (!writer && n_primary > 1)
        snprintf(reason, sizeof(reason), "%d primaries on timeline %u", n_primary, t->max_tli);
    else if (!writer && n_fenced > 0)
        snprintf(reason, sizeof(reason), "the only primary left is fenced (timeline below %u)",
                 t->max_tli);
    else if (!writer)
        snprintf(reason, sizeof(reason), "no node of the cluster is a primary on timeline %u",
                 t->max_tli);
    if (strcmp(reason, t->hold_reason) != 0) {
        if (reason[0])
            log_warn("no writer: %s: holding writes", reason);
        snprintf(t->hold_reason, sizeof(t->hold_reason), "%s", reason);
    }
    if (!writer && n_fenced > 0) {
        for (int i = 0; i < t->n_nodes; i++) {
            struct node *nd = &t->nodes[i];
            if (nd->role == NODE_FENCED && nd->claim == NODE_PRIMARY) {
                size_t l = strlen(nd->note);
                snprintf(nd->note + l, sizeof(nd->note) - l, "; it is the only primary left: holding");
            }
        }
    }
    if (writer == t->writer)
        return;
    struct node *old = t->writer;
    if (old) {
        const char *why = writer                        ? "another node became the writer"
                          : pat_reason[0]               ? pat_reason
                          : old->role == NODE_STANDBY  ? "the writer is in recovery"
                          : old->role == NODE_FENCED   ? "a newer timeline exists"
                          : n_primary > 1              ? "two primaries on one timeline"
                                                       : "writer lost";
        lose_writer(t, why);
    }
    if (writer) {
        t->writer = writer;
        writer->generation++;
        t->hooks->writer_found(w, writer);
    }
}

/* nd failed health_check_fall probes in a row (or the writer's failure was corroborated). */
static void mark_down(struct topology *t, struct node *nd, const char *why)
{
    if (nd->role != NODE_DOWN)
        log_info("node %s: down: %s", nd->name, why);
    set_note(nd, "%s", why);
    nd->role = NODE_DOWN;
    nd->claim = 0;
    nd->suspect = 0;
    nd->missed = 0;
    nd->oks = 0;
    nd->probe_sent = 0;
    if (nd->probe) {
        struct server *p = nd->probe;
        nd->probe = NULL;
        nd->probe_up = 0;
        t->hooks->probe_close(p, why);
    }
    if (nd == t->writer)
        lose_writer(t, why);
    /* Reader connections to it are as dead as writer ones. */
    t->hooks->node_dropped(t->w, nd, "its node is down");
    evaluate(t);
}

/* One failed probe of nd (refused, login failed, not answered in time, query failed). */
static void probe_failed(struct topology *t, struct node *nd, const char *why, int timed_out)
{
    struct config *cfg = t->w->cfg;
    nd->answered = 1;
    nd->oks = 0;
    nd->fails++;
    if (nd->role == NODE_DOWN) {
        evaluate(t); /* the start-up rule may be met now */
        return;
    }
    if (nd->fails >= cfg->health_check_fall || nd->role == NODE_UNKNOWN) {
        mark_down(t, nd, why);
        return;
    }
    if (nd == t->writer && t->corroborated) {
        char b[200];
        snprintf(b, sizeof(b), "%s, after a server connection to it failed", why);
        mark_down(t, nd, b);
        return;
    }
    nd->suspect = 1;
    set_note(nd, "%s (%d of %d failed probes)", why, nd->fails, cfg->health_check_fall);
    log_info("node %s: suspect: %s (%d of %d failed probes before it is down)", nd->name, why,
             nd->fails, cfg->health_check_fall);
    if (nd == t->writer)
        writer_suspect(t, why);
    if (!timed_out)
        kick_node(nd, 0);
    evaluate(t);
}

static void probe_on_row(void *arg, int ncols, const char **vals)
{
    struct node *nd = arg;
    if (ncols < 4 || !vals[0])
        return;
    nd->in_recovery = vals[0][0] == 't';
    nd->timeline = vals[1] ? (uint32_t)strtoul(vals[1], NULL, 10) : 0;
    nd->lsn = lsn_parse(vals[2]);
    nd->sysid = vals[3] ? strtoull(vals[3], NULL, 10) : 0;
    nd->got_row = 1;
}

static void send_probe(struct topology *t, struct node *nd)
{
    if (!nd->probe || !t->hooks->probe_idle(nd->probe) || nd->probe_sent)
        return;
    nd->got_row = 0;
    nd->missed = 0;
    nd->probe_again = 0;
    nd->probe_sent = now_ms();
    nd->probe_sent_us = now_us();
    t->hooks->probe_query(nd->probe, PROBE_SQL);
}

/* A probe answered: the node is up (after health_check_rise answers, if it was down). */
static void node_answered(struct topology *t, struct node *nd)
{
    struct config *cfg = t->w->cfg;
    int64_t prev_sent_us = nd->last_ok_sent_us;
    nd->answered = 1;
    nd->fails = 0;
    nd->missed = 0;
    nd->lost_unanswered = 0;
    nd->suspect = 0;
    nd->last_ok = now_ms();
    nd->last_ok_sent_us = nd->probe_sent_us;
    if (nd->oks < 1000000)
        nd->oks++;
    if (nd->role == NODE_DOWN && nd->oks < cfg->health_check_rise) {
        set_note(nd, "answering again: %d of %d probes before it is used", nd->oks,
                 cfg->health_check_rise);
        return;
    }
    int claim = nd->in_recovery ? NODE_STANDBY : NODE_PRIMARY;
    if (nd->claim && nd->claim != claim && (nd->role == NODE_PRIMARY || nd->role == NODE_STANDBY)) {
        /* How fresh the news is: the change happened between the sending of these two probes
         * (make demo's promotion → first acknowledged insert is read against it). */
        log_info("node %s: %s (timeline %u; the probe that says so was sent %.1f ms ago, the one "
                 "before %.1f ms earlier)",
                 nd->name, node_role_name(claim), nd->timeline, (double)nd->latency_us / 1000.0,
                 (double)(nd->probe_sent_us - prev_sent_us) / 1000.0);
        nd->generation++;
        nd->role = claim;
    }
    if (nd->role == NODE_DOWN)
        nd->role = NODE_UNKNOWN; /* evaluate names it */
    nd->claim = claim;
    evaluate(t);
    if (nd == t->writer)
        writer_clear(t);
    if (nd->probe_again)
        kick_node(nd, 0); /* the answer was to a probe sent before what asked for a new one */
    else if (!t->writer && t->started && nd->role == NODE_STANDBY)
        kick_node(nd, HOLD_REPROBE_US); /* a promotion is seen within a millisecond */
    if (nd->role == NODE_STANDBY && t->w->cfg->readonly_port > 0)
        t->hooks->kick_all(t->w);
}

static void on_ready(struct node *nd);

/* What a probe's answer (or end) changes, every worker reads while it runs (the writer, a
 * node's role and generation): it is changed with the world stopped (core/world.h). */
static void probe_on_ready(void *arg)
{
    struct node *nd = arg;
    world_stop(nd->topo->w);
    on_ready(nd);
    world_start(nd->topo->w);
}

static void on_ready(struct node *nd)
{
    struct topology *t = nd->topo;
    if (!nd->probe_sent) {
        /* Just logged in: probe at once. */
        nd->probe_up = 1;
        send_probe(t, nd);
        return;
    }
    nd->probe_sent = 0;
    nd->latency_us = now_us() - nd->probe_sent_us;
    if (!nd->got_row) {
        probe_failed(t, nd, "probe query failed", 0);
        return;
    }
    node_answered(t, nd);
}

static void on_fail(struct server *p, struct node *nd, const char *why);

static void probe_on_fail(struct server *p, void *arg, const char *why)
{
    struct node *nd = arg;
    world_stop(nd->topo->w);
    on_fail(p, nd, why);
    world_start(nd->topo->w);
}

static void on_fail(struct server *p, struct node *nd, const char *why)
{
    struct topology *t = nd->topo;
    if (nd->probe != p)
        return;
    /* Lost twice without an answer in between: that is a failed probe, not bad luck. */
    int established = nd->probe_up && !nd->lost_unanswered;
    nd->probe = NULL;
    nd->probe_up = 0;
    nd->probe_sent = 0;
    if (established && nd->role != NODE_DOWN) {
        nd->lost_unanswered = 1;
        /* A probe connection is not the node: reconnect and probe again before concluding. */
        log_info("node %s: probe connection lost (%s): reconnecting to probe again", nd->name, why);
        if (nd == t->writer)
            writer_suspect(t, "its probe connection was lost");
        kick_node(nd, 0);
        return;
    }
    probe_failed(t, nd, why, 0);
}

static const struct probe_callbacks probe_callbacks = {
    .on_row = probe_on_row,
    .on_ready = probe_on_ready,
    .on_fail = probe_on_fail,
};

static void open_probe(struct topology *t, struct node *nd)
{
    struct worker *w = t->w;
    nd->probe_sent = 0;
    nd->probe_up = 0;
    nd->probe = t->hooks->probe_open(w, nd, w->cfg->health_check_user, w->cfg->health_check_dbname,
                                     &probe_callbacks, nd);
}

static void schedule(struct topology *t);

static void probe_all(struct topology *t)
{
    int64_t now = now_ms();
    int timeout = t->w->cfg->health_check_timeout;
    for (int i = 0; i < t->n_nodes; i++) {
        struct node *nd = &t->nodes[i];
        if (nd->role == NODE_REMOVED || !node_listed(nd))
            continue; /* draining or a free slot: nothing to probe */
        if (!nd->probe) {
            open_probe(t, nd);
            continue;
        }
        if (nd->probe_sent) {
            /* Each health_check_timeout without an answer is one failed probe; the probe stays
             * in flight, so a writer that was only slow answers on it and is up again. */
            int missed = (int)((now - nd->probe_sent) / timeout);
            if (missed > nd->missed) {
                nd->missed = missed;
                probe_failed(t, nd, "probe not answered within health_check_timeout", 1);
            }
            continue;
        }
        send_probe(t, nd);
    }
    if (!t->started && now - t->start_ms > timeout) {
        for (int i = 0; i < t->n_nodes; i++) {
            struct node *nd = &t->nodes[i];
            if (!nd->answered) {
                log_info("node %s: no answer to its first probe within health_check_timeout", nd->name);
                nd->answered = 1;
            }
        }
        evaluate(t);
    }
}

static void drain_removed(struct topology *t);

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct topology *t = arg;
    world_stop(t->w);
    drain_removed(t);
    probe_all(t);
    patroni_poll(t);
    t->hooks->backoff_due(t->w);
    t->hooks->open_ahead(t->w);
    schedule(t);
    world_start(t->w);
}

static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct node *nd = arg;
    struct topology *t = nd->topo;
    if (nd->role == NODE_REMOVED || !node_listed(nd))
        return;
    world_stop(t->w);
    if (!nd->probe)
        open_probe(t, nd);
    else
        send_probe(t, nd);
    world_start(t->w);
}

static void schedule(struct topology *t)
{
    struct config *cfg = t->w->cfg;
    int ms = (t->writer && !t->fast) ? cfg->health_check_period : cfg->health_check_fast_period;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(t->timer, &tv);
}

static void probe_now(struct worker *w, enum writer_evidence ev, const char *why);

/* Called by any worker (a server connection's evidence): the world is stopped around it. */
void topology_probe_now(struct worker *w, enum writer_evidence ev, const char *why)
{
    world_stop(w);
    probe_now(w, ev, why);
    world_start(w);
}

static void probe_now(struct worker *w, enum writer_evidence ev, const char *why)
{
    struct topology *t = w->topo;
    struct node *wr = t->writer;
    log_debug("probing every node now: %s", why);
    if (wr && ev == EVIDENCE_TERMINATED)
        wr->probe_again = 1; /* the 57P01 verdict waits for a probe sent after the termination */
    if (wr && ev == EVIDENCE_FAILURE) {
        if (t->suspect && wr->fails > 0) {
            char b[200];
            snprintf(b, sizeof(b), "%s, while suspect", why);
            mark_down(t, wr, b);
        } else {
            t->corroborated = 1;
            writer_suspect(t, why);
        }
    }
    probe_all(t);
}

void topology_node_signal(struct worker *w, struct node *nd, const char *why)
{
    if (nd && nd == w->topo->writer)
        topology_probe_now(w, EVIDENCE_FAILURE, why);
}

void topology_patroni_answer(struct topology *t, struct node *leader, int fresh, const char *why)
{
    if (fresh && (leader != t->pat_leader || !t->pat_answered)) {
        log_info("Patroni: leader is %s%s%s", leader ? leader->name : "none",
                 t->pat_answered ? ", was " : "",
                 t->pat_answered ? (t->pat_leader ? t->pat_leader->name : "none") : "");
        t->pat_leader = leader;
        if (leader && leader->probe)
            leader->probe_again = 1; /* its role is asked again now, not at the next period */
        if (leader)
            kick_node(leader, 0);
    }
    /* Said once per change: answering, not answering (pat_fresh 1 or 0 after the first round). */
    if (!fresh && (t->pat_fresh || !t->pat_rounds))
        log_warn("Patroni does not answer (%s): %s", why ? why : "?",
                 t->writer ? "keeping the writer while it answers its probes, no other is chosen"
                           : "holding: no writer is chosen without it");
    else if (fresh && !t->pat_fresh && t->pat_rounds)
        log_info("Patroni answers again");
    t->pat_rounds++;
    t->pat_fresh = fresh;
    if (fresh)
        t->pat_answered = 1;
    evaluate(t);
}

void topology_set_fast(struct worker *w, int fast)
{
    struct topology *t = w->topo;
    if (t->fast == fast)
        return;
    world_stop(w);
    t->fast = fast;
    event_del_noblock(t->timer);
    schedule(t);
    world_start(w);
}

struct node *topology_pick_reader(struct worker *w)
{
    struct topology *t = w->topo;
    struct node *best = NULL;
    for (int i = 0; i < t->n_nodes; i++) {
        struct node *nd = &t->nodes[i];
        if (nd->role != NODE_STANDBY || !t->writer || nd->suspect)
            continue;
        if ((long)nd->lag_bytes > w->cfg->max_replica_lag)
            continue;
        if (!best || atomic_load_explicit(&nd->n_servers, memory_order_relaxed) <
                         atomic_load_explicit(&best->n_servers, memory_order_relaxed))
            best = nd;
    }
    return best;
}

/* ---- [nodes] changed by a reload ---- */

static const struct node_conf *conf_of(const struct node_conf *nodes, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(nodes[i].name, name))
            return &nodes[i];
    return NULL;
}

/* Is nd, a node in use, still in nodes with the same address? */
static int kept(const struct node *nd, const struct node_conf *nodes, int n)
{
    const struct node_conf *nc = conf_of(nodes, n, nd->name);
    return nc && !strcmp(nc->host, nd->host) && nc->port == nd->port;
}

int topology_nodes_check(struct worker *w, const struct node_conf *nodes, int n, char *why,
                         size_t cap)
{
    struct node *wr = w->topo->writer;
    if (!wr || kept(wr, nodes, n))
        return 0;
    /* Taking the writer away would hold every write until another node is promoted, which a
     * reload cannot do: the operator switches over first (the writer changes, then it goes). */
    snprintf(why, cap,
             "[nodes] change refused: it %s %s, the writer now; switch over to another node "
             "first, then reload (the other keys were applied, [nodes] stays as it was)",
             conf_of(nodes, n, wr->name) ? "moves" : "removes", wr->name);
    return -1;
}

/* nd leaves [nodes]: nothing new goes to it, what it serves drains (failover contract: no client
 * is dropped for it). Its slot stays until nothing uses it (drain_removed). */
static void remove_node(struct topology *t, struct node *nd)
{
    log_info("node %s (%s:%d): removed from [nodes] by a reload: no new connections; %d server "
             "connections drain (idle ones closed now, lent ones when released)",
             nd->name, nd->host, nd->port, nd->n_servers);
    event_del_noblock(nd->kick);
    if (nd->probe) {
        struct server *p = nd->probe;
        nd->probe = NULL;
        nd->probe_up = 0;
        t->hooks->probe_close(p, "its node was removed from [nodes]");
    }
    nd->generation++; /* what was judged of it before is stale */
    nd->role = NODE_REMOVED;
    nd->claim = 0;
    nd->suspect = 0;
    nd->answered = 1; /* the start-up rule waits for nodes of [nodes] only */
    nd->probe_sent = 0;
    nd->lag_bytes = 0;
    set_note(nd, "removed from [nodes] by a reload: draining");
    if (t->pat_leader == nd)
        t->pat_leader = NULL;
    t->hooks->node_drain(t->w, nd, "its node was removed from [nodes]");
}

/* A removed node no longer used by any server: its slot is free for a node added later. */
static void free_slot(struct topology *t, struct node *nd)
{
    log_info("node %s: drained: no server connection to it is left, it is gone", nd->name);
    t->hooks->backoff_free(nd);
    struct event *kick = nd->kick;
    uint64_t gen = nd->generation + 1;
    memset(nd, 0, sizeof(*nd));
    nd->topo = t;
    nd->kick = kick;
    nd->generation = gen;
    nd->answered = 1; /* a free slot never holds the start-up rule */
}

static void drain_removed(struct topology *t)
{
    for (int i = 0; i < t->n_nodes; i++) {
        struct node *nd = &t->nodes[i];
        if (nd->role != NODE_REMOVED || !node_listed(nd))
            continue;
        if (nd->n_servers == 0 && !nd->probe)
            free_slot(t, nd);
        else /* a lent server released since went idle (a reset finished): it goes too */
            t->hooks->node_drain(t->w, nd, "its node was removed from [nodes]");
    }
}

/* A node of [nodes] not in use yet: probed at once, judged by evaluate as every node is (its
 * system identifier, its timeline against the highest seen: a stale primary is fenced). */
static int add_node(struct topology *t, const struct node_conf *nc)
{
    struct node *nd = NULL;
    for (int i = 0; i < t->n_nodes && !nd; i++)
        if (!node_listed(&t->nodes[i]))
            nd = &t->nodes[i];
    if (!nd && t->n_nodes < CONFIG_MAX_NODES) {
        nd = &t->nodes[t->n_nodes];
        memset(nd, 0, sizeof(*nd));
        nd->topo = t;
        nd->kick = evtimer_new(t->w->base, kick_cb, nd);
        if (!nd->kick)
            return -1;
        t->n_nodes++;
    }
    if (!nd) {
        log_error("node %s: not added: %d nodes are in use or still draining (at most %d); it is "
                  "added once one has drained",
                  nc->name, t->n_nodes, CONFIG_MAX_NODES);
        return -1;
    }
    snprintf(nd->name, sizeof(nd->name), "%s", nc->name);
    snprintf(nd->host, sizeof(nd->host), "%s", nc->host);
    nd->port = nc->port;
    nd->role = NODE_UNKNOWN;
    nd->answered = 0;
    nd->generation++;
    log_info("node %s (%s:%d): added to [nodes] by a reload: probing it", nd->name, nd->host,
             nd->port);
    open_probe(t, nd);
    return 0;
}

void topology_sync_nodes(struct worker *w)
{
    struct topology *t = w->topo;
    const struct config *cfg = w->cfg;
    /* First the nodes that go (or move: a node whose address changed is a new node), so that
     * a name taken again finds its old node already out of the way. */
    for (int i = 0; i < t->n_nodes; i++) {
        struct node *nd = &t->nodes[i];
        if (!node_listed(nd) || nd->role == NODE_REMOVED || kept(nd, cfg->nodes, cfg->n_nodes))
            continue;
        if (nd == t->writer) {
            /* topology_nodes_check refused this already; never leave without a writer here. */
            log_error("node %s is the writer: not removed", nd->name);
            continue;
        }
        remove_node(t, nd);
    }
    for (int i = 0; i < cfg->n_nodes; i++)
        if (!topology_find(w, cfg->nodes[i].name))
            add_node(t, &cfg->nodes[i]);
    evaluate(t);
    t->hooks->kick_all(w);
}

int topology_init(struct worker *w, const struct topology_hooks *hooks)
{
    struct topology *t = calloc(1, sizeof(*t));
    if (!t)
        return -1;
    t->w = w;
    t->hooks = hooks;
    w->topo = t;
    t->n_nodes = w->cfg->n_nodes;
    t->start_ms = now_ms();
    for (int i = 0; i < t->n_nodes; i++) {
        struct node *nd = &t->nodes[i];
        snprintf(nd->name, sizeof(nd->name), "%s", w->cfg->nodes[i].name);
        snprintf(nd->host, sizeof(nd->host), "%s", w->cfg->nodes[i].host);
        nd->port = w->cfg->nodes[i].port;
        nd->topo = t;
        nd->kick = evtimer_new(w->base, kick_cb, nd);
        if (!nd->kick)
            return -1;
    }
    t->timer = evtimer_new(w->base, timer_cb, t);
    t->fast = 1;
    if (w->cfg->topology_source == TOPO_PATRONI && patroni_init(t) < 0)
        return -1;
    patroni_poll(t);
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
        struct node *nd = &t->nodes[i];
        if (nd->probe) {
            t->hooks->probe_detach(nd->probe);
            nd->probe = NULL;
        }
        if (nd->kick)
            event_free(nd->kick);
        t->hooks->backoff_free(nd);
    }
    patroni_free(t);
    event_free(t->timer);
    free(t);
    w->topo = NULL;
}
