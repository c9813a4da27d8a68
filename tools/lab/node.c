/* pgstay-lab: node processes, running server binaries as an unprivileged user, config files. */
#include "lab.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

void node_name(int i, char *buf, size_t sz)
{
    snprintf(buf, sz, "n%d", i);
}

int node_port(const struct lab *lab, int i)
{
    return lab->port + i;
}

void node_data(const struct lab *lab, int i, char *buf, size_t sz)
{
    snprintf(buf, sz, "%s/n%d", lab->dir, i);
}

int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

/* Process state letter from /proc/PID/stat, 0 when gone. */
char proc_state(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* comm may contain spaces */
    if (!p || p[1] != ' ')
        return 0;
    return p[2];
}

static pid_t proc_ppid(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    int ppid = -1;
    if (!p || sscanf(p + 2, "%*c %d", &ppid) != 1)
        return -1;
    return ppid;
}

/* Zombies count as dead: PID 1 here may never reap orphaned postmasters. */
bool pid_alive(pid_t pid)
{
    if (pid <= 0)
        return false;
    if (kill(pid, 0) < 0 && errno != EPERM)
        return false;
    char st = proc_state(pid);
    return st != 0 && st != 'Z' && st != 'X';
}

static pid_t read_pidfile(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    long pid = 0;
    if (fscanf(f, "%ld", &pid) != 1)
        pid = 0;
    fclose(f);
    return (pid_t)(pid < 0 ? -pid : pid); /* single-user mode writes -pid */
}

static bool is_postgres(pid_t pid)
{
    char path[64], comm[64] = "";
    snprintf(path, sizeof path, "/proc/%d/comm", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    if (!fgets(comm, sizeof comm, f))
        comm[0] = 0;
    fclose(f);
    return strncmp(comm, "postgres", 8) == 0 || strncmp(comm, "postmaster", 10) == 0;
}

pid_t node_pid(const struct lab *lab, int i)
{
    char data[PATH_MAX], path[PATH_MAX + 32];
    node_data(lab, i, data, sizeof data);
    snprintf(path, sizeof path, "%s/postmaster.pid", data);
    pid_t pid = read_pidfile(path);
    /* a stale pid file after a crash may name a recycled pid */
    if (pid > 0 && pid_alive(pid) && is_postgres(pid))
        return pid;
    return 0;
}

static int children_of(pid_t ppid, pid_t *out, int max)
{
    DIR *d = opendir("/proc");
    if (!d)
        return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < max) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 0)
            continue;
        if (proc_ppid((pid_t)pid) == ppid)
            out[n++] = (pid_t)pid;
    }
    closedir(d);
    return n;
}

/* Signal the postmaster and every child; returns how many processes were signalled. */
int node_signal_tree(pid_t pm, int sig)
{
    pid_t pids[1024];
    int n = children_of(pm, pids, 1023);
    pids[n++] = pm;
    /* stop the whole tree first so no child reacts to its siblings' deaths */
    if (sig == SIGKILL)
        for (int k = 0; k < n; k++)
            kill(pids[k], SIGSTOP);
    for (int k = 0; k < n; k++)
        kill(pids[k], sig);
    if (sig == SIGKILL) {
        for (int waited = 0; waited < 5000; waited += LAB_POLL_MS) {
            bool any = false;
            for (int k = 0; k < n; k++)
                any = any || pid_alive(pids[k]);
            if (!any)
                break;
            sleep_ms(LAB_POLL_MS);
        }
    }
    return n;
}

/*
 * A postmaster killed with SIGKILL (crash, destroy) leaves its SysV shared-memory segment
 * behind; PostgreSQL removes it only when the same data directory starts again, and a
 * destroyed lab never does. Left alone they pile up until shmget fails with ENOSPC
 * (SHMMNI) and no cluster can start on the machine. Remove the segments of the lab's user
 * that nobody is attached to and whose creator is dead (or a zombie): PostgreSQL's own test for a
 * segment being orphaned. Returns how many were removed.
 */
