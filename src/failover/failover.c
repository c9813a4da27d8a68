/* Failover: the hold/resume state machine, PAUSE/RESUME, and the record of each failover. */
#include "failover/failover.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/client.h"
#include "core/log.h"
#include "pool/backoff.h"
#include "pool/pool.h"
#include "server/server.h"
#include "topology/topology.h"

const int64_t failover_hold_bucket_ms[FAILOVER_HOLD_BUCKETS - 1] = {
    100, 250, 500, 1000, 2000, 5000, 10000, 20000, 30000, 60000, 120000,
};

int failover_init(struct worker *w)
{
    w->fo = calloc(1, sizeof(*w->fo));
    return w->fo ? 0 : -1;
}

void failover_free(struct worker *w)
{
    for (int i = 0; i < w->fo->n_paused_dbs; i++)
        free(w->fo->paused_dbs[i]);
    free(w->fo->paused_dbs);
    free(w->fo);
    w->fo = NULL;
}

static int db_index(struct failover *fo, const char *db)
{
    for (int i = 0; db && i < fo->n_paused_dbs; i++)
        if (!strcmp(fo->paused_dbs[i], db))
            return i;
    return -1;
}

int failover_paused(struct worker *w, const char *database)
{
    struct failover *fo = w->fo;
    return fo->paused || (fo->n_paused_dbs > 0 && db_index(fo, database) >= 0);
}

int failover_holding(struct worker *w, const char *database)
{
    return !w->topo->writer || w->topo->suspect || failover_paused(w, database);
}

/* Every pool connection to a node that lost the writer role goes: in-flight clients are told,
 * idle ones get a new server on the next writer without noticing. */
static void drop_servers_on(struct worker *w, struct node *nd, const char *why)
{
    for (int st = SV_CONNECTING; st <= SV_RESETTING; st++) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &w->servers[st])
        {
            struct server *s = container_of(pos, struct server, node);
            if (s->nd == nd && s->pool && s->pool->role == ROLE_WRITER)
                server_close(s, why);
        }
    }
}

void failover_writer_lost(struct worker *w, struct node *old, const char *why)
{
    struct failover *fo = w->fo;
    int64_t now = now_ms();
    topology_set_fast(w, 1);
    if (!fo->current) {
        struct failover_event *ev = &fo->events[fo->n_events % FAILOVER_MAX_EVENTS];
        memset(ev, 0, sizeof(*ev));
        ev->id = ++fo->n_events;
        snprintf(ev->old_writer, sizeof(ev->old_writer), "%s", old ? old->name : "");
        snprintf(ev->reason, sizeof(ev->reason), "%s", why);
        ev->writer_lost = now;
        /* New requests were held from the moment the writer became suspect. */
        ev->hold_started = w->topo->suspect && w->topo->suspect_since ? w->topo->suspect_since : now;
        /* and those clients count in this event: they were held while the writer was only
         * suspect, before there was an event to count them in (failover_note_held). */
        for (int i = 0; i < w->world->n; i++) {
            struct list *pos, *tmp;
            list_for_each_safe(pos, tmp, &w->world->workers[i]->clients[CL_WAITING])
            {
                struct client *c = container_of(pos, struct client, node);
                if (c->held)
                    ev->clients_held++;
            }
        }
        if (fo->pending_failed && w->topo->suspect && fo->pending_since == w->topo->suspect_since)
            ev->failed_in_flight += fo->pending_failed;
        fo->pending_failed = 0;
        fo->current = ev;
        log_warn("failover #%d: started: writer %s lost (%s); holding requests until a new writer "
                 "is seen",
                 ev->id, ev->old_writer, why);
    }
    for (int i = 0; old && i < w->world->n; i++)
        drop_servers_on(w->world->workers[i], old, "the writer was lost");
}

/* Clients whose transaction PAUSE held and that may go now (database NULL: all of them). */
static void release_paused_on(struct worker *w, const char *database)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->clients[CL_ACTIVE])
    {
        struct client *c = container_of(pos, struct client, node);
        if (database && (!c->database || strcmp(c->database, database)))
            continue;
        if (c->pause_held && !failover_paused(w, c->database)) {
            c->pause_held = 0;
            client_process(c);
        }
    }
}

/* Held requests go on, in every worker: its pools lend again, PAUSE-held clients proceed. The
 * world is stopped (this runs from topology or the admin console), so all workers switch in
 * the same step. */
static void release_paused(struct worker *w, const char *database)
{
    for (int i = 0; i < w->world->n; i++)
        release_paused_on(w->world->workers[i], database);
}

static void kick_everywhere(struct worker *w)
{
    for (int i = 0; i < w->world->n; i++)
        pool_kick_all(w->world->workers[i]);
}

