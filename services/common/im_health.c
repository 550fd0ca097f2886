/* im_health.c - see im_health.h. */
#include "im_health.h"

#include <stdbool.h>
#include <string.h>

#include "im_wire.h"

int im_health_service(const uint8_t *p, size_t n, const char *const *names, int nnames)
{
    char svc[IM_HEALTH_NAME_MAX + 1] = "";
    size_t svcn = 0;
    bool ok = true, long_name = false;
    pb_istream_t s = pb_istream_from_buffer(p ? p : (const uint8_t *)"", n);
    while (ok && s.bytes_left) {
        pb_wire_type_t wt;
        uint32_t tag;
        bool eof;
        uint64_t len;
        if (!pb_decode_tag(&s, &wt, &tag, &eof) || tag == 0) {
            ok = false; /* field number 0: as pb_decode and protobuf */
        } else if (tag == 1 && wt == PB_WT_STRING) { /* the last one wins */
            ok = pb_decode_varint(&s, &len) && len <= s.bytes_left;
            long_name = ok && len >= sizeof svc;
            svcn = ok && !long_name ? (size_t)len : 0;
            ok = ok && pb_read(&s, long_name ? NULL : (pb_byte_t *)svc, (size_t)len);
        } else if (tag == 1) {
            ok = false; /* the wrong wire type */
        } else if (wt == IM_PB_WT_START_GROUP) {
            ok = im_pb_skip_group(&s, tag);
        } else {
            ok = wt != IM_PB_WT_END_GROUP && pb_skip_field(&s, wt);
        }
    }
    if (!ok)
        return IM_HEALTH_BAD;
    if (long_name)
        return IM_HEALTH_UNKNOWN;
    for (int i = 0; i < nnames; i++)
        if (strlen(names[i]) == svcn && memcmp(names[i], svc, svcn) == 0)
            return i;
    return IM_HEALTH_UNKNOWN;
}

void im_health_response(int status, uint8_t out[2])
{
    out[0] = 0x08; /* field 1, varint */
    out[1] = (uint8_t)status;
}
