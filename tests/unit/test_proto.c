/* Unit tests for the v3 codec: builders round-trip, message types, lengths, startup packets. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/buf.h"
#include "proto/proto.h"

#define MAX_LEN (1u << 20)

/* b must hold exactly one message of type t: check its header and open a reader on its body. */
static void open_msg(const struct pbuf *b, uint8_t t, struct msg_reader *r)
{
    struct msg_hdr h;
    assert_false(b->failed);
    assert_int_equal(proto_parse_header(b->data, b->len, MAX_LEN, &h), PROTO_OK);
    assert_int_equal(h.type, t);
    assert_int_equal(b->len, (size_t)h.len + 1);
    mr_init(r, b->data + PROTO_HDR_LEN, h.len - 4);
}

/* The body was read whole and nothing went wrong. */
static void assert_done(const struct msg_reader *r)
{
    assert_false(r->bad);
    assert_int_equal(mr_left(r), 0);
}

/* A raw startup packet: length word, code, then body bytes as given. */
static void raw_startup(struct pbuf *b, uint32_t code, const void *body, size_t n)
{
    pbuf_reset(b);
    size_t off = proto_begin_msg(b, 0);
    pbuf_put_u32(b, code);
    pbuf_put(b, body, n);
    proto_end_msg(b, off);
}

/* Run a whole packet through proto_startup_len and proto_parse_startup. */
static int parse_startup(const struct pbuf *b, struct startup_pkt *sp, const char **err)
{
    uint32_t len = 0;
    *err = NULL;
    int rc = proto_startup_len(b->data, b->len, &len, err);
    if (rc != PROTO_OK)
        return rc;
    assert_int_equal(len, b->len);
    return proto_parse_startup(b->data, len, sp, err);
}

/* ---- builders, round trip ---- */

static void test_build_error(void **state)
{
    struct pbuf b;
    struct msg_reader r;
    struct pg_error e;
    pbuf_init(&b);

    proto_build_error(&b, "FATAL", SQLSTATE_PROTOCOL_VIOLATION, "bad thing", "more about it");
    open_msg(&b, BE_ERROR, &r);
    assert_int_equal(mr_u8(&r), 'S');
    assert_string_equal(mr_str(&r), "FATAL");
    assert_int_equal(mr_u8(&r), 'V');
    assert_string_equal(mr_str(&r), "FATAL");
    assert_int_equal(mr_u8(&r), 'C');
    assert_string_equal(mr_str(&r), "08P01");
    assert_int_equal(mr_u8(&r), 'M');
    assert_string_equal(mr_str(&r), "bad thing");
    assert_int_equal(mr_u8(&r), 'D');
    assert_string_equal(mr_str(&r), "more about it");
    assert_int_equal(mr_u8(&r), 0);
    assert_done(&r);

    assert_int_equal(proto_parse_error(r.p, r.len, &e), PROTO_OK);
    assert_string_equal(e.severity, "FATAL");
    assert_string_equal(e.sqlstate, "08P01");
    assert_string_equal(e.message, "bad thing");

    /* No detail: no D field. */
    pbuf_reset(&b);
    proto_build_error(&b, "ERROR", SQLSTATE_QUERY_CANCELED, "canceled", NULL);
    open_msg(&b, BE_ERROR, &r);
    assert_int_equal(mr_u8(&r), 'S');
    assert_string_equal(mr_str(&r), "ERROR");
    assert_int_equal(mr_u8(&r), 'V');
    assert_string_equal(mr_str(&r), "ERROR");
    assert_int_equal(mr_u8(&r), 'C');
    assert_string_equal(mr_str(&r), "57014");
    assert_int_equal(mr_u8(&r), 'M');
    assert_string_equal(mr_str(&r), "canceled");
    assert_int_equal(mr_u8(&r), 0);
    assert_done(&r);
    pbuf_free(&b);
}

static void test_build_notice(void **state)
{
    struct pbuf b;
    struct msg_reader r;
    struct pg_error e;
    pbuf_init(&b);

    proto_build_notice(&b, "01000", "heads up");
    open_msg(&b, BE_NOTICE, &r);
    assert_int_equal(mr_u8(&r), 'S');
    assert_string_equal(mr_str(&r), "NOTICE");
    assert_int_equal(mr_u8(&r), 'V');
    assert_string_equal(mr_str(&r), "NOTICE");
    assert_int_equal(mr_u8(&r), 'C');
    assert_string_equal(mr_str(&r), "01000");
    assert_int_equal(mr_u8(&r), 'M');
    assert_string_equal(mr_str(&r), "heads up");
    assert_int_equal(mr_u8(&r), 0);
    assert_done(&r);

    assert_int_equal(proto_parse_error(r.p, r.len, &e), PROTO_OK);
    assert_string_equal(e.severity, "NOTICE");
    assert_string_equal(e.sqlstate, "01000");
    assert_string_equal(e.message, "heads up");
    pbuf_free(&b);
}