void failover_writer_found(struct worker *w, struct node *nd)
{
    struct failover *fo = w->fo;
    struct failover_event *ev = fo->current;
    int64_t now = now_ms();
    topology_set_fast(w, 0);
    if (!ev) {
        log_info("writer is %s (timeline %u)", nd->name, nd->timeline);
    } else {
        snprintf(ev->new_writer, sizeof(ev->new_writer), "%s", nd->name);
        ev->new_writer_seen = now;
        ev->hold_ended = now;
        int64_t held = now - ev->hold_started;
        int b = 0;
        while (b < FAILOVER_HOLD_BUCKETS - 1 && held > failover_hold_bucket_ms[b])
            b++;
        fo->hold_hist[b]++;
        fo->hold_ms_sum += (uint64_t)held;
        log_warn("failover #%d: new writer %s seen (timeline %u) %lld ms after the writer was lost; "
                 "resuming %d held clients",
                 ev->id, nd->name, nd->timeline, (long long)(now - ev->writer_lost), ev->clients_held);
        fo->current = NULL;
        fo->last = ev;
    }
    if (!fo->paused) {
        kick_everywhere(w);
        release_paused(w, NULL);
    } else {
        failover_open_ahead(w); /* RESUME finds the new writer's servers logged in */
    }
    if (ev)
        log_warn("failover #%d: completed: hold ended, %d clients held, %d requests failed in "
                 "flight, %d timed out",
                 ev->id, ev->clients_held, ev->failed_in_flight, ev->timed_out);
}

/* The four notes below come from any worker's sessions, in the middle of their work: the
 * counters they bump are the one failover state of the process, under the world's notes lock
 * (a stopper, which reads or resets them, runs while every other worker is parked). */
void failover_note_held(struct worker *w)
{
    world_note_lock(w);
    if (w->fo->current) {
        w->fo->clients_held_total++;
        w->fo->current->clients_held++;
    }
    world_note_unlock(w);
}

void failover_note_served(struct worker *w)
{
    world_note_lock(w);
    struct failover_event *ev = w->fo->last;
    if (ev && !ev->first_served) {
        ev->first_served = now_ms();
        log_info("failover #%d: first held request served %lld ms after the new writer was seen",
                 ev->id, (long long)(ev->first_served - ev->new_writer_seen));
    }
    world_note_unlock(w);
}

static void note_failed(struct worker *w, const char *sqlstate);

void failover_note_failed_in_flight(struct worker *w, const char *sqlstate)
{
    world_note_lock(w);
    note_failed(w, sqlstate);
    world_note_unlock(w);
}

static void note_failed(struct worker *w, const char *sqlstate)
{
    struct failover *fo = w->fo;
    struct topology *t = w->topo;
    if (fo->current) {
        fo->current->failed_in_flight++;
    } else if (t->suspect) {
        /* No event yet: the failure that made the writer suspect comes before the event its
         * loss opens (failover_writer_lost takes these over). */
        if (fo->pending_since != t->suspect_since) {
            fo->pending_since = t->suspect_since;
            fo->pending_failed = 0;
        }
        fo->pending_failed++;
    } else if (fo->last) {
        fo->last->failed_in_flight++; /* after the hold: a replay that failed on the new writer */
    }
    int i = 0;
    while (i < fo->n_failed && strcmp(fo->failed[i].sqlstate, sqlstate))
        i++;
    if (i == fo->n_failed) {
        if (fo->n_failed == FAILOVER_MAX_STATES)
            i = FAILOVER_MAX_STATES - 1; /* more kinds than expected: the last one takes them */
        else
            snprintf(fo->failed[fo->n_failed++].sqlstate, sizeof(fo->failed[0].sqlstate), "%s",
                     sqlstate);
    }
    fo->failed[i].n++;
}

void failover_note_timed_out(struct worker *w)
{
    world_note_lock(w);
    struct failover_event *ev = w->fo->current ? w->fo->current : w->fo->last;
    w->fo->timed_out_total++;
    if (ev)
        ev->timed_out++;
    world_note_unlock(w);
}

void failover_pause(struct worker *w)
{
    if (w->fo->paused)
        return;
    w->fo->paused = 1;
    w->fo->pause_started = now_ms();
    log_info("PAUSE: holding new transactions on the writer endpoint");
}

void failover_resume(struct worker *w)
{
    struct failover *fo = w->fo;
    if (!fo->paused && !fo->n_paused_dbs)
        return;
    /* RESUME without a database ends every PAUSE, of one database or all. */
    for (int i = 0; i < fo->n_paused_dbs; i++)
        free(fo->paused_dbs[i]);
    fo->n_paused_dbs = 0;
    if (fo->paused)
        log_info("RESUME: releasing held requests after %lld ms",
                 (long long)(now_ms() - fo->pause_started));
    else
        log_info("RESUME: releasing the held requests of paused databases");
    fo->paused = 0;
    kick_everywhere(w);
    release_paused(w, NULL);
}

void failover_unpause(struct worker *w)
{
    struct failover *fo = w->fo;
    if (!fo->paused)
        return;
    log_info("RESUME: releasing held requests after %lld ms%s",
             (long long)(now_ms() - fo->pause_started),
             fo->n_paused_dbs ? " (the databases paused on their own stay paused)" : "");
    fo->paused = 0;
    kick_everywhere(w);
    release_paused(w, NULL);
}

