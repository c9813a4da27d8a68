/* Deferred work queue: one libevent event per loop, drained once the current callbacks return. */
#include "core/defer.h"

static void drain_cb(evutil_socket_t fd, short what, void *arg)
{
    struct defer_queue *q = arg;
    defer_enter(q);
    defer_leave(q);
}

void defer_enter(struct defer_queue *q)
{
    q->nest++;
}

void defer_leave(struct defer_queue *q)
{
    if (--q->nest > 0)
        return;
    q->nest++; /* work queued while draining runs in this same turn, as a nested call used to */
    struct list *first;
    while ((first = list_first(&q->items))) {
        struct deferred *d = container_of(first, struct deferred, node);
        list_del(first);
        d->run(d);
    }
    q->nest--;
}

int defer_init(struct defer_queue *q, struct event_base *base)
{
    list_init(&q->items);
    q->nest = 0;
    q->ev = event_new(base, -1, 0, drain_cb, q);
    return q->ev ? 0 : -1;
}

void defer_free(struct defer_queue *q)
{
    while (!list_empty(&q->items))
        list_del(q->items.next);
    if (q->ev)
        event_free(q->ev);
    q->ev = NULL;
}

void defer(struct defer_queue *q, struct deferred *d)
{
    if (!list_empty(&d->node))
        return;
    int first = list_empty(&q->items);
    list_append(&q->items, &d->node);
    /* Inside defer_enter/leave the caller drains on its way out: no loop turn is needed, and a
     * libevent activation per item cost more than the work (three per transaction). */
    if (first && q->nest == 0)
        event_active(q->ev, EV_TIMEOUT, 0);
}

void defer_cancel(struct deferred *d)
{
    list_del(&d->node);
}
