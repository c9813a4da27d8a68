/* Patroni's /cluster, polled with libcurl's multi interface on the worker's libevent loop. */
#include "topology/patroni.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <json-c/json.h>

#include "core/log.h"
#include "topology/topology.h"

#define PATRONI_MAX_URLS 16
/* A /cluster answer is a few hundred bytes a member; anything this large is not one. */
#define PATRONI_MAX_BODY (1 << 20)

struct patroni {
    struct topology *t;
    CURLM *multi;
    CURL *easy;            /* the request in flight; NULL between rounds */
    struct event *timeout; /* libcurl's own timer (connect and transfer timeouts, retries) */
    char urls[PATRONI_MAX_URLS][300]; /* each member's /cluster */
    int n_urls;
    int cur;    /* the URL asked now; a round starts at the last one that answered */
    int tried;  /* URLs asked in this round */
    char *body; /* the answer so far (NUL-terminated) */
    size_t len;
    char errbuf[CURL_ERROR_SIZE];
    char why[256];           /* why the round's last request failed */
    char unknown_leader[64]; /* a leader matching no node, logged once */
    /* /cluster's scheduled_switchover as last told to the layers above ("" = none): its time
     * and the leader it is from, so that each change is told once. */
    char sched[128];
};

/* One libevent event per socket libcurl wants watched, kept as the socket's curl "socketp". */
static void sock_event_cb(evutil_socket_t fd, short what, void *arg);
static void check_done(struct patroni *p);

static int sock_cb(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
    struct patroni *p = userp;
    struct event *ev = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (ev) {
            event_free(ev);
            curl_multi_assign(p->multi, s, NULL);
        }
        return 0;
    }
    short kind = EV_PERSIST | ((what & CURL_POLL_IN) ? EV_READ : 0) |
                 ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
    if (ev) {
        event_del_noblock(ev);
        event_assign(ev, p->t->w->base, s, kind, sock_event_cb, p);
    } else {
        ev = event_new(p->t->w->base, s, kind, sock_event_cb, p);
        if (!ev)
            return -1;
        curl_multi_assign(p->multi, s, ev);
    }
    event_add(ev, NULL);
    return 0;
}

static int timer_cb(CURLM *m, long ms, void *userp)
{
    struct patroni *p = userp;
    if (ms < 0) {
        event_del_noblock(p->timeout);
        return 0;
    }
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(p->timeout, &tv);
    return 0;
}

static void sock_event_cb(evutil_socket_t fd, short what, void *arg)
{
    struct patroni *p = arg;
    int flags =
        ((what & EV_READ) ? CURL_CSELECT_IN : 0) | ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    int running;
    /* Patroni's answer may change the writer: every worker reads it (core/world.h). */
    world_stop(p->t->w);
    curl_multi_socket_action(p->multi, fd, flags, &running);
    check_done(p);
    world_start(p->t->w);
}

static void timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct patroni *p = arg;
    int running;
    world_stop(p->t->w);
    curl_multi_socket_action(p->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(p);
    world_start(p->t->w);
}

static size_t write_cb(char *data, size_t size, size_t n, void *userp)
{
    struct patroni *p = userp;
    size_t add = size * n;
    if (p->len + add > PATRONI_MAX_BODY)
        return 0; /* libcurl fails the transfer */
    char *b = realloc(p->body, p->len + add + 1);
    if (!b)
        return 0;
    memcpy(b + p->len, data, add);
    p->len += add;
    b[p->len] = 0;
    p->body = b;
    return add;
}

static int start_request(struct patroni *p)
{
    struct config *cfg = p->t->w->cfg;
    CURL *e = curl_easy_init();
    if (!e) {
        snprintf(p->why, sizeof(p->why), "out of memory");
        return -1;
    }
    p->len = 0;
    p->errbuf[0] = 0;
    curl_easy_setopt(e, CURLOPT_URL, p->urls[p->cur]);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)cfg->health_check_timeout);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)cfg->health_check_timeout);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, p);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, p->errbuf);
    if (curl_multi_add_handle(p->multi, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        snprintf(p->why, sizeof(p->why), "curl_multi_add_handle failed");
        return -1;
    }
    p->easy = e;
    return 0;
}

