/* Statement classification with PostgreSQL's grammar (libpg_query): what each statement of a
 * Query does to the session. Words in strings, comments or column names mean nothing here; only
 * the parse tree does. Three layers, cheapest first:
 *   1. a byte prefilter: a DML statement that names none of the few functions and keywords that
 *      matter is SQL_OTHER without parsing (the common path, well under a microsecond);
 *   2. a cache of results by statement text (bounded, 4-way set-associative, LRU per set);
 *   3. the parser, then a generic walk of the protobuf tree for function calls and relations. */
#include "proto/sqlclass.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pg_query.h>
#include <pg_query/pg_query.pb-c.h>

/* The parser ran at least once in this thread (its memory then needs freeing at exit):
 * libpg_query's memory is per thread, as is the cache below (each worker keeps its own, so
 * that classifying takes no lock). */
static __thread int used_parser;

/* PostgreSQL's CURSOR_OPT_HOLD (nodes/parsenodes.h), not exported by libpg_query. */
#define CURSOR_OPT_HOLD 0x0020
/* INTERVAL_MASK(HOUR), INTERVAL_MASK(MINUTE) and INTERVAL_FULL_RANGE (utils/datetime.h,
 * utils/timestamp.h): the only typmods the grammar lets SET TIME ZONE INTERVAL carry. */
#define IMASK_HOUR          (1 << 10)
#define IMASK_MINUTE        (1 << 11)
#define INTERVAL_FULL_RANGE 0x7FFF

/* ---- small helpers ---- */

static inline unsigned char lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

/* A byte that continues an identifier (PostgreSQL: letters, digits, _, $ and any high byte). */
static inline int ident_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '$' || c >= 0x80;
}

/* w (lower case) at p[i], case-insensitively. */
static inline int at(const unsigned char *p, size_t n, size_t i, const char *w, size_t wl)
{
    if (n - i < wl)
        return 0;
    for (size_t k = 0; k < wl; k++)
        if (lower(p[i + k]) != (unsigned char)w[k])
            return 0;
    return 1;
}
#define AT(w) at(p, n, i, w, sizeof(w) - 1)

/* The same, as a whole word. */
static inline int word_at(const unsigned char *p, size_t n, size_t i, const char *w, size_t wl)
{
    return (i == 0 || !ident_char(p[i - 1])) && at(p, n, i, w, wl) &&
           (i + wl == n || !ident_char(p[i + wl]));
}
#define WORD(w) word_at(p, n, i, w, sizeof(w) - 1)

struct sbuf {
    char *p;
    size_t len, cap;
};

static void sb_putn(struct sbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np)
            abort();
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void sb_puts(struct sbuf *b, const char *s)
{
    sb_putn(b, s, strlen(s));
}

/* A string literal that reads the same whatever standard_conforming_strings is: E'' (with
 * doubled backslashes) when there is a backslash, plain '' otherwise. */
static void sb_literal(struct sbuf *b, const char *s)
{
    int bs = strchr(s, '\\') != NULL;
    sb_puts(b, bs ? "E'" : "'");
    for (; *s; s++) {
        if (*s == '\'' || (bs && *s == '\\'))
            sb_putn(b, s, 1);
        sb_putn(b, s, 1);
    }
    sb_putn(b, "'", 1);
}

static char *xstrdup(const char *s)
{
    char *d = strdup(s);
    if (!d)
        abort();
    return d;
}

/* ---- the prefilter ---- */

/* First words of statements that cannot change session state by themselves: only function
 * calls (found by the word scan below) or TEMP relations could. */
static int plain_first_word(const unsigned char *p, size_t n)
{
    size_t i = 0;
    for (;;) {
        while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r' ||
                         p[i] == '\f' || p[i] == '\v' || p[i] == '('))
            i++;
        if (n - i >= 2 && p[i] == '-' && p[i + 1] == '-') {
            while (i < n && p[i] != '\n')
                i++;
        } else if (n - i >= 2 && p[i] == '/' && p[i + 1] == '*') {
            return 0; /* nested comments: rare before a statement, let the parser have it */
        } else {
            break;
        }
    }
    static const char *const words[] = {"select", "insert",  "update", "delete",  "with",
                                        "values", "table",   "fetch",  "move",    "close",
                                        "copy",   "explain", "merge",  "execute", "show",
                                        "call",   "notify",  "lock",   NULL};
    for (int k = 0; words[k]; k++)
        if (word_at(p, n, i, words[k], strlen(words[k])))
            return 1;
    return 0;
}

/* Whether the bytes hold a word that could matter, and which pin it suggests: used by the
 * prefilter on whole texts (where a ';' before the end also counts: several statements) and on
 * DO blocks, whose body is a string to the grammar. Case-insensitive, quotes not understood:
 * a false alarm only costs a parse. */
#define SCAN_PREFILTER 1
#define SCAN_DO        2
/* The second letters each first letter of the words below can go on with (bit k: 'a' + k; bit 26:
 * '&'): a byte whose next one fits no word is passed over with two table lookups. Every query
 * of a client goes through here, and most of its letters start no word that matters (a 56-byte
 * SELECT cost ~1,200 instructions before; bench/results/profile-*.md). */
