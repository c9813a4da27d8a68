/* Unit tests for SCRAM-SHA-256: RFC 7677's vector, both ends end-to-end, malformed input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proto/scram.h"

#define RFC_CLIENT_NONCE "rOprNGfwEbeRWgbNEkqO"
#define RFC_SERVER_NONCE "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
#define RFC_SALT         "W22ZaJ0SNY7soEsUEjb6gQ=="
#define RFC_SERVER_FIRST "r=" RFC_CLIENT_NONCE RFC_SERVER_NONCE ",s=" RFC_SALT ",i=4096"
#define RFC_CLIENT_FINAL                                                                           \
    "c=biws,r=" RFC_CLIENT_NONCE RFC_SERVER_NONCE ",p=dHzbZapWIk4jUhN+"                            \
    "Ute9ytag9zjfMHgsqmmiz7AndVQ="
#define RFC_SERVER_FINAL "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
/* The same user as pg_authid would store it (computed with Python's hashlib). */
#define RFC_SECRET                                                                                 \
    "SCRAM-SHA-256$4096:" RFC_SALT "$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"                \
    "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="

static void test_rfc7677_client(void **state)
{
    struct scram_client c;
    char out[512];
    size_t n;

    assert_int_equal(scram_client_init_password(&c, "pencil"), 0);
    assert_int_equal(scram_client_set_user(&c, "user"), 0);
    scram_set_test_nonce(RFC_CLIENT_NONCE);
    assert_int_equal(scram_client_first(&c, out, sizeof(out), &n), 0);
    assert_string_equal(out, "n,,n=user,r=" RFC_CLIENT_NONCE);
    assert_int_equal(n, strlen(out));

    assert_int_equal(
        scram_client_final(&c, RFC_SERVER_FIRST, strlen(RFC_SERVER_FIRST), out, sizeof(out), &n),
        0);
    assert_string_equal(out, RFC_CLIENT_FINAL);

    /* A wrong signature and a server error both fail; the right one then passes. */
    const char *bad = "v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    assert_int_equal(scram_client_verify_server(&c, bad, strlen(bad)), -1);
    assert_int_equal(scram_client_verify_server(&c, "e=invalid-proof", 15), -1);
    assert_int_equal(scram_client_verify_server(&c, RFC_SERVER_FINAL, strlen(RFC_SERVER_FINAL)), 0);
}

static void test_rfc7677_server(void **state)
{
    struct scram_secret sec, from_pw;
    struct scram_server s;
    char out[512];
    size_t n;
    unsigned char salt[16];

    assert_int_equal(scram_parse_secret(RFC_SECRET, &sec), 0);
    assert_int_equal(sec.iterations, 4096);
    assert_int_equal(sec.salt_len, 16);
    memcpy(salt, sec.salt, 16);
    assert_int_equal(scram_secret_from_password("pencil", salt, 16, 4096, &from_pw), 0);
    assert_memory_equal(from_pw.stored_key, sec.stored_key, SCRAM_KEY_LEN);
    assert_memory_equal(from_pw.server_key, sec.server_key, SCRAM_KEY_LEN);

    assert_int_equal(scram_server_init(&s, &sec), 0);
    scram_set_test_nonce(RFC_SERVER_NONCE);
    const char *first = "n,,n=user,r=" RFC_CLIENT_NONCE;
    assert_int_equal(scram_server_handle_first(&s, first, strlen(first), out, sizeof(out), &n), 0);
    assert_string_equal(out, RFC_SERVER_FIRST);
    assert_int_equal(scram_server_handle_final(&s, RFC_CLIENT_FINAL, strlen(RFC_CLIENT_FINAL), out,
                                               sizeof(out), &n),
                     0);
    assert_string_equal(out, RFC_SERVER_FINAL);
    assert_true(s.have_client_key);

    /* The recovered key is the one a password-holding client derives. */
    struct scram_client c;
    scram_client_init_password(&c, "pencil");
    scram_set_test_nonce(RFC_CLIENT_NONCE);
    assert_int_equal(scram_client_first(&c, out, sizeof(out), &n), 0);
    assert_int_equal(
        scram_client_final(&c, RFC_SERVER_FIRST, strlen(RFC_SERVER_FIRST), out, sizeof(out), &n),
        0);
    assert_memory_equal(s.client_key, c.client_key, SCRAM_KEY_LEN);
}

