/* pgstay-lab: command line, cluster parameters, and the simple commands (status, start, stop, chaos). */
#include "lab.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct opts {
    const char *cmd;
    const char *node;
    const char *dir;
    int nodes;
    int port;
    int sync; /* -1 unset */
    const char *auth;
    bool fast;
    bool json;
    const char *to;
    int delay_ms;
    bool rejoin;
    const char *proxy;
    const char *cert, *key;
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: pgstay-lab [--dir DIR] COMMAND [NODE] [options]\n"
            "  init [--nodes N] [--port BASE] [--sync|--async] [--auth trust|scram] [--fast]\n"
            "  status [--json]\n"
            "  start [NODE] | stop [NODE] | destroy\n"
            "  crash NODE | freeze NODE | thaw NODE | blackhole NODE | heal NODE\n"
            "  promote NODE | rejoin NODE\n"
            "  failover [--to NODE] [--delay MS] [--rejoin]\n"
            "  switchover [--to NODE] [--proxy CONNINFO]\n"
            "  ssl --cert FILE --key FILE   (ssl = on on every node with this certificate)\n"
            "DIR defaults to ./lab; node i is named nI and listens on 127.0.0.1:BASE+i.\n");
}

static bool parse_int(const char *s, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || !*s || *end || v < lo || v > hi)
        return false;
    *out = (int)v;
    return true;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
    for (int k = 1; k < argc; k++) {
        char *a = argv[k];
        if (strncmp(a, "--", 2) != 0) {
            if (!o->cmd)
                o->cmd = a;
            else if (!o->node)
                o->node = a;
            else {
                fprintf(stderr, "unexpected argument '%s'\n", a);
                return -1;
            }
            continue;
        }
        /* accept both --opt VALUE and --opt=VALUE */
        char name[64];
        const char *val = NULL;
        char *eq = strchr(a, '=');
        snprintf(name, sizeof name, "%.*s", eq ? (int)(eq - a) : (int)strlen(a), a);
        if (eq)
            val = eq + 1;
        bool flag = true;
        if (!strcmp(name, "--sync"))
            o->sync = 1;
        else if (!strcmp(name, "--async"))
            o->sync = 0;
        else if (!strcmp(name, "--fast"))
            o->fast = true;
        else if (!strcmp(name, "--json"))
            o->json = true;
        else if (!strcmp(name, "--rejoin"))
            o->rejoin = true;
        else if (!strcmp(name, "--help")) {
            usage(stdout);
            exit(0);
        } else
            flag = false;
        if (flag) {
            if (val) {
                fprintf(stderr, "option %s takes no value\n", name);
                return -1;
            }
            continue;
        }
        if (!val) {
            if (k + 1 >= argc) {
                fprintf(stderr, "option %s needs a value\n", name);
                return -1;
            }
            val = argv[++k];
        }
        if (!strcmp(name, "--dir"))
            o->dir = val;
        else if (!strcmp(name, "--nodes")) {
            if (!parse_int(val, 1, LAB_MAX_NODES, &o->nodes)) {
                fprintf(stderr, "--nodes must be 1..%d\n", LAB_MAX_NODES);
                return -1;
            }
        } else if (!strcmp(name, "--port")) {
            if (!parse_int(val, 1024, 65500, &o->port)) {
                fprintf(stderr, "--port must be 1024..65500\n");
                return -1;
            }
        } else if (!strcmp(name, "--auth")) {
            if (strcmp(val, "trust") && strcmp(val, "scram") && strcmp(val, "scram-sha-256")) {
                fprintf(stderr, "--auth must be trust or scram\n");
                return -1;
            }
            o->auth = strcmp(val, "trust") ? "scram" : "trust";
        } else if (!strcmp(name, "--to"))
            o->to = val;
        else if (!strcmp(name, "--delay")) {
            if (!parse_int(val, 0, 3600000, &o->delay_ms)) {
                fprintf(stderr, "--delay must be milliseconds\n");
                return -1;
            }
        } else if (!strcmp(name, "--proxy"))
            o->proxy = val;
        else if (!strcmp(name, "--cert"))
            o->cert = val;
        else if (!strcmp(name, "--key"))
            o->key = val;
        else {
            fprintf(stderr, "unknown option %s\n", name);
            return -1;
        }
    }
    return 0;
}

