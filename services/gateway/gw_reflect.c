/*
 * gw_reflect.c - grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo
 * (see gw_call.h): server reflection, so that a client without the .proto
 * files (`grpcurl -plaintext HOST:PORT list`, `describe imbox.v1.Inbox`)
 * learns the gateway's API from the gateway.
 *
 * What it describes: the FileDescriptorSet that protoc made at build time of
 * the served protos and their imports (proto/CMakeLists.txt: imbox/v1,
 * grpc/health/v1, grpc/reflection/v1alpha), embedded in the binary as
 * imbox_descriptor_set. On first use it is cut into its files (field 1 of
 * the set, each a serialized FileDescriptorProto, answered byte for byte as
 * protoc wrote it) and indexed: each file's name and imports, and every
 * fully qualified symbol it declares (services, methods, messages, nested
 * messages, fields, oneofs, enums and their values, scoped as protobuf
 * scopes them) with the file that declares it. list_services lists the
 * services of the set, which holds exactly the served ones. A file is
 * answered with its imports, transitively, each once.
 *
 * The stream: requests are answered one at a time. An answer goes out in
 * one batch with the read of the next request (SEND_MESSAGE and
 * RECV_MESSAGE), so a stream holds at most one request and one response,
 * and a client that does not read its answers is not read either. The
 * first request comes with the call (registered method, payload read). A
 * request over GW_REFLECT_REQ_MAX bytes, or one that is not a
 * ServerReflectionRequest (malformed wire, a known field of another wire
 * type, a string that is not UTF-8), ends the stream with INVALID_ARGUMENT.
 * An unknown file, symbol or extension gets error_response NOT_FOUND inside
 * the stream, which goes on; a request with no field of message_request
 * gets error_response UNIMPLEMENTED (as gRPC's own servers answer). Every
 * response carries the request as original_request (its bytes as they
 * came) and its host as valid_host. The client's half-close ends the stream
 * with OK. No token: reflection describes the public API, nothing of any
 * user. Error texts never quote the request (its strings are the client's).
 *
 * Request wire, read by hand with the strings used in place (the nanopb
 * code of reflection.proto encodes the responses; reflection.options):
 *   ServerReflectionRequest { string host = 1; oneof message_request {
 *     string file_by_filename = 3; string file_containing_symbol = 4;
 *     ExtensionRequest file_containing_extension = 5;
 *     string all_extension_numbers_of_type = 6; string list_services = 7; } }
 *   ExtensionRequest { string containing_type = 1; int32 extension_number = 2; }
 * The last field of the oneof on the wire wins, as protobuf says; unknown
 * fields are skipped, groups too when well formed.
 *
 * Threads: the completion-queue thread; the index is built once
 * (pthread_once) and only read after.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer_reader.h>

#include "grpc/reflection/v1alpha/reflection.pb.h"
#include "gw_call.h"

/* The build's descriptor set (proto/embed_bytes.cmake writes them). */
extern const unsigned char imbox_descriptor_set[];
extern const size_t imbox_descriptor_set_len;

#define GW_REFLECT_REQ_MAX (64u << 10) /* a request: a name is tens of bytes */
#define S_FILES_MAX 64  /* files in the set (3 today) */
#define S_DEPS_MAX 32   /* imports of one file */
#define S_NAME_MAX 512  /* a fully qualified name of the set */
#define S_DEPTH_MAX 32  /* nesting of message declarations */

/* Request field numbers (reflection.proto; the generated code leaves the
 * request out). */
enum {
    RQ_HOST = 1, RQ_FILE = 3, RQ_SYMBOL = 4, RQ_EXTENSION = 5, RQ_EXT_NUMBERS = 6,
    RQ_LIST = 7,
};

typedef struct s_span {
    const uint8_t *p;
    size_t n;
} s_span;

typedef enum { D_MESSAGE, D_ENUM, D_SERVICE, D_OTHER } s_kind;