int node_shm_sweep(const struct lab *lab)
{
    struct shm_info info;
    int max = shmctl(0, SHM_INFO, (struct shmid_ds *)(void *)&info);
    int removed = 0;
    for (int idx = 0; idx <= max; idx++) {
        struct shmid_ds ds;
        int id = shmctl(idx, SHM_STAT, &ds);
        if (id < 0 || ds.shm_perm.uid != lab->uid || ds.shm_nattch != 0)
            continue;
        /* a killed postmaster may still be a zombie its new parent has not reaped */
        if (pid_alive(ds.shm_cpid))
            continue;
        if (shmctl(id, IPC_RMID, NULL) == 0)
            removed++;
    }
    return removed;
}

bool port_in_use(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return false;
    int one = 1;
    /* the server sets SO_REUSEADDR too, so TIME_WAIT leftovers do not count */
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool used = bind(fd, (struct sockaddr *)&a, sizeof a) < 0;
    close(fd);
    return used;
}

int lab_setup_user(struct lab *lab)
{
    if (geteuid() != 0) {
        lab->drop = false;
        lab->uid = getuid();
        lab->gid = getgid();
        return 0;
    }
    struct passwd *pw = getpwnam("postgres");
    if (!pw)
        pw = getpwnam("pgstaylab");
    if (!pw) {
        const char *argv[] = {"useradd", "--system", "--no-create-home", "--shell",
                              "/usr/sbin/nologin", "pgstaylab", NULL};
        struct lab tmp = *lab;
        tmp.drop = false;
        char out[1024];
        if (run_cmd(&tmp, argv, out, sizeof out) != 0) {
            fprintf(stderr, "lab: running as root and could not create user pgstaylab: %s\n", out);
            return -1;
        }
        printf("lab: created system user pgstaylab to run PostgreSQL\n");
        pw = getpwnam("pgstaylab");
        if (!pw)
            return -1;
    }
    lab->drop = true;
    lab->uid = pw->pw_uid;
    lab->gid = pw->pw_gid;
    snprintf(lab->user, sizeof lab->user, "%s", pw->pw_name);
    return 0;
}

int lab_find_bindir(struct lab *lab)
{
    const char *env = getenv("PGSTAY_PGBIN");
    if (env && *env) {
        snprintf(lab->bindir, sizeof lab->bindir, "%s", env);
        return 0;
    }
    static const char *const versions[] = {"17", "16", "15", "14", "13", NULL};
    for (int k = 0; versions[k]; k++) {
        char p[PATH_MAX];
        snprintf(p, sizeof p, "/usr/lib/postgresql/%s/bin/initdb", versions[k]);
        if (access(p, X_OK) == 0) {
            snprintf(lab->bindir, sizeof lab->bindir, "/usr/lib/postgresql/%s/bin", versions[k]);
            return 0;
        }
    }
    lab->bindir[0] = 0; /* fall back to PATH */
    return 0;
}

/*
 * Run a program without a shell, as the unprivileged user when root, with
 * stdin from /dev/null and stdout+stderr captured into out (NUL-terminated).
 * Returns the exit status, 128+signal, or -1.
 */
