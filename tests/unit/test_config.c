/* Unit tests for the config file and the auth file readers, on temporary files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config/config.h"
#include "config/userlist.h"
#include "proto/scram.h"

#define NODES "[nodes]\nn1 = host=127.0.0.1\n"

/* Write text to a fresh file in /tmp; path receives its name. */
static int load_text(const char *text, struct config *cfg, char *path, size_t pathcap, char *err,
                     size_t errlen);

/* [users] and [databases] pool_size (PgBouncer's): the user's wins over the database's, which
 * wins over pool_size; the last entry for a name wins. */
static void test_pool_size_overrides(void **state)
{
    char path[64], err[512];
    struct config c;
    assert_int_equal(load_text("[pgstay]\npool_size = 9\n[databases]\nreports = pool_size=5\n"
                               "app = pool_size=3\napp = pool_size=4\n[users]\nbatch = "
                               "pool_size=2\n" NODES,
                               &c, path, sizeof(path), err, sizeof(err)),
                     0);
    assert_int_equal(config_pool_size(&c, "reports", "alice"), 5);
    assert_int_equal(config_pool_size(&c, "app", "alice"), 4);
    assert_int_equal(config_pool_size(&c, "reports", "batch"), 2);
    assert_int_equal(config_pool_size(&c, "other", "alice"), 9);
    assert_int_equal(config_pool_size(&c, "other", NULL), 9);
    assert_int_equal(config_pool_size(&c, "reports", NULL), 5);
    config_free(&c);
    unlink(path);
}

/* PgBouncer's names: [pgbouncer] is read as [pgstay], default_pool_size as pool_size; SET's
 * config_set takes reloadable keys only. */
static void test_pgbouncer_names(void **state)
{
    char path[64], err[512];
    struct config c;
    assert_int_equal(load_text("[pgbouncer]\ndefault_pool_size = 7\nstats_period = 2\n" NODES, &c,
                               path, sizeof(path), err, sizeof(err)),
                     0);
    assert_int_equal(c.pool_size, 7);
    assert_int_equal(c.stats_period, 2000);
    assert_string_equal(config_canonical_key("DEFAULT_POOL_SIZE"), "pool_size");
    assert_null(config_canonical_key("server_round_robin"));
    assert_int_equal(config_set(&c, "default_pool_size", "9", err, sizeof(err)), 0);
    assert_int_equal(c.pool_size, 9);
    assert_int_equal(config_set(&c, "listen_port", "1", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "restart"));
    assert_int_equal(config_set(&c, "pool_size", "0", err, sizeof(err)), -1);
    assert_int_equal(c.pool_size, 9);
    struct config_key_view kv;
    int found = 0;
    for (int i = 0; config_key_show(&c, i, &kv) == 0; i++) {
        if (!strcmp(kv.name, "query_wait_timeout")) {
            assert_string_equal(kv.value, "120000ms");
            assert_string_equal(kv.def, "120000ms");
            assert_int_equal(kv.reloadable, 1);
            found++;
        }
    }
    assert_int_equal(found, 1);
    config_free(&c);
}

