/* Configuration: an INI reader driven by one key table that gives defaults and reload rules. */
#include "config/config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core/log.h"
#include "core/logsys.h"

enum key_type {
    KT_STRING,
    KT_INT,
    KT_BOOL,
    KT_ENUM,     /* extra: names separated by '|', the index is the stored value */
    KT_DURATION, /* stored in ms; extra: the unit of a bare number ("s" or "ms") */
    KT_BYTES,    /* stored as int or long, by the field's size; bare number = bytes */
    KT_PATH,     /* a string resolved against the config file's folder */
};

struct key_def {
    const char *name;
    enum key_type type;
    size_t offset;
    size_t size; /* of the field: lets one bytes type fill both int and long fields */
    const char *def;
    int reloadable;
    const char *extra;
    long min, max; /* in stored units (ms for durations) */
};

#define FIELD(m) offsetof(struct config, m), sizeof(((struct config *)0)->m)
#define GB       (1024L * 1024L * 1024L)

/* One row per key. The reloadable column is what SIGHUP may change without a restart: the
 * listening sockets, once bound, stay as they are. */
static const struct key_def keys[] = {
    {"listen_addr", KT_STRING, FIELD(listen_addr), "127.0.0.1", 0, NULL, 0, 0},
    {"listen_port", KT_INT, FIELD(listen_port), "6432", 0, NULL, 1, 65535},
    {"readonly_port", KT_INT, FIELD(readonly_port), "0", 0, NULL, 0, 65535},
    /* PgBouncer's: the endpoints also as unix sockets .s.PGSQL.<port> in this folder (psql -h
     * folder); empty = none. Reloadable: the sockets move with it. */
    {"unix_socket_dir", KT_STRING, FIELD(unix_socket_dir), "", 1, NULL, 0, 0},
    /* PgBouncer's: the sockets' permissions (octal, as chmod) and group (a name). */
    {"unix_socket_mode", KT_STRING, FIELD(unix_socket_mode), "0777", 1, NULL, 0, 0},
    {"unix_socket_group", KT_STRING, FIELD(unix_socket_group), "", 1, NULL, 0, 0},
    {"listen_backlog", KT_INT, FIELD(listen_backlog), "128", 0, NULL, 1, INT_MAX},
    /* Several stateless pgstay processes behind one port, the kernel spreading connections
     * (issue 15); off by default so that a second pgstay started by mistake fails to bind. */
    {"so_reuseport", KT_BOOL, FIELD(so_reuseport), "off", 0, NULL, 0, 0},
    /* Event loops, one thread each (issue 14): 0 = one per online CPU; 1 = a single loop, the
     * default until the whole e2e suite passes on several (doc/workers.md). */
    {"workers", KT_INT, FIELD(workers), "0", 0, NULL, 0, WORKERS_MAX},
    {"pool_mode", KT_ENUM, FIELD(pool_mode), "session", 0, "session|transaction", 0, 0},
    {"pool_size", KT_INT, FIELD(pool_size), "20", 1, NULL, 1, INT_MAX},
    {"min_pool_size", KT_INT, FIELD(min_pool_size), "0", 1, NULL, 0, INT_MAX},
    /* PgBouncer's reserve pool: extra servers for a pool whose oldest waiting client has waited
     * reserve_pool_timeout (a burst is absorbed without raising pool_size for good). */
    {"reserve_pool_size", KT_INT, FIELD(reserve_pool_size), "0", 1, NULL, 0, INT_MAX},
    {"reserve_pool_timeout", KT_DURATION, FIELD(reserve_pool_timeout), "5s", 1, "s", 0, INT_MAX},
    {"max_db_connections", KT_INT, FIELD(max_db_connections), "0", 1, NULL, 0, INT_MAX},
    {"max_user_connections", KT_INT, FIELD(max_user_connections), "0", 1, NULL, 0, INT_MAX},
    {"max_client_conn", KT_INT, FIELD(max_client_conn), "10000", 1, NULL, 1, INT_MAX},
    {"auth_type", KT_ENUM, FIELD(auth_type), "scram-sha-256", 1, "trust|md5|scram-sha-256|hba", 0,
     0},
    {"auth_file", KT_PATH, FIELD(auth_file), "userlist.txt", 1, NULL, 0, 0},
    {"auth_hba_file", KT_PATH, FIELD(auth_hba_file), "", 1, NULL, 0, 0},
    {"auth_user", KT_STRING, FIELD(auth_user), "", 1, NULL, 0, 0},
    {"auth_query", KT_STRING, FIELD(auth_query),
     "SELECT usename, passwd FROM pg_shadow WHERE usename = $1", 1, NULL, 0, 0},
    {"auth_cache_ttl", KT_DURATION, FIELD(auth_cache_ttl), "60s", 1, "s", 0, INT_MAX},
    {"admin_users", KT_STRING, FIELD(admin_users), "", 1, NULL, 0, 0},
    {"stats_users", KT_STRING, FIELD(stats_users), "", 1, NULL, 0, 0},
    {"application_name_add_host", KT_BOOL, FIELD(application_name_add_host), "off", 1, NULL, 0, 0},
    /* PgBouncer's list of parameters to track beyond its five; pgstay tracks every startup
     * parameter and SET of a client already, so the list changes nothing (accepted as is). */
    {"track_extra_parameters", KT_STRING, FIELD(track_extra_parameters), "", 1, NULL, 0, 0},
    {"ignore_startup_parameters", KT_STRING, FIELD(ignore_startup_parameters), "", 1, NULL, 0, 0},
    {"server_reset_query", KT_STRING, FIELD(server_reset_query), "DISCARD ALL", 1, NULL, 0, 0},
    /* PgBouncer's sanity check: a server idle longer than server_check_delay runs
     * server_check_query before it is lent (empty = never); one that fails is closed unseen. */
    {"server_check_query", KT_STRING, FIELD(server_check_query), "select 1", 1, NULL, 0, 0},
    {"server_check_delay", KT_DURATION, FIELD(server_check_delay), "30s", 1, "s", 0, INT_MAX},
    {"server_connect_timeout", KT_DURATION, FIELD(server_connect_timeout), "5s", 1, "s", 0,
     INT_MAX},
    {"query_wait_timeout", KT_DURATION, FIELD(query_wait_timeout), "120s", 1, "s", 0, INT_MAX},
    {"client_idle_timeout", KT_DURATION, FIELD(client_idle_timeout), "0", 1, "s", 0, INT_MAX},
    {"idle_transaction_timeout", KT_DURATION, FIELD(idle_transaction_timeout), "0", 1, "s", 0,
     INT_MAX},
    {"transaction_timeout", KT_DURATION, FIELD(transaction_timeout), "0", 1, "s", 0, INT_MAX},
    {"query_timeout", KT_DURATION, FIELD(query_timeout), "0", 1, "s", 0, INT_MAX},
    {"server_idle_timeout", KT_DURATION, FIELD(server_idle_timeout), "600s", 1, "s", 0, INT_MAX},
    {"server_lifetime", KT_DURATION, FIELD(server_lifetime), "3600s", 1, "s", 0, INT_MAX},
    {"client_login_timeout", KT_DURATION, FIELD(client_login_timeout), "60s", 1, "s", 0, INT_MAX},
    {"shutdown_timeout", KT_DURATION, FIELD(shutdown_timeout), "30s", 1, "s", 0, INT_MAX},
    /* PostgreSQL's own message limit is 1GB; nothing legitimate is larger. */
    {"max_packet_size", KT_BYTES, FIELD(max_packet_size), "1GB", 1, NULL, 1024, GB},
    {"tcp_keepalive", KT_BOOL, FIELD(tcp_keepalive), "on", 1, NULL, 0, 0},
    {"tcp_user_timeout", KT_DURATION, FIELD(tcp_user_timeout), "5000ms", 1, "ms", 0, INT_MAX},
    {"health_check_user", KT_STRING, FIELD(health_check_user), "postgres", 1, NULL, 0, 0},
    {"health_check_dbname", KT_STRING, FIELD(health_check_dbname), "postgres", 1, NULL, 0, 0},
    {"health_check_period", KT_DURATION, FIELD(health_check_period), "100ms", 1, "ms", 1, INT_MAX},
    {"health_check_fast_period", KT_DURATION, FIELD(health_check_fast_period), "20ms", 1, "ms", 1,
     INT_MAX},
    {"health_check_timeout", KT_DURATION, FIELD(health_check_timeout), "1000ms", 1, "ms", 1,
     INT_MAX},
    {"health_check_fall", KT_INT, FIELD(health_check_fall), "2", 1, NULL, 1, 100},
    {"health_check_rise", KT_INT, FIELD(health_check_rise), "1", 1, NULL, 1, 100},
    /* patroni: the leader Patroni names is the only writer; probes still judge liveness. */
    {"topology_source", KT_ENUM, FIELD(topology_source), "probes", 0, "probes|patroni", 0, 0},
    {"patroni_url", KT_STRING, FIELD(patroni_url), "", 0, NULL, 0, 0},
    {"server_login_retry", KT_DURATION, FIELD(server_login_retry), "15s", 1, "s", 0, INT_MAX},
    {"failover_timeout", KT_DURATION, FIELD(failover_timeout), "30s", 1, "s", 0, INT_MAX},
    {"pause_timeout", KT_DURATION, FIELD(pause_timeout), "60s", 1, "s", 0, INT_MAX},
    {"server_connect_concurrency", KT_INT, FIELD(server_connect_concurrency), "4", 1, NULL, 1,
     INT_MAX},
    {"max_replica_lag", KT_BYTES, FIELD(max_replica_lag), "16MB", 1, NULL, 0, LONG_MAX},
    {"readonly_fallback", KT_ENUM, FIELD(readonly_fallback), "writer", 1, "writer|error", 0, 0},
    {"verbose", KT_INT, FIELD(verbose), "0", 1, NULL, 0, INT_MAX},
    {"pidfile", KT_PATH, FIELD(pidfile), "", 0, NULL, 0, 0},
    /* The unix socket `pgstay -R` connects to, to take this process's listeners and idle
     * clients; empty = /tmp/pgstay.<listen_port>.takeover, "off" = none. */
    {"takeover_socket", KT_STRING, FIELD(takeover_socket), "", 0, NULL, 0, 0},
    {"logfile", KT_PATH, FIELD(logfile), "", 1, NULL, 0, 0},
    /* PgBouncer's logging switches and syslog, with its defaults. */
    {"log_connections", KT_BOOL, FIELD(log_connections), "on", 1, NULL, 0, 0},
    {"log_disconnections", KT_BOOL, FIELD(log_disconnections), "on", 1, NULL, 0, 0},
    {"log_pooler_errors", KT_BOOL, FIELD(log_pooler_errors), "on", 1, NULL, 0, 0},
    {"syslog", KT_BOOL, FIELD(syslog), "off", 1, NULL, 0, 0},
    {"syslog_ident", KT_STRING, FIELD(syslog_ident), "pgstay", 1, NULL, 0, 0},
    {"syslog_facility", KT_ENUM, FIELD(syslog_facility), "daemon", 1, LOGSYS_FACILITIES, 0, 0},
    /* PgBouncer's: the period of SHOW STATS_AVERAGES (and the avg_ columns of SHOW STATS). */
    {"stats_period", KT_DURATION, FIELD(stats_period), "60s", 1, "s", 1000, INT_MAX},
    /* host:port of the Prometheus endpoint (GET /metrics); empty = none. */
    {"metrics_listen", KT_STRING, FIELD(metrics_listen), "", 0, NULL, 0, 0},
    /* TLS: every key reloadable; a reload builds new contexts for new handshakes and leaves
     * established sessions as they are. prefer answers 'S' only once a certificate is set. */
    {"client_tls_sslmode", KT_ENUM, FIELD(client_tls_sslmode), "prefer", 1, TLS_MODE_NAMES, 0, 0},
    {"client_tls_cert_file", KT_PATH, FIELD(client_tls_cert_file), "", 1, NULL, 0, 0},
    {"client_tls_key_file", KT_PATH, FIELD(client_tls_key_file), "", 1, NULL, 0, 0},
    {"client_tls_ca_file", KT_PATH, FIELD(client_tls_ca_file), "", 1, NULL, 0, 0},
    {"client_tls_protocols", KT_STRING, FIELD(client_tls_protocols), "secure", 1, NULL, 0, 0},
    {"client_tls_ciphers", KT_STRING, FIELD(client_tls_ciphers), "default", 1, NULL, 0, 0},
    /* disable by default: a server login then costs no SSLRequest round trip. */
    {"server_tls_sslmode", KT_ENUM, FIELD(server_tls_sslmode), "disable", 1, TLS_MODE_NAMES, 0, 0},
    {"server_tls_cert_file", KT_PATH, FIELD(server_tls_cert_file), "", 1, NULL, 0, 0},
    {"server_tls_key_file", KT_PATH, FIELD(server_tls_key_file), "", 1, NULL, 0, 0},
    {"server_tls_ca_file", KT_PATH, FIELD(server_tls_ca_file), "", 1, NULL, 0, 0},
    {"server_tls_protocols", KT_STRING, FIELD(server_tls_protocols), "secure", 1, NULL, 0, 0},
    {"server_tls_ciphers", KT_STRING, FIELD(server_tls_ciphers), "default", 1, NULL, 0, 0},
    {"server_allow_plaintext_password", KT_BOOL, FIELD(server_allow_plaintext_password), "off", 1,
     NULL, 0, 0},
    {"server_scram_max_iterations", KT_INT, FIELD(server_scram_max_iterations), "100000", 1, NULL,
     1, INT_MAX},
};

