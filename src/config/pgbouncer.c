/* pgstay --from-pgbouncer: a pgbouncer.ini read as PgBouncer reads it and written out as the
 * equivalent pgstay.ini, with every setting that cannot be carried over named with its reason. */
#include "config/config.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Why a PgBouncer key has no pgstay counterpart (keys absent here and from pgstay's table get a
 * generic reason). */
static const struct {
    const char *key;
    const char *why;
} reasons[] = {
    {"user", "pgstay does not change user: start it as the user it should run as"},
    {"auth_dbname", "pgstay runs auth_query in the database the client asked for"},
    {"server_round_robin", "pgstay picks servers by node role (the writer; the least-loaded "
                           "standby for the reader endpoint)"},
    {"conffile", "not a setting"},
    {"job_name", "not a setting"},
};

/* What was left behind, printed at the end. */
struct dropped {
    char **lines;
    int n, cap;
};

static void drop(struct dropped *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void drop(struct dropped *d, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (d->n == d->cap) {
        int cap = d->cap ? d->cap * 2 : 16;
        char **nl = realloc(d->lines, sizeof(*nl) * (size_t)cap);
        if (!nl)
            return;
        d->lines = nl;
        d->cap = cap;
    }
    if ((d->lines[d->n] = strdup(buf)) != NULL)
        d->n++;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

/* A server as [nodes] has it. */
struct hostport {
    char host[256];
    int port;
};

struct cluster {
    struct hostport hp[CONFIG_MAX_NODES];
    int n;
};

static int has_server(const struct cluster *c, const struct hostport *hp)
{
    for (int i = 0; i < c->n; i++)
        if (!strcmp(c->hp[i].host, hp->host) && c->hp[i].port == hp->port)
            return 1;
    return 0;
}

/* How many of b's servers a already has. */
static int shared_servers(const struct cluster *a, const struct cluster *b)
{
    int n = 0;
    for (int i = 0; i < b->n; i++)
        n += has_server(a, &b->hp[i]);
    return n;
}

/* Split "a,b,c" into at most max items of cap bytes; the count, -1 if too many or too long. */
static int split_list(const char *s, char items[][256], int max)
{
    int n = 0;
    while (*s) {
        size_t len = strcspn(s, ",");
        if (n == max || len >= 256)
            return -1;
        memcpy(items[n], s, len);
        items[n][len] = 0;
        char *t = trim(items[n]);
        memmove(items[n], t, strlen(t) + 1);
        n++;
        s += len;
        if (*s == ',')
            s++;
    }
    return n;
}

/* A [databases] entry: its servers into *cl; what pgstay does not do, into d. 0, or -1 when the
 * entry names no TCP server. */
static int parse_db_entry(const char *name, const char *val, struct cluster *cl, struct dropped *d,
                          char *pool_mode, size_t pm_cap, char *pool_size, size_t ps_cap)
{
    char hosts[512] = "", ports[256] = "";
    const char *p = val, *k;
    size_t klen;
    char v[512];
    int rc;
    memset(cl, 0, sizeof(*cl));
    while ((rc = conninfo_next(&p, &k, &klen, v, sizeof(v))) != 0) {
        if (rc < 0) {
            if (klen == 0)
                drop(d, "[databases] %s: \"%s\" is not key=value pairs", name, val);
            else
                drop(d, "[databases] %s: a value is unterminated or too long", name);
            return -1;
        }
        char key[64];
        snprintf(key, sizeof(key), "%.*s", (int)klen, k);
        if (!strcmp(key, "host"))
            snprintf(hosts, sizeof(hosts), "%s", v);
        else if (!strcmp(key, "port"))
            snprintf(ports, sizeof(ports), "%s", v);
        else if (!strcmp(key, "dbname")) {
            if (strcmp(v, name) && strcmp(name, "*"))
                drop(d,
                     "[databases] %s: dbname=%s: pgstay does not rename databases (clients ask "
                     "for %s by its own name)",
                     name, v, v);
        } else if (!strcmp(key, "user") || !strcmp(key, "password") || !strcmp(key, "auth_user"))
            drop(d, "[databases] %s: %s=: pgstay logs in to servers as the client's user", name,
                 key);
        else if (!strcmp(key, "pool_mode"))
            snprintf(pool_mode, pm_cap, "%s", v);
        else if (!strcmp(key, "pool_size"))
            snprintf(pool_size, ps_cap, "%s", v);
        else
            drop(d, "[databases] %s: %s=%s: not supported by pgstay", name, key, v);
    }
    if (!hosts[0] || hosts[0] == '/') {
        drop(d,
             "[databases] %s: a unix-socket server: pgstay connects over TCP (give host= an "
             "address)",
             name);
        return -1;
    }
    char hl[CONFIG_MAX_NODES][256], pl[CONFIG_MAX_NODES][256];
    int nh = split_list(hosts, hl, CONFIG_MAX_NODES);
    int np = ports[0] ? split_list(ports, pl, CONFIG_MAX_NODES) : 0;
    if (nh <= 0 || np < 0 || (np > 1 && np != nh)) {
        drop(d, "[databases] %s: host=%s port=%s: the lists do not pair up", name, hosts, ports);
        return -1;
    }
    for (int i = 0; i < nh; i++) {
        snprintf(cl->hp[i].host, sizeof(cl->hp[i].host), "%s", hl[i]);
        const char *port = np == 0 ? "5432" : np == 1 ? pl[0] : pl[i];
        cl->hp[i].port = atoi(port);
        if (cl->hp[i].port < 1 || cl->hp[i].port > 65535) {
            drop(d, "[databases] %s: port %s is not a port", name, port);
            return -1;
        }
    }
    cl->n = nh;
    return 0;
}

/* A PgBouncer time in seconds that pgstay's integer reader would refuse ("0.5"): in ms. */
static int fractional_seconds(const char *v, char *out, size_t cap)
{
    char *end;
    double s = strtod(v, &end);
    if (end == v || *end || !strchr(v, '.') || s < 0)
        return -1;
    snprintf(out, cap, "%ldms", (long)(s * 1000 + 0.5));
    return 0;
}

enum sec { S_NONE, S_MAIN, S_DATABASES, S_USERS, S_OTHER };

/* Append "name = pool_size=N" to a [databases] or [users] section being built, if N is one
 * pgstay accepts; otherwise say why not. */
static void add_override(char *sec, size_t cap, const char *secname, const char *name,
                         const char *size, struct dropped *d)
{
    char *end;
    long n = strtol(size, &end, 10);
    if (!*size || *end || n < 1) {
        drop(d, "[%s] %s: pool_size=%s: pgstay needs a pool_size of at least 1", secname, name,
             size);
        return;
    }
    if (strpbrk(name, " \t=;#\"")) {
        drop(d, "[%s] %s: pool_size=%s: the name cannot be written in pgstay.ini", secname, name,
             size);
        return;
    }
    size_t len = strlen(sec);
    snprintf(sec + len, cap - len, "%s = pool_size=%ld\n", name, n);
}

/* A [users] entry: its pool_size is kept; other per-user settings are named as dropped. */
static void parse_user_entry(const char *name, const char *val, char *sec, size_t cap,
                             struct dropped *d)
{
    const char *p = val, *k;
    size_t klen;
    char v[256];
    int rc;
    while ((rc = conninfo_next(&p, &k, &klen, v, sizeof(v))) != 0) {
        if (rc < 0) {
            drop(d, "[users] %s = %s: not key=value pairs", name, val);
            return;
        }
        if (klen == 9 && !strncmp(k, "pool_size", 9))
            add_override(sec, cap, "users", name, v, d);
        else
            drop(d, "[users] %s: %.*s=%s: no per-user %.*s in pgstay (only pool_size)", name,
                 (int)klen, k, v, (int)klen, k);
    }
}

int config_from_pgbouncer(const char *path, FILE *out, FILE *err)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(err, "pgstay: %s: cannot open\n", path);
        return -1;
    }
    struct dropped d = {0};
    char *line = NULL;
    size_t cap = 0;
    enum sec sec = S_NONE;
    int lineno = 0, have_cluster = 0, ok = -1;
    struct cluster cl;
    char main_keys[4096] = "";
    size_t mlen = 0;
    char mode[32] = "session";
    int set_auth = 0, set_maxconn = 0, set_connect = 0, set_mode = 0, set_unix = 0;
    char first_db[128] = "";
    char dbs_sec[4096] = "", users_sec[4096] = ""; /* [databases] and [users] pool sizes */
    while (getline(&line, &cap, f) >= 0) {
        lineno++;
        char *s = trim(line);
        if (!*s || *s == ';' || *s == '#')
            continue;
        if (!strncmp(s, "%include", 8)) {
            drop(&d, "line %d: %s: includes are not followed (convert that file too)", lineno, s);
            continue;
        }
        if (*s == '[') {
            char *close = strchr(s, ']');
            if (close)
                *close = 0;
            char *name = trim(s + 1);
            sec = !strcasecmp(name, "pgbouncer")   ? S_MAIN
                  : !strcasecmp(name, "databases") ? S_DATABASES
                  : !strcasecmp(name, "users")     ? S_USERS
                                                   : S_OTHER;
            if (sec == S_OTHER)
                drop(&d, "[%s]: not supported by pgstay", name);
            continue;
        }
        char *eq = strchr(s, '=');
        if (!eq) {
            drop(&d, "line %d: \"%s\" is not key = value", lineno, s);
            continue;
        }
        *eq = 0;
        char *key = trim(s), *val = trim(eq + 1);
        if (*key == '"') { /* a quoted database or user name */
            key++;
            char *q = strchr(key, '"');
            if (q)
                *q = 0;
        }
        if (sec == S_USERS) {
            parse_user_entry(key, val, users_sec, sizeof(users_sec), &d);
            continue;
        }
        if (sec == S_DATABASES) {
            struct cluster c;
            char pm[32] = "", ps[32] = "";
            if (parse_db_entry(key, val, &c, &d, pm, sizeof(pm), ps, sizeof(ps)) < 0)
                continue;
            if (pm[0] && strcasecmp(pm, mode) && (set_mode || have_cluster))
                drop(&d, "[databases] %s: pool_mode=%s: one pool_mode for every database in pgstay",
                     key, pm);
            else if (pm[0] && !set_mode) {
                snprintf(mode, sizeof(mode), "%s", pm);
                set_mode = 1;
            }
            if (!have_cluster) {
                cl = c;
                have_cluster = 1;
                snprintf(first_db, sizeof(first_db), "%s", key);
            } else if (shared_servers(&cl, &c) == 0) {
                drop(&d,
                     "[databases] %s: its servers are another cluster than %s's: pgstay serves "
                     "one cluster (run a second pgstay for it); not merged",
                     key, first_db);
                continue;
            } else {
                /* Sharing a server, it is the same cluster: pgstay routes every database to
                 * its writer (or a standby) whichever of its servers an entry named. */
                for (int i = 0; i < c.n; i++) {
                    if (has_server(&cl, &c.hp[i]))
                        continue;
                    if (cl.n == CONFIG_MAX_NODES) {
                        drop(&d, "[databases] %s: more than %d servers", key, CONFIG_MAX_NODES);
                        break;
                    }
                    cl.hp[cl.n++] = c.hp[i];
                }
            }
            if (ps[0] && !strcmp(key, "*"))
                drop(&d,
                     "[databases] *: pool_size=%s: pgstay has no fallback entry (pool_size is for "
                     "every database without its own)",
                     ps);
            else if (ps[0])
                add_override(dbs_sec, sizeof(dbs_sec), "databases", key, ps, &d);
            continue;
        }
        if (sec != S_MAIN) {
            if (sec == S_NONE)
                drop(&d, "line %d: %s outside of a section", lineno, key);
            continue;
        }
        if (!*val && !strcasecmp(key, "unix_socket_dir"))
            set_unix = 1; /* PgBouncer: empty = no unix socket, pgstay's default */
        if (!*val)
            continue; /* PgBouncer reads an empty value as its default */
        const char *canon = config_canonical_key(key);
        char why[600], conv[64];
        const char *use = val;
        if (canon && !strcmp(canon, "listen_addr") && strchr(val, ',')) {
            static char first[256];
            snprintf(first, sizeof(first), "%.*s", (int)strcspn(val, ","), val);
            drop(&d, "listen_addr = %s: pgstay listens on one address: %s kept", val, first);
            use = first;
        }
        if (canon && config_check_value(canon, use, why, sizeof(why)) < 0) {
            if (fractional_seconds(use, conv, sizeof(conv)) == 0 &&
                config_check_value(canon, conv, why, sizeof(why)) == 0) {
                use = conv;
            } else {
                drop(&d, "%s = %s: %s", key, val, why);
                continue;
            }
        }
        if (!canon) {
            const char *r = NULL;
            for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++)
                if (!strcasecmp(reasons[i].key, key))
                    r = reasons[i].why;
            if (!r && (!strncasecmp(key, "client_tls", 10) || !strncasecmp(key, "server_tls", 10)))
                r = "a TLS key pgstay does not have";
            if (!r && !strncasecmp(key, "dns_", 4))
                r = "pgstay resolves through libevent, with no cache settings";
            drop(&d, "%s = %s: %s", key, val, r ? r : "not supported by pgstay yet");
            continue;
        }
        if (!strcmp(canon, "pool_mode")) {
            snprintf(mode, sizeof(mode), "%s", use);
            set_mode = 1;
            continue; /* written once, below */
        }
        set_auth |= !strcmp(canon, "auth_type");
        set_maxconn |= !strcmp(canon, "max_client_conn");
        set_connect |= !strcmp(canon, "server_connect_timeout");
        set_unix |= !strcmp(canon, "unix_socket_dir");
        int n = snprintf(main_keys + mlen, sizeof(main_keys) - mlen, "%s = %s\n", canon, use);
        if (n > 0 && (size_t)n < sizeof(main_keys) - mlen)
            mlen += (size_t)n;
    }
    free(line);
    fclose(f);
    if (!have_cluster) {
        fprintf(err,
                "pgstay: %s: no [databases] entry with a TCP server: nothing to make [nodes] "
                "of\n",
                path);
        goto out;
    }
    char why[600];
    if (config_check_value("pool_mode", mode, why, sizeof(why)) < 0) {
        drop(&d, "pool_mode = %s: %s; session kept", mode, why);
        snprintf(mode, sizeof(mode), "session");
    }
    fprintf(out, "; pgstay.ini converted from %s by pgstay --from-pgbouncer\n[pgstay]\n", path);
    fputs(main_keys, out);
    fprintf(out, "pool_mode = %s\n", mode);
    /* Where PgBouncer's default differs from pgstay's, PgBouncer's is what the file meant. */
    if (!set_auth)
        fputs("auth_type = md5 ; PgBouncer's default\n", out);
    if (!set_maxconn)
        fputs("max_client_conn = 100 ; PgBouncer's default\n", out);
    if (!set_connect)
        fputs("server_connect_timeout = 15 ; PgBouncer's default\n", out);
    if (!set_unix)
        fputs("unix_socket_dir = /tmp ; PgBouncer's default\n", out);
    fputs("[nodes]\n", out);
    for (int i = 0; i < cl.n; i++)
        fprintf(out, "n%d = host=%s port=%d\n", i + 1, cl.hp[i].host, cl.hp[i].port);
    if (dbs_sec[0])
        fprintf(out, "[databases]\n%s", dbs_sec);
    if (users_sec[0])
        fprintf(out, "[users]\n%s", users_sec);
    if (d.n) {
        fprintf(out, "; not carried over:\n");
        for (int i = 0; i < d.n; i++)
            fprintf(out, ";   %s\n", d.lines[i]);
        fprintf(err, "pgstay: %d setting(s) of %s not carried over:\n", d.n, path);
        for (int i = 0; i < d.n; i++)
            fprintf(err, "  %s\n", d.lines[i]);
    }
    ok = 0;
out:
    for (int i = 0; i < d.n; i++)
        free(d.lines[i]);
    free(d.lines);
    return ok;
}