int run_cmd(const struct lab *lab, const char *const argv[], char *out, size_t outsz)
{
    char prog[PATH_MAX + 64];
    if (strchr(argv[0], '/') || !lab->bindir[0])
        snprintf(prog, sizeof prog, "%s", argv[0]);
    else {
        snprintf(prog, sizeof prog, "%s/%s", lab->bindir, argv[0]);
        if (access(prog, X_OK) != 0)
            snprintf(prog, sizeof prog, "%s", argv[0]);
    }
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0)
        return -1;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        close(pfd[0]);
        close(pfd[1]);
        return -1;
    }
    if (pid == 0) {
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0)
            dup2(nul, 0);
        dup2(pfd[1], 1);
        dup2(pfd[1], 2);
        /* initdb and pg_ctl complain when the cwd is not readable by the server user */
        if (chdir(lab->dir) < 0 && chdir("/") < 0)
            _exit(126);
        if (lab->drop) {
            if (initgroups(lab->user, lab->gid) < 0 || setgid(lab->gid) < 0 ||
                setuid(lab->uid) < 0) {
                fprintf(stderr, "cannot switch to user %s: %s\n", lab->user, strerror(errno));
                _exit(126);
            }
        }
        if (strchr(prog, '/'))
            execv(prog, (char *const *)argv);
        else
            execvp(prog, (char *const *)argv);
        fprintf(stderr, "cannot run %s: %s\n", prog, strerror(errno));
        _exit(127);
    }
    close(pfd[1]);
    size_t used = 0;
    char sink[4096];
    for (;;) {
        char *dst = sink;
        size_t room = sizeof sink;
        if (out && used + 1 < outsz) {
            dst = out + used;
            room = outsz - 1 - used;
        }
        ssize_t r = read(pfd[0], dst, room);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        if (dst != sink)
            used += (size_t)r;
    }
    close(pfd[0]);
    if (out && outsz)
        out[used] = 0;
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -1;
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    return 128 + WTERMSIG(status);
}