static void test_build_auth(void **state)
{
    struct pbuf b;
    struct msg_reader r;
    pbuf_init(&b);

    proto_build_auth(&b, AUTH_REQ_OK, NULL, 0);
    assert_int_equal(b.len, 9);
    open_msg(&b, BE_AUTH, &r);
    assert_int_equal(mr_u32(&r), AUTH_REQ_OK);
    assert_done(&r);

    const uint8_t salt[4] = {0x01, 0x00, 0xfe, 0x7f};
    pbuf_reset(&b);
    proto_build_auth(&b, AUTH_REQ_MD5, salt, sizeof(salt));
    open_msg(&b, BE_AUTH, &r);
    assert_int_equal(mr_u32(&r), AUTH_REQ_MD5);
    const uint8_t *s = mr_bytes(&r, 4);
    assert_non_null(s);
    assert_memory_equal(s, salt, 4);
    assert_done(&r);

    pbuf_reset(&b);
    proto_build_auth_sasl(&b, 0);
    open_msg(&b, BE_AUTH, &r);
    assert_int_equal(mr_u32(&r), AUTH_REQ_SASL);
    assert_string_equal(mr_str(&r), "SCRAM-SHA-256");
    assert_string_equal(mr_str(&r), ""); /* end of the mechanism list */
    assert_done(&r);

    /* Over TLS: -PLUS first, as PostgreSQL lists them. */
    pbuf_reset(&b);
    proto_build_auth_sasl(&b, 1);
    open_msg(&b, BE_AUTH, &r);
    assert_int_equal(mr_u32(&r), AUTH_REQ_SASL);
    assert_string_equal(mr_str(&r), "SCRAM-SHA-256-PLUS");
    assert_string_equal(mr_str(&r), "SCRAM-SHA-256");
    assert_string_equal(mr_str(&r), "");
    assert_done(&r);

    const char *final = "v=abc";
    pbuf_reset(&b);
    proto_build_auth(&b, AUTH_REQ_SASL_FINAL, final, strlen(final));
    open_msg(&b, BE_AUTH, &r);
    assert_int_equal(mr_u32(&r), AUTH_REQ_SASL_FINAL);
    assert_memory_equal(mr_bytes(&r, 5), final, 5);
    assert_done(&r);
    pbuf_free(&b);
}

static void test_build_session_messages(void **state)
{
    struct pbuf b;
    struct msg_reader r;
    pbuf_init(&b);

    proto_build_param_status(&b, "server_version", "17.2");
    open_msg(&b, BE_PARAM_STATUS, &r);
    assert_string_equal(mr_str(&r), "server_version");
    assert_string_equal(mr_str(&r), "17.2");
    assert_done(&r);

    pbuf_reset(&b);
    proto_build_key_data(&b, 0x12345678, 0xdeadbeef);
    open_msg(&b, BE_KEY_DATA, &r);
    assert_int_equal(mr_u32(&r), 0x12345678);
    assert_int_equal(mr_u32(&r), 0xdeadbeef);
    assert_done(&r);

    const char statuses[] = {'I', 'T', 'E'};
    for (size_t i = 0; i < sizeof(statuses); i++) {
        pbuf_reset(&b);
        proto_build_ready(&b, statuses[i]);
        assert_int_equal(b.len, 6);
        open_msg(&b, BE_READY, &r);
        assert_int_equal(mr_u8(&r), statuses[i]);
        assert_done(&r);
    }

    pbuf_reset(&b);
    proto_build_query(&b, "select 1");
    open_msg(&b, FE_QUERY, &r);
    assert_string_equal(mr_str(&r), "select 1");
    assert_done(&r);

    pbuf_reset(&b);
    proto_build_terminate(&b);
    assert_int_equal(b.len, 5);
    open_msg(&b, FE_TERMINATE, &r);
    assert_done(&r);

    pbuf_reset(&b);
    proto_build_command_complete(&b, "SELECT 1");
    open_msg(&b, BE_COMMAND_COMPLETE, &r);
    assert_string_equal(mr_str(&r), "SELECT 1");
    assert_done(&r);

    pbuf_reset(&b);
    proto_build_empty_query(&b);
    assert_int_equal(b.len, 5);
    open_msg(&b, BE_EMPTY_QUERY, &r);
    assert_done(&r);
    pbuf_free(&b);
}

