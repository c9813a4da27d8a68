/* Unit tests for the grammar-based statement classifier: kinds, tracked SETs and their replays,
 * pins, and just as much what must NOT pin (words in strings, comments, column names); then
 * the cost of the common paths. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "proto/sqlclass.h"

/* One-statement texts: kind, pin, name, replay of statement i. */
struct one {
    int n, kind, pin, parse_error;
    char name[2048], replay[2048];
};

static struct one classify_at(const char *q, size_t len, int i)
{
    struct sql_info si;
    struct one o;
    memset(&o, 0, sizeof(o));
    sql_classify(q, len, &si);
    o.n = si.n;
    o.parse_error = si.parse_error;
    o.pin = si.pin;
    if (i < si.n) {
        o.kind = si.stmts[i].kind;
        if (si.stmts[i].name)
            snprintf(o.name, sizeof(o.name), "%s", si.stmts[i].name);
        if (si.stmts[i].replay)
            snprintf(o.replay, sizeof(o.replay), "%s", si.stmts[i].replay);
    } else {
        o.kind = -1;
    }
    sql_info_free(&si);
    return o;
}

static struct one cls(const char *q)
{
    return classify_at(q, strlen(q), 0);
}

static int kind_of(const char *q)
{
    return cls(q).kind;
}

static int pin_of(const char *q)
{
    return cls(q).pin;
}

/* q is one statement of kind, name and replay ("" for none), and the replay is a fixed point:
 * classified again it gives itself (it parses, and means the same SET). */
static void assert_stmt(const char *q, int kind, const char *name, const char *replay)
{
    struct one o = cls(q);
    assert_int_equal(o.n, 1);
    assert_int_equal(o.parse_error, 0);
    assert_int_equal(o.kind, kind);
    assert_string_equal(o.name, name);
    assert_string_equal(o.replay, replay);
    if (*replay) {
        struct one r = cls(replay);
        assert_int_equal(r.n, 1);
        assert_int_equal(r.kind, SQL_SET);
        assert_string_equal(r.name, name);
        assert_string_equal(r.replay, replay);
    }
}

static void test_transaction_kinds(void **state)
{
    assert_int_equal(kind_of("BEGIN"), SQL_BEGIN);
    assert_int_equal(kind_of("begin isolation level serializable"), SQL_BEGIN);
    assert_int_equal(kind_of("START TRANSACTION READ ONLY"), SQL_BEGIN);
    assert_int_equal(kind_of("COMMIT"), SQL_COMMIT);
    assert_int_equal(kind_of("end;"), SQL_COMMIT);
    assert_int_equal(kind_of("COMMIT AND CHAIN"), SQL_COMMIT);
    assert_int_equal(kind_of("ROLLBACK"), SQL_ROLLBACK);
    assert_int_equal(kind_of("abort"), SQL_ROLLBACK);
    assert_stmt("SAVEPOINT sp1", SQL_SAVEPOINT, "sp1", "");
    assert_stmt("RELEASE SAVEPOINT sp1", SQL_RELEASE, "sp1", "");
    assert_stmt("release \"Sp 2\"", SQL_RELEASE, "Sp 2", "");
    assert_stmt("ROLLBACK TO SAVEPOINT sp1", SQL_ROLLBACK_TO, "sp1", "");
    assert_stmt("rollback to sp1", SQL_ROLLBACK_TO, "sp1", "");
    assert_int_equal(kind_of("PREPARE TRANSACTION 'g1'"), SQL_PREPARE_TRANSACTION);
    assert_int_equal(kind_of("COMMIT PREPARED 'g1'"), SQL_OTHER);
    assert_int_equal(kind_of("ROLLBACK PREPARED 'g1'"), SQL_OTHER);
    assert_int_equal(kind_of("/* hint */ BEGIN"), SQL_BEGIN);
    assert_int_equal(kind_of("-- c\nCOMMIT"), SQL_COMMIT);
}

