/* The TLS transport (core/tls.c) on socket pairs, against an OpenSSL client driven by the test:
 * the plaintext answer goes before the switch, records already inside OpenSSL are read without
 * the socket becoming readable again (SSL_pending), writes the socket refuses are retried, a
 * direct TLS hello already read is handed over, a failed handshake is reported with its reason. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include <event2/event.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "core/conn.h"
#include "core/tls.h"

struct owner {
    struct conn c;
    int reads, drains, eofs, errors, tls_done;
    int consume;  /* consume what is read, appending it to got */
    uint8_t *got; /* what the owner read, in order */
    size_t n_got, cap_got;
};

static void on_read(void *arg)
{
    struct owner *o = arg;
    o->reads++;
    size_t n = conn_avail(&o->c);
    if (!o->consume || n == 0)
        return;
    if (o->n_got + n > o->cap_got) {
        o->cap_got = (o->n_got + n) * 2;
        o->got = realloc(o->got, o->cap_got);
    }
    memcpy(o->got + o->n_got, conn_data(&o->c), n);
    o->n_got += n;
    conn_consume(&o->c, n);
}

static void on_drain(void *arg)
{
    ((struct owner *)arg)->drains++;
}

static void on_event(void *arg, int what)
{
    struct owner *o = arg;
    if (what & CONN_EOF)
        o->eofs++;
    if (what & CONN_ERROR)
        o->errors++;
    if (what & CONN_TLS)
        o->tls_done++;
}

static const struct conn_cbs cbs = {on_read, on_drain, on_event};

static char cert_path[64], key_path[64];

/* A throwaway self-signed certificate, written once for the whole run. */
static int make_cert(void **state)
{
    EVP_PKEY *pkey = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, pkey);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1,
                               0);
    X509_set_issuer_name(x, name);
    X509_sign(x, pkey, EVP_sha256());
    snprintf(cert_path, sizeof(cert_path), "/tmp/pgstay-unit-crt-XXXXXX");
    snprintf(key_path, sizeof(key_path), "/tmp/pgstay-unit-key-XXXXXX");
    FILE *cf = fdopen(mkstemp(cert_path), "w");
    FILE *kf = fdopen(mkstemp(key_path), "w");
    PEM_write_X509(cf, x);
    PEM_write_PrivateKey(kf, pkey, NULL, NULL, 0, NULL, NULL);
    fclose(cf);
    fclose(kf);
    X509_free(x);
    EVP_PKEY_free(pkey);
    return 0;
}

static int remove_cert(void **state)
{
    unlink(cert_path);
    unlink(key_path);
    return 0;
}

struct fixture {
    struct event_base *base;
    struct conn_loop loop;
    struct owner o;
    int peer;
    tls_ctx *sctx;
    SSL_CTX *pctx;
    SSL *pssl; /* the peer: a TLS client on a non-blocking socket */
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    f->base = event_base_new();
    assert_int_equal(conn_loop_init(&f->loop, f->base, NULL), 0);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    evutil_make_socket_nonblocking(sv[0]); /* as accept4(SOCK_NONBLOCK) leaves it */
    conn_accept(&f->o.c, &f->loop, sv[0], &cbs, &f->o);
    f->o.consume = 1;
    f->peer = sv[1];
    evutil_make_socket_nonblocking(f->peer);
    char err[256];
    struct tls_settings ts = {.mode = TLS_REQUIRE, .cert_file = cert_path, .key_file = key_path};
    f->sctx = tls_ctx_new(&ts, 1, err, sizeof(err));
    if (!f->sctx)
        fail_msg("tls_ctx_new: %s", err);
    f->pctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(f->pctx, SSL_VERIFY_NONE, NULL);
    f->pssl = SSL_new(f->pctx);
    SSL_set_fd(f->pssl, f->peer);
    SSL_set_connect_state(f->pssl);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    conn_close(&f->o.c);
    SSL_free(f->pssl);
    SSL_CTX_free(f->pctx);
    tls_ctx_free(f->sctx);
    close(f->peer);
    conn_loop_free(&f->loop);
    event_base_free(f->base);
    free(f->o.got);
    free(f);
    return 0;
}