/* auth_query's statement: Parse, Bind (the user name as a text parameter, a NULL as -1),
 * Execute, Sync, each a whole message in one buffer. */
static void test_build_query_params(void **state)
{
    struct pbuf b;
    struct msg_reader r;
    struct msg_hdr h;
    pbuf_init(&b);
    const char *vals[2] = {"it's me", NULL};
    proto_build_query_params(&b, "select $1, $2", 2, vals);
    assert_false(b.failed);
    size_t off = 0;
    assert_int_equal(proto_parse_header(b.data, b.len, MAX_LEN, &h), PROTO_OK);
    assert_int_equal(h.type, FE_PARSE);
    mr_init(&r, b.data + PROTO_HDR_LEN, h.len - 4);
    assert_string_equal(mr_str(&r), "");
    assert_string_equal(mr_str(&r), "select $1, $2");
    assert_int_equal(mr_u16(&r), 0);
    assert_done(&r);
    off += h.len + 1;
    assert_int_equal(proto_parse_header(b.data + off, b.len - off, MAX_LEN, &h), PROTO_OK);
    assert_int_equal(h.type, FE_BIND);
    mr_init(&r, b.data + off + PROTO_HDR_LEN, h.len - 4);
    assert_string_equal(mr_str(&r), "");
    assert_string_equal(mr_str(&r), "");
    assert_int_equal(mr_u16(&r), 0);
    assert_int_equal(mr_u16(&r), 2);
    assert_int_equal(mr_u32(&r), 7);
    assert_memory_equal(mr_bytes(&r, 7), "it's me", 7);
    assert_int_equal(mr_u32(&r), 0xffffffffu);
    assert_int_equal(mr_u16(&r), 0);
    assert_done(&r);
    off += h.len + 1;
    assert_int_equal(proto_parse_header(b.data + off, b.len - off, MAX_LEN, &h), PROTO_OK);
    assert_int_equal(h.type, FE_EXECUTE);
    mr_init(&r, b.data + off + PROTO_HDR_LEN, h.len - 4);
    assert_string_equal(mr_str(&r), "");
    assert_int_equal(mr_u32(&r), 0);
    assert_done(&r);
    off += h.len + 1;
    assert_int_equal(proto_parse_header(b.data + off, b.len - off, MAX_LEN, &h), PROTO_OK);
    assert_int_equal(h.type, FE_SYNC);
    assert_int_equal(h.len, 4);
    assert_int_equal(off + 5, b.len);
    pbuf_free(&b);
}

static void test_build_password_and_sasl(void **state)
{
    struct pbuf b;
    struct msg_reader r;
    pbuf_init(&b);

    proto_build_password(&b, "md5abcdef");
    open_msg(&b, FE_PASSWORD, &r);
    assert_string_equal(mr_str(&r), "md5abcdef");
    assert_done(&r);

    /* SASL data is bytes, not a string: a NUL inside survives. */
    const uint8_t first[] = {'n', ',', ',', 0, 'r', '=', 0xff};
    pbuf_reset(&b);
    proto_build_sasl_initial(&b, "SCRAM-SHA-256", first, sizeof(first));
    open_msg(&b, FE_PASSWORD, &r);
    assert_string_equal(mr_str(&r), "SCRAM-SHA-256");
    assert_int_equal(mr_u32(&r), sizeof(first));
    const uint8_t *d = mr_bytes(&r, sizeof(first));
    assert_non_null(d);
    assert_memory_equal(d, first, sizeof(first));
    assert_done(&r);

    const char *fin = "c=biws,r=abc,p=xyz";
    pbuf_reset(&b);
    proto_build_sasl_response(&b, fin, strlen(fin));
    open_msg(&b, FE_PASSWORD, &r);
    assert_int_equal(mr_left(&r), strlen(fin));
    assert_memory_equal(mr_bytes(&r, strlen(fin)), fin, strlen(fin));
    assert_done(&r);
    pbuf_free(&b);
}