/* One whole exchange between c and a server holding sec; returns the server's final result
 * and, through client_rc, the client's verdict on the server. */
static int exchange(struct scram_client *c, const struct scram_secret *sec, struct scram_server *s,
                    int *client_rc)
{
    char a[512], b[512];
    size_t an, bn;
    *client_rc = -99;
    assert_int_equal(scram_server_init(s, sec), 0);
    assert_int_equal(scram_client_first(c, a, sizeof(a), &an), 0);
    assert_int_equal(strncmp(a, "n,,n=,r=", 8), 0);
    if (scram_server_handle_first(s, a, an, b, sizeof(b), &bn) != 0)
        return -98;
    if (scram_client_final(c, b, bn, a, sizeof(a), &an) != 0)
        return -97;
    int rc = scram_server_handle_final(s, a, an, b, sizeof(b), &bn);
    if (rc == 0)
        *client_rc = scram_client_verify_server(c, b, bn);
    return rc;
}

static void test_end_to_end(void **state)
{
    struct scram_secret sec;
    struct scram_server s;
    struct scram_client c;
    int crc;

    assert_int_equal(scram_secret_generate("correct horse", &sec), 0);
    assert_int_equal(sec.iterations, SCRAM_ITERATIONS);
    assert_int_equal(sec.salt_len, SCRAM_SALT_LEN);

    scram_client_init_password(&c, "correct horse");
    assert_int_equal(exchange(&c, &sec, &s, &crc), 0);
    assert_int_equal(crc, 0);
    assert_true(s.have_client_key);
    /* Random nonces: 18 bytes base64 = 24 characters. */
    assert_int_equal(strlen(c.client_nonce), 24);
    assert_int_equal(strlen(s.server_nonce), 24);

    /* Log in again with only the recovered ClientKey and the secret's ServerKey. */
    unsigned char ck[SCRAM_KEY_LEN];
    memcpy(ck, s.client_key, SCRAM_KEY_LEN);
    struct scram_client k;
    assert_int_equal(scram_client_init_keys(&k, ck, sec.server_key), 0);
    assert_int_equal(exchange(&k, &sec, &s, &crc), 0);
    assert_int_equal(crc, 0);
}

static void test_wrong_password(void **state)
{
    struct scram_secret sec;
    struct scram_server s;
    struct scram_client c;
    int crc;
    static const unsigned char salt[4] = {1, 2, 3, 4};

    assert_int_equal(scram_secret_from_password("right", salt, 4, 64, &sec), 0);
    scram_client_init_password(&c, "wrong");
    assert_int_equal(exchange(&c, &sec, &s, &crc), -2);
    assert_false(s.have_client_key);
    assert_int_equal(crc, -99);

    /* A client whose server key is wrong rejects an honest server's signature. */
    struct scram_client k;
    unsigned char zero[SCRAM_KEY_LEN] = {0};
    scram_client_init_password(&c, "right");
    assert_int_equal(exchange(&c, &sec, &s, &crc), 0);
    scram_client_init_keys(&k, s.client_key, zero);
    assert_int_equal(exchange(&k, &sec, &s, &crc), 0);
    assert_int_equal(crc, -1);
}

