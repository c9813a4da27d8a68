/* The v3 codec: header validation, startup packets, error fields and message builders. */
#include "proto/proto.h"

#include <string.h>

int proto_parse_header(const uint8_t *p, size_t avail, uint32_t max_len, struct msg_hdr *h)
{
    if (avail < PROTO_HDR_LEN)
        return PROTO_MORE;
    h->type = p[0];
    h->len = ((uint32_t)p[1] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 8) | p[4];
    /* A negative int32 shows up here as a huge unsigned value and fails the max check. */
    if (h->len < 4 || h->len > max_len)
        return PROTO_BAD;
    return PROTO_OK;
}

int proto_fe_type_known(uint8_t t)
{
    switch (t) {
    case FE_BIND:
    case FE_CLOSE:
    case FE_COPY_DATA:
    case FE_COPY_DONE:
    case FE_COPY_FAIL:
    case FE_DESCRIBE:
    case FE_EXECUTE:
    case FE_FLUSH:
    case FE_FUNCTION_CALL:
    case FE_PARSE:
    case FE_PASSWORD:
    case FE_QUERY:
    case FE_SYNC:
    case FE_TERMINATE:
        return 1;
    default:
        return 0;
    }
}

int proto_be_type_known(uint8_t t)
{
    switch (t) {
    case BE_AUTH:
    case BE_KEY_DATA:
    case BE_BIND_COMPLETE:
    case BE_CLOSE_COMPLETE:
    case BE_COMMAND_COMPLETE:
    case BE_COPY_DATA:
    case BE_COPY_DONE:
    case BE_COPY_IN:
    case BE_COPY_OUT:
    case BE_COPY_BOTH:
    case BE_DATA_ROW:
    case BE_EMPTY_QUERY:
    case BE_ERROR:
    case BE_FUNCTION_RESULT:
    case BE_NEGOTIATE_VERSION:
    case BE_NO_DATA:
    case BE_NOTICE:
    case BE_NOTIFY:
    case BE_PARAM_DESC:
    case BE_PARAM_STATUS:
    case BE_PARSE_COMPLETE:
    case BE_PORTAL_SUSPENDED:
    case BE_READY:
    case BE_ROW_DESC:
        return 1;
    default:
        return 0;
    }
}

void mr_init(struct msg_reader *r, const void *p, size_t len)
{
    r->p = p;
    r->len = len;
    r->pos = 0;
    r->bad = 0;
}

size_t mr_left(const struct msg_reader *r)
{
    return r->len - r->pos;
}

const uint8_t *mr_bytes(struct msg_reader *r, size_t n)
{
    if (r->bad || mr_left(r) < n) {
        r->bad = 1;
        return NULL;
    }
    const uint8_t *p = r->p + r->pos;
    r->pos += n;
    return p;
}

uint8_t mr_u8(struct msg_reader *r)
{
    const uint8_t *p = mr_bytes(r, 1);
    return p ? p[0] : 0;
}

uint16_t mr_u16(struct msg_reader *r)
{
    const uint8_t *p = mr_bytes(r, 2);
    return p ? (uint16_t)((p[0] << 8) | p[1]) : 0;
}

uint32_t mr_u32(struct msg_reader *r)
{
    const uint8_t *p = mr_bytes(r, 4);
    return p ? ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3] : 0;
}

const char *mr_str(struct msg_reader *r)
{
    if (r->bad)
        return "";
    const uint8_t *start = r->p + r->pos;
    const uint8_t *nul = memchr(start, 0, mr_left(r));
    if (!nul) {
        r->bad = 1;
        return "";
    }
    r->pos += (size_t)(nul - start) + 1;
    return (const char *)start;
}

int proto_startup_len(const uint8_t *p, size_t avail, uint32_t *len, const char **err)
{
    if (avail < 4)
        return PROTO_MORE;
    uint32_t l = ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
    if (l < 8 || l > PROTO_STARTUP_MAX) {
        *err = "invalid length of startup packet";
        return PROTO_BAD;
    }
    *len = l;
    return PROTO_OK;
}

