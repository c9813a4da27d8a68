/* Per-pool traffic counters: the few increments of the data path and their keeping. */
#include "pool/stats.h"

#include <stdlib.h>
#include <string.h>

#include "client/client.h"
#include "core/clock.h"
#include "pool/pool.h"
#include "server/server.h"

const int64_t stats_bucket_us[STATS_NBUCKETS - 1] = {
    100,   250,    500,    1000,   2500,    5000,    10000,   25000,
    50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000,
};

void stats_request(struct server *s)
{
    s->pool->stats.query_count++;
    if (!s->query_start)
        s->query_start = now_us();
    if (!s->xact_start)
        s->xact_start = s->query_start;
}

void stats_ready(struct server *s, const struct client *c)
{
    if (!s->query_start)
        return;
    struct pool_stats *st = &s->pool->stats;
    int64_t now = now_us();
    int64_t q = now - s->query_start;
    st->query_us += (uint64_t)q;
    stats_observe(st->query_hist, q);
    /* Pipelined requests still unanswered keep the server busy from now on. */
    s->query_start = c->pending > 0 ? now : 0;
    if (!s->query_start)
        s->ready_at = now;
    if (s->txn_status == 'I' && s->xact_start && !s->query_start) {
        st->xact_count++;
        st->xact_us += (uint64_t)(now - s->xact_start);
        s->xact_start = 0;
    }
}

void stats_waited(struct pool *p, int64_t wait_since_ms)
{
    /* wait_since is kept in ms by the client; a wait shorter than that reads as 0. */
    int64_t us = (now_ms() - wait_since_ms) * 1000;
    if (us < 0)
        us = 0;
    p->stats.wait_us += (uint64_t)us;
    stats_observe(p->stats.wait_hist, us);
}

void stats_add(struct pool_stats *to, const struct pool_stats *from)
{
    to->xact_count += from->xact_count;
    to->query_count += from->query_count;
    to->bytes_recv += from->bytes_recv;
    to->bytes_sent += from->bytes_sent;
    to->xact_us += from->xact_us;
    to->query_us += from->query_us;
    to->wait_us += from->wait_us;
    for (int i = 0; i < STATS_NBUCKETS; i++) {
        to->query_hist[i] += from->query_hist[i];
        to->wait_hist[i] += from->wait_hist[i];
    }
}

void stats_keep(struct pool *p)
{
    /* A pool that never served anything (a login that failed) leaves nothing to keep. */
    if (!p->stats.query_count && !p->stats.bytes_recv && !p->stats.wait_us)
        return;
    struct stats_kept *k = calloc(1, sizeof(*k));
    if (!k)
        return;
    k->database = strdup(p->database);
    k->user = strdup(p->user);
    if (!k->database || !k->user) {
        free(k->database);
        free(k->user);
        free(k);
        return;
    }
    k->role = p->role;
    k->st = p->stats;
    list_append(&p->w->stats_kept, &k->node);
}

static void kept_free(struct stats_kept *k)
{
    list_del(&k->node);
    free(k->database);
    free(k->user);
    free(k);
}

void stats_adopt(struct pool *p)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &p->w->stats_kept)
    {
        struct stats_kept *k = container_of(pos, struct stats_kept, node);
        if (k->role == p->role && !strcmp(k->database, p->database) && !strcmp(k->user, p->user)) {
            p->stats = k->st;
            kept_free(k);
            return;
        }
    }
}

void stats_kept_sum(struct worker *w, const char *database, struct pool_stats *sum)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->stats_kept)
    {
        struct stats_kept *k = container_of(pos, struct stats_kept, node);
        if (!database || !*database || !strcmp(k->database, database))
            stats_add(sum, &k->st);
    }
}

void stats_free_kept(struct worker *w)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->stats_kept)
    {
        kept_free(container_of(pos, struct stats_kept, node));
    }
}