static void test_malformed_first(void **state)
{
    static const char *const bad[] = {
        "",
        "n",
        "n,,",
        "n,,n=",
        "n,,n=,",
        "n,,n=,r=",                         /* empty nonce */
        "n,,r=abc",                         /* missing n= */
        "n,,n=,s=abc",                      /* missing r= */
        "p=tls-server-end-point,,n=,r=abc", /* channel binding */
        "x,,n=,r=abc",                      /* unknown gs2 flag */
        "n,a=bob,n=,r=abc",                 /* authzid */
        "n,,m=ext,n=,r=abc",                /* mandatory extension */
        "n,,n=,r=ab c",                     /* nonce with a space */
    };
    struct scram_secret sec;
    struct scram_server s;
    char out[512];
    size_t n;
    assert_int_equal(scram_parse_secret(RFC_SECRET, &sec), 0);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        scram_server_init(&s, &sec);
        int rc = scram_server_handle_first(&s, bad[i], strlen(bad[i]), out, sizeof(out), &n);
        if (rc != -1)
            fail_msg("client-first \"%s\" accepted", bad[i]);
    }
    /* A NUL inside the message. */
    scram_server_init(&s, &sec);
    assert_int_equal(scram_server_handle_first(&s, "n,,n=,r=a\0b", 11, out, sizeof(out), &n), -1);
    /* "y,," is accepted: the client supports binding but thinks we don't. */
    scram_server_init(&s, &sec);
    assert_int_equal(scram_server_handle_first(&s, "y,,n=,r=abc", 11, out, sizeof(out), &n), 0);

    /* Channel binding (-PLUS offered over TLS): the header must match the mechanism chosen. */
    static const unsigned char cb[32] = {1, 2, 3};
    static const char *const plus_first = "p=tls-server-end-point,,n=,r=abc";
    struct {
        const char *first;
        int selected, rc;
    } cases[] = {
        {plus_first, 1, 0},                /* -PLUS with its binding */
        {plus_first, 0, -1},               /* binding data under the plain mechanism */
        {"n,,n=,r=abc", 1, -1},            /* -PLUS chosen, no binding */
        {"n,,n=,r=abc", 0, 0},             /* plain SCRAM over TLS: allowed, as PostgreSQL */
        {"y,,n=,r=abc", 0, -1},            /* "you do not support binding": a downgrade */
        {"p=tls-unique,,n=,r=abc", 1, -1}, /* another binding type */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        scram_server_init(&s, &sec);
        assert_int_equal(scram_server_offer_plus(&s, cb, sizeof(cb)), 0);
        s.cb_selected = cases[i].selected;
        int rc = scram_server_handle_first(&s, cases[i].first, strlen(cases[i].first), out,
                                           sizeof(out), &n);
        if (rc != cases[i].rc)
            fail_msg("client-first \"%s\" (selected %d): %d", cases[i].first, cases[i].selected,
                     rc);
    }
}

static void test_malformed_final(void **state)
{
    struct scram_secret sec;
    struct scram_server s;
    char out[512], msg[512];
    size_t n;
    const char *proof = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const char *first = "n,,n=user,r=" RFC_CLIENT_NONCE;
    const char *nonce = RFC_CLIENT_NONCE RFC_SERVER_NONCE;
    /* Each: printf format taking (nonce, proof). */
    static const char *const bad[] = {
        "c=biws,p=%.0s%s",             /* missing r= */
        "c=biws,r=%sX,p=%s",           /* nonce mismatch */
        "c=biws,r=%.20s,p=%s",         /* client nonce only */
        "c=biws,r=%s,p=%.20s",         /* truncated proof */
        "c=biws,r=%s,p=%.43s!",        /* bad base64 */
        "c=biws,r=%s",                 /* no proof: %s of proof unused */
        "c=biws,r=%s,",                /* truncated after r= */
        "c=eSws,r=%s,p=%s",            /* "y,," but client sent "n,," */
        "c=b!ws,r=%s,p=%s",            /* bad base64 in c= */
        "r=%s,p=%s",                   /* missing c= */
        "c=biws,r=%s,p=%s,x=trailing", /* proof not last */
        "c=biws,r=%s,p=%s=",           /* proof with extra padding */
    };
    assert_int_equal(scram_parse_secret(RFC_SECRET, &sec), 0);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        scram_server_init(&s, &sec);
        scram_set_test_nonce(RFC_SERVER_NONCE);
        assert_int_equal(scram_server_handle_first(&s, first, strlen(first), out, sizeof(out), &n),
                         0);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
#pragma GCC diagnostic ignored "-Wformat-extra-args"
        snprintf(msg, sizeof(msg), bad[i], nonce, proof);
#pragma GCC diagnostic pop
        int rc = scram_server_handle_final(&s, msg, strlen(msg), out, sizeof(out), &n);
        if (rc != -1)
            fail_msg("client-final \"%s\" got %d", msg, rc);
    }
    /* Messages out of order. */
    scram_server_init(&s, &sec);
    assert_int_equal(scram_server_handle_final(&s, RFC_CLIENT_FINAL, strlen(RFC_CLIENT_FINAL), out,
                                               sizeof(out), &n),
                     -1);
}

