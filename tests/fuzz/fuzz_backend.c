/* Fuzz target: what a server says, through the server state machine. The fake PostgreSQL
 * server answers one fresh server connection with a script taken from the input: after the
 * startup packet and after each request pgstay sends it, the next chunk (login with
 * AuthenticationOk, cleartext, md5 or SCRAM, ParameterStatus, BackendKeyData, results, COPY,
 * notices, errors and FATALs anywhere, garbage). Input: byte 0 = bit 0 session (else
 * transaction) pooling, bits 1-3 the client's scenario; then chunks, each a big-endian u16
 * length and its bytes. Checked: the client only ever gets well framed, known messages valid
 * where they come, no more ReadyForQuery than requests, nothing after a FATAL; no server idle
 * in a pool with anything pending; then a bystander on a fresh server is untouched. */
#include <stdint.h>
#include <string.h>

#include "config/config.h"
#include "proto/proto.h"
#include "proto/scram.h"

#include "fuzz.h"

#define MAX_CHUNKS 32

static void send_built(struct fz_client *c, struct pbuf *b)
{
    fz_client_send(c, b->data, b->len);
    pbuf_free(b);
    quiesce();
}

static void query(struct fz_client *c, const char *sql)
{
    struct pbuf b;
    pbuf_init(&b);
    proto_build_query(&b, sql);
    send_built(c, &b);
}

/* Parse, Bind, Describe portal, Execute, then Sync. */
static void extended(struct fz_client *c, const char *name, const char *sql)
{
    struct pbuf b;
    pbuf_init(&b);
    size_t off = proto_begin_msg(&b, FE_PARSE);
    pbuf_put_str(&b, name);
    pbuf_put_str(&b, sql);
    pbuf_put_u16(&b, 0);
    proto_end_msg(&b, off);
    off = proto_begin_msg(&b, FE_BIND);
    pbuf_put_str(&b, "");
    pbuf_put_str(&b, name);
    pbuf_put_u16(&b, 0);
    pbuf_put_u16(&b, 0);
    pbuf_put_u16(&b, 0);
    proto_end_msg(&b, off);
    off = proto_begin_msg(&b, FE_DESCRIBE);
    pbuf_put_u8(&b, 'P');
    pbuf_put_str(&b, "");
    proto_end_msg(&b, off);
    off = proto_begin_msg(&b, FE_EXECUTE);
    pbuf_put_str(&b, "");
    pbuf_put_u32(&b, 0);
    proto_end_msg(&b, off);
    off = proto_begin_msg(&b, FE_SYNC);
    proto_end_msg(&b, off);
    send_built(c, &b);
}

/* A client that answers a CopyInResponse with two rows and CopyDone. */
static void copy_in(struct fz_client *c)
{
    query(c, "COPY t FROM STDIN");
    if (!c->copy_in || c->eof)
        return;
    struct pbuf b;
    pbuf_init(&b);
    for (int i = 0; i < 2; i++) {
        size_t off = proto_begin_msg(&b, FE_COPY_DATA);
        pbuf_put(&b, "1\tx\n", 4);
        proto_end_msg(&b, off);
    }
    size_t off = proto_begin_msg(&b, FE_COPY_DONE);
    proto_end_msg(&b, off);
    send_built(c, &b);
}

static void scenario(struct fz_client *c, int which)
{
    switch (which) {
    case 0:
        query(c, "SELECT 'a'");
        break;
    case 1:
        extended(c, "", "SELECT 'b'");
        break;
    case 2:
        copy_in(c);
        break;
    case 3:
        query(c, "BEGIN");
        query(c, "SELECT 'c'");
        query(c, "COMMIT");
        break;
    case 4: {
        /* Pipelined: two Queries, then a named statement. */
        struct pbuf b;
        pbuf_init(&b);
        proto_build_query(&b, "SELECT 'd'");
        proto_build_query(&b, "SELECT 'e'");
        send_built(c, &b);
        extended(c, "s1", "SELECT 'f'");
        break;
    }
    case 5:
        query(c, "COPY t TO STDOUT");
        break;
    case 6:
        query(c, "SET search_path TO fuzz");
        query(c, "SELECT 'g'");
        break;
    default:
        break; /* logs in and leaves */
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > FZ_MAX_INPUT)
        return 0;
    fz_init(FZ_SETTINGS);
    fz_set_pool_mode(data[0] & 1 ? POOL_SESSION : POOL_TRANSACTION);
    const uint8_t *chunk[MAX_CHUNKS];
    size_t len[MAX_CHUNKS];
    struct fscript script = {.chunk = chunk, .len = len};
    size_t off = 1;
    while (script.n < MAX_CHUNKS && off + 2 <= size) {
        size_t n = (size_t)data[off] << 8 | data[off + 1];
        off += 2;
        if (n > size - off)
            n = size - off;
        chunk[script.n] = data + off;
        len[script.n++] = n;
        off += n;
    }
    /* The script goes to the next server connection pgstay opens: none may be idle now. */
    fz_drop_idle_servers();
    fs.script_next = &script;
    /* pgstay's SCRAM nonce, so that a recorded exchange (seeds.py) is valid. One use. */
    scram_set_test_nonce(FZ_NONCE);
    struct fz_client c;
    fz_client_open(&c);
    fz_client_startup(&c);
    quiesce();
    if (c.logged_in && !c.eof)
        scenario(&c, (data[0] >> 1) & 7);
    if (!c.eof) {
        struct pbuf x;
        pbuf_init(&x);
        proto_build_terminate(&x);
        fz_client_send(&c, x.data, x.len);
        pbuf_free(&x);
    }
    quiesce();
    fz_client_read(&c);
    fz_client_close(&c);
    quiesce();
    check_invariant();
    /* The scripted backend goes away (its script is spent): pgstay must let go of it. */
    fs.script_next = NULL;
    for (int i = 0; i < fs.n; i++)
        if (fs.c[i].fd >= 0 && fs.c[i].script)
            f_close(&fs.c[i]);
    fz_end_run();
    fz_bystander();
    fz_end_run();
    return 0;
}