static void write_temp(const char *text, char *path, size_t cap)
{
    snprintf(path, cap, "/tmp/pgstay_test_XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t n = strlen(text);
    assert_int_equal(write(fd, text, n), (ssize_t)n);
    close(fd);
}

/* Load text as a config; returns config_load's result. */
static int load_text(const char *text, struct config *cfg, char *path, size_t pathcap, char *err,
                     size_t errlen)
{
    write_temp(text, path, pathcap);
    err[0] = '\0';
    int rc = config_load(path, cfg, err, errlen);
    unlink(path);
    return rc;
}

static void test_defaults(void **state)
{
    struct config c;
    char path[64], err[512];
    assert_int_equal(load_text("[pgstay]\n" NODES, &c, path, sizeof(path), err, sizeof(err)), 0);
    assert_string_equal(c.path, path);
    assert_string_equal(c.listen_addr, "127.0.0.1");
    assert_int_equal(c.listen_port, 6432);
    assert_int_equal(c.readonly_port, 0);
    assert_int_equal(c.listen_backlog, 128);
    assert_int_equal(c.pool_mode, POOL_SESSION);
    assert_int_equal(c.pool_size, 20);
    assert_int_equal(c.max_client_conn, 10000);
    assert_int_equal(c.auth_type, AUTH_SCRAM);
    assert_string_equal(c.auth_file, "/tmp/userlist.txt");
    assert_string_equal(c.admin_users, "");
    assert_string_equal(c.server_reset_query, "DISCARD ALL");
    assert_int_equal(c.server_connect_timeout, 5000);
    assert_int_equal(c.query_wait_timeout, 120000);
    assert_int_equal(c.client_idle_timeout, 0);
    assert_int_equal(c.client_login_timeout, 60000);
    assert_int_equal(c.shutdown_timeout, 30000);
    assert_int_equal(c.max_packet_size, 1024 * 1024 * 1024);
    assert_int_equal(c.tcp_keepalive, 1);
    assert_int_equal(c.tcp_user_timeout, 5000);
    assert_string_equal(c.health_check_user, "postgres");
    assert_string_equal(c.health_check_dbname, "postgres");
    assert_int_equal(c.health_check_period, 100);
    assert_int_equal(c.health_check_fast_period, 20);
    assert_int_equal(c.health_check_timeout, 1000);
    assert_int_equal(c.failover_timeout, 30000);
    assert_int_equal(c.pause_timeout, 60000);
    assert_int_equal(c.server_connect_concurrency, 4);
    assert_int_equal(c.max_replica_lag, 16L * 1024 * 1024);
    assert_int_equal(c.readonly_fallback, FALLBACK_WRITER);
    assert_int_equal(c.verbose, 0);
    assert_int_equal(c.n_nodes, 1);
    assert_string_equal(c.nodes[0].name, "n1");
    assert_string_equal(c.nodes[0].host, "127.0.0.1");
    assert_int_equal(c.nodes[0].port, 5432);
    config_free(&c);
}

static void test_every_type(void **state)
{
    static const char text[] = "; leading comment\n"
                               "# another\n"
                               "\n"
                               "[pgstay]\n"
                               "  listen_addr = 0.0.0.0   \n"
                               "listen_port=7000\n"
                               "readonly_port = 7001 ; trailing comment\n"
                               "pool_mode = transaction\n"
                               "pool_size = 5\n"
                               "auth_type = md5\n"
                               "auth_file = /etc/pgstay/users.txt\n"
                               "admin_users = \"alice, bob\"\n"
                               "server_reset_query = \"SELECT 1; -- not a comment inside quotes\"\n"
                               "tcp_keepalive = off\n"
                               "server_connect_timeout = 3\n" /* bare: seconds */
                               "query_wait_timeout = 250ms\n"
                               "client_idle_timeout = 2min\n"
                               "client_login_timeout = 7 s\n"
                               "health_check_period = 50\n" /* bare: milliseconds */
                               "health_check_timeout = 2s\n"
                               "tcp_user_timeout = 1min\n"
                               "max_packet_size = 64kB\n"
                               "max_replica_lag = 2GB\n"
                               "readonly_fallback = ERROR\n"
                               "verbose = 2\n"
                               "[nodes]\n"
                               "pg1 = host=10.0.0.1 port=5433\n"
                               "pg2 = host = 'db two'  port = 6000   # comment\n"
                               "pg3 = \"host=::1\"\n";
    struct config c;
    char path[64], err[512];
    int rc = load_text(text, &c, path, sizeof(path), err, sizeof(err));
    if (rc != 0)
        fail_msg("%s", err);
    assert_string_equal(c.listen_addr, "0.0.0.0");
    assert_int_equal(c.listen_port, 7000);
    assert_int_equal(c.readonly_port, 7001);
    assert_int_equal(c.pool_mode, POOL_TRANSACTION);
    assert_int_equal(c.pool_size, 5);
    assert_int_equal(c.auth_type, AUTH_MD5);
    assert_string_equal(c.auth_file, "/etc/pgstay/users.txt");
    assert_string_equal(c.admin_users, "alice, bob");
    assert_string_equal(c.server_reset_query, "SELECT 1; -- not a comment inside quotes");
    assert_int_equal(c.tcp_keepalive, 0);
    assert_int_equal(c.server_connect_timeout, 3000);
    assert_int_equal(c.query_wait_timeout, 250);
    assert_int_equal(c.client_idle_timeout, 120000);
    assert_int_equal(c.client_login_timeout, 7000);
    assert_int_equal(c.health_check_period, 50);
    assert_int_equal(c.health_check_timeout, 2000);
    assert_int_equal(c.tcp_user_timeout, 60000);
    assert_int_equal(c.max_packet_size, 65536);
    assert_int_equal(c.max_replica_lag, 2L * 1024 * 1024 * 1024);
    assert_int_equal(c.readonly_fallback, FALLBACK_ERROR);
    assert_int_equal(c.verbose, 2);
    assert_int_equal(c.n_nodes, 3);
    assert_string_equal(c.nodes[0].name, "pg1");
    assert_string_equal(c.nodes[0].host, "10.0.0.1");
    assert_int_equal(c.nodes[0].port, 5433);
    assert_string_equal(c.nodes[1].name, "pg2");
    assert_string_equal(c.nodes[1].host, "db two");
    assert_int_equal(c.nodes[1].port, 6000);
    assert_string_equal(c.nodes[2].host, "::1");
    assert_int_equal(c.nodes[2].port, 5432);
    config_free(&c);
}

static void test_bools(void **state)
{
    static const char *const on[] = {"on", "true", "yes", "1", "ON"};
    static const char *const off[] = {"off", "false", "no", "0", "No"};
    char text[256], path[64], err[512];
    struct config c;
    for (size_t i = 0; i < 5; i++) {
        snprintf(text, sizeof(text), "[pgstay]\ntcp_keepalive=%s\n" NODES, on[i]);
        assert_int_equal(load_text(text, &c, path, sizeof(path), err, sizeof(err)), 0);
        assert_int_equal(c.tcp_keepalive, 1);
        config_free(&c);
        snprintf(text, sizeof(text), "[pgstay]\ntcp_keepalive=%s\n" NODES, off[i]);
        assert_int_equal(load_text(text, &c, path, sizeof(path), err, sizeof(err)), 0);
        assert_int_equal(c.tcp_keepalive, 0);
        config_free(&c);
    }
}

static void test_relative_auth_file(void **state)
{
    char dir[] = "/tmp/pgstay_cfgdir_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128], err[512], want[PATH_MAX + 32], real[PATH_MAX];
    snprintf(path, sizeof(path), "%s/pgstay.ini", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("[pgstay]\nauth_file = conf/users.txt\n" NODES, f);
    fclose(f);

    struct config c;
    assert_int_equal(config_load(path, &c, err, sizeof(err)), 0);
    assert_non_null(realpath(dir, real));
    snprintf(want, sizeof(want), "%s/conf/users.txt", real);
    assert_string_equal(c.auth_file, want);
    config_free(&c);

    /* A config path without a folder resolves against the working directory. */
    char cwd[PATH_MAX];
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir(dir), 0);
    assert_int_equal(config_load("pgstay.ini", &c, err, sizeof(err)), 0);
    assert_string_equal(c.auth_file, want);
    config_free(&c);
    assert_int_equal(chdir(cwd), 0);

    unlink(path);
    rmdir(dir);
}

struct err_case {
    const char *text;
    const char *want; /* after "path:" */
};

static void test_errors(void **state)
{
    static const struct err_case cases[] = {
        {"[pgstay]\npool_sise = 3\n" NODES, "2: unknown key \"pool_sise\""},
        {"[pgstay]\n\n\n\n\n\npool_sise = 3\n", "7: unknown key \"pool_sise\""},
        {"[clusters]\n", "1: unknown section \"clusters\""},
        {"[databases]\napp = host=10.0.0.1\n",
         "2: [databases] app: unknown key \"host\" (only pool_size)"},
        {"[users]\nbob = pool_size=0\n",
         "2: [users] bob: invalid pool_size \"0\": must be at least 1"},
        {"[users]\nbob = pool_size\n", "2: [users] bob: expected key=value in \"pool_size\""},
        {"[pgstay\n", "1: missing \"]\" in section header"},
        {"[pgstay]\npool_size 3\n", "2: missing \"=\" in \"pool_size 3\""},
        {"[pgstay]\n= 3\n", "2: missing key before \"=\""},
        {"pool_size = 3\n", "1: key \"pool_size\" outside of a section"},
        {"[pgstay]\n\npool_size = abc\n",
         "3: invalid value \"abc\" for pool_size: expected an integer"},
        {"[pgstay]\npool_size = 12x\n",
         "2: invalid value \"12x\" for pool_size: expected an integer"},
        {"[pgstay]\npool_size =\n", "2: invalid value \"\" for pool_size: expected an integer"},
        {"[pgstay]\npool_size = 0\n", "2: invalid value \"0\" for pool_size: must be at least 1"},
        {"[pgstay]\nlisten_port = 70000\n",
         "2: invalid value \"70000\" for listen_port: must be between 1 and 65535"},
        {"[pgstay]\nlisten_port = 0\n",
         "2: invalid value \"0\" for listen_port: must be between 1 and 65535"},
        {"[pgstay]\nreadonly_port = -1\n",
         "2: invalid value \"-1\" for readonly_port: must be between 0 and 65535"},
        {"[pgstay]\npool_size = 99999999999999999999\n",
         "2: invalid value \"99999999999999999999\" for pool_size: expected an integer"},
        {"[pgstay]\npool_mode = statement\n",
         "2: invalid value \"statement\" for pool_mode: expected one of session/transaction"},
        {"[pgstay]\ntcp_keepalive = maybe\n",
         "2: invalid value \"maybe\" for tcp_keepalive: expected on or off"},
        {"[pgstay]\nquery_wait_timeout = 5h\n",
         "2: invalid value \"5h\" for query_wait_timeout: unknown unit (use ms, s or min)"},
        {"[pgstay]\nquery_wait_timeout = soon\n",
         "2: invalid value \"soon\" for query_wait_timeout: expected a duration (a number with "
         "unit ms, s or min)"},
        {"[pgstay]\nquery_wait_timeout = -1\n",
         "2: invalid value \"-1\" for query_wait_timeout: must be at least 0ms"},
        {"[pgstay]\nquery_wait_timeout = 9999999min\n",
         "2: invalid value \"9999999min\" for query_wait_timeout: too large"},
        {"[pgstay]\nhealth_check_period = 0\n",
         "2: invalid value \"0\" for health_check_period: must be at least 1ms"},
        {"[pgstay]\nmax_packet_size = 2GB\n",
         "2: invalid value \"2GB\" for max_packet_size: must be between 1024 bytes and 1073741824 "
         "bytes"},
        {"[pgstay]\nmax_replica_lag = 16TB\n",
         "2: invalid value \"16TB\" for max_replica_lag: unknown unit (use kB, MB or GB)"},
        {"[pgstay]\nadmin_users = \"alice\n", "2: unterminated quoted value for admin_users"},
        {"[pgstay]\nadmin_users = \"alice\" bob\n", "2: unterminated quoted value for admin_users"},
        {"[nodes]\nn1 = host=a dbname=x\n",
         "2: node \"n1\": unknown conninfo key \"dbname\" (only host and port)"},
        {"[nodes]\nn1 = host=a\nn1 = host=b\n", "3: duplicate node \"n1\""},
        {"[nodes]\nn1 = port=5432\n", "2: node \"n1\": host is required"},
        {"[nodes]\nn1 = host=a port=0\n",
         "2: node \"n1\": invalid port \"0\": must be between 1 and 65535"},
        {"[nodes]\nn1 = host=a port=x\n",
         "2: node \"n1\": invalid port \"x\": must be between 1 and 65535"},
        {"[nodes]\nn1 = host\n", "2: node \"n1\": expected key=value in \"host\""},
        {"[nodes]\nn1 = host='a\n",
         "2: node \"n1\": value of \"host\" is unterminated or too long"},
        {"[pgstay]\n", " no nodes: [nodes] needs at least one \"name = host=H port=P\""},
        {"[nodes]\n", " no nodes: [nodes] needs at least one \"name = host=H port=P\""},
    };
    char path[64], err[512], want[768];
    struct config c;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        memset(&c, 0x5a, sizeof(c));
        int rc = load_text(cases[i].text, &c, path, sizeof(path), err, sizeof(err));
        snprintf(want, sizeof(want), "%s:%s", path, cases[i].want);
        if (rc != -1 || strcmp(err, want) != 0)
            fail_msg("case %zu: rc %d\n  got  \"%s\"\n  want \"%s\"", i, rc, err, want);
        /* Left freed: nothing to release, and freeing again is harmless. */
        assert_null(c.listen_addr);
        assert_null(c.path);
        config_free(&c);
    }
}