static void test_client_rejects_bad_server_first(void **state)
{
    static const char *const bad[] = {
        "r=" RFC_CLIENT_NONCE ",s=" RFC_SALT ",i=4096",        /* nonce not extended */
        "r=XXX" RFC_SERVER_NONCE ",s=" RFC_SALT ",i=4096",     /* nonce not ours */
        "r=" RFC_CLIENT_NONCE RFC_SERVER_NONCE ",i=4096",      /* missing s= */
        "r=" RFC_CLIENT_NONCE RFC_SERVER_NONCE ",s=" RFC_SALT, /* missing i= */
        "r=" RFC_CLIENT_NONCE RFC_SERVER_NONCE ",s=" RFC_SALT ",i=0",
        "r=" RFC_CLIENT_NONCE RFC_SERVER_NONCE ",s=" RFC_SALT ",i=12x",
        "r=" RFC_CLIENT_NONCE RFC_SERVER_NONCE ",s=@@@@,i=4096",
        "e=other-error",
    };
    struct scram_client c;
    char out[512];
    size_t n;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        scram_client_init_password(&c, "pencil");
        scram_set_test_nonce(RFC_CLIENT_NONCE);
        assert_int_equal(scram_client_first(&c, out, sizeof(out), &n), 0);
        int rc = scram_client_final(&c, bad[i], strlen(bad[i]), out, sizeof(out), &n);
        if (rc != -1)
            fail_msg("server-first \"%s\" accepted", bad[i]);
    }
}