/* PgBouncer's names for keys pgstay shares with it, so that its settings carry over. */
static const struct {
    const char *alias;
    const char *name;
} key_aliases[] = {
    {"default_pool_size", "pool_size"},
};

#define N_KEYS (sizeof(keys) / sizeof(keys[0]))

/* Multipliers for unit suffixes; matched case-insensitively, longest first where it matters. */
struct unit {
    const char *suffix;
    long factor;
};
static const struct unit duration_units[] = {{"ms", 1}, {"s", 1000}, {"min", 60000}, {NULL, 0}};
static const struct unit byte_units[] = {
    {"b", 1}, {"kb", 1024L}, {"mb", 1024L * 1024L}, {"gb", GB}, {NULL, 0}};

/* ---- field access ---- */

static void *field(struct config *cfg, const struct key_def *k)
{
    return (char *)cfg + k->offset;
}

static const void *cfield(const struct config *cfg, const struct key_def *k)
{
    return (const char *)cfg + k->offset;
}

static int is_string(const struct key_def *k)
{
    return k->type == KT_STRING || k->type == KT_PATH;
}

static void store_num(struct config *cfg, const struct key_def *k, long v)
{
    if (k->size == sizeof(long))
        *(long *)field(cfg, k) = v;
    else
        *(int *)field(cfg, k) = (int)v;
}

