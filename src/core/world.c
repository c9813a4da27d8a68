/* The world lock: stop every other worker at a safe point, change shared state, let them go
 * (see world.h for why). */
#include "core/world.h"

#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "core/worker.h"

/* How many world_stop calls this thread has not yet matched with world_start. A stop is the
 * thread's, not the worker's: the stopper acts on other workers' objects, whose code may stop
 * the world again naming that other worker (topology's timers name the first worker, whichever
 * thread runs them), and must not then wait for itself. */
static __thread int held_depth;

int world_init(struct world *wd, int n)
{
    memset(wd, 0, sizeof(*wd));
    wd->n = n;
    /* Only the first worker's loop runs until world_enter starts the others. */
    wd->alive = 1;
    for (int i = 1; i < n && i < WORLD_MAX; i++)
        wd->done[i] = 1;
    wd->stopper = -1;
    if (pthread_mutex_init(&wd->mu, NULL) != 0)
        return -1;
    if (pthread_cond_init(&wd->cv, NULL) != 0) {
        pthread_mutex_destroy(&wd->mu);
        return -1;
    }
    if (pthread_mutex_init(&wd->notes, NULL) != 0) {
        pthread_cond_destroy(&wd->cv);
        pthread_mutex_destroy(&wd->mu);
        return -1;
    }
    return 0;
}

void world_free(struct world *wd)
{
    while (wd->counts) {
        struct world_count *c = wd->counts;
        wd->counts = c->next;
        free(c);
    }
    pthread_mutex_destroy(&wd->notes);
    pthread_cond_destroy(&wd->cv);
    pthread_mutex_destroy(&wd->mu);
}

void world_note_lock(struct worker *w)
{
    if (w->world && w->world->n > 1)
        pthread_mutex_lock(&w->world->notes);
}

void world_note_unlock(struct worker *w)
{
    if (w->world && w->world->n > 1)
        pthread_mutex_unlock(&w->world->notes);
}

/* Parked until the stop in progress ends; mu held. Each worker parks once per stop: it waits
 * for the epoch to move on before it looks again. */
static void park_locked(struct world *wd)
{
    uint64_t e = wd->epoch;
    wd->parked++;
    pthread_cond_broadcast(&wd->cv);
    while (wd->epoch == e)
        pthread_cond_wait(&wd->cv, &wd->mu);
}

void world_stop(struct worker *self)
{
    struct world *wd = self->world;
    if (!wd || wd->n == 1)
        return;
    if (held_depth > 0) {
        held_depth++;
        return;
    }
    pthread_mutex_lock(&wd->mu);
    while (wd->stopper != -1)
        park_locked(wd);
    wd->stopper = self->index;
    held_depth = 1;
    wd->parked = 0;
    /* Each other loop runs its park event at its next turn (libevent wakes it from epoll). */
    for (int i = 0; i < wd->n; i++)
        if (i != self->index && !wd->done[i])
            event_active(wd->workers[i]->park, EV_READ, 0);
    while (wd->parked < wd->alive - 1)
        pthread_cond_wait(&wd->cv, &wd->mu);
    pthread_mutex_unlock(&wd->mu);
}

void world_start(struct worker *self)
{
    struct world *wd = self->world;
    if (!wd || wd->n == 1)
        return;
    if (held_depth == 0 || --held_depth > 0)
        return;
    pthread_mutex_lock(&wd->mu);
    wd->stopper = -1;
    wd->epoch++;
    pthread_cond_broadcast(&wd->cv);
    pthread_mutex_unlock(&wd->mu);
}

void world_park(struct worker *self)
{
    struct world *wd = self->world;
    if (held_depth > 0)
        return; /* this thread holds the world (cannot happen from the loop, but cheap) */
    pthread_mutex_lock(&wd->mu);
    while (wd->stopper != -1)
        park_locked(wd);
    pthread_mutex_unlock(&wd->mu);
}

void world_enter(struct worker *w)
{
    struct world *wd = w->world;
    pthread_mutex_lock(&wd->mu);
    if (wd->done[w->index]) {
        wd->done[w->index] = 0;
        wd->alive++;
    }
    pthread_mutex_unlock(&wd->mu);
}

void world_leave(struct worker *self)
{
    struct world *wd = self->world;
    if (!wd || wd->n == 1)
        return;
    pthread_mutex_lock(&wd->mu);
    if (!wd->done[self->index]) {
        wd->done[self->index] = 1;
        wd->alive--;
        pthread_cond_broadcast(&wd->cv);
    }
    pthread_mutex_unlock(&wd->mu);
}

int world_held(struct worker *self)
{
    struct world *wd = self->world;
    if (!wd || wd->n == 1)
        return 1;
    return held_depth > 0;
}

struct world_count *world_count_get(struct world *wd, const char *key)
{
    pthread_mutex_lock(&wd->mu);
    struct world_count *c = wd->counts;
    while (c && strcmp(c->key, key) != 0)
        c = c->next;
    if (!c) {
        size_t len = strlen(key) + 1;
        c = calloc(1, sizeof(*c) + len);
        if (c) {
            memcpy(c->key, key, len);
            c->next = wd->counts;
            wd->counts = c;
        }
    }
    pthread_mutex_unlock(&wd->mu);
    return c;
}

void world_poke(struct worker *w)
{
    if (w->poke)
        event_active(w->poke, EV_READ, 0);
}
