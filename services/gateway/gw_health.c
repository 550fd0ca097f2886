/* gw_health.c - grpc.health.v1.Health/Check (see gw_call.h). */
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer_reader.h>

#include "gw_call.h"

void gw__health(gw_call *c)
{
    static const char inbox[] = "imbox.v1.Inbox";
    /* HealthCheckRequest { string service = 1; }: "" or one short field */
    char svc[64] = "";
    size_t svcn = 0;
    bool ok = true;
    if (c->payload) {
        grpc_byte_buffer_reader r;
        ok = grpc_byte_buffer_reader_init(&r, c->payload);
        if (ok) {
            grpc_slice s = grpc_byte_buffer_reader_readall(&r);
            grpc_byte_buffer_reader_destroy(&r);
            const uint8_t *p = GRPC_SLICE_START_PTR(s);
            size_t n = GRPC_SLICE_LENGTH(s);
            if (n >= 2 && p[0] == 0x0a && (size_t)p[1] + 2 == n && p[1] < sizeof svc) {
                svcn = p[1];
                for (size_t i = 0; i < svcn; i++)
                    svc[i] = (char)p[2 + i];
            } else if (n != 0) {
                ok = false;
            }
            grpc_slice_unref(s);
        }
    }
    if (!ok) {
        gw__respond(c, IM_INVALID_ARGUMENT, "HealthCheckRequest does not decode", NULL, 0);
        return;
    }
    if (svcn != 0 && !(svcn == sizeof inbox - 1 && memcmp(svc, inbox, svcn) == 0)) {
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
