/* Topology: probes every node, decides who is the writer and which nodes serve reads. */
#ifndef PGSTAY_TOPOLOGY_TOPOLOGY_H
#define PGSTAY_TOPOLOGY_TOPOLOGY_H

#include <stdint.h>

#include "config/config.h"
#include "core/worker.h"

enum node_role {
    NODE_UNKNOWN = 0, /* not probed yet */
    NODE_PRIMARY,
    NODE_STANDBY,
    NODE_DOWN,
    NODE_FENCED, /* claims to be primary on an older timeline: no traffic */
};

const char *node_role_name(int role);

struct server;

struct node {
    char name[64];
    char host[256];
    int port;
    int role;               /* enum node_role */
    int in_recovery;
    uint32_t timeline;
    uint64_t lsn;           /* current (primary) or replayed (standby) WAL position */
    uint64_t lag_bytes;     /* behind the writer */
    int64_t latency_us;     /* of the last probe */
    int64_t last_ok;        /* ms */
    int64_t probe_sent;     /* ms; 0 when no probe is in flight */
    int64_t probe_sent_us;  /* for the latency */
    int got_row;            /* the probe in flight has answered its row */
    int fails;              /* consecutive failed probes */
    int n_servers;          /* pool connections on this node (least-loaded reader choice) */
    struct server *probe;   /* the probe connection */
    uint64_t generation;    /* bumped when the node changes role: servers from before are stale */
};

struct topology {
    struct worker *w;
    struct node nodes[CONFIG_MAX_NODES];
    int n_nodes;
    struct node *writer; /* NULL while there is none (hold) */
    struct event *timer;
    int fast;            /* probing at the fast period (no writer) */
    int split_logged;    /* two primaries on one timeline already reported */
};

int topology_init(struct worker *w);
void topology_free(struct worker *w);
/* Probe every node now (a writer connection died, or the writer answered 25006). */
void topology_probe_now(struct worker *w, const char *why);
/* A healthy standby for a reader session, least-loaded first; NULL if none qualifies. */
struct node *topology_pick_reader(struct worker *w);
/* Probe at health_check_fast_period (no writer) or the normal period. */
void topology_set_fast(struct worker *w, int fast);
struct node *topology_find(struct worker *w, const char *name);
uint64_t lsn_parse(const char *s);

#endif
