/* The loop's clock: monotonic for every timeout, cached per callback (see clock.h). */
#include "core/clock.h"

#include <time.h>

/* Per thread: each worker loop keeps its own cached reading. */
static __thread int64_t cached_us;
static __thread int cache_depth;

static int64_t read_us(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t now_us(void)
{
    return cache_depth > 0 ? cached_us : read_us(CLOCK_MONOTONIC);
}

int64_t now_ms(void)
{
    return now_us() / 1000;
}

void clock_enter(void)
{
    if (cache_depth++ == 0)
        cached_us = read_us(CLOCK_MONOTONIC);
}

void clock_leave(void)
{
    if (cache_depth > 0)
        cache_depth--;
}

int64_t clock_wall_ms(int64_t mono_ms)
{
    return mono_ms + (read_us(CLOCK_REALTIME) - read_us(CLOCK_MONOTONIC)) / 1000;
}