#define NEXT(ch) (1u << ((ch) - 'a'))
#define NEXT_AMP (1u << 26)
static const uint32_t word_next[256] = {
    ['a'] = NEXT('d'), ['A'] = NEXT('d'),                         /* advisory */
    ['c'] = NEXT('u'), ['C'] = NEXT('u'),                         /* currval */
    ['d'] = NEXT('b'), ['D'] = NEXT('b'),                         /* dblink */
    ['h'] = NEXT('o'), ['H'] = NEXT('o'),                         /* hold */
    ['l'] = NEXT('a') | NEXT('i') | NEXT('o'),                    /* lastval, listen, load */
    ['L'] = NEXT('a') | NEXT('i') | NEXT('o'),
    ['n'] = NEXT('e'), ['N'] = NEXT('e'),                         /* nextval */
    ['p'] = NEXT('g') | NEXT('r'), ['P'] = NEXT('g') | NEXT('r'), /* pg_temp, prepare */
    ['s'] = NEXT('e'), ['S'] = NEXT('e'),                         /* set_config, setval, set */
    ['t'] = NEXT('e'), ['T'] = NEXT('e'),                         /* temp, temporary */
    ['u'] = NEXT_AMP, ['U'] = NEXT_AMP,                           /* U&"..." */
};
#define LETTER(ch) [ch] = NEXT(ch), [(ch) - 32] = NEXT(ch)
static const uint32_t byte_bit[256] = {
    LETTER('a'), LETTER('b'), LETTER('c'), LETTER('d'), LETTER('e'), LETTER('f'), LETTER('g'),
    LETTER('h'), LETTER('i'), LETTER('j'), LETTER('k'), LETTER('l'), LETTER('m'), LETTER('n'),
    LETTER('o'), LETTER('p'), LETTER('q'), LETTER('r'), LETTER('s'), LETTER('t'), LETTER('u'),
    LETTER('v'), LETTER('w'), LETTER('x'), LETTER('y'), LETTER('z'), ['&'] = NEXT_AMP,
};

static int scan_words(const unsigned char *p, size_t n, int mode)
{
    if (mode == SCAN_PREFILTER) {
        /* Which pin the prefilter finds does not matter, only whether it finds one: the
         * several-statements test can come first. */
        const unsigned char *semi = memchr(p, ';', n);
        for (size_t k = semi ? (size_t)(semi - p) + 1 : n; k < n; k++)
            if (p[k] != ' ' && p[k] != '\t' && p[k] != '\n' && p[k] != '\r' && p[k] != ';')
                return PIN_UNTRACKED_SET;
    }
    /* Every word below is two bytes or more: the last byte starts none. What the next byte may
     * be followed by is carried over, so each byte is read and looked up once. */
    uint32_t next = n > 0 ? word_next[p[0]] : 0;
    for (size_t i = 0; i + 1 < n; i++) {
        unsigned char after = p[i + 1];
        uint32_t now = next;
        next = word_next[after];
        if (!(now & byte_bit[after]))
            continue;
        switch (p[i]) {
        case 'a':
        case 'A':
            if (AT("advisory"))
                return PIN_ADVISORY_LOCK;
            break;
        case 'c':
        case 'C':
            if (AT("currval"))
                return PIN_SEQUENCE;
            break;
        case 'd':
        case 'D':
            if (AT("dblink"))
                return PIN_DBLINK;
            break;
        case 'h':
        case 'H':
            if (mode == SCAN_DO && WORD("hold"))
                return PIN_HOLD_CURSOR;
            break;
        case 'l':
        case 'L':
            if (AT("lastval"))
                return PIN_SEQUENCE;
            if (mode == SCAN_DO && (WORD("listen")))
                return PIN_LISTEN;
            if (mode == SCAN_DO && (WORD("load")))
                return PIN_LOAD;
            break;
        case 'n':
        case 'N':
            if (AT("nextval"))
                return PIN_SEQUENCE;
            break;
        case 'p':
        case 'P':
            if (AT("pg_temp"))
                return PIN_TEMP_TABLE;
            if (mode == SCAN_DO && WORD("prepare"))
                return PIN_SQL_PREPARE;
            break;
        case 's':
        case 'S':
            if (AT("set_config"))
                return PIN_UNTRACKED_SET;
            if (AT("setval"))
                return PIN_SEQUENCE;
            if (mode == SCAN_DO && WORD("set")) {
                /* PL/pgSQL's SET statement, not UPDATE's SET: at a statement's start. */
                size_t k = i;
                while (k > 0 && (p[k - 1] == ' ' || p[k - 1] == '\t' || p[k - 1] == '\n' ||
                                 p[k - 1] == '\r'))
                    k--;
                if (k == 0 || p[k - 1] == ';' || (k >= 5 && word_at(p, k, k - 5, "begin", 5)) ||
                    (k >= 4 &&
                     (word_at(p, k, k - 4, "then", 4) || word_at(p, k, k - 4, "else", 4) ||
                      word_at(p, k, k - 4, "loop", 4))))
                    return PIN_UNTRACKED_SET;
            }
            break;
        case 't':
        case 'T':
            /* TEMP and TEMPORARY as words (a column "temperature" is not one) */
            if ((i == 0 || !ident_char(p[i - 1])) && AT("temp") &&
                (i + 4 == n || !ident_char(p[i + 4]) ||
                 (at(p, n, i + 4, "orary", 5) && (i + 9 == n || !ident_char(p[i + 9])))))
                return PIN_TEMP_TABLE;
            break;
        case 'u':
        case 'U':
            /* U&"..." identifiers can spell any name in escapes */
            if (i + 1 < n && p[i + 1] == '&' && (i == 0 || !ident_char(p[i - 1])))
                return PIN_UNTRACKED_SET;
            break;
        default:
            break;
        }
    }
    return PIN_NONE;
}

