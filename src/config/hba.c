/* The auth_hba_file reader (pg_hba.conf's format) and the first-match lookup a login goes through.
 */
#include "config/hba.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define HBA_LINE_MAX   8192
#define HBA_MAX_FIELDS 64 /* tokens on one line, lists included */

/* One token of a line: which field it belongs to (lists such as "db1,db2" share one). */
struct tok {
    char *s;
    int quoted;
    int field;
};

static const char *const methods[] = {
    [HBA_TRUST] = "trust",         [HBA_REJECT] = "reject",     [HBA_MD5] = "md5",
    [HBA_SCRAM] = "scram-sha-256", [HBA_PASSWORD] = "password", [HBA_CERT] = "cert",
    [HBA_PEER] = "peer",
};

const char *hba_method_name(int method)
{
    if (method < 0 || method >= (int)(sizeof(methods) / sizeof(methods[0])))
        return "?";
    return methods[method];
}

static int fail(char *err, size_t errlen, const char *path, int line, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int fail(char *err, size_t errlen, const char *path, int line, const char *fmt, ...)
{
    int n = snprintf(err, errlen, "%s:%d: ", path, line);
    if (n < 0 || (size_t)n >= errlen)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

/* Split a line as PostgreSQL does: blanks separate fields, commas separate the members of a
 * list within one field (blanks may follow a comma), double quotes protect blanks, commas and
 * keywords, '#' outside quotes ends the line. The tokens point into line, which is modified. */
static int tokenize(char *line, struct tok *toks, int cap, int *n_out)
{
    int n = 0, field = 0;
    char *p = line;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
            p++;
        if (*p == '\0' || *p == '#')
            break;
        for (;;) {
            /* One token, quoted parts and all, up to a blank, a comma or the end. */
            if (n == cap)
                return -1;
            char *out = p, *start = p;
            int quoted = 0, in_q = 0;
            while (*p && (in_q || (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n' &&
                                   *p != ',' && *p != '#'))) {
                if (*p == '"') {
                    quoted = 1;
                    in_q = !in_q;
                    p++;
                    continue;
                }
                *out++ = *p++;
            }
            if (in_q)
                return -2;
            char end = *p;
            *out = '\0';
            toks[n].s = start;
            toks[n].quoted = quoted;
            toks[n].field = field;
            n++;
            if (end == ',') {
                p++;
                while (*p == ' ' || *p == '\t')
                    p++;
                continue;
            }
            if (end != '\0' && end != '#')
                p++;
            else if (end == '#')
                *p = '\0';
            break;
        }
        field++;
    }
    *n_out = n;
    return field;
}

/* The tokens of one field: first index and count. */
static int field_span(const struct tok *t, int n, int field, int *first)
{
    int c = 0;
    *first = -1;
    for (int i = 0; i < n; i++) {
        if (t[i].field == field) {
            if (*first < 0)
                *first = i;
            c++;
        }
    }
    return c;
}

static int names_from(const struct tok *t, int first, int count, int is_db, struct hba_name **out,
                      const char **bad)
{
    struct hba_name *v = calloc((size_t)count, sizeof(*v));
    if (!v)
        return -1;
    for (int i = 0; i < count; i++) {
        const struct tok *k = &t[first + i];
        int kw = HBA_KW_NAME;
        if (!k->quoted) {
            if (!strcmp(k->s, "all"))
                kw = HBA_KW_ALL;
            else if (is_db && !strcmp(k->s, "sameuser"))
                kw = HBA_KW_SAMEUSER;
            else if (is_db && !strcmp(k->s, "replication"))
                kw = HBA_KW_REPLICATION;
            else if ((is_db && (!strcmp(k->s, "samerole") || !strcmp(k->s, "samegroup"))) ||
                     k->s[0] == '+' || k->s[0] == '@') {
                *bad = k->s;
                for (int j = 0; j < i; j++)
                    free(v[j].name);
                free(v);
                return -2;
            }
        }
        v[i].kw = kw;
        v[i].name = strdup(k->s);
        if (!v[i].name) {
            for (int j = 0; j < i; j++)
                free(v[j].name);
            free(v);
            return -1;
        }
    }
    *out = v;
    return 0;
}

/* A mask of bits leading ones over len bytes. */
static void mask_bits(uint8_t *mask, int len, int bits)
{
    memset(mask, 0, 16);
    for (int i = 0; i < len; i++) {
        int b = bits - i * 8;
        mask[i] = b >= 8 ? 0xff : b <= 0 ? 0 : (uint8_t)(0xff << (8 - b));
    }
}

static int parse_ip(const char *s, int *family, uint8_t *out)
{
    memset(out, 0, 16);
    if (inet_pton(AF_INET, s, out) == 1) {
        *family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, s, out) == 1) {
        *family = AF_INET6;
        return 0;
    }
    return -1;
}