static void test_build_cancel(void **state)
{
    struct pbuf b;
    struct startup_pkt sp;
    struct msg_reader r;
    const char *err;
    pbuf_init(&b);

    proto_build_cancel(&b, 4242, 0x89abcdef);
    assert_int_equal(b.len, 16);
    mr_init(&r, b.data, b.len);
    assert_int_equal(mr_u32(&r), 16);
    assert_int_equal(mr_u32(&r), 80877102);
    assert_int_equal(mr_u32(&r), 4242);
    assert_int_equal(mr_u32(&r), 0x89abcdef);
    assert_done(&r);

    assert_int_equal(parse_startup(&b, &sp, &err), PROTO_OK);
    assert_int_equal(sp.code, PROTO_CANCEL_CODE);
    assert_int_equal(sp.cancel_pid, 4242);
    assert_int_equal(sp.cancel_key, 0x89abcdef);
    assert_int_equal(sp.n_params, 0);
    pbuf_free(&b);
}

static void test_build_negotiate_version(void **state)
{
    struct pbuf b;
    struct msg_reader r;
    const char *opts[] = {"_pq_.a", "_pq_.compression"};
    pbuf_init(&b);

    proto_build_negotiate_version(&b, 0, 2, opts);
    open_msg(&b, BE_NEGOTIATE_VERSION, &r);
    assert_int_equal(mr_u32(&r), 0);
    assert_int_equal(mr_u32(&r), 2);
    assert_string_equal(mr_str(&r), "_pq_.a");
    assert_string_equal(mr_str(&r), "_pq_.compression");
    assert_done(&r);

    pbuf_reset(&b);
    proto_build_negotiate_version(&b, 0, 0, NULL);
    open_msg(&b, BE_NEGOTIATE_VERSION, &r);
    assert_int_equal(mr_u32(&r), 0);
    assert_int_equal(mr_u32(&r), 0);
    assert_done(&r);
    pbuf_free(&b);
}

static void test_build_startup(void **state)
{
    struct pbuf b;
    struct startup_pkt sp;
    const char *err;
    const char *const names[] = {"user", "database", "application_name"};
    const char *const values[] = {"alice", "app", ""};
    pbuf_init(&b);

    proto_build_startup(&b, 3, names, values);
    assert_int_equal(b.data[b.len - 1], 0);
    assert_int_equal(parse_startup(&b, &sp, &err), PROTO_OK);
    assert_int_equal(sp.code, PROTO_V3);
    assert_int_equal(sp.n_params, 3);
    assert_int_equal(sp.n_protocol_options, 0);
    for (int i = 0; i < 3; i++) {
        assert_string_equal(sp.names[i], names[i]);
        assert_string_equal(sp.values[i], values[i]);
    }
    assert_string_equal(startup_param(&sp, "user"), "alice");
    assert_string_equal(startup_param(&sp, "database"), "app");
    assert_string_equal(startup_param(&sp, "application_name"), "");
    assert_null(startup_param(&sp, "options"));

    /* No parameters at all: code and the terminator. */
    pbuf_reset(&b);
    proto_build_startup(&b, 0, NULL, NULL);
    assert_int_equal(b.len, 9);
    assert_int_equal(parse_startup(&b, &sp, &err), PROTO_OK);
    assert_int_equal(sp.code, PROTO_V3);
    assert_int_equal(sp.n_params, 0);
    pbuf_free(&b);
}

static void test_build_result_set(void **state)
{
    struct pbuf b;
    struct msg_reader r;
    const char *const names[] = {"name", "value"};
    const char *const row[] = {"a", NULL, ""};
    pbuf_init(&b);

    proto_build_row_desc(&b, 2, names);
    open_msg(&b, BE_ROW_DESC, &r);
    assert_int_equal(mr_u16(&r), 2);
    for (int i = 0; i < 2; i++) {
        assert_string_equal(mr_str(&r), names[i]);
        assert_int_equal(mr_u32(&r), 0);          /* table oid */
        assert_int_equal(mr_u16(&r), 0);          /* column number */
        assert_int_equal(mr_u32(&r), 25);         /* text */
        assert_int_equal(mr_u16(&r), 0xffff);     /* typlen -1 */
        assert_int_equal(mr_u32(&r), 0xffffffff); /* typmod -1 */
        assert_int_equal(mr_u16(&r), 0);          /* text format */
    }
    assert_done(&r);

    pbuf_reset(&b);
    proto_build_data_row(&b, 3, row);
    open_msg(&b, BE_DATA_ROW, &r);
    assert_int_equal(mr_u16(&r), 3);
    assert_int_equal(mr_u32(&r), 1);
    assert_memory_equal(mr_bytes(&r, 1), "a", 1);
    assert_int_equal(mr_u32(&r), 0xffffffff); /* NULL: -1 and no bytes */
    assert_int_equal(mr_u32(&r), 0);          /* empty string: 0 and no bytes */
    assert_done(&r);
    pbuf_free(&b);
}

