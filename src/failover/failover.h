/* Failover: hold requests while there is no writer, resume on the new one, PAUSE/RESUME, events. */
#ifndef PGSTAY_FAILOVER_FAILOVER_H
#define PGSTAY_FAILOVER_FAILOVER_H

#include <stdint.h>

#include "core/worker.h"

struct node;
struct planned;

#define FAILOVER_MAX_EVENTS 64
/* Hold durations (ms) as a histogram for /metrics: upper bounds, the last bucket is +Inf. */
#define FAILOVER_HOLD_BUCKETS 12
extern const int64_t failover_hold_bucket_ms[FAILOVER_HOLD_BUCKETS - 1];
/* Distinct SQLSTATEs counted for requests failed in flight (a handful exist: 08006, 08007, and
 * a terminated backend's own). */
#define FAILOVER_MAX_STATES 8

/* One failover, with the time of each phase (ms since the epoch; 0 = not yet). */
struct failover_event {
    int id;
    char old_writer[64];
    char new_writer[64];
    char reason[128];
    int64_t writer_lost;
    int64_t hold_started;
    int64_t new_writer_seen;
    int64_t first_served;
    int64_t hold_ended;
    int clients_held;
    int failed_in_flight;
    int timed_out;
};

struct failover {
    struct failover_event events[FAILOVER_MAX_EVENTS];
    int n_events;
    struct failover_event *current; /* the one in progress, or NULL */
    struct failover_event *last;    /* the last completed one (first_served comes after) */
    int paused;                     /* PAUSE: hold new transactions */
    /* Requests failed in flight while the writer was only suspect: the event that follows (if
     * the writer is then lost) counts them; pending_since is the suspicion they belong to. */
    int pending_failed;
    int64_t pending_since;
    int64_t pause_started;
    char **paused_dbs; /* PAUSE db: hold new transactions of these databases */
    int n_paused_dbs;
    /* Totals for the process's lifetime (the event ring forgets): /metrics. */
    uint64_t hold_hist[FAILOVER_HOLD_BUCKETS]; /* per bucket, not cumulative */
    uint64_t hold_ms_sum;
    uint64_t clients_held_total;
    uint64_t timed_out_total;
    struct {
        char sqlstate[6];
        uint64_t n;
    } failed[FAILOVER_MAX_STATES];
    int n_failed;
    struct planned *planned; /* failover/planned.c: a switchover told ahead */
};

int failover_init(struct worker *w);
void failover_free(struct worker *w);
/* Topology saw the writer go (old may be NULL at start-up). */
void failover_writer_lost(struct worker *w, struct node *old, const char *why);
/* While there is no writer: each writer pool keeps a server logged in on every standby for each
 * held client (at least one; within pool_size, server_connect_concurrency logins at a time), so
 * the one that is promoted serves held requests with no login in between (a session opened
 * during recovery writes once its node is promoted); the others close when a writer is seen. */
void failover_open_ahead(struct worker *w);
/* Topology found a writer; resume held requests. */
void failover_writer_found(struct worker *w, struct node *nd);
/* Is the writer endpoint holding new requests of database (no writer, a suspect writer, or
 * paused; database NULL: the PAUSE of all only)? */
int failover_holding(struct worker *w, const char *database);
/* PAUSE (of every database, or of this one) is in effect (until RESUME). */
int failover_paused(struct worker *w, const char *database);
void failover_note_held(struct worker *w);
void failover_note_served(struct worker *w);
void failover_note_failed_in_flight(struct worker *w, const char *sqlstate);
void failover_note_timed_out(struct worker *w);
void failover_pause(struct worker *w);
void failover_resume(struct worker *w);
/* The PAUSE of every database ends; a database's own PAUSE stays (what a planned switchover's
 * hold ends: PAUSE db is the operator's to end). */
void failover_unpause(struct worker *w);
/* PAUSE db / RESUME db: one database's new transactions wait (-1 from resume: not paused). */
void failover_pause_db(struct worker *w, const char *database);
int failover_resume_db(struct worker *w, const char *database);
/* PAUSE has taken effect: no writer client (of database; NULL: any) is inside a transaction. */
int failover_pause_done(struct worker *w, const char *database);

#endif
