/* Per-pool traffic counters (SHOW STATS, /metrics): bumped at single points of the data path. */
#ifndef PGSTAY_POOL_STATS_H
#define PGSTAY_POOL_STATS_H

#include <stdint.h>

#include "core/list.h"

struct client;
struct pool;
struct server;
struct worker;

/* Upper bounds (µs) of the latency histograms' buckets; the last bucket is +Inf. Chosen to span
 * a 100 µs pooled query up to a 10 s wait, as Prometheus histograms are read by their bounds. */
#define STATS_NBUCKETS 17
extern const int64_t stats_bucket_us[STATS_NBUCKETS - 1];

/* What PgBouncer's SHOW STATS_TOTALS counts, plus histograms of the same times. Monotonic for
 * the process's lifetime: a pool freed when unused leaves them behind (stats_keep) and takes
 * them back when it is made again (stats_adopt), so Prometheus counters never go down. */
struct pool_stats {
    uint64_t xact_count;  /* transactions, a statement outside a block counting as one */
    uint64_t query_count; /* requests: Query, Sync, FunctionCall */
    uint64_t bytes_recv;  /* from clients to servers */
    uint64_t bytes_sent;  /* from servers to clients */
    uint64_t xact_us;     /* time in transactions on a server */
    uint64_t query_us;    /* time with requests in flight on a server */
    uint64_t wait_us;     /* time clients waited for a server */
    uint64_t query_hist[STATS_NBUCKETS]; /* per bucket, not cumulative */
    uint64_t wait_hist[STATS_NBUCKETS];
};

static inline void stats_observe(uint64_t *hist, int64_t us)
{
    int i = 0;
    while (i < STATS_NBUCKETS - 1 && us > stats_bucket_us[i])
        i++;
    hist[i]++;
}

/* The counters of a freed pool, under its key, until a pool with the same key is made. */
struct stats_kept {
    struct list node; /* on w->stats_kept */
    char *database;
    char *user;
    int role;
    struct pool_stats st;
};

/* A request goes to the client's server: the query (and transaction) clocks start if idle. */
void stats_request(struct server *s);
/* A ReadyForQuery reached the server's client: what was in flight is done. */
void stats_ready(struct server *s, const struct client *c);
/* The client got a server after waiting since wait_since_ms. */
void stats_waited(struct pool *p, int64_t wait_since_ms);
/* A pool is freed: its counters are kept on the worker; a new pool takes back its own. */
void stats_keep(struct pool *p);
void stats_adopt(struct pool *p);
/* Counters left by pools since freed, for the given database ("" or NULL: all). */
void stats_kept_sum(struct worker *w, const char *database, struct pool_stats *sum);
void stats_add(struct pool_stats *to, const struct pool_stats *from);
void stats_free_kept(struct worker *w);

#endif