static void test_too_many_nodes(void **state)
{
    char text[2048], path[64], err[512], want[128];
    size_t o = (size_t)snprintf(text, sizeof(text), "[nodes]\n");
    for (int i = 0; i <= CONFIG_MAX_NODES; i++)
        o += (size_t)snprintf(text + o, sizeof(text) - o, "n%d = host=h%d\n", i, i);
    struct config c;
    assert_int_equal(load_text(text, &c, path, sizeof(path), err, sizeof(err)), -1);
    snprintf(want, sizeof(want), "%s:%d: too many nodes (at most %d)", path, CONFIG_MAX_NODES + 2,
             CONFIG_MAX_NODES);
    assert_string_equal(err, want);
}

static void test_unreadable(void **state)
{
    struct config c;
    char err[512];
    assert_int_equal(config_load("/nonexistent/pgstay.ini", &c, err, sizeof(err)), -1);
    assert_string_equal(err, "/nonexistent/pgstay.ini: cannot open: No such file or directory");
}

static void test_reload(void **state)
{
    struct config cur, fresh;
    char path[64], err[512];
    assert_int_equal(load_text("[pgstay]\nlisten_port = 6432\nlisten_addr = 127.0.0.1\n"
                               "pool_size = 20\nserver_reset_query = \"DISCARD ALL\"\n" NODES,
                               &cur, path, sizeof(path), err, sizeof(err)),
                     0);
    char *keep_path = strdup(cur.path);
    assert_int_equal(
        load_text("[pgstay]\nlisten_port = 7777\nlisten_addr = 0.0.0.0\nreadonly_port = 6433\n"
                  "pool_size = 50\nserver_reset_query = \"\"\nmax_replica_lag = 1MB\n"
                  "query_wait_timeout = 1s\nauth_type = trust\n"
                  "[nodes]\nn1 = host=127.0.0.1\nn2 = host=127.0.0.2\n",
                  &fresh, path, sizeof(path), err, sizeof(err)),
        0);
    config_apply_reload(&cur, &fresh);
    /* Not reloadable: kept. */
    assert_int_equal(cur.listen_port, 6432);
    assert_string_equal(cur.listen_addr, "127.0.0.1");
    assert_int_equal(cur.readonly_port, 0);
    assert_string_equal(cur.path, keep_path);
    /* Reloadable: taken. [nodes] too (the topology follows it: topology_sync_nodes). */
    assert_int_equal(cur.n_nodes, 2);
    assert_string_equal(cur.nodes[1].name, "n2");
    assert_string_equal(cur.nodes[1].host, "127.0.0.2");
    assert_int_equal(cur.pool_size, 50);
    assert_string_equal(cur.server_reset_query, "");
    assert_int_equal(cur.max_replica_lag, 1024 * 1024);
    assert_int_equal(cur.query_wait_timeout, 1000);
    assert_int_equal(cur.auth_type, AUTH_TRUST);
    /* fresh was freed. */
    assert_null(fresh.listen_addr);
    assert_null(fresh.server_reset_query);
    free(keep_path);
    config_free(&cur);
}

