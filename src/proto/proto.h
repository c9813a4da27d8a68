/* The PostgreSQL v3 wire protocol as a pure codec: parse and build messages, no sockets. */
#ifndef PGSTAY_PROTO_PROTO_H
#define PGSTAY_PROTO_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

/* Frontend (client to server) message types, by their wire byte. */
enum fe_msg {
    FE_BIND = 'B',
    FE_CLOSE = 'C',
    FE_COPY_DATA = 'd',
    FE_COPY_DONE = 'c',
    FE_COPY_FAIL = 'f',
    FE_DESCRIBE = 'D',
    FE_EXECUTE = 'E',
    FE_FLUSH = 'H',
    FE_FUNCTION_CALL = 'F',
    FE_PARSE = 'P',
    FE_PASSWORD = 'p', /* also SASLInitialResponse, SASLResponse, GSSResponse */
    FE_QUERY = 'Q',
    FE_SYNC = 'S',
    FE_TERMINATE = 'X',
};

/* Backend (server to client) message types. */
enum be_msg {
    BE_AUTH = 'R',
    BE_KEY_DATA = 'K',
    BE_BIND_COMPLETE = '2',
    BE_CLOSE_COMPLETE = '3',
    BE_COMMAND_COMPLETE = 'C',
    BE_COPY_DATA = 'd',
    BE_COPY_DONE = 'c',
    BE_COPY_IN = 'G',
    BE_COPY_OUT = 'H',
    BE_COPY_BOTH = 'W',
    BE_DATA_ROW = 'D',
    BE_EMPTY_QUERY = 'I',
    BE_ERROR = 'E',
    BE_FUNCTION_RESULT = 'V',
    BE_NEGOTIATE_VERSION = 'v',
    BE_NO_DATA = 'n',
    BE_NOTICE = 'N',
    BE_NOTIFY = 'A',
    BE_PARAM_DESC = 't',
    BE_PARAM_STATUS = 'S',
    BE_PARSE_COMPLETE = '1',
    BE_PORTAL_SUSPENDED = 's',
    BE_READY = 'Z',
    BE_ROW_DESC = 'T',
};

/* Authentication request codes carried by BE_AUTH. */
enum auth_code {
    AUTH_REQ_OK = 0,
    AUTH_REQ_CLEARTEXT = 3,
    AUTH_REQ_MD5 = 5,
    AUTH_REQ_GSS = 7,
    AUTH_REQ_SSPI = 9,
    AUTH_REQ_SASL = 10,
    AUTH_REQ_SASL_CONTINUE = 11,
    AUTH_REQ_SASL_FINAL = 12,
};

#define PROTO_HDR_LEN 5
/* The longest message either side may send: PostgreSQL's MaxAllocSize less one (1 GB), the
 * most libpq and PostgreSQL take. */
#define PROTO_MSG_MAX 0x3fffffffu
/* PostgreSQL's MAX_STARTUP_PACKET_LENGTH. */
#define PROTO_STARTUP_MAX 10000
#define PROTO_VERSION(major, minor) (((uint32_t)(major) << 16) | (uint32_t)(minor))
#define PROTO_V3 PROTO_VERSION(3, 0)
#define PROTO_CANCEL_CODE PROTO_VERSION(1234, 5678)
#define PROTO_SSL_CODE PROTO_VERSION(1234, 5679)
#define PROTO_GSSENC_CODE PROTO_VERSION(1234, 5680)

enum proto_result { PROTO_OK = 0, PROTO_MORE = 1, PROTO_BAD = -1 };

/* SQLSTATEs pgstay itself sends. */
#define SQLSTATE_PROTOCOL_VIOLATION "08P01"
#define SQLSTATE_FEATURE_NOT_SUPPORTED "0A000"
#define SQLSTATE_INVALID_PASSWORD "28P01"
#define SQLSTATE_INVALID_AUTH "28000"
#define SQLSTATE_TOO_MANY_CONNECTIONS "53300"
#define SQLSTATE_CONNECTION_FAILURE "08006"
#define SQLSTATE_CONNECTION_EXCEPTION "08000"
#define SQLSTATE_TXN_RESOLUTION_UNKNOWN "08007"
#define SQLSTATE_ADMIN_SHUTDOWN "57P01"
#define SQLSTATE_QUERY_CANCELED "57014"
#define SQLSTATE_IN_FAILED_TXN "25P02"
#define SQLSTATE_SYNTAX_ERROR "42601"
#define SQLSTATE_QUERY_WAIT_TIMEOUT "08P01"
#define SQLSTATE_IDLE_TIMEOUT "57P05"
#define SQLSTATE_IDLE_IN_TXN_TIMEOUT "25P03"

/* A message header: type byte and the length that follows it (which counts itself). */
struct msg_hdr {
    uint8_t type;
    uint32_t len; /* as on the wire: body + 4 */
};

/* Read a header from p (avail bytes). PROTO_MORE if fewer than 5 bytes, PROTO_BAD if the
 * length is below 4 or above max_len. */
