/* Unit tests for PostgreSQL's md5 hashing; expected values computed with Python's hashlib. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "proto/md5.h"

/* python3 -c "import hashlib;print('md5'+hashlib.md5(b'secretpostgres').hexdigest())" */
#define SECRET_POSTGRES "md553f48b7c4b76a86ce72276c5755f217d"

static void test_hash_matches_pg_authid(void **state)
{
    char out[36];
    pg_md5_hash("secret", "postgres", out);
    assert_string_equal(out, SECRET_POSTGRES);
    assert_int_equal(strlen(out), 35);
}

static void test_salted(void **state)
{
    /* hashlib.md5(h[3:].encode() + salt) for the two salts below. */
    static const unsigned char salt1[4] = {0x01, 0x02, 0x03, 0x04};
    static const unsigned char salt2[4] = {0xde, 0xad, 0xbe, 0xef};
    char out[36];
    pg_md5_salted(SECRET_POSTGRES, salt1, out);
    assert_string_equal(out, "md5bb41a296aab6baccb36ff243a562abff");
    pg_md5_salted(SECRET_POSTGRES, salt2, out);
    assert_string_equal(out, "md5c546d0bbed2af888b328536b45c76348");
}

static void test_salted_from_password(void **state)
{
    char hash[36], out[36];
    static const unsigned char salt[4] = {0x01, 0x02, 0x03, 0x04};
    pg_md5_hash("secret", "postgres", hash);
    pg_md5_salted(hash, salt, out);
    assert_string_equal(out, "md5bb41a296aab6baccb36ff243a562abff");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash_matches_pg_authid),
        cmocka_unit_test(test_salted),
        cmocka_unit_test(test_salted_from_password),
    };
    return cmocka_run_group_tests_name("md5", tests, NULL, NULL);
}
