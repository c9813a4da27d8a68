/* Unit tests for the auth_hba_file reader and its first-match lookup (config/hba.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "config/hba.h"

/* Load text as an hba file; returns hba_load's result, err filled on failure. */
static int load(const char *text, struct hba *h, char *err, size_t errlen)
{
    char path[] = "/tmp/pgstay-hba-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    int rc = hba_load(path, h, err, errlen);
    unlink(path);
    return rc;
}

/* The method of the line a login meets, or -1 when none matches. */
static int method_for(const struct hba *h, const char *ip, int tls, const char *db,
                      const char *user)
{
    uint8_t addr[16];
    int family = strchr(ip, ':') ? AF_INET6 : AF_INET;
    assert_int_equal(inet_pton(family, ip, addr), 1);
    struct hba_login l = {family, addr, tls, db, user};
    const struct hba_rule *r = hba_match(h, &l);
    return r ? r->method : -1;
}

static void test_first_match(void **state)
{
    struct hba h;
    char err[512];
    const char *text = "# comment\n"
                       "local all all peer\n"
                       "\n"
                       "hostssl  app     alice   127.0.0.1/32   scram-sha-256\n"
                       "hostnossl app    alice   127.0.0.1/32   reject\n"
                       "host    app,\"all\" bob   10.0.0.0/8     md5   # trailing comment\n"
                       "host    sameuser  all   all            password\n"
                       "host    all     carol   192.168.1.0 255.255.255.0 trust\n"
                       "host    all     all     ::1/128        cert_not_here\n";
    /* An unknown method fails the whole file, naming the line. */
    assert_int_equal(load(text, &h, err, sizeof(err)), -1);
    assert_non_null(strstr(err, ":9: authentication method \"cert_not_here\""));

    text = "local all all peer\n"
           "hostssl  app     alice   127.0.0.1/32   scram-sha-256\n"
           "hostnossl app    alice   127.0.0.1/32   reject\n"
           "host    app,\"all\" bob   10.0.0.0/8     md5\n"
           "host    sameuser  all   all            password\n"
           "host    all     carol   192.168.1.0 255.255.255.0 trust\n"
           "hostssl all     dave    ::1/128        cert\n"
           "host    all     all     ::1/128        trust\n";
    assert_int_equal(load(text, &h, err, sizeof(err)), 0);
    assert_int_equal(h.n, 8);
    /* hostssl vs hostnossl */
    assert_int_equal(method_for(&h, "127.0.0.1", 1, "app", "alice"), HBA_SCRAM);
    assert_int_equal(method_for(&h, "127.0.0.1", 0, "app", "alice"), HBA_REJECT);
    /* lists, a quoted keyword is a name, CIDR */
    assert_int_equal(method_for(&h, "10.1.2.3", 0, "app", "bob"), HBA_MD5);
    assert_int_equal(method_for(&h, "10.1.2.3", 0, "all", "bob"), HBA_MD5);
    assert_int_equal(method_for(&h, "10.1.2.3", 0, "other", "bob"), -1);
    assert_int_equal(method_for(&h, "11.1.2.3", 0, "app", "bob"), -1);
    /* sameuser, address all */
    assert_int_equal(method_for(&h, "8.8.8.8", 1, "erin", "erin"), HBA_PASSWORD);
    /* address + netmask form */
    assert_int_equal(method_for(&h, "192.168.1.77", 0, "x", "carol"), HBA_TRUST);
    assert_int_equal(method_for(&h, "192.168.2.77", 0, "x", "carol"), -1);
    /* IPv6, and an IPv4-mapped address counts as IPv4 */
    assert_int_equal(method_for(&h, "::1", 0, "x", "dave"), HBA_TRUST);
    assert_int_equal(method_for(&h, "::1", 1, "x", "dave"), HBA_CERT);
    assert_int_equal(method_for(&h, "::ffff:192.168.1.5", 0, "x", "carol"), HBA_TRUST);
    assert_int_equal(h.rules[6].clientcert, HBA_CERT_VERIFY_FULL);
    assert_int_equal(h.rules[3].line, 4);
    hba_free(&h);
}