/* "addr/bits", or "addr" followed by a mask in the next field (PostgreSQL's older form).
 * Returns the fields used (1 or 2), -1 on error with the reason in why. */
static int parse_address(struct hba_rule *r, const char *a, const char *next, const char **why)
{
    char buf[128];
    if (strlen(a) >= sizeof(buf)) {
        *why = "invalid IP address";
        return -1;
    }
    snprintf(buf, sizeof(buf), "%s", a);
    char *slash = strchr(buf, '/');
    if (slash)
        *slash = '\0';
    if (parse_ip(buf, &r->family, r->addr) < 0) {
        *why = "host names are not supported in auth_hba_file (use an IP address and a CIDR mask, "
               "all, samehost or samenet)";
        return -1;
    }
    int len = r->family == AF_INET ? 4 : 16;
    r->addr_kind = HBA_ADDR_CIDR;
    if (slash) {
        char *end;
        long bits = strtol(slash + 1, &end, 10);
        if (slash[1] == '\0' || *end || bits < 0 || bits > len * 8) {
            *why = "invalid CIDR mask in address";
            return -1;
        }
        mask_bits(r->mask, len, (int)bits);
    } else {
        int mf;
        if (!next || parse_ip(next, &mf, r->mask) < 0 || mf != r->family) {
            *why = "IP address without a CIDR mask or a netmask";
            return -1;
        }
        for (int i = 0; i < len; i++)
            r->addr[i] &= r->mask[i];
        return 2;
    }
    for (int i = 0; i < len; i++)
        r->addr[i] &= r->mask[i];
    return 1;
}

static void rule_free(struct hba_rule *r)
{
    for (int i = 0; i < r->n_dbs; i++)
        free(r->dbs[i].name);
    for (int i = 0; i < r->n_users; i++)
        free(r->users[i].name);
    free(r->dbs);
    free(r->users);
    memset(r, 0, sizeof(*r));
}