/* Builders append: several messages in one buffer parse one after the other. */
static void test_build_appends(void **state)
{
    struct pbuf b;
    struct msg_hdr h;
    size_t off = 0;
    pbuf_init(&b);

    proto_build_command_complete(&b, "SET");
    proto_build_ready(&b, 'I');
    proto_build_empty_query(&b);
    const uint8_t types[] = {BE_COMMAND_COMPLETE, BE_READY, BE_EMPTY_QUERY};
    for (size_t i = 0; i < sizeof(types); i++) {
        assert_int_equal(proto_parse_header(b.data + off, b.len - off, MAX_LEN, &h), PROTO_OK);
        assert_int_equal(h.type, types[i]);
        off += 1 + h.len;
    }
    assert_int_equal(off, b.len);
    pbuf_free(&b);
}

/* ---- message types ---- */

static void test_fe_types(void **state)
{
    const uint8_t known[] = {FE_BIND,    FE_CLOSE,    FE_COPY_DATA,     FE_COPY_DONE, FE_COPY_FAIL,
                             FE_DESCRIBE, FE_EXECUTE, FE_FLUSH,         FE_FUNCTION_CALL,
                             FE_PARSE,   FE_PASSWORD, FE_QUERY,         FE_SYNC,      FE_TERMINATE};
    const uint8_t unknown[] = {0, 'A', 'R', 'Z', 'T', 'K', 'x', 'q', '1', 0x7f, 0xff};
    for (size_t i = 0; i < sizeof(known); i++)
        assert_true(proto_fe_type_known(known[i]));
    for (size_t i = 0; i < sizeof(unknown); i++)
        assert_false(proto_fe_type_known(unknown[i]));
}

static void test_be_types(void **state)
{
    const uint8_t known[] = {
        BE_AUTH,        BE_KEY_DATA,       BE_BIND_COMPLETE,   BE_CLOSE_COMPLETE, BE_COMMAND_COMPLETE,
        BE_COPY_DATA,   BE_COPY_DONE,      BE_COPY_IN,         BE_COPY_OUT,       BE_COPY_BOTH,
        BE_DATA_ROW,    BE_EMPTY_QUERY,    BE_ERROR,           BE_FUNCTION_RESULT,
        BE_NEGOTIATE_VERSION, BE_NO_DATA,  BE_NOTICE,          BE_NOTIFY,         BE_PARAM_DESC,
        BE_PARAM_STATUS, BE_PARSE_COMPLETE, BE_PORTAL_SUSPENDED, BE_READY,       BE_ROW_DESC,
    };
    const uint8_t unknown[] = {0, 'Q', 'X', 'P', 'p', 'B', 'F', 'x', '4', 0x7f, 0xff};
    assert_int_equal(sizeof(known), 24);
    for (size_t i = 0; i < sizeof(known); i++)
        assert_true(proto_be_type_known(known[i]));
    for (size_t i = 0; i < sizeof(unknown); i++)
        assert_false(proto_be_type_known(unknown[i]));
}

/* ---- lengths ---- */

static void put_hdr(uint8_t *p, uint8_t t, uint32_t len)
{
    p[0] = t;
    p[1] = (uint8_t)(len >> 24);
    p[2] = (uint8_t)(len >> 16);
    p[3] = (uint8_t)(len >> 8);
    p[4] = (uint8_t)len;
}