static void test_parse_secret(void **state)
{
    struct scram_secret sec;
    assert_int_equal(scram_parse_secret(RFC_SECRET, &sec), 0);
    static const char *const bad[] = {
        "",
        "md553f48b7c4b76a86ce72276c5755f217d",
        "SCRAM-SHA-256$",
        "SCRAM-SHA-256$0:" RFC_SALT "$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
        "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
        "SCRAM-SHA-256$x:" RFC_SALT "$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
        "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
        "SCRAM-SHA-256$4096:" RFC_SALT "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
        "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=", /* missing $ */
        "SCRAM-SHA-256$4096:" RFC_SALT "$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=",
        "SCRAM-SHA-256$4096:" RFC_SALT "$WG5d8oPm3OtcPnkdi4Uo7Bke:"
        "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=", /* short stored key */
        "SCRAM-SHA-256$4096:!!!!$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
        "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=", /* bad salt */
        "SCRAM-SHA-256$4096:" RFC_SALT "$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
        "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU= ", /* trailing space */
        "SCRAM-SHA-1$4096:" RFC_SALT "$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
        "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (scram_parse_secret(bad[i], &sec) != -1)
            fail_msg("secret \"%s\" accepted", bad[i]);
}

static void test_user_escaping(void **state)
{
    struct scram_client c;
    char out[512];
    size_t n;
    scram_client_init_password(&c, "x");
    assert_int_equal(scram_client_set_user(&c, "a,b=c"), 0);
    scram_set_test_nonce("abc");
    assert_int_equal(scram_client_first(&c, out, sizeof(out), &n), 0);
    assert_string_equal(out, "n,,n=a=2Cb=3Dc,r=abc");
}

/* A server asking for more PBKDF2 rounds than max_iterations is refused before any is spent;
 * keys given up front (no PBKDF2) are not limited. */
static void test_iteration_ceiling(void **state)
{
    const char *sf = "r=" RFC_CLIENT_NONCE "srv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1000000000";
    struct scram_client c;
    char out[512];
    size_t n;
    scram_client_init_password(&c, "pencil");
    c.max_iterations = 100000;
    scram_set_test_nonce(RFC_CLIENT_NONCE);
    assert_int_equal(scram_client_first(&c, out, sizeof(out), &n), 0);
    scram_set_test_nonce(NULL);
    assert_int_equal(scram_client_final(&c, sf, strlen(sf), out, sizeof(out), &n), -2);
    assert_int_equal(c.iterations, 1000000000);
    unsigned char ck[SCRAM_KEY_LEN] = {1}, sk[SCRAM_KEY_LEN] = {2};
    scram_client_init_keys(&c, ck, sk);
    c.max_iterations = 100000;
    scram_set_test_nonce(RFC_CLIENT_NONCE);
    assert_int_equal(scram_client_first(&c, out, sizeof(out), &n), 0);
    scram_set_test_nonce(NULL);
    assert_int_equal(scram_client_final(&c, sf, strlen(sf), out, sizeof(out), &n), 0);
}

/* SASLprep as PostgreSQL applies it (RFC 4013 section 3's examples, and the fallbacks). */
static void test_saslprep(void **state)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"I\xc2\xadX", "IX"},             /* U+00AD soft hyphen: mapped to nothing */
        {"user", "user"},                 /* ASCII: unchanged */
        {"USER", "USER"},                 /* case kept */
        {"\xc2\xaa", "a"},                /* U+00AA: NFKC */
        {"\xe2\x85\xa8", "IX"},           /* U+2168 ROMAN NUMERAL NINE: NFKC */
        {"IX-\xe2\x85\xa8", "IX-IX"},     /* the password */
        {"a\xc2\xa0" "b", "a b"},            /* U+00A0 no-break space: a space */
        {"\x07", "\x07"},                 /* ASCII (a control character): unchanged, as in PG */
        {"\xd8\xa7\x31", "\xd8\xa7\x31"}, /* RandALCat then a digit: refused, used raw */
        {"\xff\xfe", "\xff\xfe"},         /* not UTF-8: used raw */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *got = scram_saslprep(cases[i].in);
        assert_non_null(got);
        assert_string_equal(got, cases[i].out);
        free(got);
    }
    /* a verifier made from the unprepared spelling checks a proof made from the prepared one */
    struct scram_secret a, b;
    assert_int_equal(scram_secret_generate("IX-\xe2\x85\xa8", &a), 0);
    assert_int_equal(scram_secret_from_password("IX-IX", a.salt, a.salt_len, a.iterations, &b), 0);
    assert_memory_equal(a.stored_key, b.stored_key, SCRAM_KEY_LEN);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc7677_client),
        cmocka_unit_test(test_rfc7677_server),
        cmocka_unit_test(test_end_to_end),
        cmocka_unit_test(test_wrong_password),
        cmocka_unit_test(test_malformed_first),
        cmocka_unit_test(test_malformed_final),
        cmocka_unit_test(test_client_rejects_bad_server_first),
        cmocka_unit_test(test_parse_secret),
        cmocka_unit_test(test_user_escaping),
        cmocka_unit_test(test_iteration_ceiling),
        cmocka_unit_test(test_saslprep),
    };
    return cmocka_run_group_tests_name("scram", tests, NULL, NULL);
}