int proto_parse_startup(const uint8_t *p, uint32_t len, struct startup_pkt *out, const char **err)
{
    struct msg_reader r;
    memset(out, 0, sizeof(*out));
    mr_init(&r, p + 4, len - 4);
    out->code = mr_u32(&r);
    if (out->code == PROTO_CANCEL_CODE) {
        if (len != 16) {
            *err = "invalid length of cancel request packet";
            return PROTO_BAD;
        }
        out->cancel_pid = mr_u32(&r);
        out->cancel_key = mr_u32(&r);
        return PROTO_OK;
    }
    if (out->code == PROTO_SSL_CODE || out->code == PROTO_GSSENC_CODE) {
        if (len != 8) {
            *err = "invalid length of startup packet";
            return PROTO_BAD;
        }
        return PROTO_OK;
    }
    if ((out->code >> 16) != 3)
        return PROTO_OK; /* the caller words the unsupported-version error */
    /* name\0value\0 ... \0: PostgreSQL insists on the final terminator. */
    if (p[len - 1] != 0) {
        *err = "invalid startup packet layout: expected terminator as last byte";
        return PROTO_BAD;
    }
    for (;;) {
        const char *name = mr_str(&r);
        if (r.bad || (!*name && mr_left(&r) != 0)) {
            *err = "invalid startup packet layout: expected terminator as last byte";
            return PROTO_BAD;
        }
        if (!*name)
            break; /* the terminator, and the last byte */
        const char *value = mr_str(&r);
        if (r.bad) {
            *err = "invalid startup packet layout: expected terminator as last byte";
            return PROTO_BAD;
        }
        if (strncmp(name, "_pq_.", 5) == 0) {
            out->n_protocol_options++;
            continue;
        }
        if (out->n_params >= STARTUP_MAX_PARAMS) {
            *err = "too many parameters in startup packet";
            return PROTO_BAD;
        }
        out->names[out->n_params] = name;
        out->values[out->n_params] = value;
        out->n_params++;
    }
    return PROTO_OK;
}

const char *startup_param(const struct startup_pkt *s, const char *name)
{
    for (int i = 0; i < s->n_params; i++)
        if (strcmp(s->names[i], name) == 0)
            return s->values[i];
    return NULL;
}

int proto_parse_error(const uint8_t *body, size_t len, struct pg_error *out)
{
    struct msg_reader r;
    mr_init(&r, body, len);
    out->severity = "";
    out->sqlstate = "";
    out->message = "";
    for (;;) {
        uint8_t field = mr_u8(&r);
        if (r.bad)
            return PROTO_BAD;
        if (field == 0)
            break;
        const char *v = mr_str(&r);
        if (r.bad)
            return PROTO_BAD;
        if (field == 'V' || (field == 'S' && !*out->severity))
            out->severity = v;
        else if (field == 'C')
            out->sqlstate = v;
        else if (field == 'M')
            out->message = v;
    }
    return PROTO_OK;
}

size_t proto_begin_msg(struct pbuf *b, uint8_t t)
{
    if (t)
        pbuf_put_u8(b, t);
    size_t off = b->len;
    pbuf_put_u32(b, 0);
    return off;
}

void proto_end_msg(struct pbuf *b, size_t len_off)
{
    pbuf_patch_u32(b, len_off, (uint32_t)(b->len - len_off));
}

static void build_error_fields(struct pbuf *b, uint8_t type, const char *severity,
                               const char *sqlstate, const char *msg, const char *detail)
{
    size_t off = proto_begin_msg(b, type);
    pbuf_put_u8(b, 'S');
    pbuf_put_str(b, severity);
    pbuf_put_u8(b, 'V');
    pbuf_put_str(b, severity);
    pbuf_put_u8(b, 'C');
    pbuf_put_str(b, sqlstate);
    pbuf_put_u8(b, 'M');
    pbuf_put_str(b, msg);
    if (detail) {
        pbuf_put_u8(b, 'D');
        pbuf_put_str(b, detail);
    }
    pbuf_put_u8(b, 0);
    proto_end_msg(b, off);
}