typedef struct s_file {
    s_span bytes; /* the serialized FileDescriptorProto */
    s_span name;
    int ndeps;
    s_span dep_names[S_DEPS_MAX];
    int deps[S_DEPS_MAX]; /* indices into s_ix.files */
} s_file;

typedef struct s_sym {
    char *name; /* malloc'ed, for the life of the process */
    size_t n;
    int file;
    s_kind kind;
} s_sym;

static struct {
    bool ok;
    int nfiles;
    s_file files[S_FILES_MAX];
    s_sym *syms;
    int nsyms, cap;
} s_ix;
static pthread_once_t s_once = PTHREAD_ONCE_INIT;

/* ------------------------------------------------------------ wire scan */

typedef struct s_scan {
    pb_istream_t s;
    const uint8_t *base;
    size_t len;
    bool bad;
} s_scan;

typedef struct s_fld {
    uint32_t tag;
    pb_wire_type_t wt;
    s_span str;   /* PB_WT_STRING: the field's bytes, in place */
    uint64_t num; /* PB_WT_VARINT */
} s_fld;

static s_scan s_scan_of(s_span m)
{
    return (s_scan){pb_istream_from_buffer(m.p, m.n), m.p, m.n, false};
}

/* The next field of the message: false at its end, or when the wire is
 * malformed (then k->bad). A group is skipped whole and reported with its
 * start wire type. */
static bool s_next(s_scan *k, s_fld *f)
{
    bool eof;
    uint64_t n;
    if (k->bad || k->s.bytes_left == 0)
        return false;
    if (!pb_decode_tag(&k->s, &f->wt, &f->tag, &eof) || f->tag == 0)
        goto bad; /* field number 0: as pb_decode and protobuf */
    switch ((int)f->wt) { /* groups (3, 4) are not in nanopb's enum */
    case PB_WT_STRING:
        if (!pb_decode_varint(&k->s, &n) || n > k->s.bytes_left)
            goto bad;
        f->str = (s_span){k->base + (k->len - k->s.bytes_left), (size_t)n};
        if (!pb_read(&k->s, NULL, (size_t)n))
            goto bad;
        return true;
    case PB_WT_VARINT:
        if (!pb_decode_varint(&k->s, &f->num))
            goto bad;
        return true;
    case IM_PB_WT_START_GROUP:
        if (!im_pb_skip_group(&k->s, f->tag))
            goto bad;
        return true;
    case IM_PB_WT_END_GROUP:
        goto bad;
    default:
        if (!pb_skip_field(&k->s, f->wt))
            goto bad;
        return true;
    }
bad:
    k->bad = true;
    return false;
}

/* --------------------------------------------------------------- index */

static bool s_add_sym(const char *name, size_t n, int file, s_kind kind)
{
    if (s_ix.nsyms == s_ix.cap) {
        int cap = s_ix.cap ? 2 * s_ix.cap : 128;
        s_sym *v = realloc(s_ix.syms, (size_t)cap * sizeof *v);
        if (!v)
            return false;
        s_ix.syms = v;
        s_ix.cap = cap;
    }
    char *p = malloc(n + 1);
    if (!p)
        return false;
    memcpy(p, name, n);
    p[n] = 0;
    s_ix.syms[s_ix.nsyms++] = (s_sym){p, n, file, kind};
    return true;
}

/* The name (field 1) of a declaration; false if it has none. */
static bool s_decl_name(s_span m, s_span *name)
{
    s_scan k = s_scan_of(m);
    s_fld f;
    bool found = false;
    while (s_next(&k, &f))
        if (f.tag == 1 && f.wt == PB_WT_STRING) {
            *name = f.str;
            found = true;
        }
    return found && !k.bad && name->n > 0;
}

/*
 * Adds the declaration m of the given kind, in the scope `scope` (sn bytes,
 * "" at the top of a package-less file), and what it declares: a message's
 * fields (2), nested messages (3), enums (4), extensions (6) and oneofs (8);
 * an enum's values (2), which protobuf scopes beside the enum, not in it; a
 * service's methods (2).
 */