static void test_set_tracked(void **state)
{
    assert_stmt("SET TimeZone = 'UTC'", SQL_SET, "timezone", "SET timezone TO 'UTC'");
    assert_stmt("SET TIME ZONE 'Europe/Paris'", SQL_SET, "timezone",
                "SET timezone TO 'Europe/Paris'");
    assert_stmt("set session time zone -7", SQL_SET, "timezone", "SET timezone TO -7");
    assert_stmt("SET SCHEMA 'app'", SQL_SET, "search_path", "SET search_path TO 'app'");
    assert_stmt("SET XML OPTION DOCUMENT", SQL_SET, "xmloption", "SET xmloption TO 'DOCUMENT'");
    assert_stmt("SET NAMES 'UTF8'", SQL_SET, "client_encoding", "SET client_encoding TO 'UTF8'");
    assert_stmt("SET ROLE reporting", SQL_SET, "role", "SET role TO 'reporting'");
    assert_stmt("SET ROLE NONE", SQL_SET, "role", "SET role TO 'none'");
    assert_stmt("SET search_path = a, \"B c\", '$user'", SQL_SET, "search_path",
                "SET search_path TO 'a', 'B c', '$user'");
    assert_stmt("SET statement_timeout TO 5000", SQL_SET, "statement_timeout",
                "SET statement_timeout TO 5000");
    assert_stmt("set extra_float_digits = -3", SQL_SET, "extra_float_digits",
                "SET extra_float_digits TO -3");
    assert_stmt("SET random_page_cost = 1.5", SQL_SET, "random_page_cost",
                "SET random_page_cost TO 1.5");
    assert_stmt("SET enable_seqscan = off", SQL_SET, "enable_seqscan",
                "SET enable_seqscan TO 'off'");
    assert_stmt("SET enable_seqscan = true", SQL_SET, "enable_seqscan",
                "SET enable_seqscan TO 'true'");
    assert_stmt("SET SESSION application_name = 'it''s'", SQL_SET, "application_name",
                "SET application_name TO 'it''s'");
    assert_stmt("SET application_name = E'a\\\\b'", SQL_SET, "application_name",
                "SET application_name TO E'a\\\\b'");
    assert_stmt("SET myext.Opt = 'v'", SQL_SET, "myext.opt", "SET \"myext\".\"opt\" TO 'v'");
    assert_stmt("SET \"DateStyle\" = iso, dmy", SQL_SET, "datestyle",
                "SET datestyle TO 'iso', 'dmy'");
    /* the forms the old lexer replayed wrong */
    assert_stmt("SET TIME ZONE INTERVAL '+05:30' HOUR TO MINUTE", SQL_SET, "timezone",
                "SET TIME ZONE INTERVAL '+05:30' HOUR TO MINUTE");
    assert_stmt("SET TIME ZONE INTERVAL '-08:00' HOUR", SQL_SET, "timezone",
                "SET TIME ZONE INTERVAL '-08:00' HOUR");
    assert_stmt("SET TIME ZONE INTERVAL(2) '1 hour'", SQL_SET, "timezone",
                "SET TIME ZONE INTERVAL(2) '1 hour'");
    assert_stmt("SET TIME ZONE INTERVAL '1 hour'", SQL_SET, "timezone",
                "SET TIME ZONE INTERVAL '1 hour'");
    assert_int_equal(pin_of("SET TIME ZONE 'UTC'"), PIN_NONE);
}

static void test_set_long_value(void **state)
{
    char q[1200], want[1200];
    char v[1001];
    memset(v, 'x', 1000);
    v[1000] = 0;
    snprintf(q, sizeof(q), "SET application_name = '%s'", v);
    snprintf(want, sizeof(want), "SET application_name TO '%s'", v);
    assert_stmt(q, SQL_SET, "application_name", want);
}

static void test_reset(void **state)
{
    assert_stmt("RESET TIME ZONE", SQL_RESET, "timezone", "");
    assert_stmt("RESET search_path", SQL_RESET, "search_path", "");
    assert_stmt("SET TIME ZONE LOCAL", SQL_RESET, "timezone", "");
    assert_stmt("SET TIME ZONE DEFAULT", SQL_RESET, "timezone", "");
    assert_stmt("SET work_mem TO DEFAULT", SQL_RESET, "work_mem", "");
    assert_stmt("RESET ROLE", SQL_RESET, "role", "");
    assert_stmt("RESET SESSION AUTHORIZATION", SQL_RESET, "session_authorization", "");
    assert_stmt("RESET ALL", SQL_RESET_ALL, "", "");
    assert_stmt("DISCARD ALL", SQL_DISCARD_ALL, "", "");
    assert_stmt("DISCARD TEMP", SQL_OTHER, "", "");
    assert_stmt("DISCARD PLANS", SQL_OTHER, "", "");
}