void proto_build_error(struct pbuf *b, const char *severity, const char *sqlstate, const char *msg,
                       const char *detail)
{
    build_error_fields(b, BE_ERROR, severity, sqlstate, msg, detail);
}

void proto_build_notice(struct pbuf *b, const char *sqlstate, const char *msg)
{
    build_error_fields(b, BE_NOTICE, "NOTICE", sqlstate, msg, NULL);
}

void proto_build_auth(struct pbuf *b, uint32_t code, const void *data, size_t len)
{
    size_t off = proto_begin_msg(b, BE_AUTH);
    pbuf_put_u32(b, code);
    pbuf_put(b, data, len);
    proto_end_msg(b, off);
}

void proto_build_auth_sasl(struct pbuf *b, int plus)
{
    size_t off = proto_begin_msg(b, BE_AUTH);
    pbuf_put_u32(b, AUTH_REQ_SASL);
    if (plus)
        pbuf_put_str(b, "SCRAM-SHA-256-PLUS");
    pbuf_put_str(b, "SCRAM-SHA-256");
    pbuf_put_u8(b, 0);
    proto_end_msg(b, off);
}

void proto_build_param_status(struct pbuf *b, const char *name, const char *value)
{
    size_t off = proto_begin_msg(b, BE_PARAM_STATUS);
    pbuf_put_str(b, name);
    pbuf_put_str(b, value);
    proto_end_msg(b, off);
}

void proto_build_key_data(struct pbuf *b, uint32_t pid, uint32_t key)
{
    size_t off = proto_begin_msg(b, BE_KEY_DATA);
    pbuf_put_u32(b, pid);
    pbuf_put_u32(b, key);
    proto_end_msg(b, off);
}

void proto_build_ready(struct pbuf *b, char status)
{
    size_t off = proto_begin_msg(b, BE_READY);
    pbuf_put_u8(b, (uint8_t)status);
    proto_end_msg(b, off);
}

void proto_build_query(struct pbuf *b, const char *sql)
{
    size_t off = proto_begin_msg(b, FE_QUERY);
    pbuf_put_str(b, sql);
    proto_end_msg(b, off);
}

void proto_build_query_params(struct pbuf *b, const char *sql, int n, const char *const *values)
{
    size_t off = proto_begin_msg(b, FE_PARSE);
    pbuf_put_str(b, "");
    pbuf_put_str(b, sql);
    pbuf_put_u16(b, 0); /* parameter types: the server infers them */
    proto_end_msg(b, off);
    off = proto_begin_msg(b, FE_BIND);
    pbuf_put_str(b, "");
    pbuf_put_str(b, "");
    pbuf_put_u16(b, 0); /* every parameter in text format */
    pbuf_put_u16(b, (uint16_t)n);
    for (int i = 0; i < n; i++) {
        if (!values[i]) {
            pbuf_put_u32(b, 0xffffffffu);
            continue;
        }
        size_t l = strlen(values[i]);
        pbuf_put_u32(b, (uint32_t)l);
        pbuf_put(b, values[i], l);
    }
    pbuf_put_u16(b, 0); /* every result column in text format */
    proto_end_msg(b, off);
    off = proto_begin_msg(b, FE_EXECUTE);
    pbuf_put_str(b, "");
    pbuf_put_u32(b, 0);
    proto_end_msg(b, off);
    off = proto_begin_msg(b, FE_SYNC);
    proto_end_msg(b, off);
}

void proto_build_terminate(struct pbuf *b)
{
    size_t off = proto_begin_msg(b, FE_TERMINATE);
    proto_end_msg(b, off);
}

void proto_build_password(struct pbuf *b, const char *password)
{
    size_t off = proto_begin_msg(b, FE_PASSWORD);
    pbuf_put_str(b, password);
    proto_end_msg(b, off);
}