static bool s_decl(const char *scope, size_t sn, s_span m, s_kind kind, int file, int depth)
{
    s_span name;
    char fq[S_NAME_MAX];
    if (depth > S_DEPTH_MAX || !s_decl_name(m, &name) || sn + 1 + name.n >= sizeof fq)
        return false;
    size_t n = 0;
    if (sn) {
        memcpy(fq, scope, sn);
        fq[sn] = '.';
        n = sn + 1;
    }
    memcpy(fq + n, name.p, name.n);
    n += name.n;
    if (!s_add_sym(fq, n, file, kind))
        return false;
    if (kind == D_OTHER)
        return true;
    s_scan k = s_scan_of(m);
    s_fld f;
    while (s_next(&k, &f)) {
        if (f.wt != PB_WT_STRING)
            continue;
        bool ok = true;
        if (kind == D_MESSAGE && (f.tag == 2 || f.tag == 6 || f.tag == 8))
            ok = s_decl(fq, n, f.str, D_OTHER, file, depth + 1);
        else if (kind == D_MESSAGE && f.tag == 3)
            ok = s_decl(fq, n, f.str, D_MESSAGE, file, depth + 1);
        else if (kind == D_MESSAGE && f.tag == 4)
            ok = s_decl(fq, n, f.str, D_ENUM, file, depth + 1);
        else if (kind == D_ENUM && f.tag == 2)
            ok = s_decl(scope, sn, f.str, D_OTHER, file, depth + 1);
        else if (kind == D_SERVICE && f.tag == 2)
            ok = s_decl(fq, n, f.str, D_OTHER, file, depth + 1);
        if (!ok)
            return false;
    }
    return !k.bad;
}

/* FileDescriptorProto: name 1, package 2, dependency 3, message_type 4,
 * enum_type 5, service 6, extension 7. */
static bool s_file_add(int i, s_span bytes)
{
    s_file *fl = &s_ix.files[i];
    char pkg[S_NAME_MAX];
    size_t pn = 0;
    fl->bytes = bytes;
    s_scan k = s_scan_of(bytes);
    s_fld f;
    while (s_next(&k, &f)) {
        if (f.wt != PB_WT_STRING)
            continue;
        if (f.tag == 1) {
            fl->name = f.str;
        } else if (f.tag == 2) {
            if (f.str.n >= sizeof pkg)
                return false;
            memcpy(pkg, f.str.p, f.str.n);
            pn = f.str.n;
        } else if (f.tag == 3) {
            if (fl->ndeps == S_DEPS_MAX)
                return false;
            fl->dep_names[fl->ndeps++] = f.str;
        }
    }
    if (k.bad || fl->name.n == 0)
        return false;
    static const s_kind kinds[] = {[4] = D_MESSAGE, [5] = D_ENUM, [6] = D_SERVICE, [7] = D_OTHER};
    k = s_scan_of(bytes);
    while (s_next(&k, &f))
        if (f.wt == PB_WT_STRING && f.tag >= 4 && f.tag <= 7 &&
            !s_decl(pkg, pn, f.str, kinds[f.tag], i, 0))
            return false;
    return !k.bad;
}

static int s_find_file(s_span name)
{
    for (int i = 0; i < s_ix.nfiles; i++)
        if (s_ix.files[i].name.n == name.n && memcmp(s_ix.files[i].name.p, name.p, name.n) == 0)
            return i;
    return -1;
}

static const s_sym *s_find_sym(s_span name)
{
    for (int i = 0; i < s_ix.nsyms; i++)
        if (s_ix.syms[i].n == name.n && memcmp(s_ix.syms[i].name, name.p, name.n) == 0)
            return &s_ix.syms[i];
    return NULL;
}

/* FileDescriptorSet { repeated FileDescriptorProto file = 1; }: the files,
 * then each import resolved to its file (protoc's --include_imports put
 * every one in). */