static void test_set_local(void **state)
{
    assert_stmt("SET LOCAL work_mem = '64MB'", SQL_SET_LOCAL, "work_mem", "");
    assert_stmt("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", SQL_SET_LOCAL,
                "transaction_isolation", "");
    assert_stmt("SET TRANSACTION READ ONLY", SQL_SET_LOCAL, "transaction_read_only", "");
    assert_stmt("SET transaction_isolation = 'repeatable read'", SQL_SET_LOCAL,
                "transaction_isolation", "");
    assert_stmt("SET LOCAL x.y FROM CURRENT", SQL_SET_LOCAL, "x.y", "");
    assert_int_equal(pin_of("SET LOCAL search_path = pg_temp"), PIN_NONE);
    assert_stmt("SET TRANSACTION SNAPSHOT '00000003-0000001B-1'", SQL_SET_LOCAL,
                "transaction_snapshot", "");
}

static void test_set_untracked(void **state)
{
    assert_int_equal(pin_of("SET SESSION AUTHORIZATION bob"), PIN_UNTRACKED_SET);
    assert_int_equal(pin_of("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"),
                     PIN_UNTRACKED_SET);
    assert_int_equal(pin_of("SET work_mem FROM CURRENT"), PIN_UNTRACKED_SET);
    assert_int_equal(kind_of("SET SESSION AUTHORIZATION bob"), SQL_OTHER);
    assert_int_equal(pin_of("SELECT set_config('search_path', current_setting('x.y'), false)"),
                     PIN_UNTRACKED_SET);
    assert_int_equal(pin_of("SELECT set_config('a.b', 'c', false) FROM t"), PIN_UNTRACKED_SET);
    assert_int_equal(pin_of("SELECT set_config('a.b', 'c', $1)"), PIN_UNTRACKED_SET);
    assert_int_equal(pin_of("SELECT 1 WHERE set_config('a.b', 'c', false) <> ''"),
                     PIN_UNTRACKED_SET);
    assert_int_equal(pin_of("SELECT set_config('session_authorization', 'bob', false)"),
                     PIN_UNTRACKED_SET);
    /* A name part of 64 bytes or more: a SET replay would name it truncated (found by
     * tests/fuzz/fuzz_sqlclass); 63 bytes still replays. */
    assert_int_equal(
        pin_of("SELECT set_config('x.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
               "aaaaaaaaaaaaaa', 'v', false)"),
        PIN_UNTRACKED_SET);
    assert_int_equal(
        kind_of("SELECT set_config('x.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                "aaaaaaaaaaaa', 'v', false)"),
        SQL_SET_CONFIG);
    /* search_path with the temp schema first: later CREATEs make temp objects */
    assert_int_equal(pin_of("SET search_path = pg_temp, public"), PIN_TEMP_TABLE);
    assert_int_equal(pin_of("SELECT set_config('search_path', 'pg_temp, public', false)"),
                     PIN_TEMP_TABLE);
    assert_int_equal(pin_of("SET search_path = public, pg_temp"), PIN_NONE);
    /* pg_dump's opening line: SET cannot spell an empty list, so it is not replayed */
    assert_int_equal(pin_of("SELECT pg_catalog.set_config('search_path', '', false)"),
                     PIN_UNTRACKED_SET);
}

static void test_set_config(void **state)
{
    assert_stmt("SELECT set_config('search_path', 'x', false)", SQL_SET_CONFIG, "search_path",
                "SET search_path TO 'x'");
    assert_stmt("select pg_catalog.set_config('search_path', 'a, \"B c\",\"$user\"', 'f')",
                SQL_SET_CONFIG, "search_path", "SET search_path TO 'a', 'B c', '$user'");
    assert_stmt("SELECT set_config('TimeZone', 'UTC', 'false'::boolean)", SQL_SET_CONFIG,
                "timezone", "SET timezone TO 'UTC'");
    assert_stmt("SELECT set_config('datestyle', 'ISO, DMY', false)", SQL_SET_CONFIG, "datestyle",
                "SET datestyle TO 'ISO, DMY'");
    assert_stmt("SELECT set_config('statement_timeout', NULL, false)", SQL_RESET,
                "statement_timeout", "");
    assert_stmt("SELECT set_config('work_mem', '1GB', true)", SQL_SET_LOCAL, "work_mem", "");
    assert_int_equal(pin_of("SELECT set_config('work_mem', '1GB', true)"), PIN_NONE);
    assert_int_equal(pin_of("SELECT set_config('work_mem', '1GB', false)"), PIN_NONE);
    /* set_config(..., true) anywhere only lasts the transaction */
    assert_int_equal(pin_of("SELECT set_config('a.b', x, true) FROM t"), PIN_NONE);
}

/* Quotes, comments and dollar quotes the old lexer tripped on: the SET after them counts. */
static void test_set_after_literals(void **state)
{
    static const char *const qs[] = {
        "SELECT $$;'$$; SET search_path = a",
        "SELECT $tag$ it's; $$ $tag$; SET search_path = a",
        "SELECT E'\\';'; SET search_path = a",
        "SELECT 1 -- it's\n; SET search_path = a",
        "SELECT /* it's; /* nested */ */ 1; SET search_path = a",
        "SELECT \"we;ird\" FROM t; SET search_path = a",
    };
    for (size_t i = 0; i < sizeof(qs) / sizeof(qs[0]); i++) {
        struct one o = classify_at(qs[i], strlen(qs[i]), 1);
        assert_int_equal(o.n, 2);
        assert_int_equal(o.kind, SQL_SET);
        assert_string_equal(o.name, "search_path");
        assert_string_equal(o.replay, "SET search_path TO 'a'");
        assert_int_equal(o.pin, PIN_NONE);
        assert_int_equal(classify_at(qs[i], strlen(qs[i]), 0).kind, SQL_OTHER);
    }
}

static void test_long_statement(void **state)
{
    /* 20 kB of SELECT, then a SET after the ';': beyond what any cache or buffer keeps */
    size_t n = 20 * 1024;
    char *q = malloc(n + 64);
    strcpy(q, "SELECT '");
    size_t l = strlen(q);
    memset(q + l, 'x', n);
    strcpy(q + l + n, "'; SET search_path = a");
    struct one o = classify_at(q, strlen(q), 1);
    assert_int_equal(o.n, 2);
    assert_int_equal(o.kind, SQL_SET);
    assert_string_equal(o.replay, "SET search_path TO 'a'");
    /* and the same again (not cached: too long) */
    o = classify_at(q, strlen(q), 1);
    assert_int_equal(o.kind, SQL_SET);
    free(q);
}

static void test_multi(void **state)
{
    const char *q = "BEGIN; SET LOCAL a.b = 1; set x.y = 2; COMMIT";
    struct sql_info si;
    assert_int_equal(sql_classify(q, strlen(q), &si), 4);
    assert_int_equal(si.stmts[0].kind, SQL_BEGIN);
    assert_int_equal(si.stmts[1].kind, SQL_SET_LOCAL);
    assert_int_equal(si.stmts[2].kind, SQL_SET);
    assert_string_equal(si.stmts[2].replay, "SET \"x\".\"y\" TO 2");
    assert_int_equal(si.stmts[3].kind, SQL_COMMIT);
    assert_int_equal(si.pin, PIN_NONE);
    sql_info_free(&si);

    q = "SELECT 1; LISTEN chan; CREATE TEMP TABLE t (a int)";
    sql_classify(q, strlen(q), &si);
    assert_int_equal(si.n, 3);
    assert_int_equal(si.pin, PIN_LISTEN);
    assert_int_equal(si.stmts[0].pin, PIN_NONE);
    assert_int_equal(si.stmts[1].pin, PIN_LISTEN);
    assert_int_equal(si.stmts[2].pin, PIN_TEMP_TABLE);
    sql_info_free(&si);

    /* a trailing ';' and a trailing comment are not statements */
    assert_int_equal(cls("SELECT 1;").n, 1);
    assert_int_equal(cls("SELECT 1; -- done").n, 1);
    assert_int_equal(cls("").n, 0);
    assert_int_equal(cls("-- nothing").n, 0);
}

static void test_deallocate(void **state)
{
    assert_stmt("DEALLOCATE p1", SQL_DEALLOCATE, "p1", "");
    assert_stmt("deallocate prepare \"P 2\"", SQL_DEALLOCATE, "P 2", "");
    assert_stmt("DEALLOCATE ALL", SQL_DEALLOCATE, "", "");
    struct sql_info si;
    sql_classify("DEALLOCATE ALL", 14, &si);
    assert_null(si.stmts[0].name);
    sql_info_free(&si);
}

static void test_parse_error(void **state)
{
    struct one o = cls("SELEC 1");
    assert_int_equal(o.parse_error, 1);
    assert_int_equal(o.n, 0);
    o = cls("SET search_path = a; SELEC 1");
    assert_int_equal(o.parse_error, 1);
    assert_int_equal(o.n, 0);
    assert_int_equal(o.pin, PIN_NONE);
    o = cls("CREATE TEMP TABLE");
    assert_int_equal(o.parse_error, 1);
    assert_int_equal(o.pin, PIN_NONE);
}

static void test_text_bounds(void **state)
{
    /* not NUL-terminated: only len bytes count */
    const char *q = "BEGINxxxx";
    assert_int_equal(classify_at(q, 5, 0).kind, SQL_BEGIN);
    /* the Query message's terminating NUL (and anything after) is not text */
    const char z[] = "COMMIT\0LISTEN x";
    struct one o = classify_at(z, sizeof(z), 0);
    assert_int_equal(o.n, 1);
    assert_int_equal(o.kind, SQL_COMMIT);
    assert_int_equal(o.pin, PIN_NONE);
}

static void test_pins(void **state)
{
    assert_int_equal(pin_of("CREATE TEMP TABLE t (a int)"), PIN_TEMP_TABLE);
    assert_int_equal(pin_of("create temporary table t (a int)"), PIN_TEMP_TABLE);
    assert_int_equal(pin_of("CREATE LOCAL TEMP TABLE t (a int) ON COMMIT DELETE ROWS"),
                     PIN_TEMP_TABLE);
    assert_int_equal(pin_of("CREATE TEMP VIEW v AS SELECT 1"), PIN_TEMP_TABLE);
    assert_int_equal(pin_of("CREATE TEMP SEQUENCE s"), PIN_TEMP_TABLE);
    assert_int_equal(pin_of("CREATE TEMP TABLE t AS SELECT 1"), PIN_TEMP_TABLE);
    assert_int_equal(pin_of("CREATE TABLE pg_temp.t (a int)"), PIN_TEMP_TABLE);
    assert_int_equal(pin_of("CREATE VIEW pg_temp.v AS SELECT 1"), PIN_TEMP_TABLE);
    assert_int_equal(pin_of("CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'"),
                     PIN_TEMP_TABLE);
    assert_int_equal(pin_of("SELECT 1 AS a INTO TEMP t"), PIN_TEMP_TABLE);
    assert_int_equal(pin_of("SELECT 1 AS a INTO TEMPORARY TABLE t"), PIN_TEMP_TABLE);
    assert_int_equal(pin_of("WITH x AS (SELECT 1 AS a) SELECT * INTO TEMP t FROM x"),
                     PIN_TEMP_TABLE);
    assert_int_equal(pin_of("LISTEN chan"), PIN_LISTEN);
    assert_int_equal(pin_of("LOAD 'auto_explain'"), PIN_LOAD);
    assert_int_equal(pin_of("PREPARE p (int) AS SELECT $1"), PIN_SQL_PREPARE);
    assert_int_equal(pin_of("DECLARE c CURSOR WITH HOLD FOR SELECT 1"), PIN_HOLD_CURSOR);
    assert_int_equal(pin_of("SELECT pg_advisory_lock(1)"), PIN_ADVISORY_LOCK);
    assert_int_equal(pin_of("SELECT pg_advisory_lock_shared(1, 2)"), PIN_ADVISORY_LOCK);
    assert_int_equal(pin_of("select pg_catalog.pg_try_advisory_lock(42)"), PIN_ADVISORY_LOCK);
    assert_int_equal(pin_of("SELECT pg_try_advisory_lock_shared(1)"), PIN_ADVISORY_LOCK);
    assert_int_equal(pin_of("SELECT * FROM jobs WHERE pg_try_advisory_lock(id) LIMIT 1"),
                     PIN_ADVISORY_LOCK);
    assert_int_equal(pin_of("SELECT nextval('s')"), PIN_SEQUENCE);
    assert_int_equal(pin_of("SELECT setval('s', 10)"), PIN_SEQUENCE);
    assert_int_equal(pin_of("SELECT currval('s')"), PIN_SEQUENCE);
    assert_int_equal(pin_of("SELECT lastval()"), PIN_SEQUENCE);
    assert_int_equal(pin_of("SELECT * FROM lastval()"), PIN_SEQUENCE);
    assert_int_equal(pin_of("INSERT INTO t (id) VALUES (nextval('t_id_seq'))"), PIN_SEQUENCE);
    assert_int_equal(pin_of("UPDATE t SET a = (SELECT currval('s'))"), PIN_SEQUENCE);
    assert_int_equal(pin_of("CALL p(nextval('s'))"), PIN_SEQUENCE);
    assert_int_equal(pin_of("SELECT dblink_connect('c', 'dbname=x')"), PIN_DBLINK);
    assert_int_equal(pin_of("DO $$BEGIN CREATE TEMP TABLE t (a int); END$$"), PIN_TEMP_TABLE);
    assert_int_equal(pin_of("DO $$BEGIN PERFORM pg_advisory_lock(1); END$$"), PIN_ADVISORY_LOCK);
    assert_int_equal(pin_of("DO $$BEGIN SET search_path = a; END$$"), PIN_UNTRACKED_SET);
    assert_int_equal(pin_of("DO $$BEGIN PERFORM set_config('a.b', 'c', false); END$$"),
                     PIN_UNTRACKED_SET);
    assert_int_equal(pin_of("EXPLAIN ANALYZE SELECT nextval('s')"), PIN_SEQUENCE);
    assert_int_equal(pin_of("SELECT U&\"nextv\\0061l\"('s')"), PIN_SEQUENCE);
}

/* The other way round: words in strings, comments, names pin nothing, nor do transaction-scoped
 * variants. */
static void test_not_pinned(void **state)
{
    static const char *const qs[] = {
        "SELECT temp FROM t",
        "SELECT temperature FROM readings WHERE temp > 30",
        "SELECT 'listen'",
        "SELECT 'temp', 'load', 'nextval(1)'",
        "SELECT 1 -- it's a temp thing; LISTEN x",
        "SELECT \"load\", \"listen\" FROM t",
        "INSERT INTO t (listen, temp) VALUES ('LOAD x', 'CREATE TEMP TABLE y')",
        "SELECT $$CREATE TEMP TABLE x$$",
        "SELECT E'\\'LISTEN x'",
        "SELECT pg_advisory_xact_lock(1)",
        "SELECT pg_try_advisory_xact_lock(1)",
        "SELECT pg_advisory_unlock(1)",
        "CREATE TEMP TABLE t (a int) ON COMMIT DROP",
        "CREATE TEMP TABLE t ON COMMIT DROP AS SELECT 1",
        "DECLARE c CURSOR FOR SELECT 1",
        "DECLARE c NO SCROLL CURSOR WITHOUT HOLD FOR SELECT 1",
        "UNLISTEN chan",
        "NOTIFY chan, 'temp'",
        "CREATE TABLE temp_data (a int)",
        "CREATE TABLE t (nextval int)",
        "SELECT 1 INTO t2",
        "EXECUTE p(1)",
        "DO $$BEGIN UPDATE t SET a = 1; END$$",
        "SELECT set_config_x('a', 'b', false)",
        "COMMENT ON TABLE t IS 'listen to the temp'",
    };
    for (size_t i = 0; i < sizeof(qs) / sizeof(qs[0]); i++) {
        struct one o = cls(qs[i]);
        if (o.pin != PIN_NONE || o.parse_error)
            fail_msg("%s: pin %d parse_error %d", qs[i], o.pin, o.parse_error);
    }
}

static void test_pin_names(void **state)
{
    assert_string_equal(pin_reason_name(PIN_NONE), "none");
    assert_string_equal(pin_reason_name(PIN_TEMP_TABLE), "temp table");
    assert_string_equal(pin_reason_name(PIN_UNTRACKED_SET), "untracked SET");
    assert_string_equal(pin_reason_name(PIN_SEQUENCE), "sequence function");
    assert_string_equal(pin_reason_name(PIN_DBLINK), "dblink connection");
    assert_string_equal(pin_reason_name(PIN_NREASONS), "?");
    assert_string_equal(pin_reason_name(-1), "?");
    for (int i = 0; i < PIN_NREASONS; i++)
        assert_non_null(pin_reason_name(i));
    assert_true(PIN_NREASONS <= 16); /* core/worker.h counts pins in 16 slots */
}

/* The cache gives the same answer as the parser, and survives eviction (more texts than slots). */
static void test_cache(void **state)
{
    char q[64];
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < 3000; i++) {
            snprintf(q, sizeof(q), "SET application_name = 'app%d'", i);
            struct one o = cls(q);
            char want[64];
            snprintf(want, sizeof(want), "SET application_name TO 'app%d'", i);
            assert_int_equal(o.kind, SQL_SET);
            assert_string_equal(o.replay, want);
        }
    /* same bytes, different lengths */
    assert_int_equal(classify_at("BEGIN; LISTEN x", 5, 0).pin, PIN_NONE);
    assert_int_equal(classify_at("BEGIN; LISTEN x", 15, 0).pin, PIN_LISTEN);
    assert_int_equal(classify_at("BEGIN; LISTEN x", 5, 0).pin, PIN_NONE);
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static double ns_per_classify(const char *q, int iters)
{
    size_t len = strlen(q);
    struct sql_info si;
    double t0 = now_ns();
    for (int i = 0; i < iters; i++) {
        sql_classify(q, len, &si);
        sql_info_free(&si);
    }
    return (now_ns() - t0) / iters;
}

/* ThreadSanitizer checks every memory access (and each lock of the shared cache): several
 * times slower than ASan, for which the bounds below were set. */
#ifdef __SANITIZE_THREAD__
#define COST_SCALE 4
#else
#define COST_SCALE 1
#endif

/* Not a pass/fail benchmark beyond an order of magnitude (sanitizer builds are slower): the
 * figures are printed for the record. */
static void test_cost(void **state)
{
    const char *plain = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
    const char *set = "SET search_path TO app, public";
    const char *begin = "BEGIN";
    double a = ns_per_classify(plain, 1000000);
    double b = ns_per_classify(set, 1000000);
    double c = ns_per_classify(begin, 1000000);
    char fresh[64];
    double t0 = now_ns();
    for (int i = 0; i < 2000; i++) {
        snprintf(fresh, sizeof(fresh), "SET application_name = 'cost%d'", i);
        struct sql_info si;
        sql_classify(fresh, strlen(fresh), &si);
        sql_info_free(&si);
    }
    double d = (now_ns() - t0) / 2000;
    printf("sqlclass: %.0f ns prefiltered SELECT, %.0f ns cached SET, %.0f ns cached BEGIN, "
           "%.0f ns parsed SET\n",
           a, b, c, d);
    assert_true(a < 5000 * COST_SCALE);
    assert_true(b < 10000 * COST_SCALE);
}

static int teardown(void **state)
{
    sql_classify_cleanup();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_transaction_kinds),
        cmocka_unit_test(test_set_tracked),
        cmocka_unit_test(test_set_long_value),
        cmocka_unit_test(test_reset),
        cmocka_unit_test(test_set_local),
        cmocka_unit_test(test_set_untracked),
        cmocka_unit_test(test_set_config),
        cmocka_unit_test(test_set_after_literals),
        cmocka_unit_test(test_long_statement),
        cmocka_unit_test(test_multi),
        cmocka_unit_test(test_deallocate),
        cmocka_unit_test(test_parse_error),
        cmocka_unit_test(test_text_bounds),
        cmocka_unit_test(test_pins),
        cmocka_unit_test(test_not_pinned),
        cmocka_unit_test(test_pin_names),
        cmocka_unit_test(test_cache),
        cmocka_unit_test(test_cost),
    };
    return cmocka_run_group_tests_name("sqlclass", tests, NULL, teardown);
}