static int set_dir(struct lab *lab, const char *dir)
{
    snprintf(lab->dir_arg, sizeof lab->dir_arg, "%s", dir);
    char cwd[PATH_MAX];
    int n;
    if (dir[0] == '/')
        n = snprintf(lab->dir, sizeof lab->dir, "%s", dir);
    else if (getcwd(cwd, sizeof cwd)) {
        while (dir[0] == '.' && dir[1] == '/')
            dir += 2;
        n = snprintf(lab->dir, sizeof lab->dir, "%s/%s", strcmp(cwd, "/") ? cwd : "", dir);
    } else {
        fprintf(stderr, "cannot get the current directory: %s\n", strerror(errno));
        return -1;
    }
    if (n < 0 || (size_t)n >= sizeof lab->dir - 16) {
        fprintf(stderr, "--dir %s is too long\n", lab->dir_arg);
        return -1;
    }
    size_t l = strlen(lab->dir);
    while (l > 1 && lab->dir[l - 1] == '/')
        lab->dir[--l] = 0;
    snprintf(lab->run, sizeof lab->run, "%s/run", lab->dir);
    return 0;
}

static int lab_load(struct lab *lab)
{
    char path[PATH_MAX + 16], line[128];
    snprintf(path, sizeof path, "%s/lab.conf", lab->dir);
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "no cluster in %s (run init)\n", lab->dir_arg);
        return -1;
    }
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *eq = strchr(line, '=');
        if (!eq)
            continue;
        *eq++ = 0;
        if (!strcmp(line, "nodes"))
            lab->nodes = atoi(eq);
        else if (!strcmp(line, "port"))
            lab->port = atoi(eq);
        else if (!strcmp(line, "sync"))
            lab->sync = atoi(eq) != 0;
        else if (!strcmp(line, "auth"))
            snprintf(lab->auth, sizeof lab->auth, "%s", eq);
        else if (!strcmp(line, "fast"))
            lab->fast = atoi(eq) != 0;
    }
    fclose(f);
    if (lab->nodes < 1 || lab->nodes > LAB_MAX_NODES || lab->port < 1024) {
        fprintf(stderr, "%s is damaged\n", path);
        return -1;
    }
    return 0;
}

static int parse_node(const struct lab *lab, const char *s)
{
    int i;
    if (!s)
        return 0;
    if ((s[0] == 'n' || s[0] == 'N') && parse_int(s + 1, 1, lab->nodes, &i))
        return i;
    if (parse_int(s, 1, lab->nodes, &i))
        return i;
    fprintf(stderr, "unknown node '%s' (nodes are n1..n%d)\n", s, lab->nodes);
    return -1;
}

static const char *role_name(const struct node_state *s)
{
    return s->role == ROLE_PRIMARY ? "primary" : s->role == ROLE_STANDBY ? "standby" : "down";
}

static int cmd_status(struct lab *lab, bool json)
{
    struct node_state st[LAB_MAX_NODES + 1];
    probe_all(lab, st);
    int p = find_primary(lab, st, 0);
    if (!json)
        printf("%-4s %-6s %-8s %-8s %-4s %-14s %s\n", "NODE", "PORT", "PID", "ROLE", "TL", "LSN",
               "LAG");
    else
        printf("{\"nodes\": [");
    for (int i = 1; i <= lab->nodes; i++) {
        const struct node_state *s = &st[i];
        char lsn[32] = "", pid[16] = "null", tl[16] = "null", lag[32] = "null";
        if (s->has_lsn)
            format_lsn(s->lsn, lsn, sizeof lsn);
        if (s->running)
            snprintf(pid, sizeof pid, "%d", (int)s->pid);
        if (s->role != ROLE_DOWN)
            snprintf(tl, sizeof tl, "%u", s->tli);
        if (s->role == ROLE_PRIMARY)
            snprintf(lag, sizeof lag, "0");
        else if (s->role == ROLE_STANDBY && p && s->has_lsn)
            snprintf(lag, sizeof lag, "%lld",
                     (long long)(st[p].lsn > s->lsn ? st[p].lsn - s->lsn : 0));
        if (json) {
            char lsnj[40] = "null";
            if (s->has_lsn)
                snprintf(lsnj, sizeof lsnj, "\"%s\"", lsn);
            printf("%s{\"name\": \"n%d\", \"port\": %d, \"pid\": %s, \"running\": %s, "
                   "\"role\": \"%s\", \"timeline\": %s, \"lsn\": %s, \"lag_bytes\": %s}",
                   i > 1 ? ", " : "", i, node_port(lab, i), pid, s->running ? "true" : "false",
                   role_name(s), tl, lsnj, lag);
        } else {
            printf("n%-3d %-6d %-8s %-8s %-4s %-14s %s\n", i, node_port(lab, i),
                   s->running ? pid : "-",
                   s->frozen ? "frozen" : s->running && s->role == ROLE_DOWN ? "starting"
                                                                             : role_name(s),
                   s->role != ROLE_DOWN ? tl : "-", s->has_lsn ? lsn : "-",
                   s->role == ROLE_STANDBY && p ? lag : "-");
        }
    }
    if (json)
        printf("]}\n");
    return 0;
}

