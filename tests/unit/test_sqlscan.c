/* Unit tests for the SQL scanner: statement kinds, SET/RESET tracking, multi-statements, pins. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "proto/sqlscan.h"

static void scan(const char *q, struct sql_info *si)
{
    sql_scan(q, strlen(q), si);
}

static int kind_of(const char *q)
{
    struct sql_info si;
    scan(q, &si);
    return si.kind;
}

static int pin_of(const char *q)
{
    struct sql_info si;
    scan(q, &si);
    return si.pin;
}

static int multi_of(const char *q)
{
    struct sql_info si;
    scan(q, &si);
    return si.multi;
}

/* q is a SET (or SET LOCAL, per kind) of name to value. */
static void assert_set(const char *q, int kind, const char *name, const char *value)
{
    struct sql_info si;
    scan(q, &si);
    assert_int_equal(si.kind, kind);
    assert_string_equal(si.name, name);
    assert_string_equal(si.value, value);
}

static void test_transaction_kinds(void **state)
{
    assert_int_equal(kind_of("BEGIN"), SQL_BEGIN);
    assert_int_equal(kind_of("begin"), SQL_BEGIN);
    assert_int_equal(kind_of("Begin Isolation Level Serializable"), SQL_BEGIN);
    assert_int_equal(kind_of("start transaction"), SQL_BEGIN);
    assert_int_equal(kind_of("START TRANSACTION READ ONLY"), SQL_BEGIN);

    assert_int_equal(kind_of("COMMIT"), SQL_COMMIT);
    assert_int_equal(kind_of("commit;"), SQL_COMMIT);
    assert_int_equal(kind_of("end"), SQL_COMMIT);
    assert_int_equal(kind_of("END TRANSACTION"), SQL_COMMIT);
    assert_int_equal(kind_of("commit prepared 'x'"), SQL_OTHER);

    /* A bare ROLLBACK: nothing follows, and nothing unread is looked at (valgrind-clean). */
    assert_int_equal(kind_of("ROLLBACK"), SQL_ROLLBACK);
    assert_int_equal(kind_of("abort"), SQL_ROLLBACK);
    assert_int_equal(kind_of("rollback work"), SQL_ROLLBACK);
    assert_int_equal(kind_of("ROLLBACK TRANSACTION"), SQL_ROLLBACK);
    assert_int_equal(kind_of("rollback to savepoint a"), SQL_OTHER);
    assert_int_equal(kind_of("rollback to a"), SQL_OTHER);
    assert_int_equal(kind_of("rollback work to savepoint a"), SQL_OTHER);
    assert_int_equal(kind_of("ROLLBACK PREPARED 'x'"), SQL_OTHER);

    assert_int_equal(kind_of("select 1"), SQL_OTHER);
    assert_int_equal(kind_of("savepoint a"), SQL_OTHER);
    assert_int_equal(kind_of("begins"), SQL_OTHER);
}

static void test_set(void **state)
{
    assert_set("SET search_path = public", SQL_SET, "search_path", "public");
    assert_set("set search_path to 'a', b", SQL_SET, "search_path", "'a', b");
    assert_set("SET SESSION timezone TO 'UTC'", SQL_SET, "timezone", "'UTC'");
    assert_set("SET LOCAL work_mem = '1MB'", SQL_SET_LOCAL, "work_mem", "'1MB'");
    /* Names are lower-cased; values are kept as written, trailing space and ';' dropped. */
    assert_set("SET Work_Mem='64MB' ;", SQL_SET, "work_mem", "'64MB'");
    assert_set("set myext.opt to 'x'", SQL_SET, "myext.opt", "'x'");
    assert_set("set application_name = 'it''s'", SQL_SET, "application_name", "'it''s'");

    /* The special forms map to the setting they change; transaction-scoped ones are not
     * tracked; session state the lexer cannot follow pins instead. */
    assert_int_equal(kind_of("set transaction isolation level serializable"), SQL_OTHER);
    assert_set("set time zone 'UTC'", SQL_SET, "timezone", "'UTC'");
    assert_set("set role bob", SQL_SET, "role", "bob");
    assert_set("set names 'UTF8'", SQL_SET, "client_encoding", "'UTF8'");
    assert_set("set \"TimeZone\" = 'UTC'", SQL_SET, "timezone", "'UTC'");
    assert_int_equal(kind_of("set constraints all deferred"), SQL_OTHER);
    struct sql_info si2;
    sql_scan("SET SESSION AUTHORIZATION bob", strlen("SET SESSION AUTHORIZATION bob"), &si2);
    assert_int_equal(si2.kind, SQL_OTHER);
    assert_int_equal(si2.pin, PIN_UNTRACKED_SET);
    sql_scan("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", 52, &si2);
    assert_int_equal(si2.pin, PIN_UNTRACKED_SET);
    sql_scan("select 1; set work_mem = '1MB'", 30, &si2);
    assert_int_equal(si2.pin, PIN_UNTRACKED_SET);
    assert_int_equal(kind_of("set"), SQL_OTHER);
    assert_int_equal(kind_of("set work_mem"), SQL_OTHER);
    assert_int_equal(kind_of("set work_mem ="), SQL_OTHER);
    assert_int_equal(kind_of("set work_mem = ;"), SQL_OTHER);
}