static void s_build(void)
{
    s_scan k = s_scan_of((s_span){imbox_descriptor_set, imbox_descriptor_set_len});
    s_fld f;
    while (s_next(&k, &f)) {
        if (f.tag != 1 || f.wt != PB_WT_STRING)
            continue;
        if (s_ix.nfiles == S_FILES_MAX || !s_file_add(s_ix.nfiles, f.str))
            goto fail;
        s_ix.nfiles++;
    }
    if (k.bad || s_ix.nfiles == 0)
        goto fail;
    for (int i = 0; i < s_ix.nfiles; i++) {
        s_file *fl = &s_ix.files[i];
        for (int d = 0; d < fl->ndeps; d++)
            if ((fl->deps[d] = s_find_file(fl->dep_names[d])) < 0)
                goto fail;
    }
    s_ix.ok = true;
    return;
fail:
    fprintf(stderr, "imbox gateway: the built-in descriptor set does not parse "
                    "(file %d): reflection answers INTERNAL\n", s_ix.nfiles);
}

/* ----------------------------------------------------------- responses */

typedef struct s_files_out {
    int n;
    int idx[S_FILES_MAX];
} s_files_out;

/* File `root` and its imports, transitively, each once, root first. */
static void s_closure(int root, s_files_out *o)
{
    bool seen[S_FILES_MAX] = {false};
    int stack[S_FILES_MAX], sp = 0;
    o->n = 0;
    stack[sp++] = root;
    seen[root] = true;
    while (sp) {
        const s_file *fl = &s_ix.files[stack[--sp]];
        o->idx[o->n++] = (int)(fl - s_ix.files);
        for (int d = 0; d < fl->ndeps; d++)
            if (!seen[fl->deps[d]]) {
                seen[fl->deps[d]] = true;
                stack[sp++] = fl->deps[d];
            }
    }
}

static bool s_write_files(pb_ostream_t *s, const pb_field_t *f, void *const *arg)
{
    const s_files_out *o = *arg;
    for (int i = 0; i < o->n; i++) {
        const s_span *b = &s_ix.files[o->idx[i]].bytes;
        if (!pb_encode_tag_for_field(s, f) || !pb_encode_string(s, b->p, b->n))
            return false;
    }
    return true;
}

static bool s_write_services(pb_ostream_t *s, const pb_field_t *f, void *const *arg)
{
    (void)arg;
    for (int i = 0; i < s_ix.nsyms; i++) {
        if (s_ix.syms[i].kind != D_SERVICE)
            continue;
        im_bytes_out name = {s_ix.syms[i].name, s_ix.syms[i].n};
        grpc_reflection_v1alpha_ServiceResponse sr = {
            .name = {.funcs.encode = im_pb_write_bytes, .arg = &name}};
        if (!pb_encode_tag_for_field(s, f) ||
            !pb_encode_submessage(s, grpc_reflection_v1alpha_ServiceResponse_fields, &sr))
            return false;
    }
    return true;
}

/* ExtensionRequest: its containing_type into *type. */
static bool s_ext_request(s_span m, s_span *type)
{
    s_scan k = s_scan_of(m);
    s_fld f;
    while (s_next(&k, &f)) {
        if (f.tag == 1 && (f.wt != PB_WT_STRING || !im_utf8_valid((const char *)f.str.p, f.str.n)))
            return false;
        if (f.tag == 2 && f.wt != PB_WT_VARINT)
            return false;
        if (f.tag == 1)
            *type = f.str;
    }
    return !k.bad;
}

/*
 * Answers one request (req, the client's bytes): the encoded
 * ServerReflectionResponse into *out (malloc'ed, the caller frees), and 0;
 * or the status that ends the stream, with *why.
 */
