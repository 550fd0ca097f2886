/*
 * im_health.h - the bytes of grpc.health.v1 (health.proto of gRPC), read
 * and written by hand, shared by the gateway's Health service and a
 * shard's health port (sh_health.h):
 *
 *   message HealthCheckRequest  { string service = 1; }
 *   message HealthCheckResponse { ServingStatus status = 1; }
 *   enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2;
 *                        SERVICE_UNKNOWN = 3; }  (3: Watch only)
 *
 * Check and Watch take the same request. The request is hostile input:
 * unknown fields are skipped (groups too), the last `service` wins, field
 * number 0 or `service` with another wire type does not decode, and a
 * name longer than IM_HEALTH_NAME_MAX is simply unknown.
 */
#ifndef IMBOX_IM_HEALTH_H
#define IMBOX_IM_HEALTH_H

#include <stddef.h>
#include <stdint.h>

#define IM_HEALTH_SERVING 1
#define IM_HEALTH_NOT_SERVING 2
#define IM_HEALTH_SERVICE_UNKNOWN 3

#define IM_HEALTH_NAME_MAX 63 /* longer than any served name */

#define IM_HEALTH_BAD (-2)     /* the request does not decode */
#define IM_HEALTH_UNKNOWN (-1) /* a service not in the list */

/*
 * Reads a HealthCheckRequest (p may be NULL when n is 0) and looks its
 * service up in names[0..nnames) ("" may be one of them). Returns the
 * index of the name, IM_HEALTH_UNKNOWN, or IM_HEALTH_BAD.
 */
int im_health_service(const uint8_t *p, size_t n, const char *const *names, int nnames);

/* Writes the HealthCheckResponse of status (1..3) into out: 2 bytes. */
void im_health_response(int status, uint8_t out[2]);

#endif
