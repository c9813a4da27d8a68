/* pgstay-lab: shared types and helpers for the local primary + standby PostgreSQL lab. */
#ifndef PGSTAY_LAB_H
#define PGSTAY_LAB_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <libpq-fe.h>

#define LAB_MAX_NODES 9
#define LAB_POLL_MS 20

/* Exit codes: 3 is reserved for "this machine cannot do that" so tests can skip. */
#define LAB_EXIT_FAIL 1
#define LAB_EXIT_USAGE 2
#define LAB_EXIT_UNSUPPORTED 3

enum role { ROLE_DOWN, ROLE_PRIMARY, ROLE_STANDBY };

struct lab {
    char dir_arg[1024];     /* as the user typed it, for messages */
    char dir[3072];         /* absolute; short enough to append file names */
    char run[3100];         /* DIR/run: unix socket directory */
    char bindir[1024];      /* PostgreSQL server binaries, "" = use PATH */
    int nodes;
    int port; /* base port; node i listens on port + i */
    bool sync;
    char auth[16]; /* "trust" or "scram" */
    bool fast;
    /* PostgreSQL refuses to run as root, so server commands drop to this user. */
    bool drop;
    uid_t uid;
    gid_t gid;
    char user[64];
};

struct node_state {
    pid_t pid;
    bool running; /* postmaster process exists */
    bool frozen;  /* postmaster is SIGSTOPped */
    enum role role;
    unsigned tli;
    bool has_lsn;
    uint64_t lsn;      /* primary: current insert lsn; standby: replay lsn */
    uint64_t recv_lsn; /* standby: flushed receive lsn */
    int upstream_port; /* standby: port in its primary_conninfo, 0 unknown */
};

/* node.c: paths, processes, config files, running server binaries */
void node_name(int i, char *buf, size_t sz);
int node_port(const struct lab *lab, int i);
void node_data(const struct lab *lab, int i, char *buf, size_t sz);
int64_t now_ms(void);
void sleep_ms(int ms);
bool pid_alive(pid_t pid);
char proc_state(pid_t pid);
pid_t node_pid(const struct lab *lab, int i);
int node_signal_tree(pid_t pm, int sig);
int node_start(struct lab *lab, int i);
int node_stop(struct lab *lab, int i);
int node_crash(struct lab *lab, int i);
int node_shm_sweep(const struct lab *lab);
bool port_in_use(int port);
int lab_setup_user(struct lab *lab);
int lab_find_bindir(struct lab *lab);
int run_cmd(const struct lab *lab, const char *const argv[], char *out, size_t outsz);
int write_file(const struct lab *lab, const char *path, const char *content, bool chown_it);
/* A whole text file, NUL-terminated, malloc'd; NULL if it cannot be read. */
char *read_all(const char *path);
int conf_set(const struct lab *lab, int i, const char *key, const char *value);
int write_node_conf(const struct lab *lab, int i);
int write_standby_conf(const struct lab *lab, int i, int upstream);
int controldata(const struct lab *lab, int i, const char *key, char *out, size_t outsz);
void clear_stale_locks(const struct lab *lab, int i);
void print_log_tail(const struct lab *lab, int i);
int remove_tree(const char *path);

/* query.c: libpq helpers */
PGconn *db_connect(const struct lab *lab, int i, char *err, size_t errsz);
int db_exec(PGconn *c, const char *sql, int timeout_ms, char *err, size_t errsz);
int db_value(PGconn *c, const char *sql, char *out, size_t outsz, char *err, size_t errsz);
bool parse_lsn(const char *s, uint64_t *out);
void format_lsn(uint64_t lsn, char *buf, size_t sz);
void probe(const struct lab *lab, int i, struct node_state *st);
void probe_all(const struct lab *lab, struct node_state *st);
int find_primary(const struct lab *lab, const struct node_state *st, int exclude);
int update_sync_names(const struct lab *lab, int primary, const struct node_state *st);
int wait_streaming(const struct lab *lab, int primary, int i, int timeout_ms);

/* ha.c: promotion, failover, switchover, rejoin */
int do_promote(struct lab *lab, int t, int64_t *promoted_ms, int64_t *writable_ms,
               void (*on_promoted)(void *), void *arg);
int do_rejoin(struct lab *lab, int i);
int cmd_promote(struct lab *lab, int t);
int cmd_failover(struct lab *lab, int to, int delay_ms, bool rejoin);
int cmd_switchover(struct lab *lab, int to, const char *proxy);

/* init.c */
int cmd_init(struct lab *lab);
int lab_save(const struct lab *lab);

/* lab.c */
int cmd_destroy(struct lab *lab);

#endif
