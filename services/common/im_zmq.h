/*
 * im_zmq.h - ZeroMQ helpers shared by the shard and the gateway.
 */
#ifndef IMBOX_IM_ZMQ_H
#define IMBOX_IM_ZMQ_H

#include <zmq.h>

/* Requests (or replies) in one ZeroMQ message between a gateway and a
 * shard: [id][body] pairs, so a turn's worth travels as one message. */
#define IM_ZMQ_BATCH_MAX 256

/*
 * Receives one whole multipart message from sock without blocking for its
 * first frame. The first `max` frames land in parts[] (the caller closes
 * parts[0..min(n,max)-1]); further frames are discarded, but counted.
 * Returns the number of frames, or 0 when no message was waiting.
 */
int im_zmq_recv(void *sock, zmq_msg_t *parts, int max);

/* Closes parts[0..min(n,max)-1] as filled by im_zmq_recv. */
void im_zmq_close(zmq_msg_t *parts, int n, int max);

#endif