static const char *jstr(struct json_object *o, const char *key)
{
    struct json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

/* The member's node: by name, else by the host and port Patroni connects to. */
static struct node *member_node(struct topology *t, struct json_object *m)
{
    const char *name = jstr(m, "name");
    struct node *nd = name ? topology_find(t->w, name) : NULL;
    if (nd)
        return nd;
    const char *host = jstr(m, "host");
    struct json_object *port;
    if (!host || !json_object_object_get_ex(m, "port", &port))
        return NULL;
    for (int i = 0; i < t->n_nodes; i++)
        if (t->nodes[i].role != NODE_REMOVED && node_listed(&t->nodes[i]) &&
            !strcmp(t->nodes[i].host, host) && t->nodes[i].port == json_object_get_int(port))
            return &t->nodes[i];
    return NULL;
}

/* Patroni's scheduled_at (Python's isoformat(): 2026-12-06T15:40:00[.123456]+00:00) as ms since
 * the epoch; -1 when it is not one. */
static int64_t iso_ms(const char *s)
{
    struct tm tm = {0};
    int len = 0;
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec, &len) != 6)
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    int64_t ms = (int64_t)timegm(&tm) * 1000;
    s += len;
    if (*s == '.') {
        int64_t frac = 0, scale = 1000;
        for (s++; *s >= '0' && *s <= '9'; s++) {
            frac = frac * 10 + (*s - '0');
            scale *= 10;
        }
        ms += frac * 1000 * 1000 / scale; /* frac / 10^digits seconds */
    }
    if (*s == 'Z' || !*s)
        return ms;
    int hh, mm;
    if ((*s != '+' && *s != '-') || sscanf(s + 1, "%2d:%2d", &hh, &mm) != 2)
        return -1;
    int64_t off = ((int64_t)hh * 60 + mm) * 60 * 1000;
    return *s == '+' ? ms - off : ms + off;
}

/* /cluster's scheduled_switchover ({"at": ..., "from": leader, "to": candidate}), told to the
 * layers above when it changes: they hold new transactions from a little before that time
 * (failover/planned.c), so that a switchover planned ahead costs clients no error. */
static void read_schedule(struct patroni *p, struct json_object *root)
{
    struct topology *t = p->t;
    struct json_object *ss;
    const char *at = NULL, *from = NULL;
    if (json_object_object_get_ex(root, "scheduled_switchover", &ss)) {
        at = jstr(ss, "at");
        from = jstr(ss, "from");
    }
    char now_sched[sizeof(p->sched)];
    snprintf(now_sched, sizeof(now_sched), "%s%s%s", at ? at : "", at ? " " : "",
             at && from ? from : "");
    if (!strcmp(now_sched, p->sched) || !t->hooks->switchover_scheduled)
        return;
    snprintf(p->sched, sizeof(p->sched), "%s", now_sched);
    if (!at) {
        t->hooks->switchover_scheduled(t->w, NULL, INT64_MIN);
        return;
    }
    int64_t at_ms = iso_ms(at);
    if (at_ms < 0) {
        log_error("Patroni's scheduled switchover time \"%s\" is not understood: ignored", at);
        return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t wall = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    struct node *nd = from ? topology_find(t->w, from) : NULL;
    t->hooks->switchover_scheduled(t->w, nd, at_ms - wall);
}

/* Read one /cluster answer into the nodes; -1 with p->why when it is not one. */
static int read_cluster(struct patroni *p, struct node **leader)
{
    struct topology *t = p->t;
    struct json_object *root = json_tokener_parse(p->body ? p->body : "");
    struct json_object *members;
    if (!root || !json_object_object_get_ex(root, "members", &members) ||
        !json_object_is_type(members, json_type_array)) {
        snprintf(p->why, sizeof(p->why), "%s: not a Patroni /cluster answer", p->urls[p->cur]);
        json_object_put(root);
        return -1;
    }
    for (int i = 0; i < t->n_nodes; i++) {
        t->nodes[i].patroni_role = PAT_ABSENT;
        t->nodes[i].patroni_state[0] = 0;
    }
    *leader = NULL;
    size_t n = json_object_array_length(members);
    for (size_t k = 0; k < n; k++) {
        struct json_object *m = json_object_array_get_idx(members, k);
        const char *role = jstr(m, "role"), *state = jstr(m, "state");
        struct node *nd = member_node(t, m);
        int is_leader = role && !strcmp(role, "leader");
        if (!nd) {
            const char *name = jstr(m, "name") ? jstr(m, "name") : "?";
            if (is_leader && strcmp(p->unknown_leader, name) != 0)
                log_error("Patroni's leader %s is none of [nodes] (by name, or by host and port): "
                          "holding writes",
                          name);
            if (is_leader)
                snprintf(p->unknown_leader, sizeof(p->unknown_leader), "%s", name);
            continue;
        }
        nd->patroni_role = is_leader ? PAT_LEADER : PAT_REPLICA;
        snprintf(nd->patroni_state, sizeof(nd->patroni_state), "%s", state ? state : "");
        /* A leader whose PostgreSQL is not running (stopping, restarting) is no writer yet;
         * except the one a planned switchover is stopping, whose state is "stopping" from
         * before its before_stop hook runs: it still runs, and what is in flight ends there. */
        if (is_leader && state &&
            (!strcmp(state, "running") || (!strcmp(state, "stopping") && nd == t->planned_from)))
            *leader = nd;
    }
    read_schedule(p, root);
    json_object_put(root);
    return 0;
}

static void round_over(struct patroni *p, int fresh, struct node *leader)
{
    topology_patroni_answer(p->t, leader, fresh, fresh ? NULL : p->why);
}

static void check_done(struct patroni *p)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(p->multi, &left))) {
        if (msg->msg != CURLMSG_DONE || msg->easy_handle != p->easy)
            continue;
        CURL *e = p->easy;
        CURLcode rc = msg->data.result;
        long status = 0;
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
        curl_multi_remove_handle(p->multi, e);
        curl_easy_cleanup(e);
        p->easy = NULL;
        struct node *leader = NULL;
        if (rc != CURLE_OK)
            snprintf(p->why, sizeof(p->why), "%s: %s", p->urls[p->cur],
                     p->errbuf[0] ? p->errbuf : curl_easy_strerror(rc));
        else if (status != 200)
            snprintf(p->why, sizeof(p->why), "%s: HTTP %ld", p->urls[p->cur], status);
        else if (read_cluster(p, &leader) == 0) {
            round_over(p, 1, leader);
            return;
        }
        /* This member did not answer: the next one, within the same round. */
        if (++p->tried < p->n_urls) {
            p->cur = (p->cur + 1) % p->n_urls;
            if (start_request(p) == 0)
                return;
        }
        round_over(p, 0, NULL);
        return;
    }
}

