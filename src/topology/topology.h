/* Topology: probes every node, decides who is the writer and which nodes serve reads. */
#ifndef PGSTAY_TOPOLOGY_TOPOLOGY_H
#define PGSTAY_TOPOLOGY_TOPOLOGY_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "core/worker.h"

enum node_role {
    NODE_UNKNOWN = 0, /* not probed yet */
    NODE_PRIMARY,
    NODE_STANDBY,
    NODE_DOWN,
    NODE_FENCED,  /* claims to be primary on an older timeline: no traffic */
    NODE_FOREIGN, /* another cluster (system identifier): never used */
    NODE_REMOVED, /* taken out of [nodes] by a reload: draining, never lent again */
};

const char *node_role_name(int role);

/* What Patroni's /cluster said of a node (topology_source = patroni). */
enum patroni_role {
    PAT_UNKNOWN = 0, /* not asked, or no answer yet */
    PAT_LEADER,      /* holds the leader lock in the consensus store */
    PAT_REPLICA,     /* a member that is not the leader (replica, sync_standby, standby_leader) */
    PAT_ABSENT,      /* not among the members Patroni lists */
};

struct server;
struct topology;
struct login_backoff;

struct node {
    struct topology *topo;
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
    int64_t last_ok_sent_us; /* when the last probe that answered was sent (µs) */
    int64_t probe_sent;     /* ms; 0 when no probe is in flight */
    int64_t probe_sent_us;  /* for the latency */
    int got_row;            /* the probe in flight has answered its row */
    int fails;              /* consecutive failed probes (health_check_fall of them: down) */
    int oks;                /* consecutive answered probes (health_check_rise of them: up again) */
    int missed;             /* health_check_timeouts counted against the probe in flight */
    int suspect;            /* a probe failed, not yet health_check_fall of them */
    int answered;           /* its first probe answered or failed (the start-up rule) */
    int claim;              /* what its last answer said: NODE_PRIMARY or NODE_STANDBY; 0 = none */
    int probe_up;           /* the probe connection is logged in */
    int lost_unanswered;    /* the probe connection was lost and no probe answered since */
    int probe_again;        /* a probe sent from now on is wanted (one in flight is older) */
    uint64_t sysid;         /* pg_control_system().system_identifier */
    char note[200];         /* why it is down, fenced, foreign or rising (SHOW NODES) */
    struct event *kick;     /* reconnect or re-probe this node soon (deferred) */
    /* failed server logins, per pool (pool/backoff.c); a list per worker, as pools are */
    struct login_backoff *backoffs[WORLD_MAX];
    /* pool connections on this node, every worker's (least-loaded reader choice): atomic, as
     * workers open and close them without stopping the world */
    _Atomic int n_servers;
    struct server *probe;   /* the probe connection (opaque here: topology_hooks' probe_*) */
    uint64_t generation;    /* bumped when the node changes role: servers from before are stale */
    int patroni_role;       /* enum patroni_role: the last /cluster answer (SHOW NODES' source) */
    char patroni_state[24]; /* Patroni's state of the member: running, stopped, starting, ... */
};

struct topology {
    struct worker *w;
    const struct topology_hooks *hooks;
    struct node nodes[CONFIG_MAX_NODES];
    int n_nodes;
    struct node *writer; /* NULL while there is none (hold) */
    struct event *timer;
    int fast;            /* probing at the fast period (no writer) */
    int split_logged;    /* two primaries on one timeline already reported */
    /* Memory, for the process's lifetime (failover contract 4). */
    uint32_t max_tli;    /* the highest timeline seen on a node of this cluster */
    uint64_t sysid;      /* the cluster's system identifier; 0 until adopted */
    int sysid_logged;
    /* Start-up: no writer until every node answered or failed its first probe. */
    int started;
    int64_t start_ms;
    /* The writer missed a probe (or a server connection to it died): new requests are held
     * until it answers again or is declared lost. */
    int suspect;
    int64_t suspect_since;
    int corroborated;    /* a server connection to the writer failed while suspect */
    char hold_reason[200]; /* why there is no writer (logged once per change) */
    /* topology_source = patroni (topology/patroni.c): the leader Patroni named last is the only
     * node that may be the writer; while Patroni does not answer it stays the writer as long as
     * its probes say primary, and no other node is taken. */
    struct patroni *patroni; /* NULL with topology_source = probes */
    struct node *pat_leader; /* the leader in the last answer; NULL: none named */
    int pat_answered;        /* Patroni answered at least once */
    int pat_fresh;           /* its last poll round answered */
    uint64_t pat_rounds;     /* poll rounds completed, answered or not */
    /* The writer a planned switchover is about to stop (failover/planned.c sets it while its
     * hold lasts): Patroni names it leader in state "stopping" while its before_stop hook
     * waits for the transactions in flight, and it stays the writer until its PostgreSQL
     * really stops, so that they end instead of being cut (new ones are held meanwhile). */
    struct node *planned_from;
};

/* What the end of a server connection to the writer (or an answer on one) says about the
 * writer; given by the caller, who knows why the connection ended. */
