/* The admin console: the "pgstay" database (and "pgbouncer", its PgBouncer name) for
 * admin_users: PgBouncer's SHOW commands and verbs, and pgstay's own (NODES, FAILOVERS, PINS). */
#ifndef PGSTAY_ADMIN_ADMIN_H
#define PGSTAY_ADMIN_ADMIN_H

#include <stdint.h>

#include "core/worker.h"
#include "pool/stats.h"

struct client;

/* Per-database averages over the last stats_period (SHOW STATS_AVERAGES), as PgBouncer
 * computes them: counts and bytes per second, times per transaction or query, wait per second. */
struct admin_db_avg {
    char *database;
    struct pool_stats prev; /* totals at the start of the period */
    uint64_t xact_count, query_count, recv, sent, xact_time, query_time, wait_time;
    int seen; /* still has pools or kept counters (else dropped at the next period) */
};

/* A PAUSE waiting for the transactions in flight (of one database, or "" for all). */
struct admin_pause {
    uint64_t client;
    char database[128];
    int planned; /* SWITCHOVER node: answered as such, and not resumed when it takes too long */
};
#define ADMIN_MAX_PAUSES 16

struct admin {
    struct admin_pause pauses[ADMIN_MAX_PAUSES];
    int n_pauses;
    char **disabled; /* DISABLE db: refused at login until ENABLE */
    int n_disabled;
    struct admin_db_avg *avgs;
    int n_avgs;
    int64_t period_start;    /* ms */
    struct metrics *metrics; /* the /metrics endpoint (admin/metrics.c), or NULL */
};

int admin_init(struct worker *w);
void admin_free(struct worker *w);
/* Logged in to the admin database: parameters and ReadyForQuery. */
void admin_welcome(struct client *c);
/* Run the admin client's queries. */
void admin_process(struct client *c);
/* Periodic: answer PAUSE once in-flight transactions are done (or pause_timeout); roll the
 * stats_period averages. */
void admin_check_pause(struct worker *w);
/* DISABLE db is in effect for this database. */
int admin_db_disabled(struct worker *w, const char *database);
/* Totals of one database (NULL: all), over live pools and the counters freed ones left. */
void admin_db_totals(struct worker *w, const char *database, struct pool_stats *sum);

#endif
