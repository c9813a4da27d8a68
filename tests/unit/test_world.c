/* The world lock (core/world.c) with real threads and event loops: every worker stops the world
 * over and over, nested and at the same time as the others; each stop must be exclusive (a
 * counter bumped without atomics comes out exact) and none may deadlock. Also run by make tsan. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "core/worker.h"
#include "core/world.h"

#define NW     4
#define ROUNDS 300

static struct world wd;
static struct worker ws[NW];
static long shared_counter;  /* changed only with the world stopped */
static int inside;           /* workers inside a stop at once: must stay 1 */
static int max_inside;
static int rounds_done[NW];

static void park_cb(evutil_socket_t fd, short what, void *arg)
{
    world_park(arg);
}

/* One round: stop, check exclusivity, bump (nested stop naming another worker), start. */
static void round_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    world_stop(w);
    inside++;
    if (inside > max_inside)
        max_inside = inside;
    long before = shared_counter;
    world_stop(&ws[(w->index + 1) % NW]); /* nested, naming another worker: no self-wait */
    shared_counter = before + 1;
    world_start(&ws[(w->index + 1) % NW]);
    inside--;
    world_start(w);
    if (++rounds_done[w->index] == ROUNDS) {
        event_base_loopexit(w->base, NULL);
        return;
    }
    event_active(w->poke, EV_TIMEOUT, 0); /* the next round, at the next loop turn */
}

static void *run(void *arg)
{
    struct worker *w = arg;
    event_base_dispatch(w->base);
    world_leave(w);
    /* Its loop is over: it parks no more, the others stop waiting for it. */
    return NULL;
}

static void test_stops_are_exclusive_and_never_deadlock(void **state)
{
    assert_int_equal(evthread_use_pthreads(), 0);
    assert_int_equal(world_init(&wd, NW), 0);
    for (int i = 0; i < NW; i++) {
        memset(&ws[i], 0, sizeof(ws[i]));
        ws[i].index = i;
        ws[i].world = &wd;
        ws[i].base = event_base_new();
        ws[i].park = event_new(ws[i].base, -1, 0, park_cb, &ws[i]);
        ws[i].poke = event_new(ws[i].base, -1, 0, round_cb, &ws[i]);
        wd.workers[i] = &ws[i];
        event_active(ws[i].poke, EV_TIMEOUT, 0);
    }
    pthread_t th[NW];
    for (int i = 1; i < NW; i++) {
        world_enter(&ws[i]);
        assert_int_equal(pthread_create(&th[i], NULL, run, &ws[i]), 0);
    }
    run(&ws[0]);
    for (int i = 1; i < NW; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(shared_counter, (long)NW * ROUNDS);
    assert_int_equal(max_inside, 1);
    for (int i = 0; i < NW; i++) {
        event_free(ws[i].park);
        event_free(ws[i].poke);
        event_base_free(ws[i].base);
    }
    world_free(&wd);
}

static void test_counts_take_within_cap(void **state)
{
    struct world w1;
    assert_int_equal(world_init(&w1, 1), 0);
    struct world_count *c = world_count_get(&w1, "pool x");
    assert_non_null(c);
    assert_ptr_equal(world_count_get(&w1, "pool x"), c); /* one per name */
    assert_int_equal(world_count_take(c, 2), 1);
    assert_int_equal(world_count_take(c, 2), 1);
    assert_int_equal(world_count_take(c, 2), 0); /* the cap holds */
    assert_int_equal(world_count_take(c, 0), 1); /* 0: no cap */
    assert_int_equal(world_count_read(c), 3);
    world_free(&w1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counts_take_within_cap),
        cmocka_unit_test(test_stops_are_exclusive_and_never_deadlock),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
