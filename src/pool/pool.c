/* Session pooling: lend a server per client session, queue clients when full, reset on return. */
#include "pool/pool.h"
#include "pool/prepared.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/authquery.h"
#include "core/log.h"
#include "pool/backoff.h"
#include "proto/proto.h"
#include "topology/topology.h"

static int session_releasable(const struct client *c)
{
    return 0;
}

/* Between transactions, with nothing pending and nothing that pins the session. */
static int transaction_releasable(const struct client *c)
{
    return !c->pin_reason && c->pending == 0 && c->unsynced == 0 && c->fwd_left == 0 &&
           c->txn_status == 'I' && !c->in_copy_in;
}

const struct pool_mode_ops pool_modes[2] = {
    [POOL_SESSION] = {"session", 1, session_releasable},
    [POOL_TRANSACTION] = {"transaction", 0, transaction_releasable},
};

const struct kvlist *pool_welcome_find(struct pool *p, uint64_t key)
{
    for (int i = 0; i < p->n_welcomes; i++)
        if (p->welcomes[i].key == key)
            return &p->welcomes[i].params;
    return NULL;
}

void pool_welcome_store(struct pool *p, uint64_t key, const struct kvlist *reported)
{
    if (pool_welcome_find(p, key) || reported->n == 0)
        return;
    struct pool_welcome *pw;
    if (p->n_welcomes < POOL_WELCOMES) {
        pw = &p->welcomes[p->n_welcomes++];
    } else {
        pw = &p->welcomes[p->next_welcome];
        p->next_welcome = (p->next_welcome + 1) % POOL_WELCOMES;
        kv_clear(&pw->params);
    }
    pw->key = key;
    memset(&pw->params, 0, sizeof(pw->params));
    for (int i = 0; i < reported->n; i++)
        kv_set(&pw->params, reported->items[i].name, reported->items[i].value);
}

/* The login backoffs of a pool about to go (they live on its nodes). */
static void forget_backoffs(struct pool *p)
{
    struct topology *t = p->w->topo;
    for (int i = 0; t && i < t->n_nodes; i++) {
        struct login_backoff **pp = &t->nodes[i].backoffs[p->w->index];
        while (*pp) {
            if ((*pp)->pool == p) {
                struct login_backoff *b = *pp;
                *pp = b->next;
                free(b);
            } else {
                pp = &(*pp)->next;
            }
        }
    }
}

void pool_free(struct pool *p)
{
    stats_keep(p);
    forget_backoffs(p);
    defer_cancel(&p->kick);
    list_del(&p->node);
    kv_clear(&p->base);
    for (int i = 0; i < p->n_welcomes; i++)
        kv_clear(&p->welcomes[i].params);
    free(p->known);
    free(p->database);
    free(p->user);
    free(p);
}

/* How long an unused pool that has welcomed clients is kept: the next client of the same
 * database and user is then welcomed at once from what it learned (as PgBouncer, which keeps
 * its pools), with no server to log in. Without this a client arriving just after the pool's
 * last server was closed (idle timeout, another pool's max_user_connections) would wait for a
 * server at login. Pools that never welcomed anyone (failed logins, unknown users) go at once:
 * they are what a stream of bad logins would pile up. */
#define POOL_KEEP_MS (10 * 60 * 1000)

void pool_gc(struct worker *w, int64_t now)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->pools)
    {
        struct pool *p = container_of(pos, struct pool, node);
        if (p->n_clients || p->n_servers || !list_empty(&p->waiting)) {
            p->empty_since = 0;
            continue;
        }
        if (!p->empty_since)
            p->empty_since = now;
        if (p->n_welcomes == 0 || now - p->empty_since >= POOL_KEEP_MS)
            pool_free(p);
    }
}

static void kick_run(struct deferred *d);

/* A pool made in one worker learns what the same pool in another worker knows of its servers:
 * their parameters (a client is welcomed at once, with no server, as it would be there) and a
 * SCRAM ClientKey. Pools are made once per worker and key, so stopping the world here is rare. */
static struct pool *sibling(struct worker *x, const struct pool *p);

static void learn_from_sibling(struct pool *p)
{
    struct worker *w = p->w;
    if (w->world->n == 1)
        return;
    world_stop(w);
    for (int i = 0; i < w->world->n; i++) {
        struct worker *x = w->world->workers[i];
        if (x == w)
            continue;
        struct pool *q = sibling(x, p);
        if (!q)
            continue;
        if (p->base.n == 0)
            for (int k = 0; k < q->base.n; k++)
                kv_set(&p->base, q->base.items[k].name, q->base.items[k].value);
        for (int k = 0; k < q->n_welcomes; k++)
            pool_welcome_store(p, q->welcomes[k].key, &q->welcomes[k].params);
        for (int k = 0; k < q->n_known; k++)
            pool_learn_known(p, q->known[k]);
        if (q->have_client_key && !p->have_client_key) {
            memcpy(p->client_key, q->client_key, sizeof(p->client_key));
            p->have_client_key = 1;
        }
    }
    world_start(w);
}

struct pool *pool_get(struct worker *w, const char *database, const char *user, int role)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->pools)
    {
        struct pool *p = container_of(pos, struct pool, node);
        if (p->role == role && !strcmp(p->database, database) && !strcmp(p->user, user))
            return p;
    }
    struct pool *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->w = w;
    p->role = role;
    p->database = strdup(database);
    p->user = strdup(user);
    if (!p->database || !p->user) {
        free(p->database);
        free(p->user);
        free(p);
        return NULL;
    }
    char key[600];
    snprintf(key, sizeof(key), "pool %d %s\n%s", role, database, user);
    p->share = world_count_get(w->world, key);
    snprintf(key, sizeof(key), "database %s", database);
    p->db_share = world_count_get(w->world, key);
    snprintf(key, sizeof(key), "user %s", user);
    p->user_share = world_count_get(w->world, key);
    if (!p->share || !p->db_share || !p->user_share) {
        free(p->database);
        free(p->user);
        free(p);
        return NULL;
    }
    list_init(&p->idle);
    list_init(&p->waiting);
    list_init(&p->kick.node);
    p->kick.run = kick_run;
    list_append(&w->pools, &p->node);
    stats_adopt(p);
    learn_from_sibling(p);
    return p;
}