static void test_list_has(void **state)
{
    assert_true(config_list_has("alice,bob", "bob"));
    assert_true(config_list_has("alice, bob", "alice"));
    assert_true(config_list_has(" alice  bob ", "bob"));
    assert_false(config_list_has("alice,bob", "al"));
    assert_false(config_list_has("alice,bobby", "bob"));
    assert_false(config_list_has("", "bob"));
    assert_false(config_list_has(NULL, "bob"));
    assert_false(config_list_has("alice", ""));
}

/* ---- userlist ---- */

static void test_userlist(void **state)
{
    static const char text[] =
        "; comment\n"
        "# comment\n"
        "\n"
        "\"alice\" \"plain pass\"\n"
        "  \"bob\"   \"md553f48b7c4b76a86ce72276c5755f217d\" \"extra\" field\n"
        "\"carol\" "
        "\"SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtb"
        "sT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=\"\n"
        "\"we\"\"ird\" \"pa\"\"ss\"\"\"\n"
        "\"dave\" \"md5notreallyhex\"\n"
        "\"erin\" \"\"\n";
    char path[64], err[512];
    struct userlist ul;
    write_temp(text, path, sizeof(path));
    int rc = userlist_load(path, &ul, err, sizeof(err));
    unlink(path);
    if (rc != 0)
        fail_msg("%s", err);
    assert_int_equal(ul.n, 6);

    const struct user_secret *u = userlist_find(&ul, "alice");
    assert_non_null(u);
    assert_string_equal(u->secret, "plain pass");
    assert_int_equal(u->kind, SECRET_PLAIN);
    u = userlist_find(&ul, "bob");
    assert_non_null(u);
    assert_int_equal(u->kind, SECRET_MD5);
    u = userlist_find(&ul, "carol");
    assert_non_null(u);
    assert_int_equal(u->kind, SECRET_SCRAM);
    u = userlist_find(&ul, "we\"ird");
    assert_non_null(u);
    assert_string_equal(u->secret, "pa\"ss\"");
    u = userlist_find(&ul, "dave");
    assert_non_null(u);
    assert_int_equal(u->kind, SECRET_PLAIN);
    u = userlist_find(&ul, "erin");
    assert_non_null(u);
    assert_string_equal(u->secret, "");
    assert_null(userlist_find(&ul, "mallory"));

    /* SCRAM verifiers exist once loaded: parsed (carol), derived for plain passwords (alice,
     * empty ones too), none for md5 */
    assert_non_null(userlist_find(&ul, "carol")->scram);
    assert_int_equal(userlist_find(&ul, "carol")->scram->iterations, 4096);
    u = userlist_find(&ul, "alice");
    assert_non_null(u->scram);
    struct scram_secret again;
    assert_int_equal(scram_secret_from_password("plain pass", u->scram->salt, u->scram->salt_len,
                                                u->scram->iterations, &again),
                     0);
    assert_memory_equal(again.stored_key, u->scram->stored_key, SCRAM_KEY_LEN);
    assert_null(userlist_find(&ul, "bob")->scram);

    /* an unknown user's mock verifier: the same salt at every attempt, another per user */
    struct scram_secret m1, m2, m3;
    userlist_mock_secret(&ul, "mallory", &m1);
    userlist_mock_secret(&ul, "mallory", &m2);
    userlist_mock_secret(&ul, "trent", &m3);
    assert_int_equal(m1.salt_len, SCRAM_SALT_LEN);
    assert_int_equal(m1.iterations, SCRAM_ITERATIONS);
    assert_memory_equal(m1.salt, m2.salt, SCRAM_SALT_LEN);
    assert_memory_not_equal(m1.salt, m3.salt, SCRAM_SALT_LEN);
    assert_memory_not_equal(m1.stored_key, m3.stored_key, SCRAM_KEY_LEN);
    struct userlist other = {0};
    userlist_keep_mock(&other, &ul);
    userlist_mock_secret(&other, "mallory", &m2);
    assert_memory_equal(m1.salt, m2.salt, SCRAM_SALT_LEN);

    userlist_free(&ul);
    assert_int_equal(ul.n, 0);
}