int proto_parse_header(const uint8_t *p, size_t avail, uint32_t max_len, struct msg_hdr *h);

/* Is t a message type a client may send / a server may send after login? */
int proto_fe_type_known(uint8_t t);
int proto_be_type_known(uint8_t t);

/* A bounded cursor over a message body. */
struct msg_reader {
    const uint8_t *p;
    size_t len;
    size_t pos;
    int bad; /* read past the end or a string without NUL */
};

void mr_init(struct msg_reader *r, const void *p, size_t len);
uint8_t mr_u8(struct msg_reader *r);
uint16_t mr_u16(struct msg_reader *r);
uint32_t mr_u32(struct msg_reader *r);
const char *mr_str(struct msg_reader *r); /* NUL-terminated within the body, or "" and bad */
const uint8_t *mr_bytes(struct msg_reader *r, size_t n);
size_t mr_left(const struct msg_reader *r);

/* A startup-phase packet: int32 length, int32 code, then per code. */
#define STARTUP_MAX_PARAMS 64
struct startup_pkt {
    uint32_t code;     /* protocol version or one of the request codes */
    uint32_t cancel_pid;
    uint32_t cancel_key;
    int n_params;
    const char *names[STARTUP_MAX_PARAMS]; /* point into the packet body */
    const char *values[STARTUP_MAX_PARAMS];
    int n_protocol_options; /* "_pq_." parameters, which pgstay does not support */
};

/* Given the bytes received so far before login, how long is the startup packet?
 * PROTO_MORE if fewer than 4 bytes, PROTO_BAD (with err) if the length is impossible. */
int proto_startup_len(const uint8_t *p, size_t avail, uint32_t *len, const char **err);
/* Parse a whole startup packet (len bytes, with its length word). Returns PROTO_BAD with a
 * message in *err as PostgreSQL words it. */
int proto_parse_startup(const uint8_t *p, uint32_t len, struct startup_pkt *out, const char **err);
const char *startup_param(const struct startup_pkt *s, const char *name);

/* ErrorResponse / NoticeResponse fields pgstay looks at. */
struct pg_error {
    const char *severity; /* localized severity (S) or nonlocalized (V) */
    const char *sqlstate; /* C */
    const char *message;  /* M */
};
int proto_parse_error(const uint8_t *body, size_t len, struct pg_error *out);

/* Builders: each appends one whole message to b. */
void proto_build_error(struct pbuf *b, const char *severity, const char *sqlstate, const char *msg,
                       const char *detail);
void proto_build_notice(struct pbuf *b, const char *sqlstate, const char *msg);
void proto_build_auth(struct pbuf *b, uint32_t code, const void *data, size_t len);
/* Offers SCRAM-SHA-256, and first SCRAM-SHA-256-PLUS when plus (over TLS), as PostgreSQL. */
void proto_build_auth_sasl(struct pbuf *b, int plus);
void proto_build_param_status(struct pbuf *b, const char *name, const char *value);
void proto_build_key_data(struct pbuf *b, uint32_t pid, uint32_t key);
void proto_build_ready(struct pbuf *b, char status);
void proto_build_query(struct pbuf *b, const char *sql);
/* sql with n text parameters ($1...) through the extended protocol: Parse, Bind, Execute and
 * Sync on the unnamed statement and portal (one ReadyForQuery answers it). A value is never
 * spliced into the SQL text, so nothing a client names can change the statement. */
void proto_build_query_params(struct pbuf *b, const char *sql, int n, const char *const *values);
void proto_build_terminate(struct pbuf *b);
void proto_build_password(struct pbuf *b, const char *password);
void proto_build_sasl_initial(struct pbuf *b, const char *mech, const void *data, size_t len);
void proto_build_sasl_response(struct pbuf *b, const void *data, size_t len);
void proto_build_cancel(struct pbuf *b, uint32_t pid, uint32_t key);
void proto_build_negotiate_version(struct pbuf *b, uint32_t minor, int n_opts, const char **opts);
/* StartupMessage for protocol 3.0 with n name/value pairs. */
void proto_build_startup(struct pbuf *b, int n, const char *const *names, const char *const *values);
/* Result sets for the admin console. */
void proto_build_row_desc(struct pbuf *b, int n, const char *const *names);
/* The same with a type OID per column (NULL: all text); values are still sent as text. */
void proto_build_row_desc_typed(struct pbuf *b, int n, const char *const *names,
                                const uint32_t *oids);
void proto_build_data_row(struct pbuf *b, int n, const char *const *values); /* NULL = SQL NULL */
void proto_build_command_complete(struct pbuf *b, const char *tag);
void proto_build_empty_query(struct pbuf *b);

/* Start a message of type t (0: untyped, for startup packets); returns the offset of its
 * length word, to be closed by proto_end_msg. */
size_t proto_begin_msg(struct pbuf *b, uint8_t t);
void proto_end_msg(struct pbuf *b, size_t len_off);

#endif