/* Where new servers of this pool go now: the writer, or a reader; NULL = hold. */
static struct node *target_node(struct pool *p)
{
    struct worker *w = p->w;
    if (p->role == ROLE_WRITER)
        return w->topo->writer;
    struct node *nd = topology_pick_reader(w);
    if (!nd && w->cfg->readonly_fallback == FALLBACK_WRITER)
        nd = w->topo->writer;
    return nd;
}

/* Servers of every pool with p's database (db) or user (!db), in every worker. */
static int shared_servers(struct pool *p, int db)
{
    return world_count_read(db ? p->db_share : p->user_share);
}

static int at_shared_limit(struct pool *p)
{
    const struct config *cfg = p->w->cfg;
    return (cfg->max_db_connections > 0 && shared_servers(p, 1) >= cfg->max_db_connections) ||
           (cfg->max_user_connections > 0 && shared_servers(p, 0) >= cfg->max_user_connections);
}

/* Close an idle server of another pool that shares p's limited database or user (the one
 * idle longest), as PgBouncer does, so that p can open one. 1 if one was closed. */
static int evict_idle_for(struct pool *p)
{
    const struct config *cfg = p->w->cfg;
    int by_db = cfg->max_db_connections > 0 && shared_servers(p, 1) >= cfg->max_db_connections;
    int by_user = cfg->max_user_connections > 0 && shared_servers(p, 0) >= cfg->max_user_connections;
    struct server *victim = NULL;
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &p->w->servers[SV_IDLE])
    {
        struct server *s = container_of(pos, struct server, node);
        struct pool *q = s->pool;
        if (!q || q == p)
            continue;
        if ((by_db && strcmp(q->database, p->database)) || (by_user && strcmp(q->user, p->user)))
            continue;
        if (!victim || s->last_used < victim->last_used)
            victim = s;
    }
    if (!victim)
        return 0;
    server_close(victim, by_db ? "max_db_connections: room for another pool of its database"
                               : "max_user_connections: room for another pool of its user");
    return 1;
}

/* Has the client at the head of p's queue waited long enough for a reserve server
 * (PgBouncer's reserve_pool_timeout; 0 means never)? */
static int reserve_due(struct pool *p)
{
    const struct config *cfg = p->w->cfg;
    struct list *first = list_first(&p->waiting);
    if (cfg->reserve_pool_size <= 0 || cfg->reserve_pool_timeout <= 0 || !first)
        return 0;
    struct client *c = container_of(first, struct client, pool_node);
    return now_ms() - c->wait_since >= cfg->reserve_pool_timeout;
}

/* How many servers p may have now: pool_size, plus reserve_pool_size while a client has waited
 * past reserve_pool_timeout. */
static int pool_cap(struct pool *p)
{
    int cap = config_pool_size(p->w->cfg, p->database, p->user);
    return reserve_due(p) ? cap + p->w->cfg->reserve_pool_size : cap;
}

/* ---- Limits across workers: each worker has its own pools, their servers count together ----
 *
 * A worker opens a server only after taking a slot of the pool's shared count (pool_size), and
 * of its database's and user's when those are limited; a close gives them back. A worker whose
 * clients wait and that finds no slot sets its bit in the pool's `starved` mask, and the first
 * time pokes the others; the bit is cleared once nobody waits there. An idle server then moves
 * (no new login) to a starving worker: at once if its worker has nobody waiting (pool_poked),
 * or when it is released in a worker that holds at least two more than the starving one
 * (hand_over). db/user limits free a slot by closing instead (a server of another pool cannot
 * serve). So a client waiting in one worker is served when a server frees in another, and
 * while every worker has clients waiting, pool_size splits evenly with no server moving. */

/* Other workers' bits in a count's starved mask. */
static uint64_t others_starving(struct world_count *c, const struct worker *w)
{
    return atomic_load_explicit(&c->starved, memory_order_relaxed) & ~(1ull << w->index);
}

/* This worker waits (on) or no longer waits for count c. Newly waiting, it wakes the other
 * workers, one of which may have an idle server to let go. */
static void starve_on(struct world_count *c, struct worker *w, int on)
{
    uint64_t bit = 1ull << w->index;
    if (!on) {
        if (atomic_load_explicit(&c->starved, memory_order_relaxed) & bit)
            atomic_fetch_and_explicit(&c->starved, ~bit, memory_order_relaxed);
        return;
    }
    if (atomic_fetch_or_explicit(&c->starved, bit, memory_order_relaxed) & bit)
        return;
    for (int i = 0; i < w->world->n; i++)
        if (i != w->index)
            world_poke(w->world->workers[i]);
}

static void starve(struct pool *p, int on)
{
    starve_on(p->share, p->w, on);
}

/* Nobody waits in p any more: for its pool_size, database or user. */
static void starve_clear(struct pool *p)
{
    starve(p, 0);
    starve_on(p->db_share, p->w, 0);
    starve_on(p->user_share, p->w, 0);
}

/* Once a second (worker tick), a worker still waiting announces it again: a safety net, as a
 * bit is otherwise announced only when newly set, and a wake-up that found nothing to hand over
 * then is not repeated. Cheap: one poke per starving pool per second. */