static void test_userlist_last_wins(void **state)
{
    char path[64], err[512];
    struct userlist ul;
    write_temp("\"a\" \"one\"\n\"a\" \"two\"\n", path, sizeof(path));
    assert_int_equal(userlist_load(path, &ul, err, sizeof(err)), 0);
    unlink(path);
    assert_int_equal(ul.n, 1);
    assert_string_equal(userlist_find(&ul, "a")->secret, "two");
    userlist_free(&ul);
}

static void test_userlist_errors(void **state)
{
    static const struct err_case cases[] = {
        {"alice \"pw\"\n", "1: expected a quoted user name"},
        {"\"alice\" \"pw\"\n\"bob\n", "2: unterminated quote in user name"},
        {"\n\"alice\"\n", "2: expected a quoted secret after user \"alice\""},
        {"\"alice\" pw\n", "1: expected a quoted secret after user \"alice\""},
        {"\"alice\" \"pw\n", "1: unterminated quote in the secret of user \"alice\""},
        {"\"\" \"pw\"\n", "1: empty user name"},
        {"\"alice\" \"SCRAM-SHA-256$4096:abc\"\n", "1: malformed SCRAM secret for user \"alice\""},
    };
    char path[64], err[512], want[256];
    struct userlist ul;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        write_temp(cases[i].text, path, sizeof(path));
        int rc = userlist_load(path, &ul, err, sizeof(err));
        unlink(path);
        snprintf(want, sizeof(want), "%s:%s", path, cases[i].want);
        if (rc != -1 || strcmp(err, want) != 0)
            fail_msg("case %zu: rc %d\n  got  \"%s\"\n  want \"%s\"", i, rc, err, want);
        assert_int_equal(ul.n, 0);
        assert_null(ul.users);
    }
    assert_int_equal(userlist_load("/nonexistent/users.txt", &ul, err, sizeof(err)), -1);
    assert_string_equal(err, "/nonexistent/users.txt: cannot open: No such file or directory");
}