static int s_answer(s_span req, uint8_t **out, size_t *len, const char **why)
{
    s_span host = {NULL, 0}, name = {NULL, 0};
    int which = 0;
    s_scan k = s_scan_of(req);
    s_fld f;
    while (s_next(&k, &f)) {
        switch (f.tag) {
        case RQ_HOST:
        case RQ_FILE:
        case RQ_SYMBOL:
        case RQ_EXT_NUMBERS:
        case RQ_LIST:
            if (f.wt != PB_WT_STRING || !im_utf8_valid((const char *)f.str.p, f.str.n))
                goto invalid;
            if (f.tag == RQ_HOST) {
                host = f.str;
            } else {
                which = (int)f.tag;
                name = f.str;
            }
            break;
        case RQ_EXTENSION:
            name = (s_span){NULL, 0};
            if (f.wt != PB_WT_STRING || !s_ext_request(f.str, &name))
                goto invalid;
            which = RQ_EXTENSION;
            break;
        default:
            break; /* unknown: skipped */
        }
    }
    if (k.bad)
        goto invalid;

    im_bytes_out o_host = {host.p, host.n}, o_req = {req.p, req.n}, o_text = {NULL, 0};
    s_files_out files;
    grpc_reflection_v1alpha_ServerReflectionResponse r;
    memset(&r, 0, sizeof r);
    if (host.n)
        r.valid_host = (pb_callback_t){.funcs.encode = im_pb_write_bytes, .arg = &o_host};
    r.original_request = (pb_callback_t){.funcs.encode = im_pb_write_bytes, .arg = &o_req};
    int code = 0;
    const char *text = NULL;
    const s_sym *sym;
    int file;
    switch (which) {
    case RQ_FILE:
    case RQ_SYMBOL:
        sym = which == RQ_SYMBOL ? s_find_sym(name) : NULL;
        file = which == RQ_FILE ? s_find_file(name) : sym ? sym->file : -1;
        if (file < 0) {
            code = IM_NOT_FOUND;
            text = which == RQ_FILE ? "file not found" : "symbol not found";
            break;
        }
        s_closure(file, &files);
        r.which_message_response =
            grpc_reflection_v1alpha_ServerReflectionResponse_file_descriptor_response_tag;
        r.message_response.file_descriptor_response.file_descriptor_proto =
            (pb_callback_t){.funcs.encode = s_write_files, .arg = &files};
        break;
    case RQ_EXTENSION:
        code = IM_NOT_FOUND;
        text = "extension not found: these services declare no extensions";
        break;
    case RQ_EXT_NUMBERS:
        sym = s_find_sym(name);
        if (!sym || sym->kind != D_MESSAGE) {
            code = IM_NOT_FOUND;
            text = "type not found";
            break;
        }
        /* a message of the set, which declares no extensions: none */
        o_text = (im_bytes_out){sym->name, sym->n};
        r.which_message_response =
            grpc_reflection_v1alpha_ServerReflectionResponse_all_extension_numbers_response_tag;
        r.message_response.all_extension_numbers_response.base_type_name =
            (pb_callback_t){.funcs.encode = im_pb_write_bytes, .arg = &o_text};
        break;
    case RQ_LIST:
        r.which_message_response =
            grpc_reflection_v1alpha_ServerReflectionResponse_list_services_response_tag;
        r.message_response.list_services_response.service =
            (pb_callback_t){.funcs.encode = s_write_services, .arg = NULL};
        break;
    default:
        code = IM_UNIMPLEMENTED;
        text = "no request: set one field of message_request";
        break;
    }
    if (code) {
        o_text = (im_bytes_out){text, strlen(text)};
        r.which_message_response =
            grpc_reflection_v1alpha_ServerReflectionResponse_error_response_tag;
        r.message_response.error_response.error_code = code;
        r.message_response.error_response.error_message =
            (pb_callback_t){.funcs.encode = im_pb_write_bytes, .arg = &o_text};
    }
    if (im_pb_encode(grpc_reflection_v1alpha_ServerReflectionResponse_fields, &r, out,
                     len)) {
        *why = "out of memory";
        return IM_RESOURCE_EXHAUSTED;
    }
    return 0;
invalid:
    *why = "ServerReflectionRequest does not decode";
    return IM_INVALID_ARGUMENT;
}