void proto_build_sasl_initial(struct pbuf *b, const char *mech, const void *data, size_t len)
{
    size_t off = proto_begin_msg(b, FE_PASSWORD);
    pbuf_put_str(b, mech);
    pbuf_put_u32(b, (uint32_t)len);
    pbuf_put(b, data, len);
    proto_end_msg(b, off);
}

void proto_build_sasl_response(struct pbuf *b, const void *data, size_t len)
{
    size_t off = proto_begin_msg(b, FE_PASSWORD);
    pbuf_put(b, data, len);
    proto_end_msg(b, off);
}

void proto_build_cancel(struct pbuf *b, uint32_t pid, uint32_t key)
{
    size_t off = proto_begin_msg(b, 0);
    pbuf_put_u32(b, PROTO_CANCEL_CODE);
    pbuf_put_u32(b, pid);
    pbuf_put_u32(b, key);
    proto_end_msg(b, off);
}

void proto_build_negotiate_version(struct pbuf *b, uint32_t minor, int n_opts, const char **opts)
{
    size_t off = proto_begin_msg(b, BE_NEGOTIATE_VERSION);
    pbuf_put_u32(b, minor);
    pbuf_put_u32(b, (uint32_t)n_opts);
    for (int i = 0; i < n_opts; i++)
        pbuf_put_str(b, opts[i]);
    proto_end_msg(b, off);
}

void proto_build_startup(struct pbuf *b, int n, const char *const *names, const char *const *values)
{
    size_t off = proto_begin_msg(b, 0);
    pbuf_put_u32(b, PROTO_V3);
    for (int i = 0; i < n; i++) {
        pbuf_put_str(b, names[i]);
        pbuf_put_str(b, values[i]);
    }
    pbuf_put_u8(b, 0);
    proto_end_msg(b, off);
}

void proto_build_row_desc(struct pbuf *b, int n, const char *const *names)
{
    proto_build_row_desc_typed(b, n, names, NULL);
}

void proto_build_row_desc_typed(struct pbuf *b, int n, const char *const *names,
                                const uint32_t *oids)
{
    size_t off = proto_begin_msg(b, BE_ROW_DESC);
    pbuf_put_u16(b, (uint16_t)n);
    for (int i = 0; i < n; i++) {
        uint32_t oid = oids ? oids[i] : 25; /* text */
        /* typlen as pg_type has it: int2/int4/int8 fixed, the rest variable. */
        uint16_t len = oid == 20 ? 8 : oid == 23 ? 4 : oid == 21 ? 2 : 0xffff;
        pbuf_put_str(b, names[i]);
        pbuf_put_u32(b, 0); /* table oid */
        pbuf_put_u16(b, 0); /* column number */
        pbuf_put_u32(b, oid);
        pbuf_put_u16(b, len);
        pbuf_put_u32(b, 0xffffffff);
        pbuf_put_u16(b, 0); /* text format */
    }
    proto_end_msg(b, off);
}

void proto_build_data_row(struct pbuf *b, int n, const char *const *values)
{
    size_t off = proto_begin_msg(b, BE_DATA_ROW);
    pbuf_put_u16(b, (uint16_t)n);
    for (int i = 0; i < n; i++) {
        if (!values[i]) {
            pbuf_put_u32(b, 0xffffffff);
            continue;
        }
        size_t l = strlen(values[i]);
        pbuf_put_u32(b, (uint32_t)l);
        pbuf_put(b, values[i], l);
    }
    proto_end_msg(b, off);
}

void proto_build_command_complete(struct pbuf *b, const char *tag)
{
    size_t off = proto_begin_msg(b, BE_COMMAND_COMPLETE);
    pbuf_put_str(b, tag);
    proto_end_msg(b, off);
}

void proto_build_empty_query(struct pbuf *b)
{
    size_t off = proto_begin_msg(b, BE_EMPTY_QUERY);
    proto_end_msg(b, off);
}