void failover_pause_db(struct worker *w, const char *database)
{
    struct failover *fo = w->fo;
    if (db_index(fo, database) >= 0)
        return;
    char **n = realloc(fo->paused_dbs, sizeof(*n) * (size_t)(fo->n_paused_dbs + 1));
    if (!n)
        return;
    fo->paused_dbs = n;
    if ((n[fo->n_paused_dbs] = strdup(database)) == NULL)
        return;
    fo->n_paused_dbs++;
    log_info("PAUSE %s: holding its new transactions on the writer endpoint", database);
}

int failover_resume_db(struct worker *w, const char *database)
{
    struct failover *fo = w->fo;
    int i = db_index(fo, database);
    if (i < 0)
        return -1;
    free(fo->paused_dbs[i]);
    fo->paused_dbs[i] = fo->paused_dbs[--fo->n_paused_dbs];
    log_info("RESUME %s: releasing its held requests", database);
    kick_everywhere(w);
    release_paused(w, database);
    return 0;
}

static int pause_done_on(struct worker *w, const char *database);

int failover_pause_done(struct worker *w, const char *database)
{
    for (int i = 0; i < w->world->n; i++)
        if (!pause_done_on(w->world->workers[i], database))
            return 0;
    return 1;
}

static int pause_done_on(struct worker *w, const char *database)
{
    /* Paused when no writer-endpoint client (of the database) is inside a transaction or a
     * request. */
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->clients[CL_ACTIVE])
    {
        struct client *c = container_of(pos, struct client, node);
        if (c->role != ROLE_WRITER || c->is_admin)
            continue;
        if (database && (!c->database || strcmp(c->database, database)))
            continue;
        if (c->pending > 0 || c->unsynced > 0 || c->fwd_left > 0 || c->txn_status != 'I')
            return 0;
    }
    return 1;
}

/* Servers of p on nd, logged in or on their way; *logging_in: those still on their way. */
static int servers_of(struct worker *w, struct pool *p, struct node *nd, int *logging_in)
{
    int n = 0;
    *logging_in = 0;
    for (int st = SV_CONNECTING; st <= SV_IDLE; st++) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &w->servers[st])
        {
            struct server *s = container_of(pos, struct server, node);
            if (s->pool == p && s->nd == nd) {
                n++;
                if (st != SV_IDLE)
                    (*logging_in)++;
            }
        }
    }
    return n;
}

/* Clients of p that PAUSE holds with no server: each needs one at RESUME. */
static int paused_without_server(struct worker *w, struct pool *p)
{
    int n = 0;
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->clients[CL_ACTIVE])
    {
        struct client *c = container_of(pos, struct client, node);
        if (c->pause_held && c->pool == p && !c->server)
            n++;
    }
    return n;
}

/*
 * Server connections opened before they are asked for, so that the first request after a
 * failover does not pay for a login (tens of ms on a just-promoted node, more than the rest of
 * the switch). While there is no writer: to every standby, since a backend that logged in on a
 * standby carries on, writable, once that standby is promoted. While PAUSE holds (a planned
 * switchover): the same, and once the new writer is seen, to it, as many as RESUME will need.
 */
static void open_ahead_on(struct worker *w);

void failover_open_ahead(struct worker *w)
{
    for (int i = 0; i < w->world->n; i++)
        open_ahead_on(w->world->workers[i]);
}

static void open_ahead_on(struct worker *w)
{
    struct topology *t = w->topo;
    struct failover *fo = w->fo;
    if (!t->started || w->shutting_down)
        return;
    /* With a writer: only a writer found during this PAUSE (not the one about to be stopped). */
    if (t->writer && !(fo->paused && fo->last && fo->last->new_writer_seen >= fo->pause_started))
        return;
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->pools)
    {
        struct pool *p = container_of(pos, struct pool, node);
        if (p->role != ROLE_WRITER)
            continue;
        /* One server for each client that will need one the moment the writer is back (in
         * session mode each keeps its own), not only server_connect_concurrency of them: those
         * past it would pay a login on a just-promoted node. That bound is on logins under way
         * instead; the next tick opens more as they complete. */
        int want = p->n_waiting + (fo->paused ? paused_without_server(w, p) : 0);
        if (want == 0 && !t->writer)
            want = 1;
        for (int i = 0; i < t->n_nodes; i++) {
            struct node *nd = &t->nodes[i];
            int usable = t->writer ? nd == t->writer : nd->role == NODE_STANDBY;
            if (!usable || nd->suspect || login_backoff_wait(p, nd))
                continue;
            int logging_in;
            for (int have = servers_of(w, p, nd, &logging_in);
                 have < want && logging_in < w->cfg->server_connect_concurrency &&
                 pool_servers_all(p) < config_pool_size(w->cfg, p->database, p->user);
                 have++, logging_in++)
                if (!server_open(w, p, nd, p->user, p->database))
                    break;
        }
    }
}