static void turn(struct fixture *f)
{
    for (int i = 0; i < 8; i++)
        event_base_loop(f->base, EVLOOP_NONBLOCK);
}

/* Both sides handshake: pgstay's from its loop, the peer's here. */
static void handshake(struct fixture *f)
{
    int peer_done = 0;
    for (int i = 0; i < 200 && !(peer_done && f->o.tls_done); i++) {
        turn(f);
        if (!peer_done) {
            int r = SSL_do_handshake(f->pssl);
            if (r == 1)
                peer_done = 1;
            else {
                int e = SSL_get_error(f->pssl, r);
                assert_true(e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE);
            }
        }
    }
    assert_true(peer_done);
    assert_int_equal(f->o.tls_done, 1);
    assert_int_equal(f->o.errors, 0);
    assert_true(conn_is_tls(&f->o.c));
}

/* The 'S' queued before the switch goes out in plaintext, then TLS carries data both ways. */
static void test_plain_answer_then_tls(void **state)
{
    struct fixture *f = *state;
    conn_write(&f->o.c, "S", 1);
    assert_int_equal(conn_start_tls(&f->o.c, f->sctx, 1, 0, NULL, 0), 0);
    char b;
    assert_int_equal(recv(f->peer, &b, 1, 0), 1);
    assert_int_equal(b, 'S');
    handshake(f);
    assert_int_equal(SSL_write(f->pssl, "hello", 5), 5);
    turn(f);
    assert_int_equal(f->o.n_got, 5);
    assert_memory_equal(f->o.got, "hello", 5);
    conn_write(&f->o.c, "world", 5);
    turn(f);
    char buf[16];
    assert_int_equal(SSL_read(f->pssl, buf, sizeof(buf)), 5);
    assert_memory_equal(buf, "world", 5);
}

/* Ten small records arrive in one segment: OpenSSL's read-ahead takes them all in one recv() and
 * SSL_read hands out one at a time. The socket never becomes readable again, yet all ten are
 * read (without the pending check only the first would be, until the peer sent more). */
static void test_pending_records_read_without_socket(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(conn_start_tls(&f->o.c, f->sctx, 1, 0, NULL, 0), 0);
    handshake(f);
    /* Records built by the peer into a memory BIO, then sent in a single send(). */
    BIO *mem = BIO_new(BIO_s_mem());
    SSL_set0_wbio(f->pssl, mem);
    uint8_t rec[1000];
    for (int i = 0; i < 10; i++) {
        memset(rec, 'a' + i, sizeof(rec));
        assert_int_equal(SSL_write(f->pssl, rec, sizeof(rec)), (int)sizeof(rec));
    }
    char *wire;
    long n = BIO_get_mem_data(mem, &wire);
    assert_true(n > 10000);
    assert_int_equal(send(f->peer, wire, (size_t)n, 0), n);
    for (int i = 0; i < 4; i++)
        turn(f);
    assert_int_equal(f->o.n_got, 10000);
    for (int i = 0; i < 10; i++)
        assert_int_equal(f->o.got[i * 1000 + 999], 'a' + i);
    assert_true(f->o.reads >= 10); /* one record per read: they really were pending */
}

/* 4 MB queued at once: the socket takes part, the rest waits for EV_WRITE and is retried from
 * the output buffer (which moves as it drains) until the peer has read every byte in order. */