/* ---- results: one allocation per sql_info ---- */

/* What sql_classify returns for the prefilter's statements: no allocation at all. */
static const struct sql_stmt other_stmt = {SQL_OTHER, PIN_NONE, NULL, NULL};

/* A result block: n statements, then their strings; blocks are copied whole (cache hits). */
struct result {
    struct sql_stmt *stmts; /* the block, NULL if n == 0 */
    size_t size;
    int n, pin, parse_error;
};

struct tmp_stmt {
    int kind, pin;
    char *name, *replay;
};

static void pack(struct tmp_stmt *t, int n, struct result *r)
{
    size_t size = (size_t)n * sizeof(struct sql_stmt);
    for (int i = 0; i < n; i++)
        size +=
            (t[i].name ? strlen(t[i].name) + 1 : 0) + (t[i].replay ? strlen(t[i].replay) + 1 : 0);
    r->n = n;
    r->size = size;
    r->pin = PIN_NONE;
    r->stmts = NULL;
    if (n == 0)
        return;
    r->stmts = malloc(size);
    if (!r->stmts)
        abort();
    char *s = (char *)(r->stmts + n);
    for (int i = 0; i < n; i++) {
        struct sql_stmt *o = &r->stmts[i];
        o->kind = t[i].kind;
        o->pin = t[i].pin;
        o->name = o->replay = NULL;
        if (t[i].name) {
            o->name = s;
            s = stpcpy(s, t[i].name) + 1;
        }
        if (t[i].replay) {
            o->replay = s;
            s = stpcpy(s, t[i].replay) + 1;
        }
        if (!r->pin && o->pin)
            r->pin = o->pin;
    }
}

/* A copy of block r for the caller, pointers moved along. */
static struct sql_stmt *copy_block(const struct result *r)
{
    if (!r->stmts)
        return NULL;
    struct sql_stmt *b = malloc(r->size);
    if (!b)
        abort();
    memcpy(b, r->stmts, r->size);
    for (int i = 0; i < r->n; i++) {
        if (b[i].name)
            b[i].name = (char *)b + (b[i].name - (char *)r->stmts);
        if (b[i].replay)
            b[i].replay = (char *)b + (b[i].replay - (char *)r->stmts);
    }
    return b;
}

/* ---- the cache ---- */

#define CACHE_SETS 256
#define CACHE_WAYS 4
/* Longer texts are parsed each time: they would make the cache's memory unbounded in practice
 * (1024 entries of this size is the ceiling: 4 MB). */
#define CACHE_MAX_TEXT 4096

struct centry {
    uint64_t hash;
    size_t len;
    char *text; /* NULL: empty slot */
    uint64_t used;
    struct result r;
};

static __thread struct centry cache[CACHE_SETS][CACHE_WAYS];
static __thread uint64_t cache_tick;

static uint64_t hash_text(const unsigned char *p, size_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ n;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDULL;
        h ^= h >> 32;
    }
    for (; i < n; i++)
        h = (h ^ p[i]) * 0x100000001B3ULL;
    h ^= h >> 29;
    h *= 0xC4CEB9FE1A85EC53ULL;
    return h ^ (h >> 32);
}

static struct centry *cache_find(uint64_t h, const char *q, size_t len)
{
    struct centry *set = cache[h % CACHE_SETS];
    for (int w = 0; w < CACHE_WAYS; w++)
        if (set[w].text && set[w].hash == h && set[w].len == len &&
            memcmp(set[w].text, q, len) == 0) {
            set[w].used = ++cache_tick;
            return &set[w];
        }
    return NULL;
}

static void cache_put(uint64_t h, const char *q, size_t len, const struct result *r)
{
    struct centry *set = cache[h % CACHE_SETS], *victim = &set[0];
    for (int w = 0; w < CACHE_WAYS; w++) {
        if (!set[w].text) {
            victim = &set[w];
            break;
        }
        if (set[w].used < victim->used)
            victim = &set[w];
    }
    free(victim->text);
    free(victim->r.stmts);
    victim->text = malloc(len ? len : 1);
    if (!victim->text)
        abort();
    memcpy(victim->text, q, len);
    victim->hash = h;
    victim->len = len;
    victim->used = ++cache_tick;
    victim->r = *r;
    victim->r.stmts = copy_block(r);
}

/* ---- reading parse trees ---- */

static const char *str_node(const PgQuery__Node *n)
{
    return n && n->node_case == PG_QUERY__NODE__NODE_STRING ? n->string->sval : NULL;
}

/* The unqualified name of a function call. */
static const char *func_name(const PgQuery__FuncCall *f)
{
    return f->n_funcname ? str_node(f->funcname[f->n_funcname - 1]) : NULL;
}