void pool_starve_remind(struct worker *w)
{
    if (w->world->n == 1)
        return;
    uint64_t bit = 1ull << w->index;
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->pools)
    {
        struct pool *p = container_of(pos, struct pool, node);
        if (list_empty(&p->waiting))
            continue;
        uint64_t mask = atomic_load_explicit(&p->share->starved, memory_order_relaxed) |
                        atomic_load_explicit(&p->db_share->starved, memory_order_relaxed) |
                        atomic_load_explicit(&p->user_share->starved, memory_order_relaxed);
        if (!(mask & bit))
            continue;
        for (int i = 0; i < w->world->n; i++)
            if (i != w->index)
                world_poke(w->world->workers[i]);
    }
}

/* p waits for room in its database's or user's limit (max_db_connections, _user_). */
static void starve_shared(struct pool *p)
{
    const struct config *cfg = p->w->cfg;
    if (cfg->max_db_connections > 0 && world_count_read(p->db_share) >= cfg->max_db_connections)
        starve_on(p->db_share, p->w, 1);
    if (cfg->max_user_connections > 0 &&
        world_count_read(p->user_share) >= cfg->max_user_connections)
        starve_on(p->user_share, p->w, 1);
}

int pool_slot_take(struct pool *p)
{
    const struct config *cfg = p->w->cfg;
    if (!world_count_take(p->share, pool_cap(p))) {
        if (!list_empty(&p->waiting))
            starve(p, 1);
        return 0;
    }
    if (!world_count_take(p->db_share, cfg->max_db_connections)) {
        atomic_fetch_sub_explicit(&p->share->n, 1, memory_order_relaxed);
        return 0;
    }
    if (!world_count_take(p->user_share, cfg->max_user_connections)) {
        atomic_fetch_sub_explicit(&p->share->n, 1, memory_order_relaxed);
        atomic_fetch_sub_explicit(&p->db_share->n, 1, memory_order_relaxed);
        return 0;
    }
    atomic_fetch_add_explicit(&p->share->per[p->w->index], 1, memory_order_relaxed);
    starve_clear(p);
    return 1;
}

void pool_slot_give(struct pool *p)
{
    atomic_fetch_sub_explicit(&p->share->n, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&p->share->per[p->w->index], 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&p->db_share->n, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&p->user_share->n, 1, memory_order_relaxed);
    struct world *wd = p->w->world;
    uint64_t others = others_starving(p->share, p->w) | others_starving(p->db_share, p->w) |
                      others_starving(p->user_share, p->w);
    for (int i = 0; others && i < wd->n; i++)
        if (others & (1ull << i))
            world_poke(wd->workers[i]);
}

static int node_fits(struct pool *p, struct node *nd);

int pool_over_size(struct pool *p)
{
    return pool_servers_all(p) >
           config_pool_size(p->w->cfg, p->database, p->user) + p->w->cfg->reserve_pool_size;
}

int pool_trim(struct server *s)
{
    struct pool *p = s->pool;
    if (!pool_over_size(p))
        return 0;
    /* Decided with the other workers parked: two workers trimming at once would each see the
     * other's server still counted and close one too many. Rare: only after a smaller
     * pool_size. */
    struct worker *w = p->w;
    world_stop(w);
    /* (another worker's stop, waited for here, may have closed it meanwhile: gone all the same) */
    int over = s->state == SV_CLOSING || pool_over_size(p);
    if (over)
        server_close(s, "pool_size lowered: more servers than pool_size and reserve_pool_size");
    world_start(w);
    return over;
}

/* The same pool (database, user, endpoint) in worker x, NULL if x has none. */
static struct pool *sibling(struct worker *x, const struct pool *p)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &x->pools)
    {
        struct pool *q = container_of(pos, struct pool, node);
        if (q->role == p->role && !strcmp(q->database, p->database) && !strcmp(q->user, p->user))
            return q;
    }
    return NULL;
}

/* s moves to q (another worker's same pool), its slot with it. World stopped. */
static int move_server(struct server *s, struct pool *q)
{
    struct pool *p = s->pool;
    int from = p->w->index, to = q->w->index;
    if (server_move(s, q) < 0)
        return -1;
    atomic_fetch_sub_explicit(&p->share->per[from], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->share->per[to], 1, memory_order_relaxed);
    pool_kick(q); /* runs on q's loop once the world goes on */
    return 0;
}

/* Which starving worker should get a server of p that is idle now: one with none, or with at
 * least two fewer than this worker (so that a balanced split does not bounce servers to and
 * fro); any when p has no client waiting. -1: none. Read from the counts, no stop needed. */
static int recipient(struct pool *p)
{
    uint64_t others = others_starving(p->share, p->w);
    if (!others)
        return -1;
    int mine = atomic_load_explicit(&p->share->per[p->w->index], memory_order_relaxed);
    int best = -1, best_n = 0;
    /* From the next worker on, round the ring: among equals the nearest wins, so that with
     * fewer servers than workers waiting, the server goes round them all in turn. */
    for (int k = 1; k < p->w->world->n; k++) {
        int i = (p->w->index + k) % p->w->world->n;
        if (!(others & (1ull << i)))
            continue;
        int n = atomic_load_explicit(&p->share->per[i], memory_order_relaxed);
        if (best < 0 || n < best_n) {
            best = i;
            best_n = n;
        }
    }
    if (list_empty(&p->waiting) || best_n == 0 || mine >= best_n + 2)
        return best;
    return -1;
}

/* An idle server of p goes to another worker whose clients wait for this pool (instead of a
 * close there and a login elsewhere), as long as that worker has more clients waiting than
 * idle servers. 1 if it went; 0 if no worker needs it; -1 if one does but the server cannot
 * move yet (unread bytes): retried once at the next turn. Only from pool_poked, an event of
 * its own: never from inside a connection's callback, whose caller would go on reading or
 * writing a connection that another thread now owns. */
