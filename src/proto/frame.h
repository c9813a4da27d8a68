/* Framing: the next protocol message on a connection's input, checked in one place for every
 * reader (client, server, admin console, login). */
#ifndef PGSTAY_PROTO_FRAME_H
#define PGSTAY_PROTO_FRAME_H

#include <stdint.h>

#include "core/conn.h"
#include "proto/proto.h"

enum frame_result {
    FRAME_MORE,       /* the header is not all there yet: wait for input */
    FRAME_OK,         /* *h holds the next message's header (its body may still be arriving) */
    FRAME_BAD_LENGTH, /* a length below 4 or above the reader's limit (negative ones included) */
    FRAME_BAD_TYPE,   /* a type the reader does not accept in its state */
};

/* What a reader accepts: the longest message, and the types (NULL: any). */
struct frame_rules {
    uint32_t max_len;
    int (*type_ok)(uint8_t type);
};

/* The header of the next message on in, checked against r; nothing is consumed. */
enum frame_result frame_next(struct conn *in, const struct frame_rules *r, struct msg_hdr *h);

/* Is the message whose header is h whole in the input? If not, the input is let grow to hold
 * it (bounded by the reader's max_len, already checked) and 0 says wait. */
static inline int frame_whole(struct conn *in, const struct msg_hdr *h)
{
    return conn_has(in, 1 + (size_t)h->len);
}

/* The message whose header is h, type byte first; valid until the input is consumed. */
static inline const uint8_t *frame_data(struct conn *in)
{
    return conn_data(in);
}

#endif
