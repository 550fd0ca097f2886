/* im_msg.c - see im_msg.h. */
#include "im_msg.h"

#include <string.h>

#include "imbox/v1/imbox.pb.h"

/* The bytes of a string field of the generated struct: nanopb would copy
 * at most its size - 1 of them. */
#define S_CAP(field) (sizeof(((imbox_v1_Message *)0)->field) - 1)

int im_msg_append(im_buf *b, uint32_t tag, const im_msg_view *m)
{
    size_t id = strnlen(m->msg_id, S_CAP(msg_id));
    size_t from = strnlen(m->sender_uid, S_CAP(sender_uid));
    size_t to = strnlen(m->receiver_uid, S_CAP(receiver_uid));
    uint64_t time = (uint64_t)m->send_time_ms;
    uint64_t type = (uint64_t)(int64_t)m->msg_type; /* sign-extended, as nanopb */
    size_t body = im_pb_len_size3(imbox_v1_Message_msg_id_tag, id) +
                  im_pb_len_size3(imbox_v1_Message_sender_uid_tag, from) +
                  im_pb_len_size3(imbox_v1_Message_receiver_uid_tag, to) +
                  im_pb_varint_size3(imbox_v1_Message_send_time_ms_tag, time) +
                  im_pb_varint_size3(imbox_v1_Message_msg_type_tag, type) +
                  im_pb_len_size(imbox_v1_Message_content_tag, m->content_len);
    size_t total = im_pb_len_size(tag, body);
    size_t at = b->n;
    if (im_buf_reserve(b, total))
        return -1;
    im_pb_out o = im_pb_out_of(b->p + at, total);
    im_pb_out_head(&o, tag, body);
    im_pb_out_len3(&o, imbox_v1_Message_msg_id_tag, m->msg_id, id);
    im_pb_out_len3(&o, imbox_v1_Message_sender_uid_tag, m->sender_uid, from);
    im_pb_out_len3(&o, imbox_v1_Message_receiver_uid_tag, m->receiver_uid, to);
    im_pb_out_varint3(&o, imbox_v1_Message_send_time_ms_tag, time);
    im_pb_out_varint3(&o, imbox_v1_Message_msg_type_tag, type);
    im_pb_out_len(&o, imbox_v1_Message_content_tag, m->content, m->content_len);
    if (!im_pb_out_full(&o))
        return -1; /* cannot happen: the sizes above are the writes' */
    b->n = at + total;
    return 0;
}
