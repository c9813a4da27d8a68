/* Topology's probe connections, served from the session layer: the probe_* calls of struct
 * topology_hooks, which src/app/worker.c registers (topology, below, never sees a server). */
#ifndef PGSTAY_SERVER_PROBE_H
#define PGSTAY_SERVER_PROBE_H

#include "core/worker.h"
#include "topology/topology.h"

struct server *probe_open(struct worker *w, struct node *nd, const char *user, const char *dbname,
                          const struct probe_callbacks *cb, void *arg);
int probe_idle(struct server *p);
void probe_query(struct server *p, const char *sql);
void probe_close(struct server *p, const char *why);
void probe_detach(struct server *p);

#endif
