/* gw_health.c - grpc.health.v1.Health/Check (see gw_call.h). */
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer_reader.h>

#include "gw_call.h"

void gw__health(gw_call *c)
{
    static const char inbox[] = "imbox.v1.Inbox";
    /* HealthCheckRequest { string service = 1; }: unknown fields skipped
     * (groups too); a name longer than any served one is simply unknown. */
    char svc[64] = "";
    size_t svcn = 0;
    bool ok = true, long_name = false;
    if (c->payload) {
        grpc_byte_buffer_reader r;
        ok = grpc_byte_buffer_reader_init(&r, c->payload);
        if (ok) {
            grpc_slice sl = grpc_byte_buffer_reader_readall(&r);
            grpc_byte_buffer_reader_destroy(&r);
            pb_istream_t s = pb_istream_from_buffer(GRPC_SLICE_START_PTR(sl),
                                                    GRPC_SLICE_LENGTH(sl));
            while (ok && s.bytes_left) {
                pb_wire_type_t wt;
                uint32_t tag;
                bool eof;
                uint64_t n;
                if (!pb_decode_tag(&s, &wt, &tag, &eof) || tag == 0) {
                    ok = false; /* field number 0: as pb_decode and protobuf */
                } else if (tag == 1 && wt == PB_WT_STRING) { /* the last one wins */
                    ok = pb_decode_varint(&s, &n) && n <= s.bytes_left;
                    long_name = ok && n >= sizeof svc;
                    svcn = ok && !long_name ? (size_t)n : 0;
                    ok = ok && pb_read(&s, long_name ? NULL : (pb_byte_t *)svc, (size_t)n);
                } else if (tag == 1) {
                    ok = false; /* the wrong wire type */
                } else if (wt == IM_PB_WT_START_GROUP) {
                    ok = im_pb_skip_group(&s, tag);
                } else {
                    ok = wt != IM_PB_WT_END_GROUP && pb_skip_field(&s, wt);
                }
            }
            grpc_slice_unref(sl);
        }
    }
    if (!ok) {
        gw__respond(c, IM_INVALID_ARGUMENT, "HealthCheckRequest does not decode", NULL, 0);
        return;
    }
    if (long_name ||
        (svcn != 0 && !(svcn == sizeof inbox - 1 && memcmp(svc, inbox, svcn) == 0))) {
        gw__respond(c, IM_NOT_FOUND, "unknown service", NULL, 0);
        return;
    }
    uint8_t *body = malloc(2);
    if (!body) {
        gw__respond(c, IM_RESOURCE_EXHAUSTED, "out of memory", NULL, 0);
        return;
    }
    body[0] = 0x08; /* status = SERVING (1) */
    body[1] = 0x01;
    gw__respond(c, IM_OK, NULL, body, 2);
}