static void test_set_value_length(void **state)
{
    char q[512];
    const char *prefix = "set application_name = ";
    size_t pl = strlen(prefix);
    struct sql_info si;

    /* 255 bytes fit the value buffer with its NUL... */
    memcpy(q, prefix, pl);
    memset(q + pl, 'x', 255);
    q[pl + 255] = 0;
    scan(q, &si);
    assert_int_equal(si.kind, SQL_SET);
    assert_int_equal(strlen(si.value), 255);

    /* ...256 do not, and the SET is left untracked rather than cut. */
    memset(q + pl, 'x', 256);
    q[pl + 256] = 0;
    scan(q, &si);
    assert_int_equal(si.kind, SQL_OTHER);
    assert_string_equal(si.value, "");

    memset(q + pl, 'x', 300);
    q[pl + 300] = 0;
    assert_int_equal(kind_of(q), SQL_OTHER);

    /* A name too long to hold whole is left untracked rather than cut short. */
    char longname[128];
    snprintf(longname, sizeof(longname), "set myext.%070d = 1", 0);
    assert_int_equal(kind_of(longname), SQL_OTHER);
}

static void test_reset(void **state)
{
    struct sql_info si;
    scan("RESET work_mem", &si);
    assert_int_equal(si.kind, SQL_RESET);
    assert_string_equal(si.name, "work_mem");
    scan("reset Search_Path;", &si);
    assert_int_equal(si.kind, SQL_RESET);
    assert_string_equal(si.name, "search_path");

    assert_int_equal(kind_of("RESET ALL"), SQL_RESET_ALL);
    assert_int_equal(kind_of("reset all;"), SQL_RESET_ALL);
    assert_int_equal(kind_of("DISCARD ALL"), SQL_RESET_ALL);
    assert_int_equal(kind_of("discard all"), SQL_RESET_ALL);
    assert_int_equal(kind_of("DISCARD PLANS"), SQL_OTHER);
    assert_int_equal(kind_of("RESET"), SQL_OTHER);
    assert_int_equal(kind_of("discard"), SQL_OTHER);
}

static void test_comments_and_space(void **state)
{
    struct sql_info si;

    assert_int_equal(kind_of("-- c\nCOMMIT"), SQL_COMMIT);
    assert_int_equal(kind_of("/* a /* nested */ */ begin"), SQL_BEGIN);
    assert_int_equal(kind_of("/* one */ -- two\n /**/ rollback"), SQL_ROLLBACK);
    assert_int_equal(kind_of(" \t\r\n  BEGIN \n"), SQL_BEGIN);
    /* Still inside the nested comment: nothing to classify. */
    assert_int_equal(kind_of("/* a /* nested */ begin"), SQL_OTHER);
    assert_int_equal(kind_of("-- COMMIT"), SQL_OTHER);

    /* Empty and blank text: all zero. */
    scan("", &si);
    assert_int_equal(si.kind, SQL_OTHER);
    assert_int_equal(si.pin, PIN_NONE);
    assert_int_equal(si.multi, 0);
    assert_string_equal(si.name, "");
    assert_string_equal(si.value, "");
    scan("   \n\t", &si);
    assert_int_equal(si.kind, SQL_OTHER);
    assert_int_equal(si.multi, 0);
}

/* The text is len bytes, not a C string; a Query body's trailing NUL is fine. */
static void test_length_bounded(void **state)
{
    struct sql_info si;

    sql_scan("BEGINNING", 5, &si);
    assert_int_equal(si.kind, SQL_BEGIN);
    sql_scan("COMMIT", 3, &si);
    assert_int_equal(si.kind, SQL_OTHER);
    sql_scan("select 1; select 2", 9, &si);
    assert_int_equal(si.multi, 0);

    static const char body[] = "set work_mem = '4MB'"; /* sizeof counts the NUL */
    sql_scan(body, sizeof(body), &si);
    assert_int_equal(si.kind, SQL_SET);
    assert_string_equal(si.value, "'4MB'");
    static const char semi[] = "select 1;";
    sql_scan(semi, sizeof(semi), &si);
    assert_int_equal(si.multi, 0);
}