/* topology_source = patroni needs patroni_url; the default is pgstay's own probes. */
static void test_topology_source(void **state)
{
    char path[64], err[512];
    struct config c;
    assert_int_equal(load_text("[pgstay]\n" NODES, &c, path, sizeof(path), err, sizeof(err)), 0);
    assert_int_equal(c.topology_source, TOPO_PROBES);
    assert_string_equal(c.patroni_url, "");
    assert_int_equal(c.so_reuseport, 0);
    config_free(&c);
    assert_int_equal(load_text("[pgstay]\ntopology_source = patroni\n" NODES, &c, path,
                               sizeof(path), err, sizeof(err)),
                     -1);
    assert_non_null(strstr(err, "needs patroni_url"));
    assert_int_equal(load_text("[pgstay]\ntopology_source = patroni\npatroni_url = "
                               "http://127.0.0.1:8008,http://127.0.0.1:8009\n" NODES,
                               &c, path, sizeof(path), err, sizeof(err)),
                     0);
    assert_int_equal(c.topology_source, TOPO_PATRONI);
    config_free(&c);
    assert_int_equal(load_text("[pgstay]\ntopology_source = consul\n" NODES, &c, path,
                               sizeof(path), err, sizeof(err)),
                     -1);
    assert_non_null(strstr(err, "expected one of probes/patroni"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_every_type),
        cmocka_unit_test(test_bools),
        cmocka_unit_test(test_relative_auth_file),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_pgbouncer_names),
        cmocka_unit_test(test_pool_size_overrides),
        cmocka_unit_test(test_too_many_nodes),
        cmocka_unit_test(test_unreadable),
        cmocka_unit_test(test_reload),
        cmocka_unit_test(test_list_has),
        cmocka_unit_test(test_userlist),
        cmocka_unit_test(test_userlist_last_wins),
        cmocka_unit_test(test_userlist_errors),
        cmocka_unit_test(test_topology_source),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
