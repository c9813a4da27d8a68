/* Time for timeouts: the monotonic clock, read once per loop callback on the hot path; wall
 * time only for what people read (logs, SHOW FAILOVERS). */
#ifndef PGSTAY_CORE_CLOCK_H
#define PGSTAY_CORE_CLOCK_H

#include <stdint.h>

/* Monotonic milliseconds and microseconds: the callback's cached value inside a connection
 * callback (clock_enter .. clock_leave), a fresh reading elsewhere. */
int64_t now_ms(void);
int64_t now_us(void);
/* Start and end of a callback whose uses of now_*() may share one reading. */
void clock_enter(void);
void clock_leave(void);
/* A now_ms() value as wall-clock milliseconds since the epoch, for display. */
int64_t clock_wall_ms(int64_t mono_ms);

#endif
