/* pgstay-lab: `init`: initdb the primary, clone standbys with pg_basebackup, write pgstay.ini. */
#include "lab.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int lab_save(const struct lab *lab)
{
    char path[PATH_MAX + 16], body[256];
    snprintf(path, sizeof path, "%s/lab.conf", lab->dir);
    snprintf(body, sizeof body, "nodes=%d\nport=%d\nsync=%d\nauth=%s\nfast=%d\n", lab->nodes,
             lab->port, lab->sync ? 1 : 0, lab->auth, lab->fast ? 1 : 0);
    return write_file(lab, path, body, true);
}

/* Every ancestor of DIR must be searchable by the server user, or initdb fails obscurely. */
static int check_traversable(const struct lab *lab)
{
    if (!lab->drop)
        return 0;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s", lab->dir);
    for (char *slash = strchr(path + 1, '/');; slash = strchr(slash + 1, '/')) {
        if (slash)
            *slash = 0;
        struct stat sb;
        if (stat(path, &sb) == 0) {
            mode_t bit = sb.st_uid == lab->uid   ? S_IXUSR
                         : sb.st_gid == lab->gid ? S_IXGRP
                                                 : S_IXOTH;
            if (!(sb.st_mode & bit)) {
                fprintf(stderr,
                        "directory %s is not traversable by user %s (PostgreSQL cannot run "
                        "as root); use a --dir under /tmp or chmod o+x it\n",
                        path, lab->user);
                return -1;
            }
        }
        if (!slash)
            break;
        *slash = '/';
    }
    return 0;
}

