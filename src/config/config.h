/* Configuration: one INI file parsed from a declarative table of keys; reload on SIGHUP. */
#ifndef PGSTAY_CONFIG_CONFIG_H
#define PGSTAY_CONFIG_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#include "core/tls.h"

enum pool_mode { POOL_SESSION = 0, POOL_TRANSACTION = 1 };
/* hba: the method comes from auth_hba_file's matching line (PgBouncer's auth_type = hba). */
enum auth_type { AUTH_TRUST = 0, AUTH_MD5 = 1, AUTH_SCRAM = 2, AUTH_HBA = 3 };
enum readonly_fallback { FALLBACK_WRITER = 0, FALLBACK_ERROR = 1 };
/* Who decides the writer: pgstay's own probes, or Patroni's leader (issue 15). */
enum topology_source { TOPO_PROBES = 0, TOPO_PATRONI = 1 };

#define CONFIG_MAX_NODES 16
/* workers: at most this many event-loop threads. */
#define WORKERS_MAX 64

/* One entry of [nodes]: "n1 = host=127.0.0.1 port=5432" (libpq conninfo syntax, host and port). */
struct node_conf {
    char name[64];
    char host[256];
    int port;
};

/* A [databases] or [users] entry: PgBouncer's per-database and per-user pool_size. */
struct pool_override {
    char *name;    /* the database or user it is for */
    int pool_size; /* -1 = not set there */
};

/* Every setting; durations are held in milliseconds whatever unit the file used. */
struct config {
    char *path;                  /* the file this was read from */
    char *listen_addr;           /* writer and reader endpoints bind here */
    int listen_port;             /* the writer endpoint */
    int readonly_port;           /* the reader endpoint; 0 = none */
    char *unix_socket_dir;       /* the endpoints as unix sockets in this folder too; "" = none */
    char *unix_socket_mode;      /* octal text, as PgBouncer's (config_unix_mode) */
    char *unix_socket_group;     /* group of the socket files; "" = pgstay's own */
    int listen_backlog;
    int workers;                 /* event-loop threads; 0 = one per online CPU (config_workers) */
    int so_reuseport;            /* bool: several pgstay processes may listen on one port */
    int pool_mode;               /* enum pool_mode */
    int pool_size;               /* server connections per (database, user) */
    int max_client_conn;
    int auth_type;               /* enum auth_type */
    char *auth_file;             /* absolute, resolved against the config file's folder */
    int application_name_add_host;   /* bool: " - host:port" appended to application_name */
    char *track_extra_parameters;    /* PgBouncer's; pgstay tracks every parameter anyway */
    char *auth_hba_file;         /* absolute; empty = none. When set, its first matching line
                                  * decides the method, whatever auth_type says */
    char *auth_user;             /* runs auth_query on the writer; empty = no auth_query */
    char *auth_query;            /* fetches (usename, passwd) of a user not in auth_file */
    int auth_cache_ttl;          /* ms: how long a secret auth_query fetched is reused */
    char *admin_users;           /* comma-separated: may run every admin console command */
    char *stats_users;           /* comma-separated: may run SHOW on the admin console */
    char *ignore_startup_parameters; /* comma-separated: startup parameters dropped */
    char *server_reset_query;
    char *server_check_query;    /* run on a server idle past server_check_delay; "" = never */
    int server_check_delay;      /* ms; 0 = check at every lending */
    int server_connect_timeout;  /* ms */
    int query_wait_timeout;      /* ms; 0 = wait forever */
    int client_idle_timeout;     /* ms; 0 = never */
    int client_login_timeout;    /* ms */
    int idle_transaction_timeout; /* ms; 0 = never: a client idle inside a transaction */
    int transaction_timeout;     /* ms; 0 = never: a transaction open longer ends its client */
    int query_timeout;           /* ms; 0 = never: a request running longer is cancelled */
    int server_idle_timeout;     /* ms; 0 = never: an idle pooled server unused this long */
    int server_lifetime;         /* ms; 0 = never: a pooled server this old, once idle */
    int min_pool_size;           /* servers each pool keeps open, idle or not */
    int reserve_pool_size;       /* extra servers a pool may open for clients waiting too long */
    int reserve_pool_timeout;    /* ms: a client waiting this long may get a reserve server */
    int max_db_connections;      /* servers of all pools of one database; 0 = no limit */
    int max_user_connections;    /* servers of all pools of one user; 0 = no limit */
    int shutdown_timeout;        /* ms: SIGTERM lets clients finish this long */
    int max_packet_size;         /* bytes: a longer client message is a protocol violation */
    int tcp_keepalive;           /* bool */
    int tcp_user_timeout;        /* ms; TCP_USER_TIMEOUT on server sockets */
    char *health_check_user;
    char *health_check_dbname;
    int health_check_period;     /* ms */
    int health_check_fast_period;/* ms: probe period while there is no writer */
    int health_check_timeout;    /* ms */
    int health_check_fall;       /* failed probes in a row before a node is down */
    int health_check_rise;       /* answered probes in a row before a down node is used again */
    int topology_source;         /* enum topology_source */
    char *patroni_url;           /* comma-separated REST API base URLs of Patroni members */
    int server_login_retry;      /* ms: wait after a failed server login (per pool and node) */
    int failover_timeout;        /* ms: longest hold of a request while there is no writer */
    int pause_timeout;           /* ms: PAUSE waits this long for in-flight transactions */
    int server_connect_concurrency; /* concurrent server logins per pool (no thundering herd) */
    long max_replica_lag;        /* bytes of replay lag past which a standby serves no reads */
    int readonly_fallback;       /* enum readonly_fallback */
    int verbose;                 /* 0 = LOG, 1+ = DEBUG */
    int stats_period;            /* ms: SHOW STATS_AVERAGES covers this long */
    char *metrics_listen;        /* host:port of GET /metrics; empty = none */
    char *pidfile;               /* absolute; written at start, removed at exit; empty = none */
    int log_connections;         /* bool: a line per client login and per server opened */
    int log_disconnections;      /* bool: a line per client and server closed, with why */
    int log_pooler_errors;       /* bool: a line per error pgstay itself sends a client */
    int syslog;                  /* bool: the log also to syslog */
    char *syslog_ident;
    int syslog_facility;         /* index in LOGSYS_FACILITIES */
    char *takeover_socket;       /* where pgstay -R finds this process; empty = in /tmp, "off" */
    char *logfile;               /* absolute; the log, reopened on SIGHUP; empty = stderr */
    /* TLS towards clients: 'S' to an SSLRequest once a certificate and key are set. */
    int client_tls_sslmode; /* enum tls_mode */
    char *client_tls_cert_file;
    char *client_tls_key_file;
    char *client_tls_ca_file; /* verifies client certificates (verify-ca, verify-full) */
    char *client_tls_protocols;
    char *client_tls_ciphers;
    /* TLS towards servers and probes. */
    int server_tls_sslmode;     /* enum tls_mode; allow is not offered */
    char *server_tls_cert_file; /* for servers that ask for a client certificate */
    char *server_tls_key_file;
    char *server_tls_ca_file; /* verifies the servers (verify-ca, verify-full) */
    char *server_tls_protocols;
    char *server_tls_ciphers;
    int server_allow_plaintext_password; /* bool: answer cleartext and md5 requests without TLS */
    int server_scram_max_iterations; /* a server's SCRAM iteration count above this is refused */
    struct node_conf nodes[CONFIG_MAX_NODES];
    int n_nodes;
    /* [databases] and [users] (reloadable): a user's pool_size wins over its database's, which
     * wins over pool_size, as in PgBouncer. */
    struct pool_override *db_overrides, *user_overrides;
    int n_db_overrides, n_user_overrides;
};