static int cmd_start(struct lab *lab, int only)
{
    int rc = 0;
    for (int i = 1; i <= lab->nodes; i++)
        if ((!only || i == only) && node_start(lab, i) < 0)
            rc = LAB_EXIT_FAIL;
    struct node_state st[LAB_MAX_NODES + 1];
    probe_all(lab, st);
    int primaries = 0;
    for (int i = 1; i <= lab->nodes; i++)
        primaries += st[i].role == ROLE_PRIMARY;
    if (primaries > 1)
        fprintf(stderr, "warning: %d primaries are running (split brain); rejoin the stale one\n",
                primaries);
    /* a standby coming back may be needed as the synchronous one again */
    int p = find_primary(lab, st, 0);
    if (p && primaries == 1)
        update_sync_names(lab, p, st);
    return rc;
}

/* ssl = on with the given certificate on every node, for tests of TLS towards the servers: the
 * files are copied into each data folder, owned by the server's user (PostgreSQL refuses a key
 * that others can read), and running nodes reload. Standbys made later copy them too. */
static int cmd_ssl(struct lab *lab, const char *cert, const char *key)
{
    if (!cert || !key) {
        fprintf(stderr, "ssl needs --cert FILE and --key FILE\n");
        return LAB_EXIT_USAGE;
    }
    char *crt = read_all(cert), *k = read_all(key);
    if (!crt || !k) {
        fprintf(stderr, "ssl: cannot read %s\n", !crt ? cert : key);
        free(crt);
        free(k);
        return LAB_EXIT_FAIL;
    }
    int rc = 0;
    for (int i = 1; i <= lab->nodes && rc == 0; i++) {
        char data[PATH_MAX], path[PATH_MAX + 32], err[512];
        node_data(lab, i, data, sizeof data);
        snprintf(path, sizeof path, "%s/lab-server.crt", data);
        if (write_file(lab, path, crt, true) < 0)
            rc = LAB_EXIT_FAIL;
        snprintf(path, sizeof path, "%s/lab-server.key", data);
        if (rc == 0 && write_file(lab, path, k, true) < 0)
            rc = LAB_EXIT_FAIL;
        if (rc == 0 && (conf_set(lab, i, "ssl_cert_file", "lab-server.crt") < 0 ||
                        conf_set(lab, i, "ssl_key_file", "lab-server.key") < 0 ||
                        conf_set(lab, i, "ssl", "on") < 0))
            rc = LAB_EXIT_FAIL;
        if (rc == 0 && node_pid(lab, i) > 0) {
            PGconn *c = db_connect(lab, i, err, sizeof err);
            if (!c || db_exec(c, "SELECT pg_reload_conf()", 0, err, sizeof err) < 0) {
                fprintf(stderr, "n%d: cannot reload: %s\n", i, err);
                rc = LAB_EXIT_FAIL;
            }
            if (c)
                PQfinish(c);
        }
        if (rc == 0)
            printf("n%d: ssl = on\n", i);
    }
    free(crt);
    free(k);
    return rc;
}

static int cmd_stop(struct lab *lab, int only)
{
    if (only)
        return node_stop(lab, only) < 0 ? LAB_EXIT_FAIL : 0;
    /* primary first, so the standbys receive its shutdown checkpoint */
    struct node_state st[LAB_MAX_NODES + 1];
    probe_all(lab, st);
    int rc = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 1; i <= lab->nodes; i++)
            if ((st[i].role == ROLE_PRIMARY) == (pass == 0) && node_stop(lab, i) < 0)
                rc = LAB_EXIT_FAIL;
    return rc;
}

