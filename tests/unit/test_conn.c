/* The connection layer (core/conn.c) on socket pairs: buffers lent and given back, one send
 * per turn, backpressure and on_drain, whole large messages, EOF, kicks, direct forwarding. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include <event2/event.h>

#include "core/conn.h"
#include "proto/frame.h"

struct owner {
    struct conn c;
    int reads, drains, eofs, errors;
    size_t consume; /* bytes to consume per on_read (0: none) */
};

static void on_read(void *arg)
{
    struct owner *o = arg;
    o->reads++;
    size_t n = conn_avail(&o->c);
    if (o->consume && n)
        conn_consume(&o->c, n < o->consume ? n : o->consume);
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
}

static const struct conn_cbs cbs = {on_read, on_drain, on_event};

static void nonblocking(int fd)
{
    assert_int_equal(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
}

struct fixture {
    struct event_base *base;
    struct conn_loop loop;
    struct owner o;
    int peer; /* the other end, blocking */
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    f->base = event_base_new();
    assert_int_equal(conn_loop_init(&f->loop, f->base, NULL), 0);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    nonblocking(sv[0]); /* as accept4(SOCK_NONBLOCK) leaves it */
    conn_accept(&f->o.c, &f->loop, sv[0], &cbs, &f->o);
    f->peer = sv[1];
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    conn_close(&f->o.c);
    close(f->peer);
    conn_loop_free(&f->loop);
    event_base_free(f->base);
    free(f);
    return 0;
}

static void turn(struct fixture *f)
{
    for (int i = 0; i < 8; i++)
        event_base_loop(f->base, EVLOOP_NONBLOCK);
}

static size_t peer_read_all(struct fixture *f, uint8_t *buf, size_t cap)
{
    size_t got = 0;
    for (;;) {
        ssize_t n = recv(f->peer, buf + got, cap - got, MSG_DONTWAIT);
        if (n <= 0)
            return got;
        got += (size_t)n;
    }
}

/* Bytes queued outside a callback go out at the loop's next turn, and the buffer comes back. */
static void test_write_then_buffer_returned(void **state)
{
    struct fixture *f = *state;
    conn_write(&f->o.c, "hello", 5);
    conn_write(&f->o.c, " world", 6);
    assert_int_equal(conn_unsent(&f->o.c), 11);
    turn(f);
    uint8_t buf[64];
    assert_int_equal(peer_read_all(f, buf, sizeof(buf)), 11);
    assert_memory_equal(buf, "hello world", 11);
    assert_null(f->o.c.out.data); /* an idle connection holds no buffer */
}

/* What arrives is read into one contiguous run; consumed, the buffer goes back. */
static void test_read_and_release(void **state)
{
    struct fixture *f = *state;
    uint8_t msg[100];
    memset(msg, 'x', sizeof(msg));
    assert_int_equal(send(f->peer, msg, sizeof(msg), 0), (ssize_t)sizeof(msg));
    turn(f);
    assert_true(f->o.reads >= 1);
    assert_int_equal(conn_avail(&f->o.c), 100);
    assert_memory_equal(conn_data(&f->o.c), msg, 100);
    conn_consume(&f->o.c, 100);
    assert_null(f->o.c.in.data);
}

/* Nothing more is read past a block until the owner consumes; then reading resumes. */
static void test_input_bounded_then_resumed(void **state)
{
    struct fixture *f = *state;
    size_t total = 4 * CONN_BLOCK;
    uint8_t *big = malloc(total);
    memset(big, 'y', total);
    assert_int_equal(send(f->peer, big, total, 0), (ssize_t)total);
    turn(f);
    assert_true(conn_avail(&f->o.c) <= CONN_BLOCK);
    size_t seen = 0;
    for (int i = 0; i < 64 && seen < total; i++) {
        seen += conn_avail(&f->o.c);
        conn_consume(&f->o.c, conn_avail(&f->o.c));
        turn(f);
    }
    assert_int_equal(seen, total);
    free(big);
}

/* A message larger than a block is let grow whole, and stays contiguous. */
static void test_want_whole_large_message(void **state)
{
    struct fixture *f = *state;
    size_t total = 100 * 1024;
    uint8_t *big = malloc(total);
    for (size_t i = 0; i < total; i++)
        big[i] = (uint8_t)(i * 7);
    assert_int_equal(send(f->peer, big, total, 0), (ssize_t)total);
    for (int i = 0; i < 64 && !conn_has(&f->o.c, total); i++)
        turn(f);
    assert_true(conn_avail(&f->o.c) >= total);
    assert_memory_equal(conn_data(&f->o.c), big, total);
    conn_consume(&f->o.c, total);
    assert_null(f->o.c.in.data);
    free(big);
}

/* A peer that does not read: bytes stay queued (the socket refused them), then on_drain once
 * it reads. */
static void test_backpressure_and_drain(void **state)
{
    struct fixture *f = *state;
    uint8_t chunk[16384];
    memset(chunk, 'z', sizeof(chunk));
    for (int i = 0; i < 256 && !f->o.c.refused; i++) {
        conn_write(&f->o.c, chunk, sizeof(chunk));
        turn(f);
    }
    assert_true(f->o.c.refused);
    assert_true(conn_unsent(&f->o.c) > 0);
    size_t queued = conn_unsent(&f->o.c);
    uint8_t *sink = malloc(8 << 20);
    for (int i = 0; i < 200 && (conn_unsent(&f->o.c) > 0 || f->o.drains == 0); i++) {
        peer_read_all(f, sink, 8 << 20);
        turn(f);
    }
    assert_true(queued > 0);
    assert_int_equal(conn_unsent(&f->o.c), 0);
    assert_true(f->o.drains >= 1);
    free(sink);
}

static void test_eof(void **state)
{
    struct fixture *f = *state;
    shutdown(f->peer, SHUT_WR);
    turn(f);
    assert_int_equal(f->o.eofs, 1);
    conn_write(&f->o.c, "x", 1); /* dropped, not queued, on a dead connection */
    assert_int_equal(conn_unsent(&f->o.c), 0);
}

/* conn_kick: on_read runs from the loop with no new byte, never inside the call. */
static void test_kick(void **state)
{
    struct fixture *f = *state;
    conn_kick(&f->o.c);
    assert_int_equal(f->o.reads, 0);
    turn(f);
    assert_int_equal(f->o.reads, 1);
}

/* conn_forward: a large run goes straight to the peer, a small one with the turn's flush. */
static void test_forward(void **state)
{
    struct fixture *f = *state;
    struct owner o2 = {0};
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    nonblocking(sv[0]); /* as accept4(SOCK_NONBLOCK) leaves it */
    conn_accept(&o2.c, &f->loop, sv[0], &cbs, &o2);
    size_t total = 3 * CONN_BLOCK;
    uint8_t *big = malloc(total);
    for (size_t i = 0; i < total; i++)
        big[i] = (uint8_t)(i * 13);
    assert_int_equal(send(f->peer, big, total, 0), (ssize_t)total);
    uint8_t *got = malloc(total + 16);
    size_t have = 0;
    for (int i = 0; i < 64 && have < total; i++) {
        turn(f);
        size_t n = conn_avail(&f->o.c);
        if (n)
            conn_forward(&f->o.c, &o2.c, n);
        turn(f);
        ssize_t r;
        while ((r = recv(sv[1], got + have, total + 16 - have, MSG_DONTWAIT)) > 0)
            have += (size_t)r;
    }
    assert_int_equal(have, total);
    assert_memory_equal(got, big, total);
    conn_close(&o2.c);
    close(sv[1]);
    free(got);
    free(big);
}

static int only_query(uint8_t t)
{
    return t == 'Q';
}

/* Framing (proto/frame.c) over a conn's input: a header in pieces waits, lengths below 4,
 * above the limit or negative are refused, a type outside the rules is refused, and a whole
 * message is waited for without being consumed. */
static void test_frame_next(void **state)
{
    struct fixture *f = *state;
    struct conn *in = &f->o.c;
    const struct frame_rules rules = {100, only_query};
    struct msg_hdr h;
    assert_int_equal(send(f->peer, "Q\0\0", 3, 0), 3);
    turn(f);
    assert_int_equal(frame_next(in, &rules, &h), FRAME_MORE);
    assert_int_equal(send(f->peer, "\0\x0aSELE", 6, 0), 6);
    turn(f);
    assert_int_equal(frame_next(in, &rules, &h), FRAME_OK);
    assert_int_equal(h.type, 'Q');
    assert_int_equal(h.len, 10);
    assert_false(frame_whole(in, &h)); /* 9 of 11 bytes */
    assert_int_equal(send(f->peer, "CT", 2, 0), 2);
    turn(f);
    assert_true(frame_whole(in, &h));
    assert_memory_equal(frame_data(in) + PROTO_HDR_LEN, "SELECT", 6);
    conn_consume(in, 11);

    static const struct {
        const char *bytes;
        enum frame_result want;
    } bad[] = {
        {"Q\0\0\0\x03", FRAME_BAD_LENGTH},       /* shorter than its own length field */
        {"Q\0\0\0\x65", FRAME_BAD_LENGTH},       /* 101 > 100 */
        {"Q\xff\xff\xff\xfc", FRAME_BAD_LENGTH}, /* negative */
        {"P\0\0\0\x04", FRAME_BAD_TYPE},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(send(f->peer, bad[i].bytes, 5, 0), 5);
        turn(f);
        assert_int_equal(frame_next(in, &rules, &h), bad[i].want);
        conn_consume(in, 5);
    }
    const struct frame_rules any = {100, NULL};
    assert_int_equal(send(f->peer, "P\0\0\0\x04", 5, 0), 5);
    turn(f);
    assert_int_equal(frame_next(in, &any, &h), FRAME_OK);
    conn_consume(in, 5);
}

/* After a burst, the buffers nobody borrows again go back to the kernel, down to a reserve;
 * those in use between two trims are kept. */
static void test_trim_after_burst(void **state)
{
    struct fixture *f = *state;
    enum { N = 40 };
    static struct owner o[N]; /* static: still valid in teardown if an assertion fails */
    static int peers[N];
    for (int i = 0; i < N; i++) {
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    nonblocking(sv[0]); /* as accept4(SOCK_NONBLOCK) leaves it */
        memset(&o[i], 0, sizeof(o[i]));
        conn_accept(&o[i].c, &f->loop, sv[0], &cbs, &o[i]);
        peers[i] = sv[1];
        conn_write(&o[i].c, "x", 1); /* each borrows a buffer */
    }
    turn(f); /* all sent: every buffer is free again */
    assert_int_equal(f->loop.n_free, N);
    conn_loop_trim(&f->loop); /* they were all borrowed in this period: kept */
    assert_int_equal(f->loop.n_free, N);
    conn_write(&o[0].c, "y", 1); /* one borrowed and given back in the next period */
    turn(f);
    conn_loop_trim(&f->loop);
    assert_int_equal(f->loop.n_free, 17); /* RESERVE_BLOCKS and the one borrowed */
    conn_loop_trim(&f->loop);
    assert_int_equal(f->loop.n_free, 16);
    conn_loop_trim(&f->loop);
    assert_int_equal(f->loop.n_free, 16); /* the reserve stays */
    for (int i = 0; i < N; i++) {
        conn_close(&o[i].c);
        close(peers[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_write_then_buffer_returned, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_and_release, setup, teardown),
        cmocka_unit_test_setup_teardown(test_input_bounded_then_resumed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_want_whole_large_message, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backpressure_and_drain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eof, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kick, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forward, setup, teardown),
        cmocka_unit_test_setup_teardown(test_frame_next, setup, teardown),
        cmocka_unit_test_setup_teardown(test_trim_after_burst, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