static long load_num(const struct config *cfg, const struct key_def *k)
{
    if (k->size == sizeof(long))
        return *(const long *)cfield(cfg, k);
    return *(const int *)cfield(cfg, k);
}

static void store_str(struct config *cfg, const struct key_def *k, char *s)
{
    char **slot = field(cfg, k);
    free(*slot);
    *slot = s;
}

/* ---- value parsing ---- */

/* A decimal integer, optionally followed by a unit suffix (after optional blanks). */
static int parse_number(const char *val, long *num, const char **suffix)
{
    char *end;
    if (*val == '\0' || isspace((unsigned char)*val))
        return -1;
    errno = 0;
    *num = strtol(val, &end, 10);
    if (end == val || errno == ERANGE)
        return -1;
    while (isspace((unsigned char)*end))
        end++;
    *suffix = end;
    return 0;
}

/* num * unit, where the unit is the suffix or, for a bare number, def_unit. */
static int apply_unit(long num, const char *suffix, const char *def_unit, const struct unit *units,
                      long *out)
{
    const char *u = *suffix ? suffix : def_unit;
    for (const struct unit *p = units; p->suffix; p++) {
        if (strcasecmp(u, p->suffix) == 0) {
            if (num > LONG_MAX / p->factor || num < LONG_MIN / p->factor)
                return -1;
            *out = num * p->factor;
            return 0;
        }
    }
    return -1;
}

