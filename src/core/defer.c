/* Deferred work queue: one libevent event per loop, drained once the current callbacks return. */
#include "core/defer.h"

static void drain_cb(evutil_socket_t fd, short what, void *arg)
{
    struct defer_queue *q = arg;
    struct list *first;
    /* Work queued while draining runs in this same turn, as a nested call used to. */
    while ((first = list_first(&q->items))) {
        struct deferred *d = container_of(first, struct deferred, node);
        list_del(first);
        d->run(d);
    }
}

int defer_init(struct defer_queue *q, struct event_base *base)
{
    list_init(&q->items);
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
    list_append(&q->items, &d->node);
    event_active(q->ev, EV_TIMEOUT, 0);
}

void defer_cancel(struct deferred *d)
{
    list_del(&d->node);
}