int write_file(const struct lab *lab, const char *path, const char *content, bool chown_it)
{
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "lab: cannot write %s: %s\n", tmp, strerror(errno));
        return -1;
    }
    size_t len = strlen(content), off = 0;
    while (off < len) {
        ssize_t w = write(fd, content + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            fprintf(stderr, "lab: cannot write %s: %s\n", tmp, strerror(errno));
            close(fd);
            unlink(tmp);
            return -1;
        }
        off += (size_t)w;
    }
    /* the server must be able to rewrite these files (ALTER SYSTEM) */
    if (chown_it && lab->drop && fchown(fd, lab->uid, lab->gid) < 0) {
        fprintf(stderr, "lab: cannot chown %s: %s\n", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        return -1;
    }
    close(fd);
    if (rename(tmp, path) < 0) {
        fprintf(stderr, "lab: cannot rename %s: %s\n", tmp, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

char *read_all(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    if (!buf) {
        fclose(f);
        return NULL;
    }
    size_t r;
    while ((r = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += r;
        if (cap - len - 1 == 0) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
            cap *= 2;
        }
    }
    buf[len] = 0;
    fclose(f);
    return buf;
}

/*
 * Set (value != NULL) or remove one parameter in postgresql.auto.conf, the
 * same file ALTER SYSTEM edits; works whether the node is running or not.
 */
int conf_set(const struct lab *lab, int i, const char *key, const char *value)
{
    char data[PATH_MAX], path[PATH_MAX + 32];
    node_data(lab, i, data, sizeof data);
    snprintf(path, sizeof path, "%s/postgresql.auto.conf", data);
    char *old = read_all(path);
    size_t cap = (old ? strlen(old) : 0) + strlen(key) + (value ? 2 * strlen(value) : 0) + 64;
    char *nw = malloc(cap);
    if (!nw) {
        free(old);
        return -1;
    }
    size_t n = 0;
    nw[0] = 0;
    size_t klen = strlen(key);
    for (char *line = old, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        size_t ll = next ? (size_t)(next - line) + 1 : strlen(line);
        if (next)
            next++;
        else
            next = line + ll;
        const char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        bool match = strncmp(p, key, klen) == 0 &&
                     (p[klen] == ' ' || p[klen] == '=' || p[klen] == '\t');
        if (!match) {
            memcpy(nw + n, line, ll);
            n += ll;
            if (nw[n - 1] != '\n')
                nw[n++] = '\n';
        }
    }
    if (value) {
        n += (size_t)snprintf(nw + n, cap - n, "%s = '", key);
        for (const char *v = value; *v; v++) {
            if (*v == '\'')
                nw[n++] = '\'';
            nw[n++] = *v;
        }
        n += (size_t)snprintf(nw + n, cap - n, "'\n");
    }
    nw[n] = 0;
    int rc = write_file(lab, path, nw, true);
    free(old);
    free(nw);
    return rc;
}

/* Per-node settings live in an included file so pg_basebackup/pg_rewind copies can be fixed up. */
int write_node_conf(const struct lab *lab, int i)
{
    char data[PATH_MAX], path[PATH_MAX + 32], body[256];
    node_data(lab, i, data, sizeof data);
    snprintf(path, sizeof path, "%s/lab-node.conf", data);
    snprintf(body, sizeof body,
             "# written by pgstay-lab: this node's identity\nport = %d\ncluster_name = 'n%d'\n",
             node_port(lab, i), i);
    return write_file(lab, path, body, true);
}

/* Make node i a standby of node upstream: standby.signal + primary_conninfo. */
int write_standby_conf(const struct lab *lab, int i, int upstream)
{
    char data[PATH_MAX], path[PATH_MAX + 32], ci[256];
    node_data(lab, i, data, sizeof data);
    snprintf(path, sizeof path, "%s/standby.signal", data);
    if (write_file(lab, path, "", true) < 0)
        return -1;
    /* TCP, not the socket, so blackhole/freeze of the upstream cuts replication too */
    snprintf(ci, sizeof ci,
             "host=127.0.0.1 port=%d user=postgres password=postgres application_name=n%d",
             node_port(lab, upstream), i);
    if (conf_set(lab, i, "primary_conninfo", ci) < 0)
        return -1;
    /* only meaningful on a primary; a copied value would confuse a later promotion */
    return conf_set(lab, i, "synchronous_standby_names", NULL);
}

int controldata(const struct lab *lab, int i, const char *key, char *out, size_t outsz)
{
    char data[PATH_MAX], buf[16384];
    node_data(lab, i, data, sizeof data);
    const char *argv[] = {"pg_controldata", "-D", data, NULL};
    if (run_cmd(lab, argv, buf, sizeof buf) != 0) {
        fprintf(stderr, "lab: pg_controldata failed: %s\n", buf);
        return -1;
    }
    size_t klen = strlen(key);
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
            const char *v = line + klen + 1;
            while (*v == ' ')
                v++;
            snprintf(out, outsz, "%s", v);
            return 0;
        }
    }
    return -1;
}

void print_log_tail(const struct lab *lab, int i)
{
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/n%d.log", lab->dir, i);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char buf[2048];
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, size > (long)sizeof buf - 1 ? size - (long)sizeof buf + 1 : 0, SEEK_SET);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    /* last 6 lines are enough to see why the server refused to start */
    int lines = 0;
    char *p = buf + n;
    while (p > buf && lines <= 6)
        if (*--p == '\n')
            lines++;
    if (*p == '\n')
        p++;
    fprintf(stderr, "--- tail of %s ---\n%s", path, p);
}

/* Remove lock files left by a killed postmaster whose pid is dead (or a zombie). */
void clear_stale_locks(const struct lab *lab, int i)
{
    char data[PATH_MAX], path[PATH_MAX + 32];
    node_data(lab, i, data, sizeof data);
    snprintf(path, sizeof path, "%s/postmaster.pid", data);
    pid_t pid = read_pidfile(path);
    if (pid > 0 && !pid_alive(pid))
        unlink(path);
    snprintf(path, sizeof path, "%s/.s.PGSQL.%d.lock", lab->run, node_port(lab, i));
    pid = read_pidfile(path);
    if (pid > 0 && !pid_alive(pid))
        unlink(path);
}