static void range_msg(const struct key_def *k, const char *val, long num, long max, char *msg,
                      size_t msglen)
{
    const char *unit = k->type == KT_DURATION ? "ms" : k->type == KT_BYTES ? " bytes" : "";
    /* Where the only upper bound is the field's width, naming that number would not help. */
    int open_ended = max == INT_MAX || max == LONG_MAX;
    if (open_ended && num > max)
        snprintf(msg, msglen, "invalid value \"%s\" for %s: too large", val, k->name);
    else if (open_ended)
        snprintf(msg, msglen, "invalid value \"%s\" for %s: must be at least %ld%s", val, k->name,
                 k->min, unit);
    else
        snprintf(msg, msglen, "invalid value \"%s\" for %s: must be between %ld%s and %ld%s", val,
                 k->name, k->min, unit, max, unit);
}

/* Relative paths are taken from the config file's folder, so the daemon's cwd never matters. */
static char *resolve_path(const char *val, const char *basedir)
{
    if (val[0] == '/' || val[0] == '\0' || basedir == NULL)
        return strdup(val);
    size_t n = strlen(basedir) + 1 + strlen(val) + 1;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", basedir, val);
    return p;
}

/* Parse val for key k into cfg. On error writes a message (without the file:line prefix). */
static int set_value(struct config *cfg, const struct key_def *k, const char *val,
                     const char *basedir, char *msg, size_t msglen)
{
    long num = 0;
    const char *suffix;

    switch (k->type) {
    case KT_STRING:
    case KT_PATH: {
        char *s = k->type == KT_PATH ? resolve_path(val, basedir) : strdup(val);
        if (s == NULL) {
            snprintf(msg, msglen, "out of memory");
            return -1;
        }
        store_str(cfg, k, s);
        return 0;
    }
    case KT_INT:
        if (parse_number(val, &num, &suffix) < 0 || *suffix) {
            snprintf(msg, msglen, "invalid value \"%s\" for %s: expected an integer", val, k->name);
            return -1;
        }
        break;
    case KT_BOOL: {
        static const char *const yes[] = {"on", "true", "yes", "1"};
        static const char *const no[] = {"off", "false", "no", "0"};
        for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
            if (strcasecmp(val, yes[i]) == 0) {
                store_num(cfg, k, 1);
                return 0;
            }
            if (strcasecmp(val, no[i]) == 0) {
                store_num(cfg, k, 0);
                return 0;
            }
        }
        snprintf(msg, msglen, "invalid value \"%s\" for %s: expected on or off", val, k->name);
        return -1;
    }
    case KT_ENUM: {
        const char *p = k->extra;
        for (long i = 0; *p; i++) {
            size_t n = strcspn(p, "|");
            if (strlen(val) == n && strncasecmp(val, p, n) == 0) {
                store_num(cfg, k, i);
                return 0;
            }
            p += n;
            if (*p == '|')
                p++;
        }
        char names[128];
        snprintf(names, sizeof(names), "%s", k->extra);
        for (char *c = names; *c; c++)
            if (*c == '|')
                *c = '/';
        snprintf(msg, msglen, "invalid value \"%s\" for %s: expected one of %s", val, k->name,
                 names);
        return -1;
    }
    case KT_DURATION:
        if (parse_number(val, &num, &suffix) < 0) {
            snprintf(msg, msglen,
                     "invalid value \"%s\" for %s: expected a duration (a number with unit ms, s "
                     "or min)",
                     val, k->name);
            return -1;
        }
        if (apply_unit(num, suffix, k->extra, duration_units, &num) < 0) {
            snprintf(msg, msglen, "invalid value \"%s\" for %s: unknown unit (use ms, s or min)",
                     val, k->name);
            return -1;
        }
        break;
    case KT_BYTES:
        if (parse_number(val, &num, &suffix) < 0) {
            snprintf(msg, msglen,
                     "invalid value \"%s\" for %s: expected a size (a number with unit kB, MB or "
                     "GB)",
                     val, k->name);
            return -1;
        }
        if (apply_unit(num, suffix, "b", byte_units, &num) < 0) {
            snprintf(msg, msglen, "invalid value \"%s\" for %s: unknown unit (use kB, MB or GB)",
                     val, k->name);
            return -1;
        }
        break;
    }

    long max = k->size == sizeof(int) && k->max > INT_MAX ? INT_MAX : k->max;
    if (num < k->min || num > max) {
        range_msg(k, val, num, max, msg, msglen);
        return -1;
    }
    store_num(cfg, k, num);
    return 0;
}

static const struct key_def *find_key(const char *name)
{
    for (size_t i = 0; i < N_KEYS; i++)
        if (strcasecmp(keys[i].name, name) == 0)
            return &keys[i];
    for (size_t i = 0; i < sizeof(key_aliases) / sizeof(key_aliases[0]); i++)
        if (strcasecmp(key_aliases[i].alias, name) == 0)
            return find_key(key_aliases[i].name);
    return NULL;
}

/* ---- [nodes] ---- */

int conninfo_value(const char **pp, char *out, size_t cap)
{
    const char *p = *pp;
    size_t n = 0;
    if (*p == '\'') {
        for (p++; *p != '\''; p++) {
            if (*p == '\0')
                return -1;
            if (*p == '\\' && p[1])
                p++;
            if (n + 1 >= cap)
                return -1;
            out[n++] = *p;
        }
        p++;
    } else {
        for (; *p && !isspace((unsigned char)*p); p++) {
            if (n + 1 >= cap)
                return -1;
            out[n++] = *p;
        }
    }
    out[n] = '\0';
    *pp = p;
    return 0;
}