static void test_header_lengths(void **state)
{
    uint8_t p[PROTO_HDR_LEN];
    struct msg_hdr h;
    const uint32_t max = 8192;

    put_hdr(p, 'Q', 10);
    for (size_t avail = 0; avail < PROTO_HDR_LEN; avail++)
        assert_int_equal(proto_parse_header(p, avail, max, &h), PROTO_MORE);
    assert_int_equal(proto_parse_header(p, PROTO_HDR_LEN, max, &h), PROTO_OK);
    assert_int_equal(h.type, 'Q');
    assert_int_equal(h.len, 10);

    for (uint32_t len = 0; len < 4; len++) {
        put_hdr(p, 'Q', len);
        assert_int_equal(proto_parse_header(p, sizeof(p), max, &h), PROTO_BAD);
    }
    put_hdr(p, 'S', 4); /* the smallest: an empty body */
    assert_int_equal(proto_parse_header(p, sizeof(p), max, &h), PROTO_OK);
    assert_int_equal(h.len, 4);

    /* Negative int32 lengths. */
    put_hdr(p, 'Q', 0x80000000u);
    assert_int_equal(proto_parse_header(p, sizeof(p), max, &h), PROTO_BAD);
    put_hdr(p, 'Q', 0xffffffffu);
    assert_int_equal(proto_parse_header(p, sizeof(p), max, &h), PROTO_BAD);

    put_hdr(p, 'Q', max + 1);
    assert_int_equal(proto_parse_header(p, sizeof(p), max, &h), PROTO_BAD);
    put_hdr(p, 'Q', max);
    assert_int_equal(proto_parse_header(p, sizeof(p), max, &h), PROTO_OK);
    assert_int_equal(h.len, max);
}

static void test_startup_lengths(void **state)
{
    uint8_t p[4];
    uint32_t len;
    const char *err;
    const uint32_t bad[] = {0, 4, 7, PROTO_STARTUP_MAX + 1, 0x80000000u, 0xffffffffu};
    const uint32_t good[] = {8, 16, PROTO_STARTUP_MAX};

    for (size_t avail = 0; avail < 4; avail++)
        assert_int_equal(proto_startup_len(p, avail, &len, &err), PROTO_MORE);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        p[0] = (uint8_t)(bad[i] >> 24);
        p[1] = (uint8_t)(bad[i] >> 16);
        p[2] = (uint8_t)(bad[i] >> 8);
        p[3] = (uint8_t)bad[i];
        err = NULL;
        assert_int_equal(proto_startup_len(p, sizeof(p), &len, &err), PROTO_BAD);
        assert_string_equal(err, "invalid length of startup packet");
    }
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        p[0] = (uint8_t)(good[i] >> 24);
        p[1] = (uint8_t)(good[i] >> 16);
        p[2] = (uint8_t)(good[i] >> 8);
        p[3] = (uint8_t)good[i];
        len = 0;
        assert_int_equal(proto_startup_len(p, sizeof(p), &len, &err), PROTO_OK);
        assert_int_equal(len, good[i]);
    }
}

/* ---- startup packets ---- */

static void test_startup_requests(void **state)
{
    struct pbuf b;
    struct startup_pkt sp;
    const char *err;
    const uint8_t extra[8] = {0};
    pbuf_init(&b);

    raw_startup(&b, PROTO_SSL_CODE, NULL, 0);
    assert_int_equal(b.len, 8);
    assert_int_equal(parse_startup(&b, &sp, &err), PROTO_OK);
    assert_int_equal(sp.code, PROTO_SSL_CODE);
    raw_startup(&b, PROTO_SSL_CODE, extra, 4);
    assert_int_equal(parse_startup(&b, &sp, &err), PROTO_BAD);
    assert_non_null(err);

    raw_startup(&b, PROTO_GSSENC_CODE, NULL, 0);
    assert_int_equal(parse_startup(&b, &sp, &err), PROTO_OK);
    assert_int_equal(sp.code, PROTO_GSSENC_CODE);
    raw_startup(&b, PROTO_GSSENC_CODE, extra, 4);
    assert_int_equal(parse_startup(&b, &sp, &err), PROTO_BAD);

    /* CancelRequest: exactly 16 bytes. */
    const uint8_t pid_key[8] = {0, 0, 0x10, 0x92, 0xca, 0xfe, 0xba, 0xbe};
    raw_startup(&b, PROTO_CANCEL_CODE, pid_key, 8);
    assert_int_equal(parse_startup(&b, &sp, &err), PROTO_OK);
    assert_int_equal(sp.code, PROTO_CANCEL_CODE);
    assert_int_equal(sp.cancel_pid, 4242);
    assert_int_equal(sp.cancel_key, 0xcafebabe);
    const size_t other[] = {0, 4, 7, 12};
    for (size_t i = 0; i < sizeof(other) / sizeof(other[0]); i++) {
        uint8_t body[12] = {0};
        raw_startup(&b, PROTO_CANCEL_CODE, body, other[i]);
        err = NULL;
        assert_int_equal(parse_startup(&b, &sp, &err), PROTO_BAD);
        assert_string_equal(err, "invalid length of cancel request packet");
    }
    pbuf_free(&b);
}