static int hand_over(struct server *s)
{
    struct pool *p = s->pool;
    int to = recipient(p);
    if (to < 0)
        return 0;
    struct worker *w = p->w;
    int r = 0;
    world_stop(w);
    struct pool *q = sibling(w->world->workers[to], p);
    if (q && q->n_waiting > list_count(&q->idle))
        r = move_server(s, q) == 0 ? 1 : -1;
    world_start(w); /* moved (r > 0), s is the other worker's now: not touched again here */
    if (r < 0 && !s->move_retried) {
        /* Once, at the next turn: the callback has consumed its bytes by then. A server that
         * still cannot move (something unread arrived while idle) stays, and is not retried
         * at every turn of the loop; the next release or poke tries again. */
        s->move_retried = 1;
        world_poke(w);
    }
    if (r > 0 && !list_empty(&p->waiting))
        /* Its own clients still wait (it had more servers than the recipient): this worker now
         * starves too, or the server would never come back round to them. The kick finds no
         * slot and sets its bit (the worker that got the server may never have failed to
         * take one, so nothing else would). */
        pool_kick(p);
    return r;
}

/* Should an idle server of p close, for another worker's clients waiting for room in its
 * database's or user's limit (max_db_connections, max_user_connections)? A server of another
 * pool cannot serve them: the slot is what they need. */
static int owed_elsewhere(struct pool *p)
{
    return list_empty(&p->waiting) &&
           (others_starving(p->db_share, p->w) || others_starving(p->user_share, p->w));
}

void pool_poked(struct worker *w)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->pools)
    {
        struct pool *p = container_of(pos, struct pool, node);
        if (list_empty(&p->waiting)) {
            /* its clients were served meanwhile: it asks for nothing more */
            starve_clear(p);
        } else {
            pool_kick(p);
        }
        /* Idle servers another worker needs more go there, as many as its clients waiting want
         * (hand_over); or, for another pool's database or user limit, one closes to free its
         * slot (one per wake-up: the worker served clears its bit, or wakes this one again). */
        int r = 1;
        while (r > 0 && !list_empty(&p->idle)) {
            struct server *s = container_of(list_first(&p->idle), struct server, pool_node);
            r = hand_over(s);
            if (r == 0 && owed_elsewhere(p))
                server_close(s, "another worker's clients wait for room in its database or user");
        }
        if (!list_empty(&p->idle))
            pool_kick_sharing(p); /* what a release here skipped to let the server move */
    }
}

/* May a server on nd serve this pool now? (A demoted or fenced node no longer may.) */
static int node_fits(struct pool *p, struct node *nd)
{
    struct topology *t = p->w->topo;
    if (p->role == ROLE_WRITER)
        return nd == t->writer;
    if (nd->role == NODE_STANDBY)
        return 1;
    return nd == t->writer && p->w->cfg->readonly_fallback == FALLBACK_WRITER;
}

static int name_ok(const char *n)
{
    for (; *n; n++)
        if (!(isalnum((unsigned char)*n) || *n == '_' || *n == '.'))
            return 0;
    return 1;
}

/*
 * A startup parameter as PostgreSQL applies one: set_config() takes the value as raw text, as
 * the startup packet does, where SET name = '...' would take it as one element (a
 * search_path of 'a, b' would become the single schema "a, b"). name passed name_ok.
 * The value is a literal that reads the same whatever standard_conforming_strings is (as
 * sqlclass's sb_literal): the batch is read with the setting the server has when it arrives,
 * which may be one an earlier client left (test_isolation: C:\new became C: newline ew).
 */
static void build_param_set(struct pbuf *b, const char *name, const char *value)
{
    static const char head[] = "SELECT pg_catalog.set_config('";
    int bs = strchr(value, '\\') != NULL;
    pbuf_put(b, head, sizeof(head) - 1);
    pbuf_put(b, name, strlen(name));
    pbuf_put(b, bs ? "', E'" : "', '", bs ? 5 : 4);
    for (const char *v = value; *v; v++) {
        if (*v == '\'' || (bs && *v == '\\'))
            pbuf_put_u8(b, (uint8_t)*v);
        pbuf_put_u8(b, (uint8_t)*v);
    }
    pbuf_put(b, "', false)", 9);
    pbuf_put_u8(b, 0);
}

/* Whether stmt is what build_param_set writes for name and value, found without writing it:
 * most lendings find the server has the client's parameters already, and building each
 * statement to compare it cost more than the rest of a lending. */
static int is_param_set(const char *stmt, const char *name, const char *value)
{
    static const char head[] = "SELECT pg_catalog.set_config('";
    size_t nl = strlen(name);
    if (strncmp(stmt, head, sizeof(head) - 1) != 0)
        return 0;
    stmt += sizeof(head) - 1;
    int bs = strchr(value, '\\') != NULL;
    const char *open = bs ? "', E'" : "', '";
    size_t ol = bs ? 5 : 4;
    if (strncmp(stmt, name, nl) != 0 || strncmp(stmt + nl, open, ol) != 0)
        return 0;
    stmt += nl + ol;
    for (const char *v = value; *v; v++) {
        if ((*v == '\'' || (bs && *v == '\\')) && *stmt++ != *v)
            return 0; /* written twice; a NUL in stmt stops here too */
        if (*stmt++ != *v)
            return 0;
    }
    return strcmp(stmt, "', false)") == 0;
}

/* Append one statement of a setup batch and remember it on the server. */
/* Whether the server reports name with this value (what it started with, or a setting
 * PostgreSQL reports that an earlier client changed and left). */
static int server_param_is(struct server *s, const char *name, const char *value)
{
    const char *reported = server_param(s, name);
    return reported && strcmp(reported, value) == 0;
}

static void setup_add(struct server *s, struct pbuf *sql, const char *name, const char *stmt)
{
    pbuf_put(sql, stmt, strlen(stmt));
    pbuf_put(sql, ";", 1);
    kv_set(&s->applied, name, stmt);
}

/* The SQL that gives server s the session client c expects; empty if it has it already.
 * Servers start with the pool's neutral parameters (none of any client's): s->applied is every
 * setting a client left on it, as the statement that made it. Settings the client does not
 * have are reset, reported by PostgreSQL or not; its startup parameters, then its own SETs,
 * are applied where the server differs. */