int conninfo_next(const char **pp, const char **key, size_t *klen, char *out, size_t cap)
{
    const char *p = *pp;
    while (isspace((unsigned char)*p))
        p++;
    *key = p;
    *klen = 0;
    if (*p == '\0') {
        *pp = p;
        return 0;
    }
    while (*p && *p != '=' && !isspace((unsigned char)*p))
        p++;
    size_t n = (size_t)(p - *key);
    while (isspace((unsigned char)*p))
        p++;
    if (*p != '=' || n == 0) {
        *pp = p;
        return -1;
    }
    *klen = n;
    p++;
    while (isspace((unsigned char)*p))
        p++;
    int rc = conninfo_value(&p, out, cap);
    *pp = p;
    return rc < 0 ? -1 : 1;
}

/* Which conninfo keys a node accepts, and where each goes: libpq's names, nothing else. */
enum node_key { NK_HOST, NK_PORT };
static const struct {
    const char *name;
    enum node_key key;
} node_keys[] = {{"host", NK_HOST}, {"port", NK_PORT}};

static int parse_node(struct config *cfg, const char *name, const char *val, char *msg,
                      size_t msglen)
{
    if (cfg->n_nodes >= CONFIG_MAX_NODES) {
        snprintf(msg, msglen, "too many nodes (at most %d)", CONFIG_MAX_NODES);
        return -1;
    }
    size_t nlen = strlen(name);
    if (nlen == 0 || nlen >= sizeof(cfg->nodes[0].name)) {
        snprintf(msg, msglen, "invalid node name \"%s\"", name);
        return -1;
    }
    for (int i = 0; i < cfg->n_nodes; i++) {
        if (strcmp(cfg->nodes[i].name, name) == 0) {
            snprintf(msg, msglen, "duplicate node \"%s\"", name);
            return -1;
        }
    }

    struct node_conf nc;
    memset(&nc, 0, sizeof(nc));
    memcpy(nc.name, name, nlen + 1);
    nc.port = 5432;

    const char *p = val, *kstart;
    size_t klen;
    char v[256];
    int rc;
    while ((rc = conninfo_next(&p, &kstart, &klen, v, sizeof(v))) != 0) {
        if (rc < 0 && klen == 0) {
            snprintf(msg, msglen, "node \"%s\": expected key=value in \"%s\"", name, val);
            return -1;
        }
        if (rc < 0) {
            snprintf(msg, msglen, "node \"%s\": value of \"%.*s\" is unterminated or too long",
                     name, (int)klen, kstart);
            return -1;
        }

        size_t i;
        for (i = 0; i < sizeof(node_keys) / sizeof(node_keys[0]); i++)
            if (strlen(node_keys[i].name) == klen && strncmp(kstart, node_keys[i].name, klen) == 0)
                break;
        if (i == sizeof(node_keys) / sizeof(node_keys[0])) {
            snprintf(msg, msglen, "node \"%s\": unknown conninfo key \"%.*s\" (only host and port)",
                     name, (int)klen, kstart);
            return -1;
        }
        switch (node_keys[i].key) {
        case NK_HOST:
            if (v[0] == '\0') {
                snprintf(msg, msglen, "node \"%s\": empty host", name);
                return -1;
            }
            memcpy(nc.host, v, strlen(v) + 1);
            break;
        case NK_PORT: {
            char *end;
            errno = 0;
            long port = strtol(v, &end, 10);
            if (v[0] == '\0' || *end || errno || port < 1 || port > 65535) {
                snprintf(msg, msglen,
                         "node \"%s\": invalid port \"%s\": must be between 1 and 65535", name, v);
                return -1;
            }
            nc.port = (int)port;
            break;
        }
        }
    }
    if (nc.host[0] == '\0') {
        snprintf(msg, msglen, "node \"%s\": host is required", name);
        return -1;
    }
    cfg->nodes[cfg->n_nodes++] = nc;
    return 0;
}

/* ---- [databases] and [users] ---- */

/* "name = pool_size=N" (PgBouncer's key=value list, of which pgstay takes pool_size): a later
 * entry for the same name replaces the earlier one. */
static int parse_override(struct pool_override **list, int *n, const char *sec, const char *name,
                          const char *val, char *msg, size_t msglen)
{
    int pool_size = -1;
    const char *p = val, *kstart;
    size_t klen;
    char v[64];
    int rc;
    while ((rc = conninfo_next(&p, &kstart, &klen, v, sizeof(v))) != 0) {
        if (rc < 0 && klen == 0) {
            snprintf(msg, msglen, "[%s] %s: expected key=value in \"%s\"", sec, name, val);
            return -1;
        }
        if (rc < 0) {
            snprintf(msg, msglen, "[%s] %s: value of \"%.*s\" is unterminated or too long", sec,
                     name, (int)klen, kstart);
            return -1;
        }
        if (klen != 9 || strncmp(kstart, "pool_size", 9) != 0) {
            snprintf(msg, msglen, "[%s] %s: unknown key \"%.*s\" (only pool_size)", sec, name,
                     (int)klen, kstart);
            return -1;
        }
        char *end;
        errno = 0;
        long ps = strtol(v, &end, 10);
        if (v[0] == '\0' || *end || errno || ps < 1 || ps > INT_MAX) {
            snprintf(msg, msglen, "[%s] %s: invalid pool_size \"%s\": must be at least 1", sec,
                     name, v);
            return -1;
        }
        pool_size = (int)ps;
    }
    for (int i = 0; i < *n; i++) {
        if (strcmp((*list)[i].name, name) == 0) {
            (*list)[i].pool_size = pool_size;
            return 0;
        }
    }
    struct pool_override *nl = realloc(*list, sizeof(**list) * (size_t)(*n + 1));
    char *copy = strdup(name);
    if (!nl || !copy) {
        if (nl)
            *list = nl;
        free(copy);
        snprintf(msg, msglen, "out of memory");
        return -1;
    }
    *list = nl;
    nl[*n].name = copy;
    nl[*n].pool_size = pool_size;
    (*n)++;
    return 0;
}