/* PostgreSQL's parse_bool_with_len: true/false/yes/no/on/off/1/0 and unique prefixes. */
static int parse_bool(const char *s, int *out)
{
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
        n--;
    if (n == 0)
        return 0;
    const unsigned char *p = (const unsigned char *)s;
    static const struct {
        const char *w;
        size_t min;
        int v;
    } words[] = {
        {"true", 1, 1}, {"false", 1, 0}, {"yes", 1, 1}, {"no", 1, 0},
        {"on", 2, 1},   {"off", 2, 0},   {"1", 1, 1},   {"0", 1, 0},
    };
    for (size_t k = 0; k < sizeof(words) / sizeof(words[0]); k++)
        if (n >= words[k].min && n <= strlen(words[k].w) && at(p, n, 0, words[k].w, n)) {
            *out = words[k].v;
            return 1;
        }
    return 0;
}

/* A constant boolean argument: TRUE/FALSE, 'string', or either cast to bool. */
static int const_bool(const PgQuery__Node *n, int *out)
{
    if (n && n->node_case == PG_QUERY__NODE__NODE_TYPE_CAST) {
        const PgQuery__TypeName *t = n->type_cast->type_name;
        const char *tn = t && t->n_names ? str_node(t->names[t->n_names - 1]) : NULL;
        if (!tn || (strcmp(tn, "bool") != 0 && strcmp(tn, "boolean") != 0))
            return 0;
        n = n->type_cast->arg;
    }
    if (!n || n->node_case != PG_QUERY__NODE__NODE_A_CONST || n->a_const->isnull)
        return 0;
    const PgQuery__AConst *c = n->a_const;
    if (c->val_case == PG_QUERY__A__CONST__VAL_BOOLVAL) {
        *out = c->boolval->boolval ? 1 : 0;
        return 1;
    }
    if (c->val_case == PG_QUERY__A__CONST__VAL_SVAL)
        return parse_bool(c->sval->sval, out);
    return 0;
}

/* A constant string argument ('...'), or NULL for a constant NULL (*isnull set). */
static int const_str(const PgQuery__Node *n, const char **out, int *isnull)
{
    if (!n || n->node_case != PG_QUERY__NODE__NODE_A_CONST)
        return 0;
    const PgQuery__AConst *c = n->a_const;
    *isnull = c->isnull ? 1 : 0;
    if (c->isnull) {
        *out = NULL;
        return 1;
    }
    if (c->val_case != PG_QUERY__A__CONST__VAL_SVAL)
        return 0;
    *out = c->sval->sval;
    return 1;
}

/* A GUC name in canonical form (lower case), or NULL if it is not one a replay could name. */
static char *guc_name(const char *s)
{
    if (!*s)
        return NULL;
    char *d = xstrdup(s);
    size_t part = 0;
    for (char *c = d; *c; c++) {
        *c = (char)lower((unsigned char)*c);
        part = *c == '.' ? 0 : part + 1;
        /* A part of 64 bytes or more: set_config() takes it whole, but the replay's SET would
         * name it truncated to NAMEDATALEN - 1, another parameter (found by
         * tests/fuzz/fuzz_sqlclass). */
        if ((!ident_char((unsigned char)*c) && *c != '.') || part >= 64) {
            free(d);
            return NULL;
        }
    }
    return d;
}

/* "SET name TO ": a dotted (extension) name is quoted part by part, since any part could be a
 * reserved word; built-in names are plain identifiers. */
static void sb_set_head(struct sbuf *b, const char *name)
{
    sb_puts(b, "SET ");
    if (!strchr(name, '.')) {
        sb_puts(b, name);
    } else {
        for (const char *s = name; *s;) {
            const char *e = strchr(s, '.');
            size_t l = e ? (size_t)(e - s) : strlen(s);
            sb_putn(b, "\"", 1);
            sb_putn(b, s, l);
            sb_putn(b, "\"", 1);
            s += l;
            if (*s) {
                sb_putn(b, ".", 1);
                s++;
            }
        }
    }
    sb_puts(b, " TO ");
}

/* Parameters whose list elements SET quotes as identifiers (GUC_LIST_QUOTE): a set_config value
 * for them has to be split into elements to mean the same in a SET. */
static int list_quote_guc(const char *name)
{
    return !strcmp(name, "search_path") || !strcmp(name, "temp_tablespaces") ||
           !strcmp(name, "session_preload_libraries") || !strcmp(name, "local_preload_libraries") ||
           !strcmp(name, "shared_preload_libraries");
}

/* PostgreSQL's SplitIdentifierString, emitting each element as a literal: "a, "B c"" becomes
 * 'a', 'B c'. Returns 0 on a malformed or empty list (left untracked). first gets element one. */
static int sb_split_list(struct sbuf *b, const char *s, char **first)
{
    int count = 0;
    struct sbuf e = {0};
    *first = NULL;
    for (;;) {
        while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
            s++;
        e.len = 0;
        if (*s == '"') {
            for (s++; *s != '"' || s[1] == '"'; s++) {
                if (!*s)
                    goto fail;
                if (*s == '"')
                    s++; /* "" inside quotes */
                sb_putn(&e, s, 1);
            }
            s++;
        } else {
            while (*s && *s != ',' && *s != ' ' && *s != '\t' && *s != '\n' && *s != '\r') {
                char c = (char)lower((unsigned char)*s++);
                sb_putn(&e, &c, 1);
            }
        }
        if (e.len == 0)
            goto fail; /* an empty element, or "": a zero-length identifier */
        if (e.len > 63)
            e.p[e.len = 63] = 0; /* NAMEDATALEN - 1, as the server truncates */
        while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
            s++;
        if (count++)
            sb_puts(b, ", ");
        sb_literal(b, e.p);
        if (!*first)
            *first = xstrdup(e.p);
        if (*s == ',') {
            s++;
            continue;
        }
        if (*s)
            goto fail;
        free(e.p);
        return 1;
    }
fail:
    free(e.p);
    free(*first);
    *first = NULL;
    return 0;
}