static void build_setup(struct server *s, struct client *c, struct pbuf *b)
{
    const struct kvlist *sets = c->more ? &c->more->sets : NULL;
    for (int i = s->applied.n - 1; i >= 0; i--) {
        const char *name = s->applied.items[i].name;
        if ((sets && kv_get(sets, name)) || kv_get(&c->params, name))
            continue;
        /* set_config(name, NULL) is RESET name (guc.c runs both the same way), but takes the
         * name whole: RESET's name goes through the SQL scanner, which truncates each part to
         * 63 bytes, so a long custom name a startup packet or set_config() set would be left
         * on the server for the next client. */
        static const char head[] = "SELECT pg_catalog.set_config('";
        pbuf_put(b, head, sizeof(head) - 1);
        pbuf_put(b, name, strlen(name));
        pbuf_put(b, "', NULL, false);", 16);
        kv_del(&s->applied, name);
    }
    for (int i = 0; i < c->params.n; i++) {
        const char *name = c->params.items[i].name, *value = c->params.items[i].value;
        if ((sets && kv_get(sets, name)) || !name_ok(name))
            continue; /* a SET of the same name comes after and wins */
        const char *have = kv_get(&s->applied, name);
        if (have ? is_param_set(have, name, value) : server_param_is(s, name, value))
            continue; /* the server has it: applied for an earlier client, or its own */
        struct pbuf stmt;
        pbuf_init(&stmt);
        build_param_set(&stmt, name, value);
        if (!stmt.failed)
            setup_add(s, b, name, (char *)stmt.data);
        pbuf_free(&stmt);
    }
    for (int i = 0; sets && i < sets->n; i++) {
        const char *name = sets->items[i].name, *stmt = sets->items[i].value;
        const char *have = kv_get(&s->applied, name);
        if (have && strcmp(have, stmt) == 0)
            continue;
        setup_add(s, b, name, stmt);
    }
    if (b->len > 0)
        pbuf_put_u8(b, 0);
}

void pool_resetup(struct server *s, struct client *c)
{
    struct pbuf sql, wire;
    pbuf_init(&sql);
    pbuf_init(&wire);
    build_setup(s, c, &sql);
    if (sql.len > 0) {
        proto_build_query(&wire, (const char *)sql.data);
        if (!wire.failed)
            server_send_internal(s, wire.data, wire.len, 1);
    }
    pbuf_free(&sql);
    pbuf_free(&wire);
}

static void link_pair(struct pool *p, struct server *s, struct client *c)
{
    list_del(&c->pool_node);
    p->n_waiting--;
    if (c->held) {
        c->held = 0;
        p->w->session->note_served(p->w);
    }
    c->server = s;
    s->client = c;
    s->checked = 0;
    s->last_used = now_ms();
    s->query_start = s->xact_start = 0;
    stats_waited(p, c->wait_since);
    log_debug("C-%llu: gets S-%llu on %s", (unsigned long long)c->id, (unsigned long long)s->id,
              s->nd->name);
    struct pbuf sql, wire;
    pbuf_init(&sql);
    pbuf_init(&wire);
    int n_ready = 0;
    build_setup(s, c, &sql);
    if (sql.len > 0) {
        proto_build_query(&wire, (const char *)sql.data);
        n_ready++;
    }
    /* Transaction mode: statements are prepared lazily; keep the server's cache bounded. */
    if (p->w->cfg->pool_mode == POOL_TRANSACTION)
        n_ready += plan_evict(s, &wire);
    /* Session mode: the protocol-level prepared statements it had on its previous server. */
    else if (client_more(c)->n_prepared > 0) {
        for (int i = 0; i < client_more(c)->n_prepared; i++)
            pbuf_put(&wire, client_more(c)->prepared[i].msg, client_more(c)->prepared[i].len);
        size_t off = proto_begin_msg(&wire, FE_SYNC);
        proto_end_msg(&wire, off);
        n_ready++;
    }
    pbuf_free(&sql);
    if (n_ready == 0 || wire.failed) {
        pbuf_free(&wire);
        server_change_state(s, SV_ACTIVE);
        client_linked(c);
        return;
    }
    /* The setup is answered before the client's request goes: a server terminated meanwhile
     * (its FATAL not read yet when it was lent) then dies before anything of the client's
     * could run, and the client is given another server without noticing. It costs a round
     * trip only when the client's settings differ from the server's. */
    server_change_state(s, SV_SETUP);
    server_send_internal(s, wire.data, wire.len, n_ready);
    pbuf_free(&wire);
}

static void pool_kick_loop(struct pool *p);

/* PgBouncer's server_check_query: a server idle longer than server_check_delay may have been
 * cut off by a firewall or a restart nobody saw; it answers the query before a client gets it. */
static int needs_check(struct server *s)
{
    const struct config *cfg = s->w->cfg;
    return !s->checked && cfg->server_check_query && *cfg->server_check_query &&
           now_ms() - s->last_used >= cfg->server_check_delay;
}

static void start_check(struct pool *p, struct server *s)
{
    s->checking = 1;
    p->n_checking++;
    s->last_used = now_ms(); /* the tick's SERVER_DRAIN_TIMEOUT_MS bounds the check too */
    server_change_state(s, SV_RESETTING);
    server_run_internal(s, p->w->cfg->server_check_query);
}

void pool_check_done(struct server *s)
{
    struct pool *p = s->pool;
    s->checking = 0;
    p->n_checking--;
    /* Lent without another check only to a client waiting now: left idle, it is checked again
     * once idle past server_check_delay. */
    s->checked = !list_empty(&p->waiting);
    pool_server_ready(s);
}