static void test_multi(void **state)
{
    struct sql_info si;

    assert_int_equal(multi_of("select 1; select 2"), 1);
    assert_int_equal(multi_of("select 1;select 2"), 1);
    assert_int_equal(multi_of("select 1;"), 0);
    assert_int_equal(multi_of("select 1;  "), 0);
    assert_int_equal(multi_of("select 1; -- done\n"), 0);
    assert_int_equal(multi_of("select 1; /* done */"), 0);
    assert_int_equal(multi_of("select 1"), 0);

    /* The first statement decides the kind. */
    scan("BEGIN; SET search_path = x; COMMIT", &si);
    assert_int_equal(si.kind, SQL_BEGIN);
    assert_int_equal(si.multi, 1);
    scan("set search_path = public; select 1", &si);
    assert_int_equal(si.kind, SQL_SET);
    assert_string_equal(si.value, "public");
    assert_int_equal(si.multi, 1);

    /* A ';' inside a quoted value is part of the value. The multi flag, though, looks at the
     * first ';' anywhere, quotes or not, so this single SET also reports multi=1 and the
     * caller does not track it (see the report); multi is not asserted here. */
    scan("set application_name = 'a;b'", &si);
    assert_int_equal(si.kind, SQL_SET);
    assert_string_equal(si.value, "'a;b'");
}

static void test_pins(void **state)
{
    assert_int_equal(pin_of("create temp table t (x int)"), PIN_TEMP_TABLE);
    assert_int_equal(pin_of("CREATE TEMPORARY TABLE t (x int)"), PIN_TEMP_TABLE);
    assert_int_equal(pin_of("select * from templates"), PIN_NONE);

    assert_int_equal(pin_of("select pg_advisory_lock(1)"), PIN_ADVISORY_LOCK);
    assert_int_equal(pin_of("SELECT PG_TRY_ADVISORY_LOCK(1)"), PIN_ADVISORY_LOCK);
    assert_int_equal(pin_of("select pg_advisory_lock_shared(1)"), PIN_ADVISORY_LOCK);
    assert_int_equal(pin_of("select pg_advisory_xact_lock(1)"), PIN_NONE);
    assert_int_equal(pin_of("select pg_advisory_unlock(1)"), PIN_NONE);

    assert_int_equal(pin_of("LISTEN chan"), PIN_LISTEN);
    assert_int_equal(pin_of("PREPARE p AS select 1"), PIN_SQL_PREPARE);
    assert_int_equal(pin_of("prepare transaction 'x'"), PIN_NONE);
    assert_int_equal(pin_of("declare c cursor with hold for select 1"), PIN_HOLD_CURSOR);
    assert_int_equal(pin_of("declare c cursor without hold for select 1"), PIN_NONE);
    assert_int_equal(pin_of("declare c cursor for select 1"), PIN_NONE);
    assert_int_equal(pin_of("LOAD 'auto_explain'"), PIN_LOAD);

    assert_int_equal(pin_of("select 1"), PIN_NONE);
    assert_int_equal(pin_of("BEGIN"), PIN_NONE);

    /* Pins are found anywhere in the text, not only in the first statement. */
    assert_int_equal(pin_of("select 1; listen chan"), PIN_LISTEN);

    /* The scanner is word-based and does not skip literals or comments: a keyword inside a
     * string pins too. A false pin only costs pooling for that session, never correctness;
     * should the scanner learn to skip literals, this becomes PIN_NONE. */
    assert_int_equal(pin_of("select 'listen'"), PIN_LISTEN);
}

static void test_pin_names(void **state)
{
    assert_string_equal(pin_reason_name(PIN_NONE), "none");
    assert_string_equal(pin_reason_name(PIN_TEMP_TABLE), "temp table");
    assert_string_equal(pin_reason_name(PIN_ADVISORY_LOCK), "advisory lock");
    assert_string_equal(pin_reason_name(PIN_LISTEN), "LISTEN");
    assert_string_equal(pin_reason_name(PIN_SQL_PREPARE), "SQL PREPARE");
    assert_string_equal(pin_reason_name(PIN_HOLD_CURSOR), "WITH HOLD cursor");
    assert_string_equal(pin_reason_name(PIN_LOAD), "LOAD");
    assert_string_equal(pin_reason_name(PIN_NREASONS), "?");
    assert_string_equal(pin_reason_name(-1), "?");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_transaction_kinds),
        cmocka_unit_test(test_set),
        cmocka_unit_test(test_set_value_length),
        cmocka_unit_test(test_reset),
        cmocka_unit_test(test_comments_and_space),
        cmocka_unit_test(test_length_bounded),
        cmocka_unit_test(test_multi),
        cmocka_unit_test(test_pins),
        cmocka_unit_test(test_pin_names),
    };
    return cmocka_run_group_tests_name("sqlscan", tests, NULL, NULL);
}