static int pg_temp_name(const char *s)
{
    return s && strncmp(s, "pg_temp", 7) == 0 && (s[7] == 0 || s[7] == '_');
}

/* One SET argument as the SET grammar reads it back: strings as literals, numbers as numbers. */
static int sb_set_arg(struct sbuf *b, const PgQuery__Node *a)
{
    if (!a || a->node_case != PG_QUERY__NODE__NODE_A_CONST || a->a_const->isnull)
        return 0;
    const PgQuery__AConst *c = a->a_const;
    char num[32];
    switch (c->val_case) {
    case PG_QUERY__A__CONST__VAL_SVAL:
        sb_literal(b, c->sval->sval);
        return 1;
    case PG_QUERY__A__CONST__VAL_IVAL:
        snprintf(num, sizeof(num), "%d", (int)c->ival->ival);
        sb_puts(b, num);
        return 1;
    case PG_QUERY__A__CONST__VAL_FVAL:
        for (const char *s = c->fval->fval; *s; s++)
            if (!strchr("0123456789.eE+-", *s))
                return 0;
        sb_puts(b, c->fval->fval);
        return 1;
    case PG_QUERY__A__CONST__VAL_BOOLVAL:
        sb_puts(b, c->boolval->boolval ? "true" : "false");
        return 1;
    default:
        return 0;
    }
}

/* SET TIME ZONE INTERVAL '...' [HOUR | HOUR TO MINUTE] | INTERVAL(p) '...': only SET TIME ZONE
 * can say it, so the replay does too. */
static int sb_tz_interval(struct sbuf *b, const PgQuery__TypeCast *tc)
{
    const PgQuery__TypeName *t = tc->type_name;
    const char *tn = t && t->n_names ? str_node(t->names[t->n_names - 1]) : NULL;
    const PgQuery__Node *a = tc->arg;
    if (!tn || strcmp(tn, "interval") != 0 || !a || a->node_case != PG_QUERY__NODE__NODE_A_CONST ||
        a->a_const->isnull || a->a_const->val_case != PG_QUERY__A__CONST__VAL_SVAL)
        return 0;
    int mods[2] = {-1, -1};
    if (t->n_typmods > 2)
        return 0;
    for (size_t i = 0; i < t->n_typmods; i++) {
        const PgQuery__Node *m = t->typmods[i];
        if (!m || m->node_case != PG_QUERY__NODE__NODE_A_CONST ||
            m->a_const->val_case != PG_QUERY__A__CONST__VAL_IVAL)
            return 0;
        mods[i] = m->a_const->ival->ival;
    }
    char prec[24] = "";
    const char *range = "";
    if (t->n_typmods == 0) {
    } else if (t->n_typmods == 1 && mods[0] == IMASK_HOUR) {
        range = " HOUR";
    } else if (t->n_typmods == 1 && mods[0] == (IMASK_HOUR | IMASK_MINUTE)) {
        range = " HOUR TO MINUTE";
    } else if (t->n_typmods == 2 && mods[0] == INTERVAL_FULL_RANGE && mods[1] >= 0 &&
               mods[1] <= 6) {
        snprintf(prec, sizeof(prec), "(%d)", mods[1]);
    } else {
        return 0;
    }
    sb_puts(b, "SET TIME ZONE INTERVAL");
    sb_puts(b, prec);
    sb_puts(b, " ");
    sb_literal(b, a->a_const->sval->sval);
    sb_puts(b, range);
    return 1;
}

static int txn_guc(const char *name)
{
    return !strcmp(name, "transaction_isolation") || !strcmp(name, "transaction_read_only") ||
           !strcmp(name, "transaction_deferrable");
}

