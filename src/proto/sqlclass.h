/* The statement classifier behind session-state tracking: PostgreSQL's own grammar (libpg_query)
 * says what each statement of a Query is, which SETs can be replayed on another server, and what
 * pins a session to its server. A byte prefilter keeps ordinary queries off the parser. */
#ifndef PGSTAY_PROTO_SQLCLASS_H
#define PGSTAY_PROTO_SQLCLASS_H

#include <stddef.h>

enum sql_kind {
    SQL_OTHER = 0,
    SQL_BEGIN,               /* BEGIN, START TRANSACTION */
    SQL_COMMIT,              /* COMMIT, END (also AND CHAIN) */
    SQL_ROLLBACK,            /* ROLLBACK, ABORT (also AND CHAIN); not ROLLBACK TO */
    SQL_SAVEPOINT,           /* SAVEPOINT name */
    SQL_RELEASE,             /* RELEASE [SAVEPOINT] name */
    SQL_ROLLBACK_TO,         /* ROLLBACK TO [SAVEPOINT] name */
    SQL_PREPARE_TRANSACTION, /* PREPARE TRANSACTION: ends the block like COMMIT (its SETs stay;
                              * in a failed block the server answers ROLLBACK) */
    SQL_SET,                 /* session SET, with a replay. SET ROLE is one (name "role"):
                              * a plain parameter, replayable since a pool's servers all log
                              * in as the same user; SET SESSION AUTHORIZATION pins */
    SQL_SET_LOCAL,           /* SET LOCAL, SET TRANSACTION [SNAPSHOT], SET transaction_*,
                              * set_config(..., true): this transaction only, no session effect */
    SQL_RESET,               /* RESET name, SET name TO DEFAULT, SET TIME ZONE LOCAL|DEFAULT,
                              * SELECT set_config('name', NULL, false) */
    SQL_RESET_ALL,           /* RESET ALL */
    SQL_DISCARD_ALL, /* DISCARD ALL: RESET ALL, and the server forgets prepared statements too */
    SQL_DEALLOCATE,  /* DEALLOCATE [PREPARE] name | ALL */
    SQL_SET_CONFIG,  /* SELECT set_config('name', 'value', false) with constant arguments and
                      * nothing else in the statement: a tracked SET, with a replay (for list
                      * parameters such as search_path the replay lists the elements: the same
                      * list, spelled the server's way). It returns a row, unlike SET */
};

/* Why a session's state cannot follow it to another server. Values are stable: admin counts
 * pins by them (core/worker.h keeps 16 counters). */
enum pin_reason {
    PIN_NONE = 0,
    PIN_TEMP_TABLE,     /* CREATE TEMP ..., CREATE ... pg_temp.x, SELECT INTO TEMP, SET
                         * search_path with pg_temp first (later creations land there) */
    PIN_ADVISORY_LOCK,  /* pg_[try_]advisory_lock[_shared]() (session-level, not _xact_) */
    PIN_LISTEN,         /* LISTEN */
    PIN_SQL_PREPARE,    /* SQL-level PREPARE */
    PIN_HOLD_CURSOR,    /* DECLARE ... WITH HOLD */
    PIN_LOAD,           /* LOAD */
    PIN_PREPARED_LIMIT, /* more protocol-level prepared statements than pgstay keeps to replay
                         * (set by client.c, never by sql_classify) */
    PIN_UNTRACKED_SET,  /* SET SESSION AUTHORIZATION, SET SESSION CHARACTERISTICS, SET ... FROM
                         * CURRENT, a SET value that cannot be rebuilt, set_config(..., false)
                         * other than the SQL_SET_CONFIG form */
    PIN_SEQUENCE,       /* nextval/setval/currval/lastval: currval and lastval are per session */
    PIN_DBLINK,         /* dblink_connect[_u]: a connection kept by the server session */
    PIN_NREASONS
};

/* Names for logs and the admin console. static inline: no symbol, so this module links
 * alongside the old lexer (proto/sqlscan.c) that defines pin_reason_name() too. */
static inline const char *pin_reason_name(int reason)
{
    static const char *const names[PIN_NREASONS] = {
        "none",
        "temp table",
        "advisory lock",
        "LISTEN",
        "SQL PREPARE",
        "WITH HOLD cursor",
        "LOAD",
        "prepared statements beyond the replay limit",
        "untracked SET",
        "sequence function",
        "dblink connection",
    };
    return reason >= 0 && reason < PIN_NREASONS ? names[reason] : "?";
}

/* One statement of a Query, in text order. */
struct sql_stmt {
    int kind; /* enum sql_kind */
    int pin;  /* enum pin_reason this statement causes, or PIN_NONE */
    /* SET, SET_LOCAL, RESET, SET_CONFIG: the canonical lower-case parameter name (timezone for
     *   TIME ZONE, search_path for SCHEMA, xmloption for XML OPTION, client_encoding for NAMES,
     *   role for ROLE, transaction_isolation etc. for SET TRANSACTION);
     * SAVEPOINT, RELEASE, ROLLBACK_TO: the savepoint name;
     * DEALLOCATE: the statement name, NULL for DEALLOCATE ALL;
     * otherwise NULL. */
    char *name;
    /* SET and SET_CONFIG: a complete statement (no trailing ';') that gives another server the
     * same value, e.g. "SET timezone TO 'UTC'", values quoted as literals; NULL otherwise. */
    char *replay;
};

struct sql_info {
    int n;                  /* statements in the text; 0 for an empty text or a parse error */
    struct sql_stmt *stmts; /* n statements; owned, released by sql_info_free (do not copy the
                             * struct and free both copies) */
    int pin;                /* the first statement's pin that is not PIN_NONE, or PIN_NONE */
    int parse_error;        /* the grammar rejects the text: so will the server, nothing runs */
};

/* Classify len bytes of SQL text, any length, not necessarily NUL-terminated (the text ends at
 * the first NUL, as the server reads it). Always fills *out; release it with sql_info_free.
 * Returns out->n. Not thread-safe: one cache per process. */
int sql_classify(const char *q, size_t len, struct sql_info *out);
void sql_info_free(struct sql_info *info);

/* Free the cache and libpg_query's memory of the calling thread (at exit; leak checkers). */
void sql_classify_cleanup(void);
/* This thread's cache only: a worker thread's end (libpg_query frees a thread's parser memory
 * itself when the thread exits). */
void sql_classify_drop_cache(void);

#endif
