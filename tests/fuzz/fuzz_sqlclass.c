/* Fuzz target: the statement classifier (SET tracking and pins). Checked beyond "no crash":
 * the result is well formed; classifying again (from its cache) gives the same answer; and a
 * SET's replay, classified in turn, is one SET of the same parameter with no pin (what another
 * server is given must do what the client's statement did). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/sqlclass.h"

#include "../harness/pgfake.h"

static void well_formed(const struct sql_info *in)
{
    HCHECK(in->n >= 0 && (in->n == 0 || in->stmts));
    int first_pin = PIN_NONE;
    for (int i = 0; i < in->n; i++) {
        const struct sql_stmt *s = &in->stmts[i];
        HCHECK(s->kind >= SQL_OTHER && s->kind <= SQL_SET_CONFIG);
        HCHECK(s->pin >= PIN_NONE && s->pin < PIN_NREASONS);
        if (s->pin && !first_pin)
            first_pin = s->pin;
        if (s->kind == SQL_SET || s->kind == SQL_SET_CONFIG)
            HCHECK(s->name && s->replay);
        /* SET_LOCAL and RESET may have no name (set_config of a name no replay could spell):
         * their consumers (client.c) check. */
        if (s->kind == SQL_SAVEPOINT || s->kind == SQL_RELEASE || s->kind == SQL_ROLLBACK_TO)
            HCHECK(s->name != NULL);
    }
    HCHECK(in->pin == first_pin);
    if (in->parse_error)
        HCHECK(in->n == 0);
}

/* A parameter name PostgreSQL takes (valid_custom_variable_name): no empty part around a dot,
 * no part starting with a digit or '$'. A statement naming another fails on the server, so its
 * SET is never tracked nor replayed. */
static int pg_takes_name(const char *n)
{
    int start = 1;
    for (; *n; n++) {
        if (*n == '.') {
            if (start)
                return 0;
            start = 1;
            continue;
        }
        if (start && ((*n >= '0' && *n <= '9') || *n == '$'))
            return 0;
        start = 0;
    }
    return !start;
}

static int same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && !strcmp(a, b));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 8192)
        return 0;
    struct sql_info a, b;
    sql_classify((const char *)data, size, &a);
    well_formed(&a);
    sql_classify((const char *)data, size, &b);
    HCHECK(a.n == b.n && a.pin == b.pin && a.parse_error == b.parse_error);
    for (int i = 0; i < a.n; i++) {
        const struct sql_stmt *x = &a.stmts[i], *y = &b.stmts[i];
        HCHECK(x->kind == y->kind && x->pin == y->pin && same(x->name, y->name) &&
               same(x->replay, y->replay));
    }
    for (int i = 0; i < a.n; i++) {
        const struct sql_stmt *s = &a.stmts[i];
        if (!s->replay || s->pin || !pg_takes_name(s->name))
            continue;
        struct sql_info r;
        sql_classify(s->replay, strlen(s->replay), &r);
        if (r.n != 1 || r.stmts[0].kind != SQL_SET || r.stmts[0].pin ||
            !same(r.stmts[0].name, s->name))
            FAILF("the replay \"%s\" of statement %d (%s) is not the same SET: n %d kind %d pin "
                  "%d name %s",
                  s->replay, i, s->name, r.n, r.n ? r.stmts[0].kind : -1, r.n ? r.stmts[0].pin : -1,
                  r.n && r.stmts[0].name ? r.stmts[0].name : "-");
        sql_info_free(&r);
    }
    sql_info_free(&a);
    sql_info_free(&b);
    return 0;
}