static void test_startup_layout(void **state)
{
    struct pbuf b;
    struct startup_pkt sp;
    const char *err;
    pbuf_init(&b);

    /* v3 with parameters, written by hand. */
    static const char good[] = "user\0alice\0database\0db\0";
    raw_startup(&b, PROTO_V3, good, sizeof(good)); /* sizeof keeps the final terminator */
    assert_int_equal(parse_startup(&b, &sp, &err), PROTO_OK);
    assert_int_equal(sp.n_params, 2);
    assert_string_equal(startup_param(&sp, "user"), "alice");
    assert_string_equal(startup_param(&sp, "database"), "db");

    /* Cut inside a value: the last byte is not the terminator. */
    static const char cut[] = "user\0alice\0database\0d";
    raw_startup(&b, PROTO_V3, cut, sizeof(cut) - 1);
    err = NULL;
    assert_int_equal(parse_startup(&b, &sp, &err), PROTO_BAD);
    assert_string_equal(err, "invalid startup packet layout: expected terminator as last byte");

    /* A name with no value after it. */
    static const char noval[] = "user\0alice\0database\0";
    raw_startup(&b, PROTO_V3, noval, sizeof(noval) - 1);
    err = NULL;
    assert_int_equal(parse_startup(&b, &sp, &err), PROTO_BAD);
    assert_string_equal(err, "invalid startup packet layout: expected terminator as last byte");

    /* The terminator must be the last byte, exactly as PostgreSQL checks it. */
    static const char noterm[] = "user\0alice\0";
    raw_startup(&b, PROTO_V3, noterm, sizeof(noterm) - 1);
    err = NULL;
    assert_int_equal(parse_startup(&b, &sp, &err), PROTO_BAD);
    assert_string_equal(err, "invalid startup packet layout: expected terminator as last byte");
    static const char after[] = "user\0alice\0\0x\0";
    raw_startup(&b, PROTO_V3, after, sizeof(after) - 1);
    err = NULL;
    assert_int_equal(parse_startup(&b, &sp, &err), PROTO_BAD);

    /* _pq_. options are counted apart from the parameters. */
    static const char pq[] = "user\0alice\0_pq_.compression\0on\0_pq_.x\0y\0";
    raw_startup(&b, PROTO_VERSION(3, 2), pq, sizeof(pq));
    assert_int_equal(parse_startup(&b, &sp, &err), PROTO_OK);
    assert_int_equal(sp.code, PROTO_VERSION(3, 2));
    assert_int_equal(sp.n_params, 1);
    assert_int_equal(sp.n_protocol_options, 2);
    assert_string_equal(startup_param(&sp, "user"), "alice");
    assert_null(startup_param(&sp, "_pq_.compression"));

    /* Protocol 2.0 parses; the caller words the unsupported-version error. */
    static const char v2[] = "anything at all";
    raw_startup(&b, PROTO_VERSION(2, 0), v2, sizeof(v2) - 1);
    assert_int_equal(parse_startup(&b, &sp, &err), PROTO_OK);
    assert_int_equal(sp.code, 0x00020000);
    assert_int_equal(sp.n_params, 0);
    pbuf_free(&b);
}

static void test_startup_too_many_params(void **state)
{
    struct pbuf b;
    struct startup_pkt sp;
    const char *err;
    char names[STARTUP_MAX_PARAMS + 1][8];
    const char *np[STARTUP_MAX_PARAMS + 1], *vp[STARTUP_MAX_PARAMS + 1];
    for (int i = 0; i <= STARTUP_MAX_PARAMS; i++) {
        snprintf(names[i], sizeof(names[i]), "p%d", i);
        np[i] = names[i];
        vp[i] = "v";
    }
    pbuf_init(&b);

    proto_build_startup(&b, STARTUP_MAX_PARAMS, np, vp);
    assert_int_equal(parse_startup(&b, &sp, &err), PROTO_OK);
    assert_int_equal(sp.n_params, STARTUP_MAX_PARAMS);
    assert_string_equal(startup_param(&sp, "p63"), "v");

    pbuf_reset(&b);
    proto_build_startup(&b, STARTUP_MAX_PARAMS + 1, np, vp);
    err = NULL;
    assert_int_equal(parse_startup(&b, &sp, &err), PROTO_BAD);
    assert_string_equal(err, "too many parameters in startup packet");
    pbuf_free(&b);
}

/* ---- msg_reader and error bodies ---- */