void patroni_poll(struct topology *t)
{
    struct patroni *p = t->patroni;
    if (!p || p->easy)
        return;
    p->tried = 0;
    if (start_request(p) < 0)
        round_over(p, 0, NULL);
}

/* "http://h:p,h2:p2/" -> each member's /cluster URL. */
static int parse_urls(struct patroni *p, const char *list)
{
    const char *s = list;
    while (*s) {
        s += strspn(s, ", \t");
        size_t n = strcspn(s, ", \t");
        if (!n)
            break;
        if (p->n_urls == PATRONI_MAX_URLS) {
            log_error("patroni_url: more than %d URLs", PATRONI_MAX_URLS);
            return -1;
        }
        int scheme = n > 3 && memmem(s, n, "://", 3) != NULL;
        while (n > 1 && s[n - 1] == '/')
            n--;
        int has_path = n > 8 && !memcmp(s + n - 8, "/cluster", 8);
        int w = snprintf(p->urls[p->n_urls], sizeof(p->urls[0]), "%s%.*s%s",
                         scheme ? "" : "http://", (int)n, s, has_path ? "" : "/cluster");
        if (w < 0 || (size_t)w >= sizeof(p->urls[0])) {
            log_error("patroni_url: \"%.*s\" is too long", (int)n, s);
            return -1;
        }
        p->n_urls++;
        s += n;
        s += strcspn(s, ", \t");
    }
    if (!p->n_urls) {
        log_error("patroni_url is empty: topology_source = patroni needs a member's REST API");
        return -1;
    }
    return 0;
}

int patroni_init(struct topology *t)
{
    static int global_done;
    if (!global_done) {
        /* One control plane per process (DESIGN.md): this runs once, before any thread. */
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            log_error("patroni: curl_global_init failed");
            return -1;
        }
        global_done = 1;
    }
    struct patroni *p = calloc(1, sizeof(*p));
    if (!p)
        return -1;
    p->t = t;
    t->patroni = p;
    if (parse_urls(p, t->w->cfg->patroni_url) < 0)
        return -1;
    p->multi = curl_multi_init();
    p->timeout = evtimer_new(t->w->base, timeout_cb, p);
    if (!p->multi || !p->timeout)
        return -1;
    curl_multi_setopt(p->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(p->multi, CURLMOPT_SOCKETDATA, p);
    curl_multi_setopt(p->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(p->multi, CURLMOPT_TIMERDATA, p);
    log_info("topology_source = patroni: the writer is the leader Patroni names (%d URL%s, first "
             "%s); probes judge liveness",
             p->n_urls, p->n_urls == 1 ? "" : "s", p->urls[0]);
    return 0;
}

void patroni_free(struct topology *t)
{
    struct patroni *p = t->patroni;
    if (!p)
        return;
    if (p->easy) {
        curl_multi_remove_handle(p->multi, p->easy);
        curl_easy_cleanup(p->easy);
    }
    /* Closes the cached connections, whose events sock_cb frees. */
    if (p->multi)
        curl_multi_cleanup(p->multi);
    if (p->timeout)
        event_free(p->timeout);
    free(p->body);
    free(p);
    t->patroni = NULL;
}