static const struct pool_override *find_override(const struct pool_override *list, int n,
                                                 const char *name)
{
    for (int i = 0; name && i < n; i++)
        if (strcmp(list[i].name, name) == 0)
            return &list[i];
    return NULL;
}

int config_unix_mode(const struct config *cfg)
{
    const char *m = cfg->unix_socket_mode;
    char *end;
    errno = 0;
    long v = m && *m ? strtol(m, &end, 8) : -1;
    if (v < 0 || *end || errno || v > 0777)
        return -1;
    return (int)v;
}

int config_workers(const struct config *cfg)
{
    long n = cfg->workers > 0 ? cfg->workers : sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > WORKERS_MAX ? WORKERS_MAX : (int)n;
}

int config_pool_size(const struct config *cfg, const char *database, const char *user)
{
    const struct pool_override *o = find_override(cfg->user_overrides, cfg->n_user_overrides, user);
    if (o && o->pool_size > 0)
        return o->pool_size;
    o = find_override(cfg->db_overrides, cfg->n_db_overrides, database);
    if (o && o->pool_size > 0)
        return o->pool_size;
    return cfg->pool_size;
}

static void free_overrides(struct pool_override **list, int *n)
{
    for (int i = 0; i < *n; i++)
        free((*list)[i].name);
    free(*list);
    *list = NULL;
    *n = 0;
}

/* ---- the INI reader ---- */

enum section { SEC_NONE, SEC_PGSTAY, SEC_NODES, SEC_DATABASES, SEC_USERS };
static const struct {
    const char *name;
    enum section sec;
} sections[] = {{"pgstay", SEC_PGSTAY},
                {"nodes", SEC_NODES},
                {"databases", SEC_DATABASES},
                {"users", SEC_USERS},
                /* PgBouncer's name for the main section, so its settings read as they are */
                {"pgbouncer", SEC_PGSTAY}};

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

/* Strip quotes or a trailing " ;comment" from a value, in place. -1 on an unterminated quote or
 * text after the closing one. */
static int unquote_value(char *v, char **out)
{
    if (*v == '"') {
        char *close = strchr(v + 1, '"');
        if (close == NULL)
            return -1;
        *close = '\0';
        char *rest = close + 1;
        while (isspace((unsigned char)*rest))
            rest++;
        if (*rest != '\0' && *rest != ';' && *rest != '#')
            return -1;
        *out = v + 1;
        return 0;
    }
    /* A comment needs a blank before it, so "a;b" stays a value. */
    for (char *p = v; *p; p++) {
        if ((*p == ';' || *p == '#') && p > v && isspace((unsigned char)p[-1])) {
            *p = '\0';
            break;
        }
    }
    *out = trim(v);
    return 0;
}

/* The folder relative paths are resolved against: absolute, so a later chdir cannot move it. */
static char *config_dir(const char *path)
{
    char *copy = strdup(path);
    if (copy == NULL)
        return NULL;
    char *slash = strrchr(copy, '/');
    if (slash == copy)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
    else {
        free(copy);
        copy = strdup(".");
        if (copy == NULL)
            return NULL;
    }
    char *real = realpath(copy, NULL);
    if (real) {
        free(copy);
        return real;
    }
    return copy;
}

static int apply_defaults(struct config *cfg, const char *basedir, char *msg, size_t msglen)
{
    for (size_t i = 0; i < N_KEYS; i++)
        if (set_value(cfg, &keys[i], keys[i].def, basedir, msg, msglen) < 0)
            return -1;
    return 0;
}

static int parse_line(struct config *cfg, char *line, enum section *sec, const char *basedir,
                      char *msg, size_t msglen)
{
    char *s = trim(line);
    if (*s == '\0' || *s == ';' || *s == '#')
        return 0;

    if (*s == '[') {
        char *close = strchr(s, ']');
        if (close == NULL) {
            snprintf(msg, msglen, "missing \"]\" in section header");
            return -1;
        }
        *close = '\0';
        char *name = trim(s + 1);
        for (size_t i = 0; i < sizeof(sections) / sizeof(sections[0]); i++) {
            if (strcasecmp(name, sections[i].name) == 0) {
                *sec = sections[i].sec;
                return 0;
            }
        }
        snprintf(msg, msglen, "unknown section \"%s\"", name);
        return -1;
    }

    char *eq = strchr(s, '=');
    if (eq == NULL) {
        snprintf(msg, msglen, "missing \"=\" in \"%s\"", s);
        return -1;
    }
    *eq = '\0';
    char *key = trim(s);
    char *val;
    if (*key == '\0') {
        snprintf(msg, msglen, "missing key before \"=\"");
        return -1;
    }
    if (unquote_value(trim(eq + 1), &val) < 0) {
        snprintf(msg, msglen, "unterminated quoted value for %s", key);
        return -1;
    }

    switch (*sec) {
    case SEC_NONE:
        snprintf(msg, msglen, "key \"%s\" outside of a section", key);
        return -1;
    case SEC_PGSTAY: {
        const struct key_def *k = find_key(key);
        if (k == NULL) {
            snprintf(msg, msglen, "unknown key \"%s\"", key);
            return -1;
        }
        return set_value(cfg, k, val, basedir, msg, msglen);
    }
    case SEC_NODES:
        return parse_node(cfg, key, val, msg, msglen);
    case SEC_DATABASES:
        return parse_override(&cfg->db_overrides, &cfg->n_db_overrides, "databases", key, val, msg,
                              msglen);
    case SEC_USERS:
        return parse_override(&cfg->user_overrides, &cfg->n_user_overrides, "users", key, val, msg,
                              msglen);
    }
    return 0;
}