enum writer_evidence {
    EVIDENCE_NONE,       /* pgstay ended it (role change, reset, client left): nothing */
    EVIDENCE_FAILURE,    /* the server or the network ended it (EOF, reset, FATAL, timeout) or
                            the writer answered 25006: the writer is suspect */
    EVIDENCE_TERMINATED, /* its backend alone was terminated (57P01): the node may be fine, so
                            nothing is held; a probe sent now tells */
};

/* What a probe connection reports back to topology; arg is the node it probes. The connection
 * itself is a session-layer struct server that topology only holds (never reads): it logs in as
 * health_check_user, and its queries' rows and ends come back here. */
struct probe_callbacks {
    /* One row of the probe query's answer. */
    void (*on_row)(void *arg, int ncols, const char **vals);
    /* Logged in (first time), then once per query answered (ReadyForQuery). */
    void (*on_ready)(void *arg);
    /* The connection ended without topology closing it (refused, login failed, timeout, lost);
     * p says which connection, so that a late end of a replaced one is told apart. */
    void (*on_fail)(struct server *p, void *arg, const char *why);
};

/* Calls from topology up to failover and the session layer, which sit above it (see
 * tools/layers.py); the program registers them at topology_init, before the first probe. */
struct topology_hooks {
    /* session: the probe connections (src/server/probe.c). probe_open starts connecting and
     * logging in (NULL if it could not even start); probe_idle: logged in and no query in
     * flight, so a probe may be sent; probe_query sends one; probe_close closes it without
     * calling on_fail (topology's own decision); probe_detach only stops its callbacks (the
     * loop frees the connection with the others, at topology_free). */
    struct server *(*probe_open)(struct worker *w, struct node *nd, const char *user,
                                 const char *dbname, const struct probe_callbacks *cb, void *arg);
    int (*probe_idle)(struct server *p);
    void (*probe_query)(struct server *p, const char *sql);
    void (*probe_close)(struct server *p, const char *why);
    void (*probe_detach)(struct server *p);
    /* failover: the writer went (old may be NULL at start-up) or was found; standbys get
     * servers opened ahead while there is none. */
    void (*writer_lost)(struct worker *w, struct node *old, const char *why);
    void (*writer_found)(struct worker *w, struct node *nd);
    void (*open_ahead)(struct worker *w);
    /* session: pools may lend again; every pool connection to nd goes (down, fenced, foreign). */
    void (*kick_all)(struct worker *w);
    void (*node_dropped)(struct worker *w, struct node *nd, const char *why);
    /* session: a node removed by a reload drains: its idle and not yet lent servers are closed
     * now (called again each period while it drains); lent ones close when released. */
    void (*node_drain)(struct worker *w, struct node *nd, const char *why);
    /* session: login backoffs, per node: kick the pools whose wait ended; free a node's. */
    void (*backoff_due)(struct worker *w);
    void (*backoff_free)(struct node *nd);
    /* failover (topology_source = patroni): /cluster's scheduled switchover, from (NULL: the
     * leader) in in_ms (INT64_MIN: none any more); see failover/planned.h. */
    void (*switchover_scheduled)(struct worker *w, struct node *from, int64_t in_ms);
};

int topology_init(struct worker *w, const struct topology_hooks *hooks);
void topology_free(struct worker *w);
/* Every node is probed now. With EVIDENCE_FAILURE (a server connection to the writer died, or
 * the writer answered 25006) the writer becomes suspect, lost at once if it already was. */
void topology_probe_now(struct worker *w, enum writer_evidence ev, const char *why);
/* A signal from a server connection that the node is going away (57P01/57P02/57P03 at login). */
void topology_node_signal(struct worker *w, struct node *nd, const char *why);
/* Health as SHOW NODES names it: up, suspect, down, unknown. */
const char *topology_health_name(struct topology *t, struct node *nd);
/* A healthy standby for a reader session, least-loaded first; NULL if none qualifies. */
struct node *topology_pick_reader(struct worker *w);
/* Probe at health_check_fast_period (no writer) or the normal period. */
void topology_set_fast(struct worker *w, int fast);
/* A node of [nodes] by name (not one a reload removed). */
struct node *topology_find(struct worker *w, const char *name);
/* Is the slot in use (a node of [nodes], or a removed one still draining)? A slot is freed once
 * nothing uses its node any more, and taken again by a node a later reload adds; its memory
 * stays, so a stale pointer never reads freed memory, and its generation only grows. */
static inline int node_listed(const struct node *nd)
{
    return nd->name[0] != '\0';
}
/* A reload's [nodes]: 0 if it may apply; -1 with why if it removes (or moves) the node that is
 * the writer now, which a reload never does silently. */
int topology_nodes_check(struct worker *w, const struct node_conf *nodes, int n, char *why,
                         size_t cap);
/* Make the topology follow w->cfg's [nodes]: a node gone or moved drains (no new connections,
 * its idle servers closed, lent ones closed when released, freed when none is left), a new one
 * is probed and judged as at start-up (system identifier, timeline fencing). */
void topology_sync_nodes(struct worker *w);
/* Where the node's role comes from, for SHOW NODES: "probe", or Patroni's role and state. */
void topology_role_source(struct topology *t, struct node *nd, char *out, size_t cap);
uint64_t lsn_parse(const char *s);

#endif