static void mark_held(struct pool *p)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &p->waiting)
    {
        struct client *c = container_of(pos, struct client, pool_node);
        if (!c->held) {
            c->held = 1;
            p->w->session->note_held(p->w);
        }
    }
}

void pool_kick(struct pool *p)
{
    /* Deferred to the end of the current callbacks (same loop turn): lending can release a
     * server again (a client that only logged in gives it straight back), which kicks this
     * pool, and a kick from inside a server's close or a failover step would otherwise lend
     * while its caller is half done. Kicked many times before it runs, it runs once. */
    defer(&p->w->defer, &p->kick);
}

static void kick_run(struct deferred *d)
{
    pool_kick_loop(container_of(d, struct pool, kick));
}

static void pool_kick_loop(struct pool *p)
{
    struct worker *w = p->w;
    while (!list_empty(&p->waiting)) {
        if (p->role == ROLE_WRITER && w->session->holding(w, p->database)) {
            mark_held(p);
            return;
        }
        struct list *first = list_first(&p->idle);
        if (first) {
            struct server *s = container_of(first, struct server, pool_node);
            list_del(&s->pool_node);
            if (!node_fits(p, s->nd)) {
                server_close(s, "its node no longer has the role this pool needs");
                continue;
            }
            if (pool_trim(s))
                continue;
            if (!server_idle_intact(s)) {
                /* Terminated while idle: its FATAL is waiting to be read. Another server
                 * serves the client, which never hears of it. */
                server_close_by(s, EVIDENCE_TERMINATED,
                                "it spoke or closed while idle (terminated)");
                continue;
            }
            if (needs_check(s)) {
                start_check(p, s);
                if (p->n_checking >= p->n_waiting)
                    return; /* the clients wait for its answer */
                continue;
            }
            struct client *c = container_of(list_first(&p->waiting), struct client, pool_node);
            link_pair(p, s, c);
            continue;
        }
        if (p->n_checking >= p->n_waiting)
            return; /* servers being checked will serve the ones waiting */
        struct node *nd = target_node(p);
        if (!nd) {
            mark_held(p);
            return;
        }
        if (login_backoff_wait(p, nd))
            return; /* a login failed: the next waits (server_login_retry), clients too */
        /* Open as many as are waiting, within pool_size and the concurrent-login bound. */
        int want = p->n_waiting - p->n_connecting - p->n_checking;
        int cap = pool_cap(p);
        while (want > 0 && pool_servers_all(p) < cap &&
               p->n_connecting < w->cfg->server_connect_concurrency) {
            /* max_db_connections / max_user_connections: at the limit, an idle server of
             * another pool of the same database or user makes room, or the clients wait. */
            if (at_shared_limit(p) && !evict_idle_for(p)) {
                starve_shared(p); /* another worker may hold the idle server to evict */
                break;
            }
            if (pool_servers_all(p) >= config_pool_size(w->cfg, p->database, p->user)) {
                /* PgBouncer warns the same way: a pool living on its reserve is undersized. */
                struct client *c = container_of(list_first(&p->waiting), struct client, pool_node);
                log_warn("C-%llu %s/%s: taking a server from reserve_pool (waited %lld ms)",
                         (unsigned long long)c->id, p->database, p->user,
                         (long long)(now_ms() - c->wait_since));
            }
            /* Opened with the pool's neutral parameters: a client's own are applied when it
             * is lent the server, and undone before the next one. */
            if (!server_open(w, p, nd, p->user, p->database))
                break;
            want--;
        }
        if (want > 0 && pool_servers_all(p) >= cap)
            /* The other workers hold pool_size. Newly starving, this worker pokes them: one
             * with idle servers and nobody waiting hands them over (pool_poked), and the next
             * server freed anywhere comes here if this worker has fewer (hand_over). No stop of
             * the world here: this runs at every request while the pool is saturated. */
            starve(p, 1);
        return;
    }
    /* Nobody waits here any more: the other workers stop handing servers to this one, and the
     * next wait sets the bit anew (which is what wakes them). */
    starve_clear(p);
}

void pool_keep_min(struct worker *w)
{
    int min = w->cfg->min_pool_size;
    if (min <= 0 || w->shutting_down)
        return;
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->pools)
    {
        struct pool *p = container_of(pos, struct pool, node);
        if (p->role == ROLE_WRITER && w->session->holding(w, p->database))
            continue;
        struct node *nd = target_node(p);
        if (!nd || login_backoff_wait(p, nd))
            continue;
        int size = config_pool_size(w->cfg, p->database, p->user);
        int cap = min < size ? min : size;
        while (pool_servers_all(p) < cap && p->n_connecting < w->cfg->server_connect_concurrency)
            if (!server_open(w, p, nd, p->user, p->database))
                break;
    }
}

void pool_check_reserve(struct worker *w)
{
    if (w->cfg->reserve_pool_size <= 0)
        return;
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->pools)
    {
        struct pool *p = container_of(pos, struct pool, node);
        if (p->n_waiting > p->n_connecting + p->n_checking && pool_servers_all(p) < pool_cap(p))
            pool_kick(p);
    }
}

void pool_kick_all(struct worker *w)
{
    authq_kick(w); /* logins waiting for a writer to look their user up */
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->pools)
    {
        pool_kick(container_of(pos, struct pool, node));
    }
}

void pool_request(struct pool *p, struct client *c)
{
    if (c->state == CL_WAITING)
        return;
    client_change_state(c, CL_WAITING);
    list_append(&p->waiting, &c->pool_node);
    p->n_waiting++;
    pool_kick(p);
}

void pool_cancel_wait(struct client *c)
{
    struct pool *p = c->pool;
    if (!p || list_empty(&c->pool_node))
        return;
    list_del(&c->pool_node);
    p->n_waiting--;
    c->held = 0;
    if (list_empty(&p->waiting))
        /* The last waiting client left unserved (gone, timed out): the bit must not stay set,
         * or this worker's next wait would not wake the others (a bit is only announced when
         * newly set). */
        starve_clear(p);
}

