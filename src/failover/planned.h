/* A planned switchover told ahead: a PAUSE that begins before the writer is stopped and ends by
 * itself when the next writer is found, or when no switchover followed (issue 15). */
#ifndef PGSTAY_FAILOVER_PLANNED_H
#define PGSTAY_FAILOVER_PLANNED_H

#include <stdint.h>

#include "core/worker.h"

struct node;

/* A scheduled switchover's hold begins this long before the time Patroni set for it: time for
 * the transactions in flight to end before Patroni's CHECKPOINT and fast shutdown, with some
 * room for the clocks of the two hosts. */
#define PLANNED_LEAD_MS 1000

int planned_init(struct worker *w);
void planned_free(struct worker *w);

/* nd is about to be stopped for a planned switchover (SWITCHOVER from the admin console, which
 * Patroni's before_stop hook sends, or the time of a scheduled one): if nd is the writer, new
 * transactions on the writer endpoint are held from now on, as with PAUSE, while those in flight
 * finish (failover_pause_done says when). The hold ends by itself when a writer is found after nd
 * went (a new leader, or nd again after a restart), when Patroni withdraws a scheduled
 * switchover, or failover_timeout after it began. 1: holding; 0: nd is not the writer, nothing
 * to hold. */
int planned_begin(struct worker *w, struct node *nd, int scheduled, const char *why);
/* The hold is on. */
int planned_active(struct worker *w);
/* An operator's PAUSE came during the hold: the pause is the operator's now, and the hold's end
 * leaves it for the operator's RESUME. */
void planned_pause_taken(struct worker *w);

/* topology_source = patroni: /cluster's scheduled_switchover changed: from (NULL: the writer)
 * is to be stopped in_ms from now (may be negative: it is due); in_ms = INT64_MIN: no switchover
 * is scheduled any more. */
void planned_scheduled(struct worker *w, struct node *from, int64_t in_ms);

/* struct topology_hooks' writer_lost and writer_found: failover's, then the hold's end. */
void planned_writer_lost(struct worker *w, struct node *old, const char *why);
void planned_writer_found(struct worker *w, struct node *nd);

#endif