/* iptables without a shell; 127 from run_cmd means the binary is missing. */
static int iptables(struct lab *lab, const char *op, const char *chain, const char *dir_flag,
                    int port, char *out, size_t outsz)
{
    char p[16];
    snprintf(p, sizeof p, "%d", port);
    const char *argv[] = {"iptables", "-w", op, chain, chain[0] == 'I' ? "-i" : "-o", "lo",
                          "-p", "tcp", dir_flag, p, "-j", "DROP", NULL};
    struct lab root = *lab;
    root.drop = false; /* iptables needs root, unlike the server binaries */
    root.bindir[0] = 0;
    return run_cmd(&root, argv, out, outsz);
}

static int cmd_blackhole(struct lab *lab, int i, bool on)
{
    char out[2048];
    int port = node_port(lab, i);
    if (geteuid() != 0) {
        fprintf(stderr, "%s needs root (iptables); not supported here\n",
                on ? "blackhole" : "heal");
        return LAB_EXIT_UNSUPPORTED;
    }
    static const struct {
        const char *chain, *flag;
    } rules[] = {{"INPUT", "--dport"}, {"OUTPUT", "--sport"}};
    for (int r = 0; r < 2; r++) {
        int present = iptables(lab, "-C", rules[r].chain, rules[r].flag, port, out, sizeof out);
        if (present == 127 || present == 126) {
            fprintf(stderr, "iptables is not available here: %s", out);
            return LAB_EXIT_UNSUPPORTED;
        }
        if (on && present != 0) {
            /* -I, not -A: an earlier ACCEPT rule for lo would otherwise win */
            if (iptables(lab, "-I", rules[r].chain, rules[r].flag, port, out, sizeof out) != 0) {
                fprintf(stderr, "iptables refused the rule (no permission here?): %s", out);
                return LAB_EXIT_UNSUPPORTED;
            }
        }
        while (!on && present == 0) {
            if (iptables(lab, "-D", rules[r].chain, rules[r].flag, port, out, sizeof out) != 0) {
                fprintf(stderr, "iptables -D failed: %s", out);
                return LAB_EXIT_UNSUPPORTED;
            }
            present = iptables(lab, "-C", rules[r].chain, rules[r].flag, port, out, sizeof out);
        }
    }
    printf(on ? "n%d: blackholed (tcp port %d drops silently)\n"
              : "n%d: healed (tcp port %d reachable)\n",
           i, port);
    return 0;
}

static int cmd_freeze(struct lab *lab, int i, bool freeze)
{
    pid_t pid = node_pid(lab, i);
    if (!pid) {
        fprintf(stderr, "n%d is not running\n", i);
        return LAB_EXIT_FAIL;
    }
    int n = node_signal_tree(pid, freeze ? SIGSTOP : SIGCONT);
    printf("n%d: %s (%d processes)\n", i, freeze ? "frozen with SIGSTOP" : "thawed with SIGCONT",
           n);
    return 0;
}

int cmd_destroy(struct lab *lab)
{
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/lab.conf", lab->dir);
    if (access(lab->dir, F_OK) != 0) {
        printf("destroy: nothing in %s\n", lab->dir_arg);
        return 0;
    }
    if (access(path, F_OK) != 0) {
        /* never rm -rf a directory we did not create */
        fprintf(stderr, "%s is not a lab directory (no lab.conf); not removing it\n",
                lab->dir_arg);
        return LAB_EXIT_FAIL;
    }
    if (lab->nodes == 0 && lab_load(lab) < 0)
        return LAB_EXIT_FAIL;
    for (int i = 1; i <= lab->nodes; i++) {
        pid_t pid = node_pid(lab, i);
        if (pid) {
            /* no need for a clean shutdown of a cluster about to be deleted */
            node_signal_tree(pid, SIGKILL);
            printf("n%d: killed\n", i);
        }
    }
    if (geteuid() == 0) {
        char out[512];
        for (int i = 1; i <= lab->nodes; i++) {
            int port = node_port(lab, i);
            if (iptables(lab, "-C", "INPUT", "--dport", port, out, sizeof out) == 0 ||
                iptables(lab, "-C", "OUTPUT", "--sport", port, out, sizeof out) == 0)
                cmd_blackhole(lab, i, false);
        }
    }
    node_shm_sweep(lab);
    if (remove_tree(lab->dir) < 0) {
        fprintf(stderr, "could not remove %s completely\n", lab->dir_arg);
        return LAB_EXIT_FAIL;
    }
    printf("destroy: removed %s\n", lab->dir_arg);
    return 0;
}