/* -------------------------------------------------------------- stream */

/* Ends the stream with status (the final batch, TAG_SEND). */
static void s_end(gw_call *c, int status, const char *msg)
{
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    int n = 0;
    if (!c->reflect_md) {
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        ops[n++].data.send_initial_metadata.count = 0;
    }
    grpc_slice_unref(c->status_details);
    c->status_details = grpc_slice_from_copied_string(msg);
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = (grpc_status_code)status;
    ops[n++].data.send_status_from_server.status_details = &c->status_details;
    if (grpc_call_start_batch(c->call, ops, (size_t)n, &c->t_send, NULL) != GRPC_CALL_OK) {
        fprintf(stderr, "imbox gateway: start_batch(reflection status) failed: a bug\n");
        abort();
    }
}

/* Answers the request in c->payload (NULL: the client half-closed) and
 * reads the next one, or ends the stream. Holds one reference of the call,
 * which the batch it starts takes over. */
static void s_handle(gw_call *c)
{
    if (!c->payload) {
        s_end(c, IM_OK, "");
        return;
    }
    pthread_once(&s_once, s_build);
    if (!s_ix.ok) {
        s_end(c, IM_INTERNAL, "reflection: the built-in descriptor set does not parse");
        return;
    }
    grpc_byte_buffer_reader rd;
    bool fits = grpc_byte_buffer_length(c->payload) <= GW_REFLECT_REQ_MAX;
    if (!fits || !grpc_byte_buffer_reader_init(&rd, c->payload)) {
        s_end(c, IM_INVALID_ARGUMENT,
              fits ? "ServerReflectionRequest does not decode"
                   : "ServerReflectionRequest: over 65536 bytes");
        return;
    }
    grpc_slice sl = grpc_byte_buffer_reader_readall(&rd);
    grpc_byte_buffer_reader_destroy(&rd);
    grpc_byte_buffer_destroy(c->payload);
    c->payload = NULL;
    uint8_t *out = NULL;
    size_t len = 0;
    const char *why = NULL;
    int status = GRPC_SLICE_LENGTH(sl) > GW_REFLECT_REQ_MAX ? IM_INVALID_ARGUMENT : 0;
    if (status) /* it was compressed */
        why = "ServerReflectionRequest: over 65536 bytes";
    else
        status = s_answer((s_span){GRPC_SLICE_START_PTR(sl), GRPC_SLICE_LENGTH(sl)}, &out, &len,
                          &why);
    grpc_slice_unref(sl);
    if (status) {
        s_end(c, status, why);
        return;
    }
    grpc_slice s = grpc_slice_new(out, len, free);
    c->resp = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    int n = 0;
    if (!c->reflect_md) {
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        ops[n++].data.send_initial_metadata.count = 0;
        c->reflect_md = true;
    }
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = c->resp;
    ops[n].op = GRPC_OP_RECV_MESSAGE;
    ops[n++].data.recv_message.recv_message = &c->payload;
    if (grpc_call_start_batch(c->call, ops, (size_t)n, &c->t_msg, NULL) != GRPC_CALL_OK) {
        fprintf(stderr, "imbox gateway: start_batch(reflection) failed: a bug\n");
        abort();
    }
}

void gw__reflect(gw_call *c)
{
    s_handle(c);
}

void gw__reflect_next(gw_call *c, bool ok)
{
    if (c->resp) {
        grpc_byte_buffer_destroy(c->resp);
        c->resp = NULL;
    }
    /* Over (cancelled, its deadline), or the server is stopping: then no
     * new batch, as the completion queue may already be shut down (gRPC
     * asserts); the stop cancels the call, whose receive-close frees it. */
    if (!ok || atomic_load(&c->g->stopping))
        return;
    atomic_fetch_add(&c->refs, 1);
    s_handle(c);
}
