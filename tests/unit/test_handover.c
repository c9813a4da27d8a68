/* The handover record of pgstay -R (client/handover.c): a client made by a real worker (the
 * shared harness: its fake PostgreSQL server behind it) is exported, imported back as a new
 * client on a duplicate of its socket, and exported again: the two records must agree (but
 * for the client id, which is the new process's own). Every shorter prefix of the record must
 * be refused, with nothing leaked (run under ASan: make asan). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <unistd.h>

#include <cmocka.h>

#include "client/client.h"
#include "client/handover.h"
#include "core/log.h"
#include "pool/pool.h"
#include "proto/proto.h"

#include "../harness/pgfake.h"

static int cfd = -1; /* the test client's end of its socket pair */

/* Whatever pgstay sent the test client: read and dropped, so that nothing blocks. */
static long drain(void)
{
    char buf[4096];
    long total = 0, n;
    while (cfd >= 0 && (n = read(cfd, buf, sizeof(buf))) > 0)
        total += n;
    return total;
}

static void send_all(const void *p, size_t n)
{
    assert_int_equal(write(cfd, p, n), (ssize_t)n);
    quiesce();
}

static void send_query(const char *sql)
{
    struct pbuf b;
    pbuf_init(&b);
    proto_build_query(&b, sql);
    send_all(b.data, b.len);
    pbuf_free(&b);
}

/* A Parse of a named statement and its Sync: kept by pgstay to re-create on any server. */
static void send_prepare(const char *name, const char *sql)
{
    struct pbuf b;
    pbuf_init(&b);
    size_t at = proto_begin_msg(&b, 'P');
    pbuf_put_str(&b, name);
    pbuf_put_str(&b, sql);
    pbuf_put_u16(&b, 0);
    proto_end_msg(&b, at);
    at = proto_begin_msg(&b, 'S');
    proto_end_msg(&b, at);
    send_all(b.data, b.len);
    pbuf_free(&b);
}

static struct client *the_client(void)
{
    struct list *pos;
    list_for_each(pos, &hw.clients[CL_IDLE])
    {
        struct client *c = container_of(pos, struct client, node);
        if (!c->is_admin)
            return c;
    }
    return NULL;
}

static void test_record_round_trip(void **state)
{
    cfd = worker_connect_pair();
    const char *names[] = {"user", "database", "application_name"};
    const char *values[] = {"postgres", "postgres", "unit"};
    struct pbuf b;
    pbuf_init(&b);
    proto_build_startup(&b, 3, names, values);
    send_all(b.data, b.len);
    pbuf_free(&b);
    send_query("SET search_path = a, public");
    send_prepare("s1", "SELECT 1");
    quiesce();
    drain();
    quiesce();

    struct client *c = the_client();
    assert_non_null(c);
    assert_int_equal(client_movable(c), 1);
    assert_string_equal(kv_get(&c->params, "application_name"), "unit");
    assert_non_null(client_stmt_find(c, "s1"));

    struct pbuf rec;
    pbuf_init(&rec);
    client_export(c, &rec);
    assert_false(rec.failed);
    int fd = conn_fd(&c->conn);

    /* Every prefix is refused, the socket untouched (the caller closes it). */
    int before = hw.n_clients[CL_IDLE];
    for (size_t len = 0; len < rec.len; len++) {
        int d = dup(fd);
        assert_true(d >= 0);
        assert_null(client_import(&hw, d, rec.data, len));
        close(d);
    }
    assert_int_equal(hw.n_clients[CL_IDLE], before);

    int d = dup(fd);
    struct client *c2 = client_import(&hw, d, rec.data, rec.len);
    assert_non_null(c2);
    assert_int_equal(hw.n_clients[CL_IDLE], before + 1);
    assert_ptr_equal(c2->pool, c->pool);
    assert_int_equal(c2->cancel_pid, c->cancel_pid);
    assert_int_equal(c2->cancel_key, c->cancel_key);
    assert_int_equal(client_movable(c2), 1);
    struct pbuf rec2;
    pbuf_init(&rec2);
    client_export(c2, &rec2);
    assert_int_equal(rec2.len, rec.len);
    /* bytes 4..11: the client id, the new process's own */
    assert_memory_equal(rec2.data, rec.data, 4);
    assert_memory_equal(rec2.data + 12, rec.data + 12, rec.len - 12);
    pbuf_free(&rec2);
    pbuf_free(&rec);

    /* Served here after the export (the old process keeps a client it could not send). */
    send_query("SELECT 1");
    drain();
    quiesce();
    assert_int_equal(client_movable(c), 1);
    client_close(c2, NULL, "test done");
    quiesce();
    close(cfd);
    cfd = -1;
    quiesce();
}

static void test_version_refused(void **state)
{
    uint8_t rec[8] = {0, 0, 0, 99};
    assert_null(client_import(&hw, -1, rec, sizeof(rec))); /* the descriptor is not touched */
}

static int setup(void **state)
{
    signal(SIGPIPE, SIG_IGN);
    log_verbosity = getenv("HANDOVER_VERBOSE") ? LOG_DEBUG : -1;
    fs_start();
    worker_start("pool_mode = transaction\n", 0);
    return 0;
}

static int teardown(void **state)
{
    worker_stop();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_record_round_trip),
        cmocka_unit_test(test_version_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