/* What one TLS key needs of another; the files themselves are read when the context is built
 * (tls_ctx_new), so a reload sees their new contents. */
static int check_tls(const struct config *cfg, char *msg, size_t msglen)
{
    static const char *const modes[] = {"disable", "allow",     "prefer",
                                        "require", "verify-ca", "verify-full"};
    int cm = cfg->client_tls_sslmode, sm = cfg->server_tls_sslmode;
    int have_cert = *cfg->client_tls_cert_file && *cfg->client_tls_key_file;
    if (cm >= TLS_REQUIRE && !have_cert) {
        snprintf(msg, msglen,
                 "client_tls_sslmode = %s needs client_tls_cert_file and client_tls_key_file",
                 modes[cm]);
        return -1;
    }
    if (cm >= TLS_VERIFY_CA && !*cfg->client_tls_ca_file) {
        snprintf(msg, msglen, "client_tls_sslmode = %s needs client_tls_ca_file", modes[cm]);
        return -1;
    }
    if (sm == TLS_ALLOW) {
        snprintf(msg, msglen,
                 "server_tls_sslmode = allow is not supported: use disable, prefer or require");
        return -1;
    }
    if (sm >= TLS_VERIFY_CA && !*cfg->server_tls_ca_file) {
        snprintf(msg, msglen, "server_tls_sslmode = %s needs server_tls_ca_file", modes[sm]);
        return -1;
    }
    if (!tls_protocols_valid(cfg->client_tls_protocols)) {
        snprintf(msg, msglen,
                 "invalid value \"%s\" for client_tls_protocols: expected secure, all or a list "
                 "of tlsv1.0, tlsv1.1, tlsv1.2, tlsv1.3",
                 cfg->client_tls_protocols);
        return -1;
    }
    if (!tls_protocols_valid(cfg->server_tls_protocols)) {
        snprintf(msg, msglen,
                 "invalid value \"%s\" for server_tls_protocols: expected secure, all or a list "
                 "of tlsv1.0, tlsv1.1, tlsv1.2, tlsv1.3",
                 cfg->server_tls_protocols);
        return -1;
    }
    return 0;
}

int config_load(const char *path, struct config *cfg, char *err, size_t errlen)
{
    char msg[512];
    char *line = NULL;
    size_t linecap = 0;
    int lineno = 0;
    enum section sec = SEC_NONE;
    FILE *f = NULL;
    char *basedir = NULL;

    memset(cfg, 0, sizeof(*cfg));
    cfg->path = strdup(path);
    basedir = config_dir(path);
    if (cfg->path == NULL || basedir == NULL) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    if (apply_defaults(cfg, basedir, msg, sizeof(msg)) < 0) {
        snprintf(err, errlen, "%s: default: %s", path, msg);
        goto fail;
    }

    f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    while (getline(&line, &linecap, f) >= 0) {
        lineno++;
        if (parse_line(cfg, line, &sec, basedir, msg, sizeof(msg)) < 0) {
            snprintf(err, errlen, "%s:%d: %s", path, lineno, msg);
            goto fail;
        }
    }
    if (ferror(f)) {
        snprintf(err, errlen, "%s:%d: read error: %s", path, lineno + 1, strerror(errno));
        goto fail;
    }
    if (cfg->n_nodes == 0) {
        snprintf(err, errlen, "%s: no nodes: [nodes] needs at least one \"name = host=H port=P\"",
                 path);
        goto fail;
    }
    if (check_tls(cfg, msg, sizeof(msg)) < 0) {
        snprintf(err, errlen, "%s: %s", path, msg);
        goto fail;
    }
    if (config_unix_mode(cfg) < 0) {
        snprintf(err, errlen,
                 "%s: invalid value \"%s\" for unix_socket_mode: expected an octal mode such as "
                 "0777 or 0770",
                 path, cfg->unix_socket_mode);
        goto fail;
    }
    if (cfg->topology_source == TOPO_PATRONI && !*cfg->patroni_url) {
        snprintf(err, errlen,
                 "%s: topology_source = patroni needs patroni_url (http://host:8008, one or more "
                 "members' REST APIs, comma-separated)",
                 path);
        goto fail;
    }
    if (cfg->auth_type == AUTH_HBA && !*cfg->auth_hba_file) {
        snprintf(err, errlen, "%s: auth_type = hba needs auth_hba_file", path);
        goto fail;
    }
    free(line);
    free(basedir);
    fclose(f);
    return 0;

fail:
    free(line);
    free(basedir);
    if (f)
        fclose(f);
    config_free(cfg);
    return -1;
}

void config_free(struct config *cfg)
{
    for (size_t i = 0; i < N_KEYS; i++)
        if (is_string(&keys[i]))
            store_str(cfg, &keys[i], NULL);
    free(cfg->path);
    cfg->path = NULL;
    free_overrides(&cfg->db_overrides, &cfg->n_db_overrides);
    free_overrides(&cfg->user_overrides, &cfg->n_user_overrides);
}

static int nodes_equal(const struct config *a, const struct config *b)
{
    if (a->n_nodes != b->n_nodes)
        return 0;
    for (int i = 0; i < a->n_nodes; i++)
        if (strcmp(a->nodes[i].name, b->nodes[i].name) != 0 ||
            strcmp(a->nodes[i].host, b->nodes[i].host) != 0 || a->nodes[i].port != b->nodes[i].port)
            return 0;
    return 1;
}

