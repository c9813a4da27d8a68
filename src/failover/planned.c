/* A planned switchover told ahead: PAUSE before the writer stops, RESUME on the next writer. */
#include "failover/planned.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "core/log.h"
#include "failover/failover.h"
#include "topology/topology.h"

struct planned {
    struct worker *w;
    int active;        /* the hold is on */
    int owns_pause;    /* it set PAUSE (an operator's own PAUSE is the operator's to end) */
    struct node *from; /* the writer that is to stop */
    int lost;          /* it was lost since the hold began */
    int scheduled;     /* begun for a switchover Patroni scheduled (its withdrawal ends it) */
    int64_t started;
    struct event *timer; /* the hold's deadline; before a scheduled one, its beginning */
    /* The switchover Patroni has scheduled (topology_source = patroni): */
    struct node *sched_from;
    int64_t sched_at; /* now_ms() clock; 0: none */
};

static struct planned *get(struct worker *w)
{
    return w->fo ? w->fo->planned : NULL;
}

static void arm(struct planned *p, int64_t at)
{
    int64_t ms = at - now_ms();
    if (ms < 0)
        ms = 0;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(p->timer, &tv);
}

static void end_hold(struct planned *p, const char *how)
{
    struct worker *w = p->w;
    p->active = 0;
    p->sched_at = 0;
    w->topo->planned_from = NULL;
    event_del_noblock(p->timer);
    log_warn("planned switchover: %s: the hold ends after %lld ms", how,
             (long long)(now_ms() - p->started));
    if (p->owns_pause && w->fo->paused)
        failover_unpause(w); /* an operator's PAUSE db, given before or during, stays */
    p->owns_pause = 0;
}

int planned_begin(struct worker *w, struct node *nd, int scheduled, const char *why)
{
    struct planned *p = get(w);
    struct node *wr = w->topo->writer;
    if (!p)
        return 0;
    if (!nd || nd != wr) {
        log_info("planned switchover (%s): %s is not the writer (%s): nothing to hold", why,
                 nd ? nd->name : "?", wr ? wr->name : "none");
        return 0;
    }
    if (p->active)
        return 1;
    p->active = 1;
    p->from = nd;
    p->lost = 0;
    p->scheduled = scheduled;
    p->started = now_ms();
    w->topo->planned_from = nd;
    if (!w->fo->paused) {
        failover_pause(w);
        p->owns_pause = 1;
    }
    /* Nothing followed within failover_timeout: the writer is kept (or, if it went meanwhile,
     * the ordinary failover hold goes on). From the scheduled time, not before it. */
    int64_t from_t = scheduled && p->sched_at > p->started ? p->sched_at : p->started;
    arm(p, from_t + w->cfg->failover_timeout);
    log_warn("planned switchover (%s): writer %s is about to stop: new transactions are held, "
             "those in flight finish; resuming on the next writer",
             why, nd->name);
    return 1;
}

int planned_active(struct worker *w)
{
    struct planned *p = get(w);
    return p && p->active;
}

void planned_pause_taken(struct worker *w)
{
    struct planned *p = get(w);
    if (p && p->active)
        p->owns_pause = 0;
}

static void on_timer(struct planned *p);

/* A failover step: every worker's clients are acted on, with the world stopped. */
static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct planned *p = arg;
    world_stop(p->w);
    on_timer(p);
    world_start(p->w);
}

static void on_timer(struct planned *p)
{
    if (p->active) {
        end_hold(p, p->lost ? "no writer came within failover_timeout (the failover hold goes on)"
                            : "the writer did not stop within failover_timeout: it stays the "
                              "writer");
        return;
    }
    if (p->sched_at) {
        char why[96];
        snprintf(why, sizeof(why), "Patroni scheduled it %lld ms from now",
                 (long long)(p->sched_at - now_ms()));
        planned_begin(p->w, p->sched_from ? p->sched_from : p->w->topo->writer, 1, why);
    }
}

void planned_scheduled(struct worker *w, struct node *from, int64_t in_ms)
{
    struct planned *p = get(w);
    if (!p)
        return;
    if (in_ms == INT64_MIN) {
        if (!p->sched_at && !(p->active && p->scheduled))
            return;
        p->sched_at = 0;
        log_info("Patroni: no switchover is scheduled any more");
        /* Withdrawn (Patroni refused it, or an operator cancelled it) while the writer stayed:
         * nothing will follow. Done: the writer found after the loss ends the hold instead. */
        if (p->active && p->scheduled && !p->lost && w->topo->writer == p->from)
            end_hold(p, "Patroni withdrew the scheduled switchover and the writer stays");
        else if (!p->active)
            event_del_noblock(p->timer);
        return;
    }
    int64_t at = now_ms() + in_ms;
    p->sched_at = at;
    p->sched_from = from;
    log_info("Patroni: a switchover from %s is scheduled in %lld ms: new transactions are held "
             "from %d ms before it",
             from ? from->name : "the leader", (long long)in_ms, PLANNED_LEAD_MS);
    if (!p->active)
        arm(p, at - PLANNED_LEAD_MS);
}

void planned_writer_lost(struct worker *w, struct node *old, const char *why)
{
    failover_writer_lost(w, old, why);
    struct planned *p = get(w);
    if (p && p->active)
        p->lost = 1;
}

void planned_writer_found(struct worker *w, struct node *nd)
{
    failover_writer_found(w, nd);
    struct planned *p = get(w);
    if (!p || !p->active || (nd == p->from && !p->lost))
        return;
    char how[128];
    snprintf(how, sizeof(how), "writer %s found%s", nd->name,
             nd == p->from ? " again after it stopped" : "");
    end_hold(p, how);
}

int planned_init(struct worker *w)
{
    struct planned *p = calloc(1, sizeof(*p));
    if (!p)
        return -1;
    p->w = w;
    p->timer = evtimer_new(w->base, timer_cb, p);
    if (!p->timer) {
        free(p);
        return -1;
    }
    w->fo->planned = p;
    return 0;
}

void planned_free(struct worker *w)
{
    struct planned *p = get(w);
    if (!p)
        return;
    event_free(p->timer);
    free(p);
    w->fo->planned = NULL;
}