static int mkdir_owned(const struct lab *lab, const char *path, mode_t mode)
{
    if (mkdir(path, mode) < 0 && errno != EEXIST) {
        fprintf(stderr, "cannot create %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (lab->drop && chown(path, lab->uid, lab->gid) < 0) {
        fprintf(stderr, "cannot chown %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

static int mkdir_parents(const char *dir)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s", dir);
    for (char *s = strchr(path + 1, '/'); s; s = strchr(s + 1, '/')) {
        *s = 0;
        if (mkdir(path, 0755) < 0 && errno != EEXIST) {
            fprintf(stderr, "cannot create %s: %s\n", path, strerror(errno));
            return -1;
        }
        *s = '/';
    }
    return 0;
}

static int write_server_conf(const struct lab *lab)
{
    char data[PATH_MAX], path[PATH_MAX + 32], body[4096];
    node_data(lab, 1, data, sizeof data);
    snprintf(path, sizeof path, "%s/postgresql.conf", data);
    FILE *f = fopen(path, "a");
    if (!f) {
        fprintf(stderr, "cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    fprintf(f,
            "\n# --- pgstay-lab ---\n"
            "listen_addresses = '127.0.0.1'\n"
            "unix_socket_directories = '%s'\n"
            "wal_level = replica\n"
            "max_wal_senders = 10\n"
            "max_replication_slots = 10\n"
            "hot_standby = on\n"
            "hot_standby_feedback = on\n"
            "wal_log_hints = on                 # pg_rewind\n"
            "max_connections = 300\n"
            "shared_buffers = 32MB\n"
            "wal_keep_size = 512MB              # rejoin without slots or archive\n"
            "logging_collector = off\n"
            "password_encryption = 'scram-sha-256'\n"
            "wal_retrieve_retry_interval = 200ms # follow a new primary quickly\n"
            "log_line_prefix = '%%m [%%p] %%q%%a '\n"
            "%s"
            "include_if_exists = 'lab-node.conf'\n",
            lab->run, lab->fast ? "fsync = off                        # --fast\n" : "");
    if (fclose(f) != 0)
        return -1;
    const char *method = strcmp(lab->auth, "scram") == 0 ? "scram-sha-256" : "trust";
    snprintf(path, sizeof path, "%s/pg_hba.conf", data);
    snprintf(body, sizeof body,
             "# written by pgstay-lab: the lab itself uses the trusted unix socket\n"
             "local all         all                trust\n"
             "local replication all                trust\n"
             "host  all         all  127.0.0.1/32  %s\n"
             "host  replication all  127.0.0.1/32  %s\n",
             method, method);
    return write_file(lab, path, body, true);
}

static int write_client_files(const struct lab *lab)
{
    char path[PATH_MAX + 32], body[2048];
    snprintf(path, sizeof path, "%s/userlist.txt", lab->dir);
    if (write_file(lab, path, "\"postgres\" \"postgres\"\n\"app\" \"app\"\n", true) < 0)
        return -1;
    size_t n = (size_t)snprintf(body, sizeof body,
                                "[pgstay]\n"
                                "listen_addr = 127.0.0.1\n"
                                "listen_port = %d\n"
                                "readonly_port = %d\n"
                                "pool_mode = session\n"
                                "pool_size = 20\n"
                                "auth_type = %s\n"
                                "auth_file = userlist.txt\n"
                                "admin_users = postgres\n"
                                "health_check_user = postgres\n"
                                "health_check_dbname = postgres\n"
                                "[nodes]\n",
                                lab->port, lab->port + 10,
                                strcmp(lab->auth, "scram") == 0 ? "scram-sha-256" : "trust");
    for (int i = 1; i <= lab->nodes && n < sizeof body; i++)
        n += (size_t)snprintf(body + n, sizeof body - n, "n%d = host=127.0.0.1 port=%d\n", i,
                              node_port(lab, i));
    snprintf(path, sizeof path, "%s/pgstay.ini", lab->dir);
    if (write_file(lab, path, body, true) < 0)
        return -1;
    /* pgstay may run as another user; only userlist.txt holds secrets */
    return chmod(path, 0644);
}

static int make_standby(struct lab *lab, int i)
{
    char data[PATH_MAX], port[16], out[8192];
    node_data(lab, i, data, sizeof data);
    snprintf(port, sizeof port, "%d", node_port(lab, 1));
    int64_t t0 = now_ms();
    const char *argv[] = {"pg_basebackup", "-D", data, "-h", lab->run, "-p", port,
                          "-U", "postgres", "-X", "stream", "--checkpoint=fast",
                          lab->fast ? "--no-sync" : NULL, NULL};
    if (run_cmd(lab, argv, out, sizeof out) != 0) {
        fprintf(stderr, "n%d: pg_basebackup failed: %s\n", i, out);
        return -1;
    }
    printf("n%d: cloned from n1 with pg_basebackup in %lld ms\n", i, (long long)(now_ms() - t0));
    if (write_node_conf(lab, i) < 0 || write_standby_conf(lab, i, 1) < 0)
        return -1;
    return node_start(lab, i);
}

static int init_steps(struct lab *lab)
{
    char run_sock[PATH_MAX + 32], data[PATH_MAX], out[16384], err[512];
    snprintf(run_sock, sizeof run_sock, "%s/.s.PGSQL.%d", lab->run, lab->port + lab->nodes);
    if (strlen(run_sock) >= 107) {
        fprintf(stderr, "--dir %s is too long for a unix socket path (%s)\n", lab->dir_arg,
                run_sock);
        return -1;
    }
    if (mkdir_parents(lab->dir) < 0 || mkdir_owned(lab, lab->dir, 0755) < 0 ||
        check_traversable(lab) < 0)
        return -1;
    if (lab_save(lab) < 0 || mkdir_owned(lab, lab->run, 0755) < 0)
        return -1;
    node_data(lab, 1, data, sizeof data);
    int64_t t0 = now_ms();
    const char *argv[] = {"initdb", "-D", data, "-U", "postgres", "-E", "UTF8", "--locale=C",
                          "-A", "trust", lab->fast ? "--no-sync" : NULL, NULL};
    if (run_cmd(lab, argv, out, sizeof out) != 0) {
        fprintf(stderr, "n1: initdb failed:\n%s\n", out);
        return -1;
    }
    printf("n1: initdb in %lld ms\n", (long long)(now_ms() - t0));
    if (write_server_conf(lab) < 0 || write_node_conf(lab, 1) < 0 || write_client_files(lab) < 0)
        return -1;
    if (node_start(lab, 1) < 0)
        return -1;
    PGconn *c = db_connect(lab, 1, err, sizeof err);
    if (!c) {
        fprintf(stderr, "n1: cannot connect: %s\n", err);
        return -1;
    }
    /* roles and database before cloning, so the standbys get them with the base backup */
    static const char *const setup[] = {
        "ALTER ROLE postgres PASSWORD 'postgres'",
        "CREATE ROLE app LOGIN PASSWORD 'app'",
        "CREATE DATABASE app OWNER app",
        NULL,
    };
    for (int k = 0; setup[k]; k++) {
        if (db_exec(c, setup[k], 0, err, sizeof err) < 0) {
            fprintf(stderr, "n1: %s: %s\n", setup[k], err);
            PQfinish(c);
            return -1;
        }
    }
    PQfinish(c);
    printf("n1: roles postgres/app and database app created\n");
    for (int i = 2; i <= lab->nodes; i++)
        if (make_standby(lab, i) < 0)
            return -1;
    struct node_state st[LAB_MAX_NODES + 1];
    probe_all(lab, st);
    if (update_sync_names(lab, 1, st) < 0)
        return -1;
    for (int i = 2; i <= lab->nodes; i++)
        if (wait_streaming(lab, 1, i, 30000) < 0) {
            fprintf(stderr, "n%d: not streaming from n1\n", i);
            return -1;
        }
    return 0;
}

int cmd_init(struct lab *lab)
{
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/lab.conf", lab->dir);
    if (access(path, F_OK) == 0) {
        fprintf(stderr, "a cluster already exists in %s (run destroy first)\n", lab->dir_arg);
        return LAB_EXIT_FAIL;
    }
    if (access(lab->dir, F_OK) == 0 && rmdir(lab->dir) < 0 && errno == ENOTEMPTY) {
        fprintf(stderr, "%s exists and is not an empty directory\n", lab->dir_arg);
        return LAB_EXIT_FAIL;
    }
    for (int i = 1; i <= lab->nodes; i++) {
        if (port_in_use(node_port(lab, i))) {
            fprintf(stderr, "port %d is in use\n", node_port(lab, i));
            return LAB_EXIT_FAIL;
        }
    }
    int64_t t0 = now_ms();
    int swept = node_shm_sweep(lab);
    if (swept)
        printf("init: removed %d orphaned shared-memory segments of killed servers\n", swept);
    if (init_steps(lab) < 0) {
        fprintf(stderr, "init failed; removing the partial cluster in %s\n", lab->dir_arg);
        cmd_destroy(lab);
        return LAB_EXIT_FAIL;
    }
    printf("init: %d nodes (%s, auth %s%s) on ports %d-%d in %lld ms; pgstay config in %s/pgstay.ini\n",
           lab->nodes, lab->sync ? "sync" : "async", lab->auth, lab->fast ? ", fast" : "",
           node_port(lab, 1), node_port(lab, lab->nodes), (long long)(now_ms() - t0), lab->dir_arg);
    return 0;
}