/* One non-empty line into r: 0, or -1 with err filled. */
static int parse_rule(struct tok *t, int n, int n_fields, struct hba_rule *r, const char *path,
                      int line, char *err, size_t errlen)
{
    int first, c = field_span(t, n, 0, &first);
    if (c != 1)
        return fail(err, errlen, path, line, "connection type cannot be a list");
    const char *type = t[first].s;
    if (!strcmp(type, "local"))
        r->type = HBA_LOCAL;
    else if (!strcmp(type, "host"))
        r->type = HBA_HOST;
    else if (!strcmp(type, "hostssl"))
        r->type = HBA_HOSTSSL;
    else if (!strcmp(type, "hostnossl"))
        r->type = HBA_HOSTNOSSL;
    else if (!strcmp(type, "hostgssenc") || !strcmp(type, "hostnogssenc"))
        return fail(err, errlen, path, line,
                    "connection type \"%s\" is not supported by pgstay (no GSSAPI encryption)",
                    type);
    else
        return fail(err, errlen, path, line, "invalid connection type \"%s\"", type);
    int need = r->type == HBA_LOCAL ? 4 : 5;
    if (n_fields < need)
        return fail(err, errlen, path, line, "end-of-line before %s specification",
                    n_fields < 2                ? "database"
                    : n_fields < 3              ? "role"
                    : need == 5 && n_fields < 4 ? "IP address"
                                                : "authentication method");
    const char *bad = NULL;
    c = field_span(t, n, 1, &first);
    int rc = names_from(t, first, c, 1, &r->dbs, &bad);
    if (rc == -2)
        return fail(err, errlen, path, line,
                    "database \"%s\" is not supported by pgstay in auth_hba_file (@file, samerole "
                    "and samegroup are not; list the databases)",
                    bad);
    if (rc < 0)
        return fail(err, errlen, path, line, "out of memory");
    r->n_dbs = c;
    c = field_span(t, n, 2, &first);
    rc = names_from(t, first, c, 0, &r->users, &bad);
    if (rc == -2)
        return fail(
            err, errlen, path, line,
            "user \"%s\" is not supported by pgstay in auth_hba_file (+group membership and "
            "@file are not; list the users)",
            bad);
    if (rc < 0)
        return fail(err, errlen, path, line, "out of memory");
    r->n_users = c;
    int f = 3;
    if (r->type != HBA_LOCAL) {
        c = field_span(t, n, 3, &first);
        if (c != 1)
            return fail(err, errlen, path, line, "multiple values specified for host address");
        const char *a = t[first].s;
        if (!t[first].quoted && !strcmp(a, "all")) {
            r->addr_kind = HBA_ADDR_ANY;
            f = 4;
        } else if (!t[first].quoted && !strcmp(a, "samehost")) {
            r->addr_kind = HBA_ADDR_SAMEHOST;
            f = 4;
        } else if (!t[first].quoted && !strcmp(a, "samenet")) {
            r->addr_kind = HBA_ADDR_SAMENET;
            f = 4;
        } else {
            int nf, nfirst = -1;
            if (n_fields > 4)
                field_span(t, n, 4, &nfirst);
            const char *why = NULL;
            int used =
                parse_address(r, a, nfirst >= 0 && !strchr(a, '/') ? t[nfirst].s : NULL, &why);
            if (used < 0)
                return fail(err, errlen, path, line, "%s: \"%s\"", why, a);
            nf = 3 + used;
            f = nf;
        }
    }
    if (f >= n_fields)
        return fail(err, errlen, path, line, "end-of-line before authentication method");
    c = field_span(t, n, f, &first);
    if (c != 1)
        return fail(err, errlen, path, line, "multiple values specified for authentication type");
    const char *m = t[first].s;
    r->method = -1;
    for (int i = 0; i < (int)(sizeof(methods) / sizeof(methods[0])); i++)
        if (!strcmp(m, methods[i]))
            r->method = i;
    if (r->method == HBA_PEER && r->type != HBA_LOCAL)
        return fail(err, errlen, path, line,
                    "peer authentication is only supported on local sockets");
    if (r->method < 0)
        return fail(err, errlen, path, line,
                    "authentication method \"%s\" is not supported by pgstay (trust, reject, md5, "
                    "scram-sha-256, password, cert)",
                    m);
    if (r->method == HBA_CERT) {
        if (r->type != HBA_HOSTSSL && r->type != HBA_LOCAL)
            return fail(err, errlen, path, line,
                        "cert authentication is only supported on hostssl connections");
        r->clientcert = HBA_CERT_VERIFY_FULL;
    }
    /* Options: name=value after the method. Only clientcert means something to pgstay; any
     * other (map=, ...) would be ignored, which is a weaker rule than the file says: refused. */
    for (int i = f + 1; i < n_fields; i++) {
        c = field_span(t, n, i, &first);
        const char *o = t[first].s;
        if (c != 1 || strncmp(o, "clientcert=", 11) != 0)
            return fail(err, errlen, path, line,
                        "authentication option \"%s\" is not supported by pgstay (only clientcert)",
                        o);
        if (r->type != HBA_HOSTSSL)
            return fail(err, errlen, path, line,
                        "clientcert can only be configured for \"hostssl\" rows");
        const char *v = o + 11;
        if (!strcmp(v, "verify-full"))
            r->clientcert = HBA_CERT_VERIFY_FULL;
        else if (!strcmp(v, "verify-ca") && r->method != HBA_CERT)
            r->clientcert = HBA_CERT_VERIFY_CA;
        else
            return fail(err, errlen, path, line, "invalid value for clientcert: \"%s\"", v);
    }
    return 0;
}

int hba_load(const char *path, struct hba *h, char *err, size_t errlen)
{
    memset(h, 0, sizeof(*h));
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open auth_hba_file", path);
        return -1;
    }
    char *line = malloc(HBA_LINE_MAX);
    struct tok toks[HBA_MAX_FIELDS];
    int cap = 0, lineno = 0;
    if (!line) {
        fclose(f);
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    while (fgets(line, HBA_LINE_MAX, f)) {
        lineno++;
        size_t len = strlen(line);
        if (len == HBA_LINE_MAX - 1 && line[len - 1] != '\n') {
            fail(err, errlen, path, lineno, "line too long");
            goto bad;
        }
        int n = 0, nf = tokenize(line, toks, HBA_MAX_FIELDS, &n);
        if (nf == -1) {
            fail(err, errlen, path, lineno, "too many fields");
            goto bad;
        }
        if (nf == -2) {
            fail(err, errlen, path, lineno, "unterminated quoted string");
            goto bad;
        }
        if (nf == 0)
            continue;
        if (h->n == cap) {
            cap = cap ? cap * 2 : 16;
            struct hba_rule *nr = realloc(h->rules, (size_t)cap * sizeof(*nr));
            if (!nr) {
                fail(err, errlen, path, lineno, "out of memory");
                goto bad;
            }
            h->rules = nr;
        }
        struct hba_rule *r = &h->rules[h->n];
        memset(r, 0, sizeof(*r));
        r->line = lineno;
        if (parse_rule(toks, n, nf, r, path, lineno, err, errlen) < 0) {
            rule_free(r);
            goto bad;
        }
        h->n++;
    }
    free(line);
    fclose(f);
    return 0;
bad:
    free(line);
    fclose(f);
    hba_free(h);
    return -1;
}

