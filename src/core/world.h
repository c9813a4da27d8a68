/* The world: every worker (event loop thread) of the process, and the one lock that makes the
 * state they share (configuration, topology, failover, the admin console's) safe to change.
 *
 * Why a stop-the-world lock and not messages: the shared state is read on every lending (the
 * writer, a node's generation, PAUSE) and changes rarely (a probe answer, a failover, an admin
 * command, a reload). A worker that changes it first stops every other worker at a safe point
 * (between two callbacks of its loop: "parked"), changes it, and acts on every worker's clients
 * and servers as if they were its own (hold, resume, kick, SHOW CLIENTS), then lets them go.
 * Readers therefore take no lock and see no half-made change, a failover switches every worker
 * in the same step, and the code that acts on one loop's objects is the code that acted on the
 * single loop before. The data path itself never stops the world: what workers count together
 * (global limits) is counted with atomics (src/core/world.c). With one worker every call here
 * returns at once. */
#ifndef PGSTAY_CORE_WORLD_H
#define PGSTAY_CORE_WORLD_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#define WORLD_MAX 64

struct worker;

struct world {
    struct worker *workers[WORLD_MAX];
    int n;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* For counters that running workers bump together (failover's notes): a plain lock, as
     * those come from the middle of a worker's work, where parking for a stopper would not be
     * a safe point. A stopper needs it not: every other worker is parked. */
    pthread_mutex_t notes;
    int stopper;     /* index of the worker that stopped the world; -1: none */
    int parked;      /* workers parked for the current stop */
    int alive;       /* workers whose loop still runs (a finished one cannot park) */
    uint64_t epoch;  /* bumped at each world_start that ends a stop */
    int done[WORLD_MAX];
    /* Logged-in or logging-in clients of every worker, for max_client_conn. */
    _Atomic int n_clients;
    /* Counters every worker shares by name (a pool's servers, a database's, a user's), for the
     * limits that hold across workers: made on first use, kept until the end (a handful). */
    struct world_count *counts;
};

/* A count shared by every worker, and which workers wait for it to drop (a bit each). */
struct world_count {
    struct world_count *next;
    _Atomic int n;
    _Atomic uint64_t starved;
    char key[];
};

/* The count named key (made at 0 on first use); NULL when out of memory. Takes the world's
 * mutex: for set-up paths (a pool's creation), not for every transaction. */
struct world_count *world_count_get(struct world *wd, const char *key);
/* One more unless cap (> 0) is reached: 1 if taken. */
static inline int world_count_take(struct world_count *c, int cap)
{
    int n = atomic_load_explicit(&c->n, memory_order_relaxed);
    do {
        if (cap > 0 && n >= cap)
            return 0;
    } while (!atomic_compare_exchange_weak_explicit(&c->n, &n, n + 1, memory_order_relaxed,
                                                    memory_order_relaxed));
    return 1;
}
static inline int world_count_read(const struct world_count *c)
{
    return atomic_load_explicit(&c->n, memory_order_relaxed);
}
/* Wake another worker's loop: its poke event runs there (its pools with clients waiting try
 * again). Safe from any thread. */
void world_poke(struct worker *w);

/* One world of n workers (filled in by the program); 0, or -1 if the lock cannot be made. */
int world_init(struct world *wd, int n);
void world_free(struct world *wd);
/* The notes lock (above); nothing with one worker. */
void world_note_lock(struct worker *w);
void world_note_unlock(struct worker *w);
/* Stop every other worker at a safe point; nested calls on one worker are counted. While a
 * worker waits here for another stop to end, it parks for it (two workers stopping at once is
 * not a deadlock). */
void world_stop(struct worker *self);
void world_start(struct worker *self);
/* The park event's work (a stopper activated it): wait while another worker holds the world. */
void world_park(struct worker *self);
/* w's loop is about to run on its own thread (stoppers wait for it to park from now on); until
 * then a worker is as one that left. */
void world_enter(struct worker *w);
/* self's loop has ended: it parks no more, and stoppers stop waiting for it. */
void world_leave(struct worker *self);
/* Has self stopped the world (or is it alone)? For assertions. */
int world_held(struct worker *self);

#endif