static void test_reader_bounds(void **state)
{
    struct msg_reader r;
    const uint8_t body[] = {0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07};

    mr_init(&r, body, sizeof(body));
    assert_int_equal(mr_u8(&r), 0x01);
    assert_int_equal(mr_u16(&r), 0x0203);
    assert_int_equal(mr_u32(&r), 0x04050607);
    assert_done(&r);
    assert_int_equal(mr_u8(&r), 0);
    assert_true(r.bad);

    mr_init(&r, body, 3);
    assert_int_equal(mr_u32(&r), 0);
    assert_true(r.bad);
    /* Once bad, stays bad: the bytes that are left are not handed out. */
    assert_int_equal(mr_u8(&r), 0);
    assert_int_equal(mr_u16(&r), 0);
    assert_null(mr_bytes(&r, 1));
    assert_string_equal(mr_str(&r), "");

    mr_init(&r, body, 1);
    assert_int_equal(mr_u16(&r), 0);
    assert_true(r.bad);

    mr_init(&r, body, 2);
    assert_null(mr_bytes(&r, 3));
    assert_true(r.bad);

    mr_init(&r, body, 0);
    assert_string_equal(mr_str(&r), "");
    assert_true(r.bad);

    /* A string without its NUL. */
    static const char s[] = "ab\0cd";
    mr_init(&r, s, sizeof(s) - 1);
    assert_string_equal(mr_str(&r), "ab");
    assert_false(r.bad);
    assert_string_equal(mr_str(&r), "");
    assert_true(r.bad);
}

static void test_parse_error_fields(void **state)
{
    struct pg_error e;

    /* V (nonlocalized) wins over a localized S, whichever comes first; unknown fields pass. */
    static const char v_after[] = "SERREUR\0VERROR\0C42601\0Mboom\0Ffile.c\0";
    assert_int_equal(proto_parse_error((const uint8_t *)v_after, sizeof(v_after), &e), PROTO_OK);
    assert_string_equal(e.severity, "ERROR");
    assert_string_equal(e.sqlstate, "42601");
    assert_string_equal(e.message, "boom");
    static const char v_first[] = "VERROR\0SERREUR\0\0";
    assert_int_equal(proto_parse_error((const uint8_t *)v_first, sizeof(v_first), &e), PROTO_OK);
    assert_string_equal(e.severity, "ERROR");

    /* Only a terminator: OK and every field empty. */
    assert_int_equal(proto_parse_error((const uint8_t *)"", 1, &e), PROTO_OK);
    assert_string_equal(e.severity, "");
    assert_string_equal(e.sqlstate, "");
    assert_string_equal(e.message, "");
}

static void test_parse_error_truncated(void **state)
{
    struct pbuf b;
    struct msg_reader r;
    struct pg_error e;
    pbuf_init(&b);

    proto_build_error(&b, "FATAL", SQLSTATE_ADMIN_SHUTDOWN, "terminating", "because");
    open_msg(&b, BE_ERROR, &r);
    assert_int_equal(proto_parse_error(r.p, r.len, &e), PROTO_OK);
    /* Every proper prefix of the body is BAD: cut in a field code, a string or the end. */
    for (size_t n = 0; n < r.len; n++)
        assert_int_equal(proto_parse_error(r.p, n, &e), PROTO_BAD);
    pbuf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_build_error),
        cmocka_unit_test(test_build_notice),
        cmocka_unit_test(test_build_auth),
        cmocka_unit_test(test_build_session_messages),
        cmocka_unit_test(test_build_query_params),
        cmocka_unit_test(test_build_password_and_sasl),
        cmocka_unit_test(test_build_cancel),
        cmocka_unit_test(test_build_negotiate_version),
        cmocka_unit_test(test_build_startup),
        cmocka_unit_test(test_build_result_set),
        cmocka_unit_test(test_build_appends),
        cmocka_unit_test(test_fe_types),
        cmocka_unit_test(test_be_types),
        cmocka_unit_test(test_header_lengths),
        cmocka_unit_test(test_startup_lengths),
        cmocka_unit_test(test_startup_requests),
        cmocka_unit_test(test_startup_layout),
        cmocka_unit_test(test_startup_too_many_params),
        cmocka_unit_test(test_reader_bounds),
        cmocka_unit_test(test_parse_error_fields),
        cmocka_unit_test(test_parse_error_truncated),
    };
    return cmocka_run_group_tests_name("proto", tests, NULL, NULL);
}
