/* Framing: one check of a message header for every reader of the protocol. */
#include "proto/frame.h"

enum frame_result frame_next(struct conn *in, const struct frame_rules *r, struct msg_hdr *h)
{
    if (conn_avail(in) < PROTO_HDR_LEN)
        return FRAME_MORE;
    if (proto_parse_header(conn_data(in), PROTO_HDR_LEN, r->max_len, h) != PROTO_OK)
        return FRAME_BAD_LENGTH;
    if (r->type_ok && !r->type_ok(h->type))
        return FRAME_BAD_TYPE;
    return FRAME_OK;
}