int main(int argc, char **argv)
{
    struct opts o = {.sync = -1, .nodes = 3, .port = 6100, .auth = "trust"};
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (parse_args(argc, argv, &o) < 0) {
        usage(stderr);
        return LAB_EXIT_USAGE;
    }
    if (!o.cmd) {
        usage(stderr);
        return LAB_EXIT_USAGE;
    }
    /* libpq and the server binaries must not pick up a user's PG* environment */
    static const char *const unset[] = {"PGDATA", "PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER",
                                        "PGDATABASE", "PGOPTIONS", "PGSERVICE", "PGPASSWORD",
                                        "PGSSLMODE", "PGTARGETSESSIONATTRS", NULL};
    for (int k = 0; unset[k]; k++)
        unsetenv(unset[k]);
    setenv("LC_ALL", "C", 1); /* stable pg_controldata labels */
    signal(SIGPIPE, SIG_IGN);

    struct lab lab;
    memset(&lab, 0, sizeof lab);
    if (set_dir(&lab, o.dir ? o.dir : "./lab") < 0 || lab_setup_user(&lab) < 0)
        return LAB_EXIT_FAIL;
    lab_find_bindir(&lab);

    const char *c = o.cmd;
    if (!strcmp(c, "init")) {
        lab.nodes = o.nodes;
        lab.port = o.port;
        lab.sync = o.sync != 0;
        lab.fast = o.fast;
        snprintf(lab.auth, sizeof lab.auth, "%s", o.auth);
        if (lab.sync && lab.nodes < 2) {
            printf("init: one node has no standby to wait for; using async\n");
            lab.sync = false;
        }
        return cmd_init(&lab);
    }
    if (!strcmp(c, "destroy"))
        return cmd_destroy(&lab);
    static const char *const known[] = {"status", "start", "stop", "crash", "freeze", "thaw",
                                        "blackhole", "heal", "promote", "failover",
                                        "switchover", "rejoin", "ssl", NULL};
    bool ok = false;
    for (int k = 0; known[k]; k++)
        ok = ok || !strcmp(c, known[k]);
    if (!ok) {
        fprintf(stderr, "unknown command '%s'\n", c);
        usage(stderr);
        return LAB_EXIT_USAGE;
    }
    if (lab_load(&lab) < 0)
        return LAB_EXIT_FAIL;
    int node = parse_node(&lab, o.node);
    int to = parse_node(&lab, o.to);
    if (node < 0 || to < 0)
        return LAB_EXIT_USAGE;
    bool needs_node = !strcmp(c, "crash") || !strcmp(c, "freeze") || !strcmp(c, "thaw") ||
                      !strcmp(c, "blackhole") || !strcmp(c, "heal") || !strcmp(c, "promote") ||
                      !strcmp(c, "rejoin");
    if (needs_node && !node) {
        fprintf(stderr, "%s needs a NODE (n1..n%d)\n", c, lab.nodes);
        return LAB_EXIT_USAGE;
    }
    if (!strcmp(c, "status"))
        return cmd_status(&lab, o.json);
    if (!strcmp(c, "ssl"))
        return cmd_ssl(&lab, o.cert, o.key);
    if (!strcmp(c, "start"))
        return cmd_start(&lab, node);
    if (!strcmp(c, "stop"))
        return cmd_stop(&lab, node);
    if (!strcmp(c, "crash"))
        return node_crash(&lab, node) < 0 ? LAB_EXIT_FAIL : 0;
    if (!strcmp(c, "freeze") || !strcmp(c, "thaw"))
        return cmd_freeze(&lab, node, !strcmp(c, "freeze"));
    if (!strcmp(c, "blackhole") || !strcmp(c, "heal"))
        return cmd_blackhole(&lab, node, !strcmp(c, "blackhole"));
    if (!strcmp(c, "promote"))
        return cmd_promote(&lab, node);
    if (!strcmp(c, "rejoin"))
        return do_rejoin(&lab, node) < 0 ? LAB_EXIT_FAIL : 0;
    if (!strcmp(c, "failover"))
        return cmd_failover(&lab, node ? node : to, o.delay_ms, o.rejoin);
    return cmd_switchover(&lab, node ? node : to, o.proxy);
}
