/* Topology's probe connections: a server connection with no pool, logged in as the probe user,
 * whose internal queries' rows and end go to topology's struct probe_callbacks. It lives here,
 * above topology, so that topology includes nothing of the session layer (tools/layers.py). */
#include "server/probe.h"

#include "server/server.h"

static void on_row(struct server *s, int ncols, const char **vals)
{
    s->probe_cb->on_row(s->probe_arg, ncols, vals);
}

static void on_ready(struct server *s)
{
    s->probe_cb->on_ready(s->probe_arg);
}

static void on_fail(struct server *s, const char *why)
{
    s->probe_cb->on_fail(s, s->probe_arg, why);
}

struct server *probe_open(struct worker *w, struct node *nd, const char *user, const char *dbname,
                          const struct probe_callbacks *cb, void *arg)
{
    struct server *s = server_open(w, NULL, nd, user, dbname);
    if (!s)
        return NULL;
    s->on_row = on_row;
    s->on_ready = on_ready;
    s->on_fail = on_fail;
    s->probe_arg = arg;
    s->probe_cb = cb;
    return s;
}

/* Logged in, and no query in flight (a query's answer brings it back to SV_PROBE). */
int probe_idle(struct server *p)
{
    return p->state == SV_PROBE;
}

void probe_query(struct server *p, const char *sql)
{
    server_run_internal(p, sql);
}

/* Topology's own decision: no on_fail comes back for it. */
void probe_close(struct server *p, const char *why)
{
    p->on_fail = NULL;
    server_close(p, why);
}

/* The loop is being freed: the connection goes with the others, nothing reports its end. */
void probe_detach(struct server *p)
{
    p->on_fail = NULL;
}