static void test_partial_writes_retried(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(conn_start_tls(&f->o.c, f->sctx, 1, 0, NULL, 0), 0);
    handshake(f);
    size_t total = 4 * 1024 * 1024;
    uint8_t *big = malloc(total), *got = malloc(total);
    for (size_t i = 0; i < total; i++)
        big[i] = (uint8_t)(i * 7 % 251);
    conn_write(&f->o.c, big, total);
    size_t seen = 0;
    for (int i = 0; i < 100000 && seen < total; i++) {
        event_base_loop(f->base, EVLOOP_NONBLOCK);
        int r = SSL_read(f->pssl, got + seen, (int)(total - seen));
        if (r > 0)
            seen += (size_t)r;
        if (i == 0)
            assert_true(conn_unsent(&f->o.c) > 0); /* the socket refused some */
    }
    assert_int_equal(seen, total);
    assert_memory_equal(got, big, total);
    assert_int_equal(conn_unsent(&f->o.c), 0);
    assert_int_equal(f->o.errors, 0);
    free(big);
    free(got);
}

/* Direct TLS: the ClientHello was read as plaintext input first; it is handed to OpenSSL. */
static void test_direct_hello_handed_over(void **state)
{
    struct fixture *f = *state;
    f->o.consume = 0;
    assert_int_equal(SSL_do_handshake(f->pssl), -1); /* sends the ClientHello */
    turn(f);
    assert_true(conn_avail(&f->o.c) > 5);
    assert_int_equal(conn_data(&f->o.c)[0], 0x16);
    f->o.consume = 1;
    assert_int_equal(conn_start_tls(&f->o.c, f->sctx, 1, 0, NULL, conn_avail(&f->o.c)), 0);
    assert_int_equal(conn_avail(&f->o.c), 0);
    handshake(f);
    assert_int_equal(SSL_write(f->pssl, "x", 1), 1);
    turn(f);
    assert_int_equal(f->o.n_got, 1);
}

/* Plaintext where a ClientHello should be: CONN_ERROR, and the reason is OpenSSL's. */
static void test_handshake_failure_reported(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(conn_start_tls(&f->o.c, f->sctx, 1, 0, NULL, 0), 0);
    static const char junk[] = "GET / HTTP/1.0\r\n\r\n";
    assert_int_equal(send(f->peer, junk, sizeof(junk) - 1, 0), (ssize_t)sizeof(junk) - 1);
    turn(f);
    assert_int_equal(f->o.errors, 1);
    assert_int_equal(f->o.tls_done, 0);
    assert_int_equal(f->o.n_got, 0);
    assert_non_null(strstr(conn_strerror(&f->o.c), "TLS handshake failed"));
}

/* A TLS 1.3 KeyUpdate from the peer mid-stream (it asks for ours too): data goes on both ways. */
static void test_key_update(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(conn_start_tls(&f->o.c, f->sctx, 1, 0, NULL, 0), 0);
    handshake(f);
    assert_int_equal(SSL_key_update(f->pssl, SSL_KEY_UPDATE_REQUESTED), 1);
    assert_int_equal(SSL_write(f->pssl, "abc", 3), 3);
    turn(f);
    assert_int_equal(f->o.n_got, 3);
    conn_write(&f->o.c, "def", 3);
    turn(f);
    char buf[8];
    int n = -1;
    for (int i = 0; i < 10 && n <= 0; i++) {
        n = SSL_read(f->pssl, buf, sizeof(buf));
        turn(f);
    }
    assert_int_equal(n, 3);
    assert_memory_equal(buf, "def", 3);
    assert_int_equal(f->o.errors, 0);
}

/* EOF after TLS: close_notify or a bare close both read as CONN_EOF. */
static void test_eof(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(conn_start_tls(&f->o.c, f->sctx, 1, 0, NULL, 0), 0);
    handshake(f);
    shutdown(f->peer, SHUT_WR);
    turn(f);
    assert_int_equal(f->o.eofs, 1);
    assert_int_equal(f->o.errors, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_plain_answer_then_tls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pending_records_read_without_socket, setup, teardown),
        cmocka_unit_test_setup_teardown(test_partial_writes_retried, setup, teardown),
        cmocka_unit_test_setup_teardown(test_direct_hello_handed_over, setup, teardown),
        cmocka_unit_test_setup_teardown(test_handshake_failure_reported, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_update, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eof, setup, teardown),
    };
    return cmocka_run_group_tests(tests, make_cert, remove_cert);
}
