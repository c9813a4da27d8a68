/* Deferred work: queued from deep inside a callback, run once the current callbacks return. */
#ifndef PGSTAY_CORE_DEFER_H
#define PGSTAY_CORE_DEFER_H

#include <event2/event.h>

#include "core/list.h"

/* PgBouncer's per-loop activation: a caller several frames down (link -> release -> kick)
 * queues the work instead of re-entering the function that called it. One event per loop,
 * activated when the queue gets its first item, drains the queue in the same loop turn. */
struct deferred {
    struct list node; /* on the queue while queued; list_init it before the first defer() */
    void (*run)(struct deferred *d);
};

struct defer_queue {
    struct list items;
    struct event *ev;
    int nest; /* defer_enter depth: a caller on the stack drains the queue when it leaves */
};

int defer_init(struct defer_queue *q, struct event_base *base);
/* After the last loop turn: whatever is still queued is dropped. */
void defer_free(struct defer_queue *q);
/* Queue d unless it is queued already: queued twice before it runs, it runs once. */
void defer(struct defer_queue *q, struct deferred *d);
/* A callback that runs other work first (a connection's, core/conn.c) brackets it: what is
 * deferred meanwhile runs at the outermost defer_leave, once that work has returned, instead
 * of in a later loop callback. */
void defer_enter(struct defer_queue *q);
void defer_leave(struct defer_queue *q);
/* Unqueue d (its owner is being freed). */
void defer_cancel(struct deferred *d);

#endif