static void classify_set(const PgQuery__VariableSetStmt *v, struct tmp_stmt *st)
{
    if (v->kind == PG_QUERY__VARIABLE_SET_KIND__VAR_SET_MULTI) {
        /* SET TRANSACTION ... | SET SESSION CHARACTERISTICS AS TRANSACTION ... */
        const PgQuery__Node *d = v->n_args ? v->args[0] : NULL;
        if (d && d->node_case == PG_QUERY__NODE__NODE_DEF_ELEM)
            st->name = guc_name(d->def_elem->defname);
        else if (strcmp(v->name, "TRANSACTION SNAPSHOT") == 0)
            st->name = xstrdup("transaction_snapshot");
        if (strncmp(v->name, "TRANSACTION", 11) == 0) {
            st->kind = SQL_SET_LOCAL;
        } else {
            st->kind = SQL_OTHER;
            st->pin = PIN_UNTRACKED_SET;
        }
        return;
    }
    if (v->kind == PG_QUERY__VARIABLE_SET_KIND__VAR_RESET_ALL) {
        st->kind = SQL_RESET_ALL;
        return;
    }
    st->name = guc_name(v->name);
    if (v->is_local || (st->name && txn_guc(st->name))) {
        st->kind = SQL_SET_LOCAL;
        return;
    }
    if (!st->name) {
        /* not a name any parameter has: the server will refuse it */
        st->kind = SQL_OTHER;
        return;
    }
    switch (v->kind) {
    case PG_QUERY__VARIABLE_SET_KIND__VAR_RESET:
    case PG_QUERY__VARIABLE_SET_KIND__VAR_SET_DEFAULT:
        st->kind = SQL_RESET;
        return;
    case PG_QUERY__VARIABLE_SET_KIND__VAR_SET_VALUE:
        break;
    default: /* FROM CURRENT: a value pgstay does not know */
        st->kind = SQL_OTHER;
        st->pin = PIN_UNTRACKED_SET;
        return;
    }
    if (!strcmp(st->name, "session_authorization")) {
        /* also changes role and is_superuser under the SET: not replayed, pinned */
        st->kind = SQL_OTHER;
        st->pin = PIN_UNTRACKED_SET;
        return;
    }
    struct sbuf b = {0};
    int ok = v->n_args > 0;
    if (ok && v->n_args == 1 && v->args[0] &&
        v->args[0]->node_case == PG_QUERY__NODE__NODE_TYPE_CAST && !strcmp(st->name, "timezone")) {
        ok = sb_tz_interval(&b, v->args[0]->type_cast);
    } else if (ok) {
        sb_set_head(&b, st->name);
        for (size_t i = 0; ok && i < v->n_args; i++) {
            if (i)
                sb_puts(&b, ", ");
            ok = sb_set_arg(&b, v->args[i]);
        }
    }
    if (!ok) {
        free(b.p);
        st->kind = SQL_OTHER;
        st->pin = PIN_UNTRACKED_SET;
        return;
    }
    st->kind = SQL_SET;
    st->replay = b.p;
    if (!strcmp(st->name, "search_path") && v->args[0]->node_case == PG_QUERY__NODE__NODE_A_CONST &&
        v->args[0]->a_const->val_case == PG_QUERY__A__CONST__VAL_SVAL &&
        pg_temp_name(v->args[0]->a_const->sval->sval))
        st->pin = PIN_TEMP_TABLE; /* later CREATEs without a schema make temp objects */
}

/* SELECT [pg_catalog.]set_config('name', 'value', bool) and nothing else: its effect is known.
 * Returns the call if so (the walk then leaves it alone), after filling st. */
static const PgQuery__FuncCall *classify_set_config(const PgQuery__SelectStmt *s,
                                                    struct tmp_stmt *st)
{
    if (s->n_target_list != 1 || s->n_distinct_clause || s->into_clause || s->n_from_clause ||
        s->where_clause || s->n_group_clause || s->having_clause || s->n_window_clause ||
        s->n_values_lists || s->n_sort_clause || s->limit_offset || s->limit_count ||
        s->n_locking_clause || s->with_clause || s->larg || s->rarg ||
        (s->op != PG_QUERY__SET_OPERATION__SETOP_NONE &&
         s->op != PG_QUERY__SET_OPERATION__SET_OPERATION_UNDEFINED))
        return NULL;
    const PgQuery__Node *t = s->target_list[0];
    if (!t || t->node_case != PG_QUERY__NODE__NODE_RES_TARGET || !t->res_target->val ||
        t->res_target->val->node_case != PG_QUERY__NODE__NODE_FUNC_CALL)
        return NULL;
    const PgQuery__FuncCall *f = t->res_target->val->func_call;
    const char *fn = func_name(f);
    if (!fn || strcmp(fn, "set_config") != 0 || f->n_funcname > 2 ||
        (f->n_funcname == 2 &&
         (!str_node(f->funcname[0]) || strcmp(str_node(f->funcname[0]), "pg_catalog"))) ||
        f->n_args != 3 || f->n_agg_order || f->agg_filter || f->over || f->agg_star ||
        f->agg_distinct || f->func_variadic)
        return NULL;
    const char *name, *value;
    int name_null, value_null, local;
    if (!const_str(f->args[0], &name, &name_null) || name_null ||
        !const_str(f->args[1], &value, &value_null) || !const_bool(f->args[2], &local))
        return NULL;
    if (local) {
        st->kind = SQL_SET_LOCAL; /* is_local: this transaction only */
        st->name = guc_name(name);
        return f;
    }
    st->name = guc_name(name);
    if (!st->name)
        return NULL; /* the walk pins it */
    if (txn_guc(st->name)) {
        st->kind = SQL_SET_LOCAL;
        return f;
    }
    if (!strcmp(st->name, "session_authorization")) {
        free(st->name);
        st->name = NULL;
        return NULL;
    }
    if (value_null) {
        st->kind = SQL_RESET; /* a NULL value resets */
        return f;
    }
    struct sbuf b = {0};
    sb_set_head(&b, st->name);
    if (list_quote_guc(st->name)) {
        char *first;
        if (!sb_split_list(&b, value, &first)) {
            free(b.p);
            free(st->name);
            st->name = NULL;
            return NULL;
        }
        if (!strcmp(st->name, "search_path") && pg_temp_name(first))
            st->pin = PIN_TEMP_TABLE;
        free(first);
    } else {
        sb_literal(&b, value);
    }
    st->kind = SQL_SET_CONFIG;
    st->replay = b.p;
    return f;
}