void config_apply_reload(struct config *cur, struct config *fresh)
{
    for (size_t i = 0; i < N_KEYS; i++) {
        const struct key_def *k = &keys[i];
        if (is_string(k)) {
            char **c = field(cur, k), **f = field(fresh, k);
            if (k->reloadable) {
                store_str(cur, k, *f);
                *f = NULL;
            } else if (strcmp(*c ? *c : "", *f ? *f : "") != 0) {
                log_warn("config: %s changed to \"%s\" but needs a restart; keeping \"%s\"",
                         k->name, *f ? *f : "", *c ? *c : "");
            }
        } else if (k->reloadable) {
            store_num(cur, k, load_num(fresh, k));
        } else if (load_num(cur, k) != load_num(fresh, k)) {
            log_warn("config: %s changed to %ld but needs a restart; keeping %ld", k->name,
                     load_num(fresh, k), load_num(cur, k));
        }
    }
    /* [databases] and [users] pool sizes apply at once (pools read them at each lending). */
    free_overrides(&cur->db_overrides, &cur->n_db_overrides);
    free_overrides(&cur->user_overrides, &cur->n_user_overrides);
    cur->db_overrides = fresh->db_overrides;
    cur->n_db_overrides = fresh->n_db_overrides;
    cur->user_overrides = fresh->user_overrides;
    cur->n_user_overrides = fresh->n_user_overrides;
    fresh->db_overrides = fresh->user_overrides = NULL;
    fresh->n_db_overrides = fresh->n_user_overrides = 0;
    /* [nodes] applies too: the topology follows it (topology_sync_nodes), and whoever refuses
     * a change (the writer removed) has put the running list back into fresh first. */
    if (!nodes_equal(cur, fresh)) {
        memcpy(cur->nodes, fresh->nodes, sizeof(cur->nodes));
        cur->n_nodes = fresh->n_nodes;
    }
    config_free(fresh);
}

int config_list_has(const char *list, const char *name)
{
    size_t n = strlen(name);
    if (list == NULL || n == 0)
        return 0;
    const char *p = list;
    while (*p) {
        p += strspn(p, ", \t");
        size_t len = strcspn(p, ", \t");
        if (len == n && strncmp(p, name, n) == 0)
            return 1;
        p += len;
    }
    return 0;
}

int config_n_keys(void)
{
    return (int)N_KEYS;
}

/* The stored value as text that set_value reads back unchanged (durations in ms). */
static void format_value(const struct config *cfg, const struct key_def *k, char *out, size_t cap)
{
    if (is_string(k)) {
        const char *v = *(char *const *)cfield(cfg, k);
        snprintf(out, cap, "%s", v ? v : "");
        return;
    }
    long v = load_num(cfg, k);
    switch (k->type) {
    case KT_BOOL:
        snprintf(out, cap, "%s", v ? "on" : "off");
        return;
    case KT_ENUM: {
        const char *p = k->extra;
        for (long i = 0; i < v && *p; i++) {
            p += strcspn(p, "|");
            if (*p == '|')
                p++;
        }
        snprintf(out, cap, "%.*s", (int)strcspn(p, "|"), p);
        return;
    }
    case KT_DURATION:
        snprintf(out, cap, "%ldms", v);
        return;
    default:
        snprintf(out, cap, "%ld", v);
        return;
    }
}

int config_key_show(const struct config *cfg, int i, struct config_key_view *out)
{
    if (i < 0 || i >= (int)N_KEYS)
        return -1;
    const struct key_def *k = &keys[i];
    out->name = k->name;
    out->reloadable = k->reloadable;
    format_value(cfg, k, out->value, sizeof(out->value));
    /* The default as the file would give it, normalised the same way. */
    struct config d;
    memset(&d, 0, sizeof(d));
    char msg[256];
    if (set_value(&d, k, k->def, NULL, msg, sizeof(msg)) < 0)
        snprintf(out->def, sizeof(out->def), "%s", k->def);
    else
        format_value(&d, k, out->def, sizeof(out->def));
    if (is_string(k))
        store_str(&d, k, NULL);
    return 0;
}

int config_set(struct config *cfg, const char *name, const char *value, char *err, size_t errlen)
{
    const struct key_def *k = find_key(name);
    if (k == NULL) {
        snprintf(err, errlen, "unknown key \"%s\"", name);
        return -1;
    }
    if (!k->reloadable) {
        snprintf(err, errlen, "%s cannot be changed while pgstay runs (restart it)", k->name);
        return -1;
    }
    char *basedir = cfg->path ? config_dir(cfg->path) : NULL;
    int r = set_value(cfg, k, value, basedir, err, errlen);
    free(basedir);
    if (r == 0)
        log_info("config: %s set to \"%s\" (SET)", k->name, value);
    return r;
}

const char *config_canonical_key(const char *name)
{
    const struct key_def *k = find_key(name);
    return k ? k->name : NULL;
}

int config_check_value(const char *name, const char *value, char *err, size_t errlen)
{
    const struct key_def *k = find_key(name);
    if (k == NULL) {
        snprintf(err, errlen, "unknown key \"%s\"", name);
        return -1;
    }
    struct config scratch;
    memset(&scratch, 0, sizeof(scratch));
    int r = set_value(&scratch, k, value, NULL, err, errlen);
    if (is_string(k))
        store_str(&scratch, k, NULL);
    return r;
}
