/* A small SQL lexer: what kind of statement a query starts with, and what would pin a session. */
#ifndef PGSTAY_PROTO_SQLSCAN_H
#define PGSTAY_PROTO_SQLSCAN_H

#include <stddef.h>

enum sql_kind {
    SQL_OTHER = 0,
    SQL_BEGIN,    /* BEGIN, START TRANSACTION */
    SQL_COMMIT,   /* COMMIT, END, COMMIT PREPARED is OTHER */
    SQL_ROLLBACK, /* ROLLBACK, ABORT (not ROLLBACK TO SAVEPOINT) */
    SQL_SET,      /* SET [SESSION] name {=|TO} value */
    SQL_SET_LOCAL,
    SQL_RESET,     /* RESET name */
    SQL_RESET_ALL, /* RESET ALL, DISCARD ALL */
    SQL_DEALLOCATE, /* DEALLOCATE [PREPARE] name | ALL (name "all") */
};

/* Why a session's state cannot follow it to another server. */
enum pin_reason {
    PIN_NONE = 0,
    PIN_TEMP_TABLE,
    PIN_ADVISORY_LOCK,
    PIN_LISTEN,
    PIN_SQL_PREPARE,
    PIN_HOLD_CURSOR,
    PIN_LOAD,
    PIN_PREPARED_LIMIT, /* more protocol-level prepared statements than pgstay keeps to replay */
    PIN_UNTRACKED_SET,  /* SET SESSION AUTHORIZATION/CHARACTERISTICS, SET inside multi-statements */
    PIN_NREASONS
};

const char *pin_reason_name(int reason);

struct sql_info {
    int kind;          /* enum sql_kind of the first statement */
    int pin;           /* enum pin_reason found anywhere in the text, or PIN_NONE */
    int multi;         /* more than one statement */
    int discard_all;   /* DISCARD ALL: the server forgets prepared statements too */
    char name[64];     /* SET/RESET: the parameter, lower-cased */
    char value[256];   /* SET: the value as written (quotes kept), to be replayed verbatim */
};

/* Classify len bytes of SQL text (not necessarily NUL-terminated). */
void sql_scan(const char *q, size_t len, struct sql_info *out);

#endif