int node_start(struct lab *lab, int i)
{
    char name[8], data[PATH_MAX], log[PATH_MAX + 16], out[4096];
    node_name(i, name, sizeof name);
    node_data(lab, i, data, sizeof data);
    if (node_pid(lab, i)) {
        printf("%s: already running\n", name);
        return 0;
    }
    clear_stale_locks(lab, i);
    if (port_in_use(node_port(lab, i))) {
        fprintf(stderr, "port %d is in use (needed by %s)\n", node_port(lab, i), name);
        return -1;
    }
    snprintf(log, sizeof log, "%s/%s.log", lab->dir, name);
    int64_t t0 = now_ms();
    /* -W: we poll the socket every 20 ms ourselves, pg_ctl -w only every 100 ms */
    const char *argv[] = {"pg_ctl", "start", "-W", "-s", "-D", data, "-l", log, NULL};
    if (run_cmd(lab, argv, out, sizeof out) != 0) {
        fprintf(stderr, "%s: pg_ctl start failed: %s\n", name, out);
        print_log_tail(lab, i);
        return -1;
    }
    char port[16];
    snprintf(port, sizeof port, "%d", node_port(lab, i));
    const char *kw[] = {"host", "port", "dbname", "user", "connect_timeout", NULL};
    const char *val[] = {lab->run, port, "postgres", "postgres", "2", NULL};
    for (;;) {
        if (PQpingParams(kw, val, 0) == PQPING_OK)
            break;
        int64_t el = now_ms() - t0;
        char pidpath[PATH_MAX + 32];
        snprintf(pidpath, sizeof pidpath, "%s/postmaster.pid", data);
        pid_t pid = read_pidfile(pidpath);
        if ((pid > 0 && !pid_alive(pid)) || (pid <= 0 && el > 10000) || el > 120000) {
            fprintf(stderr, "%s: server did not start\n", name);
            print_log_tail(lab, i);
            return -1;
        }
        sleep_ms(LAB_POLL_MS);
    }
    printf("%s: started on port %d in %lld ms\n", name, node_port(lab, i),
           (long long)(now_ms() - t0));
    return 0;
}

/* Fast shutdown (what pg_ctl stop -m fast sends), waiting for the pid file to go. */
int node_stop(struct lab *lab, int i)
{
    char name[8], data[PATH_MAX], pidpath[PATH_MAX + 32];
    node_name(i, name, sizeof name);
    node_data(lab, i, data, sizeof data);
    snprintf(pidpath, sizeof pidpath, "%s/postmaster.pid", data);
    pid_t pid = node_pid(lab, i);
    if (!pid) {
        printf("%s: already stopped\n", name);
        return 0;
    }
    int64_t t0 = now_ms();
    /* a frozen node could never act on the shutdown request */
    node_signal_tree(pid, SIGCONT);
    kill(pid, SIGINT);
    int sig_step = 0;
    for (;;) {
        if (!pid_alive(pid) || access(pidpath, F_OK) != 0)
            break;
        int64_t el = now_ms() - t0;
        if (sig_step == 0 && el > 60000) {
            fprintf(stderr, "%s: fast shutdown timed out, using immediate\n", name);
            kill(pid, SIGQUIT);
            sig_step = 1;
        } else if (sig_step == 1 && el > 70000) {
            node_signal_tree(pid, SIGKILL);
            break;
        }
        sleep_ms(LAB_POLL_MS);
    }
    printf("%s: stopped in %lld ms\n", name, (long long)(now_ms() - t0));
    return 0;
}

int node_crash(struct lab *lab, int i)
{
    char name[8];
    node_name(i, name, sizeof name);
    pid_t pid = node_pid(lab, i);
    if (!pid) {
        printf("%s: not running\n", name);
        return 0;
    }
    int n = node_signal_tree(pid, SIGKILL);
    printf("%s: crashed (SIGKILL to postmaster %d and %d children)\n", name, (int)pid, n - 1);
    return 0;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    int rc = flag == FTW_DP ? rmdir(path) : unlink(path);
    if (rc < 0 && errno != ENOENT)
        fprintf(stderr, "lab: cannot remove %s: %s\n", path, strerror(errno));
    return 0;
}

int remove_tree(const char *path)
{
    if (nftw(path, rm_entry, 32, FTW_DEPTH | FTW_PHYS) < 0 && errno != ENOENT)
        return -1;
    return access(path, F_OK) == 0 ? -1 : 0;
}