/* Fill *cfg with defaults, then read path. On error returns -1 and writes
 * "file:line: message" into err; *cfg is then left freed. */
int config_load(const char *path, struct config *cfg, char *err, size_t errlen);

/* Free the strings a loaded config owns. */
void config_free(struct config *cfg);

/* Take from fresh every reloadable key, and [nodes], into cur; for each non-reloadable key
 * whose value changed, log a warning naming it and keep cur's. fresh is freed. */
void config_apply_reload(struct config *cur, struct config *fresh);

/* One key as SHOW CONFIG shows it. */
struct config_key_view {
    const char *name;
    char value[512];
    char def[128];
    int reloadable;
};
int config_n_keys(void);
/* The i-th key of the table with cfg's value; -1 past the last. */
int config_key_show(const struct config *cfg, int i, struct config_key_view *out);
/* SET key = value from the admin console: reloadable keys only (PgBouncer's names accepted). */
int config_set(struct config *cfg, const char *name, const char *value, char *err, size_t errlen);

/* The table's name for a key or one of its aliases (PgBouncer's names); NULL if unknown. */
const char *config_canonical_key(const char *name);
/* Would value be accepted for key? -1 with the reason in err. */
int config_check_value(const char *name, const char *value, char *err, size_t errlen);
/* Print an equivalent pgstay.ini for a PgBouncer configuration file (config/pgbouncer.c), with
 * what cannot be carried over listed as comments, and on err. 0, or -1 if there is nothing to
 * convert (unreadable, or no server to make [nodes] of). */
int config_from_pgbouncer(const char *path, FILE *out, FILE *err);

/* One conninfo value at *pp: 'single quoted' with backslash escapes (as libpq), or up to a
 * blank; *pp moves past it. 0, or -1 if unterminated or longer than cap - 1. */
int conninfo_value(const char **pp, char *out, size_t cap);
/* The next "key=value" of such a list at *pp (blanks around '=' allowed, the value as
 * conninfo_value reads it): 1 with the key at *key (*klen bytes) and the value in out; 0 at the
 * end; -1 when it is not key=value (*klen is then 0) or the value is unterminated or too long. */
int conninfo_next(const char **pp, const char **key, size_t *klen, char *out, size_t cap);
/* unix_socket_mode as a mode for chmod; -1 if it is not an octal mode. */
int config_unix_mode(const struct config *cfg);

/* The pool_size of the pool of (database, user): the [users] entry of user, else the
 * [databases] entry of database, else pool_size. Either name may be NULL. */
int config_pool_size(const struct config *cfg, const char *database, const char *user);
/* workers as it applies: the setting, or the number of online CPUs for 0 (at most WORKERS_MAX). */
int config_workers(const struct config *cfg);

/* Is name (a comma-separated list member) in list? */
int config_list_has(const char *list, const char *name);

#endif
