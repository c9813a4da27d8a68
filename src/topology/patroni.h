/* Patroni as the authority on the writer: polls /cluster without blocking the loop (issue 15). */
#ifndef PGSTAY_TOPOLOGY_PATRONI_H
#define PGSTAY_TOPOLOGY_PATRONI_H

struct topology;
struct node;

/* Parse patroni_url and get ready to poll; -1 (logged) when it is unusable. */
int patroni_init(struct topology *t);
void patroni_free(struct topology *t);
/* Start a round of /cluster requests unless one is in flight: the members' URLs in order from the
 * last one that answered, each bounded by health_check_timeout; the round ends with
 * topology_patroni_answer. */
void patroni_poll(struct topology *t);

/* topology.c, for patroni.c: what a round found. fresh = 0: no member answered (leader is then
 * ignored and the last one named is kept). */
void topology_patroni_answer(struct topology *t, struct node *leader, int fresh, const char *why);

#endif