void pool_release(struct server *s, int reusable)
{
    struct worker *w = s->w;
    struct pool *p = s->pool;
    s->client = NULL;
    if (!p || s->state == SV_CLOSING)
        return;
    if (!reusable) {
        server_close(s, "released in an unknown state");
        return;
    }
    if (!node_fits(p, s->nd)) {
        server_close(s, "its node no longer has the role this pool needs");
        return;
    }
    if (s->cancels > 0) {
        /* Back to the pool once its cancel was delivered (cancel_done). */
        s->cancel_hold = 1;
        s->last_used = now_ms();
        server_change_state(s, SV_RESETTING);
        return;
    }
    if ((POOL_OPS(w)->reset_on_release || s->dirty) && w->cfg->server_reset_query &&
        *w->cfg->server_reset_query) {
        server_reset_settings(s, w->cfg->server_reset_query);
        plan_forget_all(s);
        s->dirty = 0;
        server_change_state(s, SV_RESETTING);
        server_run_internal(s, w->cfg->server_reset_query);
        return;
    }
    pool_server_ready(s);
}

void pool_take_back(struct server *s, int pending, int unsynced, int mid_message)
{
    if (!s->pool || s->state == SV_CLOSING)
        return;
    s->client = NULL;
    if (s->state == SV_SETUP)
        return; /* its setup answers end in pool_release (server.c) */
    if (s->state != SV_ACTIVE) {
        server_close(s, "its client left while it was not active");
        return;
    }
    if (pending == 0 && unsynced == 0 && !mid_message && s->txn_status == 'I' && s->fwd_left == 0 &&
        s->swallow == 0 && plan_empty(s)) {
        pool_release(s, 1);
        return;
    }
    /* Messages after the last Sync: PostgreSQL rolls them back when their client goes, so a
     * Sync from pgstay (which would commit them) is not an option; nor is a message cut in the
     * middle or a COPY the server still reads. */
    if (unsynced > 0 || mid_message || !s->w->cfg->server_reset_query ||
        !*s->w->cfg->server_reset_query) {
        server_close(s, "its client left in the middle of an exchange");
        return;
    }
    /* Synced requests still running: read their answers to the end, roll back what is open,
     * then reset (handled at each ReadyForQuery in server.c). */
    log_debug("S-%llu: its client left: finishing %d request(s), then rollback and reset",
              (unsigned long long)s->id, pending);
    plan_reset(s);
    s->swallow = pending;
    s->reset_pending = 1;
    s->last_used = now_ms();
    server_change_state(s, SV_RESETTING);
    if (pending == 0)
        server_finish_drain(s);
    else
        conn_kick(&s->conn); /* its input may be full of answers the client never read */
}

void pool_after_ready(struct client *c)
{
    struct server *s = c->server;
    if (s)
        stats_ready(s, c);
    /* pgstay -R under way: a session between transactions may move now (app/takeover.c). */
    if (c->w->handing_over)
        worker_schedule_reap(c->w);
    if (!s || !POOL_OPS(c->w)->releasable(c) || !plan_empty(s))
        return;
    c->server = NULL;
    s->client = NULL;
    client_change_state(c, CL_IDLE);
    pool_release(s, s->state == SV_ACTIVE && s->txn_status == 'I' && s->fwd_left == 0);
}

void pool_kick_sharing(struct pool *p)
{
    pool_kick(p);
    const struct config *cfg = p->w->cfg;
    if (cfg->max_db_connections <= 0 && cfg->max_user_connections <= 0)
        return;
    /* A server freed or closed here may be the room another pool at the limit waits for. */
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &p->w->pools)
    {
        struct pool *q = container_of(pos, struct pool, node);
        if (q != p && q->n_waiting > 0 &&
            (!strcmp(q->database, p->database) || !strcmp(q->user, p->user)))
            pool_kick(q);
    }
}

void pool_server_ready(struct server *s)
{
    struct pool *p = s->pool;
    if (s->close_needed) {
        server_close(s, "RECONNECT: closed once its client was done with it");
        pool_kick(p);
        return;
    }
    if (owed_elsewhere(p)) {
        server_close(s, "another worker's clients wait for room in its database or user");
        pool_kick(p);
        return;
    }
    /* A reload made pool_size smaller: this one goes rather than serving again, as PgBouncer
     * trims on release. */
    if (pool_trim(s)) {
        pool_kick(p);
        return;
    }
    server_change_state(s, SV_IDLE);
    s->last_used = now_ms(); /* idle from now: server_idle_timeout and server_check_delay */
    s->move_retried = 0;
    if (s->checked) /* first: it goes to the client it was checked for */
        list_append(p->idle.next, &s->pool_node);
    else
        list_append(&p->idle, &s->pool_node);
    if (recipient(p) >= 0) {
        /* Another worker's clients may need it more: it moves at this loop's next turn, out
         * of the callbacks now running (pool_poked, which also kicks this pool then). */
        world_poke(p->w);
        return;
    }
    pool_kick_sharing(p);
}

void pool_login_failed(struct pool *p, const uint8_t *err_msg, size_t len, const char *why)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &p->waiting)
    {
        struct client *c = container_of(pos, struct client, pool_node);
        pool_cancel_wait(c);
        client_send(c, err_msg, len);
        client_close(c, NULL, why);
    }
}

void pool_drop_node(struct worker *w, struct node *nd, const char *why)
{
    struct list *pos, *tmp;
    for (int st = SV_CONNECTING; st <= SV_RESETTING; st++) {
        list_for_each_safe(pos, tmp, &w->servers[st])
        {
            struct server *s = container_of(pos, struct server, node);
            if (s->nd == nd && s->pool)
                server_close(s, why);
        }
    }
}