void hba_free(struct hba *h)
{
    for (int i = 0; i < h->n; i++)
        rule_free(&h->rules[i]);
    free(h->rules);
    memset(h, 0, sizeof(*h));
}

static int names_match(const struct hba_name *v, int n, const char *name, const char *user)
{
    for (int i = 0; i < n; i++) {
        switch (v[i].kw) {
        case HBA_KW_ALL:
            return 1;
        case HBA_KW_SAMEUSER:
            if (!strcmp(name, user))
                return 1;
            break;
        case HBA_KW_REPLICATION:
            break; /* pgstay refuses replication connections: never a match */
        default:
            if (!strcmp(v[i].name, name))
                return 1;
        }
    }
    return 0;
}

static int in_net(int len, const uint8_t *ip, const uint8_t *net, const uint8_t *mask)
{
    for (int i = 0; i < len; i++)
        if ((ip[i] & mask[i]) != (net[i] & mask[i]))
            return 0;
    return 1;
}

/* samehost / samenet: one of this host's interface addresses (or networks), read when a rule
 * needs it, as PostgreSQL does: only logins that reach such a line pay for getifaddrs. */
static int on_this_host(int family, const uint8_t *ip, int net)
{
    struct ifaddrs *ifa, *i;
    if (getifaddrs(&ifa) < 0)
        return 0;
    int found = 0, len = family == AF_INET ? 4 : 16;
    for (i = ifa; i && !found; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != family)
            continue;
        const uint8_t *a, *m = NULL;
        if (family == AF_INET) {
            a = (const uint8_t *)&((struct sockaddr_in *)i->ifa_addr)->sin_addr;
            if (i->ifa_netmask)
                m = (const uint8_t *)&((struct sockaddr_in *)i->ifa_netmask)->sin_addr;
        } else {
            a = (const uint8_t *)&((struct sockaddr_in6 *)i->ifa_addr)->sin6_addr;
            if (i->ifa_netmask)
                m = (const uint8_t *)&((struct sockaddr_in6 *)i->ifa_netmask)->sin6_addr;
        }
        if (net && m)
            found = in_net(len, ip, a, m);
        else
            found = !memcmp(ip, a, (size_t)len);
    }
    freeifaddrs(ifa);
    return found;
}

const struct hba_rule *hba_match(const struct hba *h, const struct hba_login *l)
{
    int family = l->family;
    const uint8_t *ip = l->ip;
    static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (family == AF_INET6 && ip && !memcmp(ip, v4mapped, 12)) {
        family = AF_INET;
        ip += 12;
    }
    for (int i = 0; i < h->n; i++) {
        const struct hba_rule *r = &h->rules[i];
        if (r->type == HBA_LOCAL || (family != AF_INET && family != AF_INET6))
            continue; /* TCP only: local lines describe Unix sockets */
        if ((r->type == HBA_HOSTSSL && !l->tls) || (r->type == HBA_HOSTNOSSL && l->tls))
            continue;
        if (!names_match(r->dbs, r->n_dbs, l->database, l->user) ||
            !names_match(r->users, r->n_users, l->user, l->user))
            continue;
        switch (r->addr_kind) {
        case HBA_ADDR_CIDR:
            if (r->family != family || !in_net(family == AF_INET ? 4 : 16, ip, r->addr, r->mask))
                continue;
            break;
        case HBA_ADDR_SAMEHOST:
        case HBA_ADDR_SAMENET:
            if (!on_this_host(family, ip, r->addr_kind == HBA_ADDR_SAMENET))
                continue;
            break;
        default:
            break;
        }
        return r;
    }
    return NULL;
}
