/* Fuzz target: a logged-in client's message stream through the client state machine, with the
 * fake PostgreSQL server answering. First byte: bit 0 session (else transaction) pooling,
 * bit 1 everything at once (else the loop runs after each request, as a waiting client's
 * would). Checked: every message the client gets is well framed, of a known type, valid where
 * it comes, no more ReadyForQuery than requests, nothing after a FATAL; no server idle in a
 * pool with anything pending; a bystander then gets exactly its own answer. */
#include <stdint.h>
#include <string.h>

#include "config/config.h"
#include "proto/proto.h"

#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > FZ_MAX_INPUT)
        return 0;
    fz_init(FZ_SETTINGS);
    fz_set_pool_mode(data[0] & 1 ? POOL_SESSION : POOL_TRANSACTION);
    int at_once = data[0] & 2;
    struct fz_client c;
    fz_client_open(&c);
    fz_client_startup(&c);
    quiesce();
    if (!c.logged_in)
        FAILF("the client was not logged in");
    const uint8_t *p = data + 1;
    size_t left = size - 1;
    if (at_once) {
        fz_client_send(&c, p, left);
        left = 0;
    }
    /* Up to and including each request (or Flush, Terminate, the end of a COPY), then the loop
     * runs: the answers come before the client goes on. */
    size_t off = 0;
    while (off + 5 <= left && !c.eof) {
        uint32_t len = (uint32_t)p[off + 1] << 24 | (uint32_t)p[off + 2] << 16 |
                       (uint32_t)p[off + 3] << 8 | p[off + 4];
        if (len < 4 || len > left - off - 1)
            break;
        uint8_t t = p[off];
        off += 1 + (size_t)len;
        if (t == FE_QUERY || t == FE_SYNC || t == FE_FLUSH || t == FE_FUNCTION_CALL ||
            t == FE_TERMINATE || t == FE_COPY_DONE || t == FE_COPY_FAIL) {
            fz_client_send(&c, p, off);
            p += off;
            left -= off;
            off = 0;
            quiesce();
        }
    }
    if (left > 0)
        fz_client_send(&c, p, left);
    quiesce();
    fz_client_read(&c);
    fz_client_close(&c);
    fz_end_run();
    fz_bystander();
    fz_end_run();
    return 0;
}