static void test_samehost(void **state)
{
    struct hba h;
    char err[512];
    assert_int_equal(
        load("host all all samehost trust\nhost all all samenet md5\n", &h, err, sizeof(err)), 0);
    /* the loopback interface's address is this host's */
    assert_int_equal(method_for(&h, "127.0.0.1", 0, "d", "u"), HBA_TRUST);
    assert_int_equal(method_for(&h, "127.0.0.2", 0, "d", "u"), HBA_MD5);
    assert_int_equal(method_for(&h, "203.0.113.9", 0, "d", "u"), -1);
    hba_free(&h);
}

/* What pgstay cannot enforce as written is refused when the file is read, naming the line. */
static void test_errors(void **state)
{
    static const struct {
        const char *text;
        const char *want;
    } cases[] = {
        {"host all +admins 0.0.0.0/0 md5\n", ":1: user \"+admins\" is not supported"},
        {"host all @users 0.0.0.0/0 md5\n", ":1: user \"@users\""},
        {"host samerole all 0.0.0.0/0 md5\n", ":1: database \"samerole\""},
        {"host all all db.example.com md5\n", "host names are not supported"},
        {"host all all 10.0.0.0/33 md5\n", "invalid CIDR mask"},
        {"host all all 10.0.0.0 md5\n", "without a CIDR mask"},
        {"host all all 0.0.0.0/0 ldap\n", "\"ldap\" is not supported"},
        {"host all all 0.0.0.0/0 cert\n", "cert authentication is only supported on hostssl"},
        {"host all all 0.0.0.0/0 md5 clientcert=verify-ca\n", "only be configured for \"hostssl\""},
        {"hostssl all all 0.0.0.0/0 md5 map=x\n", "option \"map=x\" is not supported"},
        {"hostgssenc all all 0.0.0.0/0 md5\n", "not supported by pgstay"},
        {"hots all all 0.0.0.0/0 md5\n", "invalid connection type \"hots\""},
        {"host all all\n", "end-of-line before IP address"},
        {"host all all 0.0.0.0/0\n", "end-of-line before authentication method"},
        {"host \"all all 0.0.0.0/0 md5\n", "unterminated quoted string"},
        {"host all all 0.0.0.0/0 peer\n", "peer authentication is only supported on local"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct hba h;
        char err[512] = "";
        assert_int_equal(load(cases[i].text, &h, err, sizeof(err)), -1);
        if (!strstr(err, cases[i].want))
            fail_msg("%s: got \"%s\", want \"%s\"", cases[i].text, err, cases[i].want);
        assert_int_equal(h.n, 0);
    }
    struct hba h;
    char err[512];
    assert_int_equal(hba_load("/nonexistent/hba.conf", &h, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "cannot open"));
}

/* clientcert=verify-ca keeps the line's method; an empty file matches nothing (reject). */
static void test_options_and_empty(void **state)
{
    struct hba h;
    char err[512];
    assert_int_equal(load("hostssl all all 0.0.0.0/0 scram-sha-256 clientcert=verify-ca\n", &h, err,
                          sizeof(err)),
                     0);
    assert_int_equal(h.rules[0].method, HBA_SCRAM);
    assert_int_equal(h.rules[0].clientcert, HBA_CERT_VERIFY_CA);
    assert_int_equal(method_for(&h, "1.2.3.4", 0, "d", "u"), -1);
    hba_free(&h);
    assert_int_equal(load("# nothing\n\n", &h, err, sizeof(err)), 0);
    assert_int_equal(h.n, 0);
    assert_int_equal(method_for(&h, "127.0.0.1", 0, "d", "u"), -1);
    hba_free(&h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_first_match),
        cmocka_unit_test(test_samehost),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_options_and_empty),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