void pool_drain_node(struct worker *w, struct node *nd, const char *why)
{
    /* Servers lent to a client finish what they serve: node_fits refuses them at release. */
    static const int states[] = {SV_CONNECTING, SV_LOGIN, SV_IDLE};
    struct list *pos, *tmp;
    for (size_t i = 0; i < sizeof(states) / sizeof(states[0]); i++) {
        list_for_each_safe(pos, tmp, &w->servers[states[i]])
        {
            struct server *s = container_of(pos, struct server, node);
            if (s->nd == nd && s->pool)
                server_close(s, why);
        }
    }
}

/* ---- cancel ---- */

/* A one-shot connection carrying a CancelRequest to the server's node. Until PostgreSQL has
 * read it (it closes the connection then), the server is lent to nobody else: a cancel must
 * never reach another client's statement. */
struct cancel_conn {
    struct list node; /* on w->cancels */
    struct conn conn;
    struct event *timer; /* gives up after 5 s */
    struct worker *w;
    uint64_t server_id;
    uint8_t pkt[16];
};

/* The cancel for server id is delivered (or gave up): a server held back for it is free. */
static void cancel_done(struct worker *w, uint64_t server_id)
{
    for (int st = SV_IDLE; st < SV_CLOSING; st++) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &w->servers[st])
        {
            struct server *s = container_of(pos, struct server, node);
            if (s->id != server_id)
                continue;
            if (s->cancels > 0)
                s->cancels--;
            if (s->cancels == 0 && s->cancel_hold) {
                s->cancel_hold = 0;
                pool_release(s, 1);
            }
            return;
        }
    }
}

static void cancel_free(struct cancel_conn *cc)
{
    cancel_done(cc->w, cc->server_id);
    list_del(&cc->node);
    conn_close(&cc->conn);
    event_free(cc->timer);
    free(cc);
}

void cancel_free_all(struct worker *w)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->cancels)
    {
        struct cancel_conn *cc = container_of(pos, struct cancel_conn, node);
        list_del(&cc->node);
        conn_close(&cc->conn);
        event_free(cc->timer);
        free(cc);
    }
}

static void cancel_read_cb(void *arg)
{
    /* PostgreSQL answers nothing to a CancelRequest; whatever comes is dropped. */
    struct cancel_conn *cc = arg;
    conn_consume(&cc->conn, conn_avail(&cc->conn));
}

static void cancel_drain_cb(void *arg)
{
}

static void cancel_event_cb(void *arg, int what)
{
    struct cancel_conn *cc = arg;
    if (what & CONN_CONNECTED) {
        conn_write(&cc->conn, cc->pkt, sizeof(cc->pkt));
        return;
    }
    cancel_free(cc); /* closed by PostgreSQL once handled, or failed */
}

static void cancel_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    cancel_free(arg);
}

static const struct conn_cbs cancel_cbs = {
    .on_read = cancel_read_cb,
    .on_drain = cancel_drain_cb,
    .on_event = cancel_event_cb,
};

/* A request waiting for a server, or held by a failover or PAUSE, is cancelled right here:
 * it gets 57014 and never runs. */
static int cancel_waiting(struct client *c)
{
    if (!c->got_welcome)
        return 0; /* still logging in: there is no request to cancel */
    if (c->state == CL_WAITING) {
        if (c->held)
            c->w->session->note_served(c->w);
        pool_cancel_wait(c);
        client_change_state(c, CL_IDLE);
    } else if (!(c->state == CL_ACTIVE && c->pause_held)) {
        return 0;
    }
    c->pause_held = 0;
    log_info("C-%llu: cancel request: its waiting request is cancelled", (unsigned long long)c->id);
    client_fail_request(c, SQLSTATE_QUERY_CANCELED, "canceling statement due to user request");
    client_process(c);
    return 1;
}

static void cancel_on(struct worker *w, uint32_t pid, uint32_t key);

/* The key's pid names the worker of its client (worker_cancel_pid), whichever worker accepted
 * the CancelRequest: the cancel runs there, with the world stopped (with one worker, at once). */
void cancel_forward(struct worker *w, uint32_t pid, uint32_t key)
{
    world_stop(w);
    cancel_on(worker_of_cancel_pid(w, pid), pid, key);
    world_start(w);
}

static void cancel_on(struct worker *w, uint32_t pid, uint32_t key)
{
    struct client *c = client_find_by_cancel(w, pid, key);
    if (c && cancel_waiting(c))
        return;
    struct worker *w0 = w->world->workers[0];
    if (!c && w0->cancel_elsewhere) {
        w0->cancel_elsewhere(w0, pid, key); /* pgstay -R: the other process's client */
        return;
    }
    if (!c || !c->server || !c->server->nd || c->server->state != SV_ACTIVE) {
        log_debug("cancel request for no running query");
        return;
    }
    struct server *s = c->server;
    struct cancel_conn *cc = calloc(1, sizeof(*cc));
    if (!cc)
        return;
    cc->w = w;
    cc->server_id = s->id;
    list_init(&cc->node);
    struct pbuf b;
    pbuf_init(&b);
    proto_build_cancel(&b, s->be_pid, s->be_key);
    if (b.failed || b.len != sizeof(cc->pkt)) {
        pbuf_free(&b);
        free(cc);
        return;
    }
    memcpy(cc->pkt, b.data, b.len);
    pbuf_free(&b);
    cc->timer = evtimer_new(w->base, cancel_timeout_cb, cc);
    if (!cc->timer) {
        free(cc);
        return;
    }
    struct timeval tv = {5, 0};
    evtimer_add(cc->timer, &tv);
    s->cancels++;
    list_append(&w->cancels, &cc->node);
    log_info("C-%llu: cancel forwarded to S-%llu (backend pid %u on %s)", (unsigned long long)c->id,
             (unsigned long long)s->id, s->be_pid, s->nd->name);
    conn_connect(&cc->conn, &w->loop, s->nd->host, s->nd->port, &cancel_cbs, cc);
}