/* The generic walk: every message of the tree, by its protobuf descriptor, looking for what pins
 * whatever statement holds it (function calls, temp relations, pg_temp names). */
struct walk {
    int pin;
    const PgQuery__FuncCall *tracked; /* set_config call already accounted for */
    const PgQuery__RangeVar *dropped; /* ON COMMIT DROP relation: gone with its transaction */
};

static void check_func(const PgQuery__FuncCall *f, struct walk *w)
{
    const char *fn = func_name(f);
    if (!fn)
        return;
    if (!strcmp(fn, "nextval") || !strcmp(fn, "setval") || !strcmp(fn, "currval") ||
        !strcmp(fn, "lastval")) {
        w->pin = PIN_SEQUENCE;
    } else if (!strcmp(fn, "pg_advisory_lock") || !strcmp(fn, "pg_advisory_lock_shared") ||
               !strcmp(fn, "pg_try_advisory_lock") || !strcmp(fn, "pg_try_advisory_lock_shared")) {
        w->pin = PIN_ADVISORY_LOCK;
    } else if (!strcmp(fn, "dblink_connect") || !strcmp(fn, "dblink_connect_u")) {
        w->pin = PIN_DBLINK;
    } else if (!strcmp(fn, "set_config") && f != w->tracked) {
        int local;
        if (!(f->n_args == 3 && const_bool(f->args[2], &local) && local))
            w->pin = PIN_UNTRACKED_SET;
    }
}

static void walk(const ProtobufCMessage *m, struct walk *w)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    if (d == &pg_query__func_call__descriptor) {
        check_func((const PgQuery__FuncCall *)m, w);
    } else if (d == &pg_query__range_var__descriptor) {
        const PgQuery__RangeVar *r = (const PgQuery__RangeVar *)m;
        if (r != w->dropped &&
            ((r->relpersistence && r->relpersistence[0] == 't') || pg_temp_name(r->schemaname)))
            w->pin = PIN_TEMP_TABLE;
    } else if (d == &pg_query__create_stmt__descriptor) {
        const PgQuery__CreateStmt *c = (const PgQuery__CreateStmt *)m;
        if (c->oncommit == PG_QUERY__ON_COMMIT_ACTION__ONCOMMIT_DROP)
            w->dropped = c->relation;
    } else if (d == &pg_query__into_clause__descriptor) {
        const PgQuery__IntoClause *c = (const PgQuery__IntoClause *)m;
        if (c->on_commit == PG_QUERY__ON_COMMIT_ACTION__ONCOMMIT_DROP)
            w->dropped = c->rel;
    }
    for (unsigned i = 0; i < d->n_fields && !w->pin; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        const char *base = (const char *)m;
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            *(const uint32_t *)(const void *)(base + f->quantifier_offset) != f->id)
            continue;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(const void *)(base + f->quantifier_offset);
            ProtobufCMessage *const *arr =
                *(ProtobufCMessage *const *const *)(const void *)(base + f->offset);
            /* a qualified name (function, type, column...) in the temp schema */
            if (n >= 2 && f->descriptor == &pg_query__node__descriptor &&
                pg_temp_name(str_node((const PgQuery__Node *)arr[0]))) {
                w->pin = PIN_TEMP_TABLE;
                return;
            }
            for (size_t k = 0; k < n && !w->pin; k++)
                if (arr[k])
                    walk(arr[k], w);
        } else {
            const ProtobufCMessage *sub =
                *(ProtobufCMessage *const *)(const void *)(base + f->offset);
            if (sub)
                walk(sub, w);
        }
    }
}

static void classify_stmt(const PgQuery__Node *node, struct tmp_stmt *st)
{
    struct walk w = {0};
    if (!node)
        return;
    switch (node->node_case) {
    case PG_QUERY__NODE__NODE_TRANSACTION_STMT: {
        const PgQuery__TransactionStmt *t = node->transaction_stmt;
        switch (t->kind) {
        case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_BEGIN:
        case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_START:
            st->kind = SQL_BEGIN;
            break;
        case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_COMMIT:
            st->kind = SQL_COMMIT;
            break;
        case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_ROLLBACK:
            st->kind = SQL_ROLLBACK;
            break;
        case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_SAVEPOINT:
            st->kind = SQL_SAVEPOINT;
            break;
        case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_RELEASE:
            st->kind = SQL_RELEASE;
            break;
        case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_ROLLBACK_TO:
            st->kind = SQL_ROLLBACK_TO;
            break;
        case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_PREPARE:
            st->kind = SQL_PREPARE_TRANSACTION;
            break;
        default:
            break;
        }
        if ((st->kind == SQL_SAVEPOINT || st->kind == SQL_RELEASE || st->kind == SQL_ROLLBACK_TO) &&
            t->savepoint_name && *t->savepoint_name)
            st->name = xstrdup(t->savepoint_name);
        return;
    }
    case PG_QUERY__NODE__NODE_VARIABLE_SET_STMT:
        classify_set(node->variable_set_stmt, st);
        return;
    case PG_QUERY__NODE__NODE_DISCARD_STMT:
        if (node->discard_stmt->target == PG_QUERY__DISCARD_MODE__DISCARD_ALL)
            st->kind = SQL_DISCARD_ALL;
        return;
    case PG_QUERY__NODE__NODE_DEALLOCATE_STMT:
        st->kind = SQL_DEALLOCATE;
        if (node->deallocate_stmt->name && *node->deallocate_stmt->name)
            st->name = xstrdup(node->deallocate_stmt->name);
        return;
    case PG_QUERY__NODE__NODE_LISTEN_STMT:
        st->pin = PIN_LISTEN;
        return;
    case PG_QUERY__NODE__NODE_LOAD_STMT:
        st->pin = PIN_LOAD;
        return;
    case PG_QUERY__NODE__NODE_PREPARE_STMT:
        st->pin = PIN_SQL_PREPARE;
        return;
    case PG_QUERY__NODE__NODE_DECLARE_CURSOR_STMT:
        if (node->declare_cursor_stmt->options & CURSOR_OPT_HOLD) {
            st->pin = PIN_HOLD_CURSOR;
            return;
        }
        break;
    case PG_QUERY__NODE__NODE_DO_STMT: {
        /* The body is PL/pgSQL in a string: words are all there is to go by. */
        const PgQuery__DoStmt *ds = node->do_stmt;
        for (size_t i = 0; i < ds->n_args; i++) {
            const PgQuery__Node *a = ds->args[i];
            if (a && a->node_case == PG_QUERY__NODE__NODE_DEF_ELEM &&
                !strcmp(a->def_elem->defname, "as")) {
                const char *body = str_node(a->def_elem->arg);
                if (body)
                    st->pin = scan_words((const unsigned char *)body, strlen(body), SCAN_DO);
            }
        }
        return;
    }
    case PG_QUERY__NODE__NODE_SELECT_STMT:
        w.tracked = classify_set_config(node->select_stmt, st);
        break;
    default:
        break;
    }
    walk(&node->base, &w);
    if (w.pin && !st->pin)
        st->pin = w.pin;
}

/* Parse text (NUL-terminated, len bytes) into r. */
static void parse_text(const char *text, struct result *r)
{
    memset(r, 0, sizeof(*r));
    used_parser = 1;
    PgQueryProtobufParseResult pr = pg_query_parse_protobuf(text);
    if (pr.error) {
        pg_query_free_protobuf_parse_result(pr);
        r->parse_error = 1;
        return;
    }
    PgQuery__ParseResult *tree = pg_query__parse_result__unpack(
        NULL, pr.parse_tree.len, (const uint8_t *)pr.parse_tree.data);
    pg_query_free_protobuf_parse_result(pr);
    if (!tree) {
        r->parse_error = 1; /* cannot happen: libpg_query wrote it */
        return;
    }
    int n = (int)tree->n_stmts;
    struct tmp_stmt *t = calloc(n ? (size_t)n : 1, sizeof(*t));
    if (!t)
        abort();
    for (int i = 0; i < n; i++)
        classify_stmt(tree->stmts[i] ? tree->stmts[i]->stmt : NULL, &t[i]);
    pg_query__parse_result__free_unpacked(tree, NULL);
    pack(t, n, r);
    for (int i = 0; i < n; i++) {
        free(t[i].name);
        free(t[i].replay);
    }
    free(t);
}

int sql_classify(const char *q, size_t len, struct sql_info *out)
{
    const char *nul = memchr(q, 0, len);
    if (nul)
        len = (size_t)(nul - q);
    memset(out, 0, sizeof(*out));
    const unsigned char *p = (const unsigned char *)q;
    if (plain_first_word(p, len) && scan_words(p, len, SCAN_PREFILTER) == PIN_NONE) {
        out->n = 1;
        out->stmts = (struct sql_stmt *)&other_stmt;
        return 1;
    }
    uint64_t h = 0;
    if (len <= CACHE_MAX_TEXT) {
        h = hash_text(p, len);
        struct centry *e = cache_find(h, q, len);
        if (e) {
            out->n = e->r.n;
            out->pin = e->r.pin;
            out->parse_error = e->r.parse_error;
            out->stmts = copy_block(&e->r);
            return out->n;
        }
    }
    char *text = malloc(len + 1);
    if (!text)
        abort();
    memcpy(text, q, len);
    text[len] = 0;
    struct result r;
    parse_text(text, &r);
    free(text);
    if (len <= CACHE_MAX_TEXT)
        cache_put(h, q, len, &r);
    out->n = r.n;
    out->pin = r.pin;
    out->parse_error = r.parse_error;
    out->stmts = r.stmts;
    return out->n;
}

void sql_info_free(struct sql_info *info)
{
    if (info->stmts != &other_stmt)
        free(info->stmts);
    info->stmts = NULL;
    info->n = 0;
}

void sql_classify_cleanup(void)
{
    sql_classify_drop_cache();
    /* libpg_query frees its top memory context unchecked: only one that was made. */
    if (used_parser)
        pg_query_exit();
    used_parser = 0;
}

void sql_classify_drop_cache(void)
{
    for (int s = 0; s < CACHE_SETS; s++)
        for (int w = 0; w < CACHE_WAYS; w++) {
            free(cache[s][w].text);
            free(cache[s][w].r.stmts);
            memset(&cache[s][w], 0, sizeof(cache[s][w]));
        }
}
