/*
 * imboxctl.c - the command-line client of imbox (see `imboxctl --help`).
 *
 * A thin shell over rpc_client.h: parse flags, make one client, run one
 * command, print. The only subtle command is `pull`, which drains the inbox
 * page by page with ack-by-next-page and must neither lose nor repeat a
 * message when it crashes or is killed at any point. Per page it does:
 *
 *   1. Pull(cursor of the previous page)   acks the previous page
 *   2. print the page's new messages       and flush stdout
 *   3. append them to the seen file        and fsync it
 *   4. loop: the next Pull acks this page  (the last call returns nothing)
 *
 * A message is acked only after it was shown and recorded, so no crash
 * loses one; a page pulled again after a crash between 3 and 4 is filtered
 * by the seen file, so it is not shown twice. (A crash between 2 and 3 shows
 * that one page again: at least once, never zero times.) That is also why
 * the output is grouped by sender per page, not over the whole drain:
 * holding messages back until the end would ack messages not yet shown.
 *
 * `watch` is the live form of the same rule, over a Subscribe stream
 * instead of pages: each Delivery is shown (or hidden when the seen file has
 * it), and the cursor of the last one handled is acked once the stream
 * pauses (no Delivery within S_WATCH_BURST_MS) or S_WATCH_ACK_EVERY are
 * waiting, after their seen lines were appended and fsync'ed. A burst (the
 * backlog, a group of messages) is thus one fsync and one Ack, and a
 * message is acked only after it was shown and recorded. Ctrl-C / SIGTERM
 * only set a flag (rpc_stream_next waits at most S_WATCH_POLL_MS, then the
 * flag is looked at): the stream is cancelled, what was shown is recorded
 * and acked, and watch exits 0. When the server ends the stream, watch
 * acks what it showed, prints the status and exits 1: it does not
 * reconnect (run it again: the seen file hides what was already shown).
 *
 * Seen file format (default $HOME/.imboxctl-seen): one line per message,
 *
 *   sender_uid TAB msg_id LF
 *
 * with backslash, TAB, CR and LF inside either field written as \\ \t \r \n.
 * A last line without LF (torn by a crash during the write) is ignored: its
 * page was not acked, so the message will come again. The file is locked
 * (flock) while a pull or a watch runs, so that two cannot interleave their
 * records.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "im_base.h"
#include "rpc_client.h"

#define S_DEFAULT_ADDR "127.0.0.1:50051"
#define S_DEFAULT_TIMEOUT_S 30   /* per call: a Send waits for fsync */
#define S_SEEN_NAME ".imboxctl-seen"
#define S_WATCH_POLL_MS 200  /* longest wait in rpc_stream_next: Ctrl-C is
                                noticed within this */
#define S_WATCH_BURST_MS 50  /* handled messages are acked when no other
                                one came within this: a burst, one Ack */
#define S_WATCH_ACK_EVERY 500 /* ...or when this many wait for their Ack,
                                so that a stream that never pauses acks */

static int s_timeout_ms = S_DEFAULT_TIMEOUT_S * 1000;

static const char s_usage_text[] =
    "usage: imboxctl [--addr HOST:PORT] [--token TOKEN] [--timeout SECONDS]\n"
    "                [--tls] [--tls-ca FILE] [--tls-cert FILE --tls-key FILE]\n"
    "                [--tls-server-name NAME] COMMAND [ARGS]\n"
    "\n"
    "The command-line client of imbox (imbox serve or imbox gateway).\n"
    "\n"
    "  --addr HOST:PORT   server (env IMBOX_ADDR, default " S_DEFAULT_ADDR ")\n"
    "  --token TOKEN      your token, from `imbox token --uid U` (env\n"
    "                     IMBOX_TOKEN); required\n"
    "  --timeout SECONDS  deadline of each call (default 30)\n"
    "  --tls              connect over TLS, verifying the server's certificate\n"
    "                     with gRPC's default roots (default: plaintext)\n"
    "  --tls-ca FILE      PEM CA certificates that sign the server's (implies\n"
    "                     --tls)\n"
    "  --tls-cert FILE, --tls-key FILE\n"
    "                     PEM client certificate and its key, for a server\n"
    "                     that requires one (--tls-client-ca; implies --tls)\n"
    "  --tls-server-name NAME\n"
    "                     the name the server's certificate must carry, when\n"
    "                     it is not --addr's host (implies --tls)\n"
    "  --help             this text\n"
    "\n"
    "commands:\n"
    "  send --to U1,U2,... --id MSGID [--type N] TEXT...\n"
    "      Stores TEXT (the words joined by spaces) for every receiver and\n"
    "      prints one line each: `U stored`, `U stored, pushed` (U was\n"
    "      online: the message went to its live stream too), `U duplicate`\n"
    "      (this MSGID was already stored: retrying is safe) or\n"
    "      `U failed CODE: reason`.\n"
    "      Exit status 0 only if every receiver has the message.\n"
    "  pull [--page N] [--sender S] [--dedup FILE]\n"
    "      Shows and deletes every waiting message (only sender S's with\n"
    "      --sender), N per call (default: the server's, 100), grouped by\n"
    "      sender within each page:\n"
    "        == SENDER (N new)\n"
    "          [SEND_TIME] MSG_ID: CONTENT     (hex:... if not printable)\n"
    "      Each page is shown, recorded in FILE (default $HOME/" S_SEEN_NAME
    ")\n"
    "      and only then acked by the next call: a crash never loses a\n"
    "      message, and a recorded message is never shown again.\n"
    "  watch [--cursor C] [--dedup FILE]\n"
    "      A live view: shows the waiting messages (after C, acking up to C\n"
    "      first), then new ones as they arrive, one line each:\n"
    "        [SEND_TIME] SENDER MSG_ID: CONTENT     (hex:... if not printable)\n"
    "      As pull does, it records what it showed in FILE (a recorded message\n"
    "      is not shown again) and only then acks it, a burst at a time.\n"
    "      Runs until Ctrl-C or SIGTERM (exit 0 once what was shown is acked)\n"
    "      or until the server ends the stream (its status on stderr, exit 1;\n"
    "      no reconnect). --timeout bounds each Ack, not the stream. While a\n"
    "      watch runs, the user is online.\n"
    "  presence UID...\n"
    "      One line per UID: `UID online` (a watch or another Subscribe stream\n"
    "      of that user is open) or `UID offline`.\n"
    "  counts\n"
    "      Waiting messages per sender, most recent first, then the total.\n"
    "  ack CURSOR\n"
    "      Deletes every message up to CURSOR (from a pull).\n"
    "\n"
    "Exit status: 0 success, 1 a call failed (`imboxctl: CODE: details` on\n"
    "stderr), 2 usage error.\n";

/* ------------------------------------------------------------- reporting */

/* Prints "imboxctl: MESSAGE" and `tail` to stderr; returns `code`. */
static int s_vreport(int code, const char *tail, const char *fmt, va_list ap)
{
    fputs("imboxctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs(tail, stderr);
    return code;
}

static int s_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = s_vreport(2, "\nTry 'imboxctl --help'.\n", fmt, ap);
    va_end(ap);
    return rc;
}

static int s_rpc_failed(const rpc_error *e)
{
    fprintf(stderr, "imboxctl: %s: %s\n", rpc_code_name(e->code),
            e->details);
    return 1;
}

static int s_failed(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = s_vreport(1, "\n", fmt, ap);
    va_end(ap);
    return rc;
}

/* ISO 8601 UTC with milliseconds: 2024-05-01T12:00:00.123Z */
static void s_iso8601(int64_t ms, char *buf, size_t cap)
{
    int64_t s = ms / 1000, rem = ms % 1000;
    if (rem < 0) {
        rem += 1000;
        s -= 1;
    }
    time_t t = (time_t)s;
    struct tm tm;
    if (!gmtime_r(&t, &tm)) {
        snprintf(buf, cap, "%" PRId64 "ms", ms);
        return;
    }
    size_t n = strftime(buf, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, cap - n, ".%03dZ", (int)rem);
}

/*
 * Valid UTF-8 (no overlong forms, no surrogates, <= U+10FFFF) without
 * control characters (C0, DEL, C1): safe to print on one terminal line.
 */
static bool s_printable_utf8(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint32_t c = p[i];
        size_t len;
        if (c < 0x80) {
            if (c < 0x20 || c == 0x7f)
                return false;
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) {
            len = 2;
            c &= 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            c &= 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            c &= 0x07;
        } else {
            return false;
        }
        if (n - i < len)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return false;
            c = (c << 6) | (p[i + k] & 0x3f);
        }
        if ((len == 3 && c < 0x800) || (len == 4 && c < 0x10000) ||
            c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff) ||
            (c >= 0x80 && c <= 0x9f))
            return false;
        i += len;
    }
    return true;
}

/* Text when printable, else "hex:" and the bytes in lower-case hex. */
static void s_print_data(FILE *f, const void *data, size_t n)
{
    const uint8_t *p = data;
    if (s_printable_utf8(p, n)) {
        fwrite(p, 1, n, f);
        return;
    }
    fputs("hex:", f);
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%02x", p[i]);
}

static void s_print_str(FILE *f, const char *s)
{
    s_print_data(f, s, strlen(s));
}

/* ----------------------------------------------------------------- send */

static int s_cmd_send(rpc_client *c, int argc, char **argv)
{
    static const struct option opts[] = {
        {"to", required_argument, NULL, 'r'},
        {"id", required_argument, NULL, 'i'},
        {"type", required_argument, NULL, 'y'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *to = NULL, *id = NULL;
    long type = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'r':
            to = optarg;
            break;
        case 'i':
            id = optarg;
            break;
        case 'y': {
            char *end;
            errno = 0;
            type = strtol(optarg, &end, 10);
            if (errno || *end || end == optarg || type < INT32_MIN ||
                type > INT32_MAX)
                return s_usage_error("send: --type %s: not a 32-bit integer",
                                     optarg);
            break;
        }
        case 'h':
            fputs(s_usage_text, stdout);
            return 0;
        default:
            return 2;
        }
    }
    if (!to)
        return s_usage_error("send: --to U1,U2,... is required");
    if (!id)
        return s_usage_error("send: --id MSGID is required");
    if (optind >= argc)
        return s_usage_error("send: TEXT is required");

    /* TEXT: the remaining words, joined by single spaces. */
    size_t tlen = 0;
    for (int i = optind; i < argc; i++)
        tlen += strlen(argv[i]) + 1;
    char *text = malloc(tlen);
    if (!text)
        return s_failed("out of memory");
    text[0] = '\0';
    for (int i = optind; i < argc; i++) {
        if (i > optind)
            strcat(text, " ");
        strcat(text, argv[i]);
    }

    /* Receivers: split on commas, as given (the server judges empty or
     * repeated uids and says which one is wrong). */
    char *list = strdup(to);
    size_t n = 1;
    for (const char *p = to; *p; p++)
        n += *p == ',';
    const char **rcv = calloc(n, sizeof *rcv);
    if (!list || !rcv) {
        free(text);
        free(list);
        free(rcv);
        return s_failed("out of memory");
    }
    size_t k = 0;
    for (char *p = list;; p++) {
        rcv[k++] = p;
        p = strchr(p, ',');
        if (!p)
            break;
        *p = '\0';
    }

    rpc_send_result res;
    rpc_error e;
    int rc = 0;
    if (rpc_send(c, id, rcv, n, (int32_t)type, text, strlen(text),
                 s_timeout_ms, &res, &e) != GRPC_STATUS_OK) {
        rc = s_rpc_failed(&e);
    } else {
        for (size_t i = 0; i < res.n; i++) {
            const rpc_receipt *r = &res.receipts[i];
            const char *uid = r->receiver_uid[0] ? r->receiver_uid : rcv[i];
            s_print_str(stdout, uid);
            if (r->code != 0) {
                printf(" failed %s: %s\n", rpc_code_name(r->code), r->error);
                rc = 1;
            } else {
                puts(r->duplicate ? " duplicate" : r->online ? " stored, pushed" : " stored");
            }
        }
        rpc_send_result_free(&res);
    }
    free(rcv);
    free(list);
    free(text);
    return rc;
}

/* ------------------------------------------------------- the seen file */

/* A set of strings (open addressing, linear probing, power-of-two size). */
typedef struct s_set {
    char **slot;
    size_t cap, n;
} s_set;

static uint64_t s_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ULL;
    return h;
}

static bool s_set_has(const s_set *set, const char *key)
{
    if (!set->cap)
        return false;
    for (size_t i = s_hash(key) & (set->cap - 1);; i = (i + 1) & (set->cap - 1)) {
        if (!set->slot[i])
            return false;
        if (strcmp(set->slot[i], key) == 0)
            return true;
    }
}

/* Adds a copy of key; false when out of memory. */
static bool s_set_add(s_set *set, const char *key)
{
    if (s_set_has(set, key))
        return true;
    if ((set->n + 1) * 2 > set->cap) {
        size_t cap = set->cap ? set->cap * 2 : 1024;
        char **slot = calloc(cap, sizeof *slot);
        if (!slot)
            return false;
        for (size_t j = 0; j < set->cap; j++) {
            char *k = set->slot[j];
            if (!k)
                continue;
            size_t i = s_hash(k) & (cap - 1);
            while (slot[i])
                i = (i + 1) & (cap - 1);
            slot[i] = k;
        }
        free(set->slot);
        set->slot = slot;
        set->cap = cap;
    }
    char *copy = strdup(key);
    if (!copy)
        return false;
    size_t i = s_hash(key) & (set->cap - 1);
    while (set->slot[i])
        i = (i + 1) & (set->cap - 1);
    set->slot[i] = copy;
    set->n++;
    return true;
}

static void s_set_free(s_set *set)
{
    for (size_t i = 0; i < set->cap; i++)
        free(set->slot[i]);
    free(set->slot);
    memset(set, 0, sizeof *set);
}

/* Appends s to buf with the seen file's escapes. buf has 2*strlen+1 room. */
static char *s_escape(char *buf, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '\\': *buf++ = '\\'; *buf++ = '\\'; break;
        case '\t': *buf++ = '\\'; *buf++ = 't'; break;
        case '\n': *buf++ = '\\'; *buf++ = 'n'; break;
        case '\r': *buf++ = '\\'; *buf++ = 'r'; break;
        default: *buf++ = *s; break;
        }
    }
    *buf = '\0';
    return buf;
}

/* The seen-file line of a message, without LF; malloc'ed. */
static char *s_seen_key(const rpc_msg *m)
{
    char *k = malloc(2 * strlen(m->sender_uid) + 2 * strlen(m->msg_id) + 2);
    if (!k)
        return NULL;
    char *p = s_escape(k, m->sender_uid);
    *p++ = '\t';
    s_escape(p, m->msg_id);
    return k;
}

static bool s_write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

typedef struct s_seen {
    int fd;
    const char *path;
    s_set set;
    bool torn;  /* the file ends in a line without LF */
} s_seen;

/* Opens, locks and loads the seen file; 0 or an exit status. */
static int s_seen_open(s_seen *sn, const char *path)
{
    memset(sn, 0, sizeof *sn);
    sn->path = path;
    sn->fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (sn->fd < 0)
        return s_failed("%s: %s", path, strerror(errno));
    if (flock(sn->fd, LOCK_EX | LOCK_NB) != 0)
        return s_failed("%s: %s", path,
                        errno == EWOULDBLOCK
                            ? "in use by another imboxctl pull or watch"
                            : strerror(errno));
    struct stat st;
    if (fstat(sn->fd, &st) != 0)
        return s_failed("%s: %s", path, strerror(errno));
    size_t size = (size_t)st.st_size;
    char *data = malloc(size + 1);
    if (!data)
        return s_failed("%s: out of memory", path);
    size_t got = 0;
    while (got < size) {
        ssize_t r = pread(sn->fd, data + got, size - got, (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    data[got] = '\0';
    char *line = data;
    for (;;) {
        char *nl = memchr(line, '\n', (size_t)(data + got - line));
        if (!nl) {
            sn->torn = line < data + got;
            break;
        }
        *nl = '\0';
        if (*line && !s_set_add(&sn->set, line)) {
            free(data);
            return s_failed("%s: out of memory", path);
        }
        line = nl + 1;
    }
    free(data);
    return 0;
}

/* Appends lines (each ending in LF) durably; 0 or an exit status. */
static int s_seen_append(s_seen *sn, const char *lines, size_t len)
{
    if (sn->torn) {
        if (!s_write_all(sn->fd, "\n", 1))
            return s_failed("%s: %s", sn->path, strerror(errno));
        sn->torn = false;
    }
    if (!s_write_all(sn->fd, lines, len) || fsync(sn->fd) != 0)
        return s_failed("%s: %s", sn->path, strerror(errno));
    return 0;
}

/* The seen file: --dedup FILE, else $HOME/.imboxctl-seen (./ without
 * HOME). */
static void s_seen_path(const char *dedup, char *path, size_t cap)
{
    const char *home = getenv("HOME");
    if (dedup)
        snprintf(path, cap, "%s", dedup);
    else if (home && *home)
        snprintf(path, cap, "%s/%s", home, S_SEEN_NAME);
    else
        snprintf(path, cap, "./%s", S_SEEN_NAME);
}

static void s_seen_close(s_seen *sn)
{
    if (sn->fd >= 0)
        close(sn->fd);
    s_set_free(&sn->set);
}

/* ------------------------------------------------------------------ pull */

/* Prints the page's new messages (is_new[i]) grouped by sender, in order of
 * each sender's first new message; returns 0 or an exit status. */
static int s_print_page(const rpc_page *pg, const bool *is_new)
{
    bool *done = calloc(pg->n, sizeof *done);
    if (!done)
        return s_failed("out of memory");
    for (size_t i = 0; i < pg->n; i++) {
        if (!is_new[i] || done[i])
            continue;
        const char *sender = pg->msgs[i].sender_uid;
        size_t count = 0;
        for (size_t j = i; j < pg->n; j++)
            count += is_new[j] && strcmp(pg->msgs[j].sender_uid, sender) == 0;
        fputs("== ", stdout);
        s_print_str(stdout, sender);
        printf(" (%zu new)\n", count);
        for (size_t j = i; j < pg->n; j++) {
            const rpc_msg *m = &pg->msgs[j];
            if (!is_new[j] || strcmp(m->sender_uid, sender) != 0)
                continue;
            char when[64];
            s_iso8601(m->send_time_ms, when, sizeof when);
            printf("  [%s] ", when);
            s_print_str(stdout, m->msg_id);
            fputs(": ", stdout);
            s_print_data(stdout, m->content, m->content_len);
            fputc('\n', stdout);
            done[j] = true;
        }
    }
    free(done);
    if (fflush(stdout) != 0 || ferror(stdout))
        return s_failed("stdout: %s", strerror(errno));
    return 0;
}

static int s_cmd_pull(rpc_client *c, int argc, char **argv)
{
    static const struct option opts[] = {
        {"page", required_argument, NULL, 'p'},
        {"sender", required_argument, NULL, 's'},
        {"dedup", required_argument, NULL, 'd'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    unsigned long page = 0;
    const char *sender = NULL, *dedup = NULL;
    int ch;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'p': {
            char *end;
            errno = 0;
            page = strtoul(optarg, &end, 10);
            if (errno || *end || end == optarg || optarg[0] == '-' ||
                page > UINT32_MAX)
                return s_usage_error("pull: --page %s: not a page size",
                                     optarg);
            break;
        }
        case 's':
            sender = optarg;
            break;
        case 'd':
            dedup = optarg;
            break;
        case 'h':
            fputs(s_usage_text, stdout);
            return 0;
        default:
            return 2;
        }
    }
    if (optind < argc)
        return s_usage_error("pull: unexpected argument '%s'", argv[optind]);

    char path[PATH_MAX];
    s_seen_path(dedup, path, sizeof path);
    s_seen sn;
    int rc = s_seen_open(&sn, path);
    if (rc) {
        s_seen_close(&sn);
        return rc;
    }

    char cursor[sizeof ((rpc_page *)0)->cursor] = "";
    uint64_t pages = 0, calls = 0, fresh = 0, hidden = 0;
    for (;;) {
        rpc_page pg;
        rpc_error e;
        calls++;
        if (rpc_pull(c, cursor, (uint32_t)page, sender, s_timeout_ms, &pg,
                     &e) != GRPC_STATUS_OK) {
            rc = s_rpc_failed(&e);
            break;
        }
        if (pg.n == 0) { /* this call acked the last page: drained */
            rpc_page_free(&pg);
            break;
        }
        if (strcmp(pg.cursor, cursor) == 0) {
            /* A server that does not advance would make us loop forever. */
            rpc_page_free(&pg);
            rc = s_failed("INTERNAL: the server answered a page of messages "
                          "with the cursor it was given");
            break;
        }
        pages++;

        /* New = not in the seen file and not earlier in this page. */
        bool *is_new = calloc(pg.n, sizeof *is_new);
        char **keys = calloc(pg.n, sizeof *keys);
        size_t rec_len = 0;
        rc = is_new && keys ? 0 : s_failed("out of memory");
        for (size_t i = 0; !rc && i < pg.n; i++) {
            keys[i] = s_seen_key(&pg.msgs[i]);
            if (!keys[i]) {
                rc = s_failed("out of memory");
                break;
            }
            if (s_set_has(&sn.set, keys[i])) {
                hidden++;
                continue;
            }
            if (!s_set_add(&sn.set, keys[i])) {
                rc = s_failed("out of memory");
                break;
            }
            is_new[i] = true;
            fresh++;
            rec_len += strlen(keys[i]) + 1;
        }
        if (!rc)
            rc = s_print_page(&pg, is_new);
        char *rec = NULL;
        if (!rc && rec_len) {
            rec = malloc(rec_len);
            if (!rec) {
                rc = s_failed("out of memory");
            } else {
                size_t off = 0;
                for (size_t i = 0; i < pg.n; i++) {
                    if (!is_new[i])
                        continue;
                    size_t kl = strlen(keys[i]);
                    memcpy(rec + off, keys[i], kl);
                    rec[off + kl] = '\n';
                    off += kl + 1;
                }
                rc = s_seen_append(&sn, rec, rec_len);
            }
        }
        free(rec);
        for (size_t i = 0; keys && i < pg.n; i++)
            free(keys[i]);
        free(keys);
        free(is_new);
        /* Only now may the next Pull ack this page. */
        memcpy(cursor, pg.cursor, sizeof cursor);
        rpc_page_free(&pg);
        if (rc)
            break;
    }
    if (!rc)
        printf("pulled %" PRIu64 " pages in %" PRIu64 " calls, %" PRIu64
               " new, %" PRIu64 " duplicates hidden\n",
               pages, calls, fresh, hidden);
    s_seen_close(&sn);
    return rc;
}

/* ----------------------------------------------------------------- watch */

static volatile sig_atomic_t s_stop_signal; /* set by SIGINT / SIGTERM */

static void s_on_stop(int sig)
{
    s_stop_signal = sig;
}

typedef struct s_watch {
    rpc_client *c;
    s_seen sn;
    char ack[RPC_CURSOR_CAP]; /* cursor of the last Delivery handled */
    size_t unacked;           /* Deliveries handled since the last Ack */
    char *rec;                /* their seen lines, not yet written */
    size_t rec_len, rec_cap;
    uint64_t shown, hidden, acks;
} s_watch;

/* Records what was shown, then acks every Delivery handled: 0 or an exit
 * status (and then nothing is acked unless it was recorded). */
static int s_watch_ack(s_watch *w)
{
    if (!w->unacked)
        return 0;
    if (w->rec_len) {
        int rc = s_seen_append(&w->sn, w->rec, w->rec_len);
        if (rc)
            return rc;
        w->rec_len = 0;
    }
    rpc_error e;
    if (rpc_ack(w->c, w->ack, s_timeout_ms, NULL, &e) != GRPC_STATUS_OK)
        return s_rpc_failed(&e);
    w->unacked = 0;
    w->acks++;
    return 0;
}

/* Shows d, unless the seen file has it, and queues its seen line and its
 * cursor for the next s_watch_ack; 0 or an exit status. */
static int s_watch_show(s_watch *w, const rpc_delivery *d)
{
    const rpc_msg *m = &d->msg;
    char *key = s_seen_key(m);
    if (!key)
        return s_failed("out of memory");
    int rc = 0;
    if (s_set_has(&w->sn.set, key)) {
        w->hidden++;
    } else {
        size_t kl = strlen(key);
        if (w->rec_cap - w->rec_len < kl + 1) {
            size_t cap = (w->rec_len + kl + 1) * 2;
            char *rec = realloc(w->rec, cap);
            if (!rec) {
                free(key);
                return s_failed("out of memory");
            }
            w->rec = rec;
            w->rec_cap = cap;
        }
        char when[64];
        s_iso8601(m->send_time_ms, when, sizeof when);
        printf("[%s] ", when);
        s_print_str(stdout, m->sender_uid);
        fputc(' ', stdout);
        s_print_str(stdout, m->msg_id);
        fputs(": ", stdout);
        s_print_data(stdout, m->content, m->content_len);
        fputc('\n', stdout);
        if (fflush(stdout) != 0 || ferror(stdout))
            rc = s_failed("stdout: %s", strerror(errno));
        else if (!s_set_add(&w->sn.set, key))
            rc = s_failed("out of memory");
        if (rc) {
            free(key);
            return rc;
        }
        memcpy(w->rec + w->rec_len, key, kl);
        w->rec[w->rec_len + kl] = '\n';
        w->rec_len += kl + 1;
        w->shown++;
    }
    free(key);
    memcpy(w->ack, d->cursor, sizeof w->ack);
    w->unacked++;
    return 0;
}

static int s_cmd_watch(rpc_client *c, int argc, char **argv)
{
    static const struct option opts[] = {
        {"cursor", required_argument, NULL, 'c'},
        {"dedup", required_argument, NULL, 'd'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *cursor = "", *dedup = NULL;
    int ch;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            cursor = optarg;
            break;
        case 'd':
            dedup = optarg;
            break;
        case 'h':
            fputs(s_usage_text, stdout);
            return 0;
        default:
            return 2;
        }
    }
    if (optind < argc)
        return s_usage_error("watch: unexpected argument '%s'", argv[optind]);

    s_watch w;
    memset(&w, 0, sizeof w);
    w.c = c;
    char path[PATH_MAX];
    s_seen_path(dedup, path, sizeof path);
    int rc = s_seen_open(&w.sn, path);
    if (rc) {
        s_seen_close(&w.sn);
        return rc;
    }

    /* The first Ctrl-C stops cleanly; SA_RESETHAND: a second one kills. A
     * closed stdout is a write error to report, not a silent death. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_stop;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    rpc_error e;
    rpc_stream *s = rpc_subscribe(c, cursor, 0, &e);
    if (!s) {
        s_seen_close(&w.sn);
        return s_rpc_failed(&e);
    }
    bool cancelled = false;
    for (;;) {
        if (s_stop_signal && !cancelled) {
            rpc_stream_cancel(s);
            cancelled = true;
        }
        rpc_delivery d;
        int wait = w.unacked ? S_WATCH_BURST_MS : S_WATCH_POLL_MS;
        rpc_stream_event ev = rpc_stream_next(s, wait, &d, &e);
        if (ev == RPC_STREAM_DELIVERY) {
            rc = s_watch_show(&w, &d);
            rpc_delivery_free(&d);
            if (!rc && w.unacked >= S_WATCH_ACK_EVERY)
                rc = s_watch_ack(&w);
        } else if (ev == RPC_STREAM_IDLE) {
            rc = s_watch_ack(&w);
        } else {
            if (!cancelled)
                rc = s_failed("the stream ended: %s: %s",
                              rpc_code_name(e.code), e.details);
            break;
        }
        if (rc)
            break;
    }
    /* However it ended: what was shown and recorded is acked. */
    int ack_rc = s_watch_ack(&w);
    if (!rc)
        rc = ack_rc;
    rpc_stream_close(&s);
    if (!rc)
        printf("watched: %" PRIu64 " shown, %" PRIu64 " duplicates hidden, "
               "%" PRIu64 " acks\n",
               w.shown, w.hidden, w.acks);
    free(w.rec);
    s_seen_close(&w.sn);
    return rc;
}

/* ---------------------------------------------------------- counts, ack */

static int s_no_args(const char *cmd, int argc, char **argv)
{
    static const struct option opts[] = {
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (ch == 'h') {
            fputs(s_usage_text, stdout);
            return -1;
        }
        return 2;
    }
    (void)cmd;
    return 0;
}

static int s_cmd_counts(rpc_client *c, int argc, char **argv)
{
    int rc = s_no_args("counts", argc, argv);
    if (rc)
        return rc < 0 ? 0 : rc;
    if (optind < argc)
        return s_usage_error("counts: unexpected argument '%s'",
                             argv[optind]);
    rpc_counts_result r;
    rpc_error e;
    if (rpc_counts(c, s_timeout_ms, &r, &e) != GRPC_STATUS_OK)
        return s_rpc_failed(&e);
    for (size_t i = 0; i < r.n; i++) {
        char when[64];
        s_iso8601(r.senders[i].last_send_time_ms, when, sizeof when);
        s_print_str(stdout, r.senders[i].sender_uid);
        printf(" %" PRIu64 " last=%s\n", r.senders[i].count, when);
    }
    printf("total %" PRIu64 "\n", r.total);
    rpc_counts_result_free(&r);
    return 0;
}

static int s_cmd_ack(rpc_client *c, int argc, char **argv)
{
    int rc = s_no_args("ack", argc, argv);
    if (rc)
        return rc < 0 ? 0 : rc;
    if (argc - optind != 1)
        return s_usage_error("ack: exactly one CURSOR is required");
    uint64_t deleted;
    rpc_error e;
    if (rpc_ack(c, argv[optind], s_timeout_ms, &deleted, &e) !=
        GRPC_STATUS_OK)
        return s_rpc_failed(&e);
    printf("deleted %" PRIu64 "\n", deleted);
    return 0;
}

static int s_cmd_presence(rpc_client *c, int argc, char **argv)
{
    int rc = s_no_args("presence", argc, argv);
    if (rc)
        return rc < 0 ? 0 : rc;
    if (optind >= argc)
        return s_usage_error("presence: at least one UID is required");
    size_t n = (size_t)(argc - optind);
    const char *const *uids = (const char *const *)(argv + optind);
    bool *online = calloc(n, sizeof *online);
    if (!online)
        return s_failed("out of memory");
    rpc_error e;
    if (rpc_presence(c, uids, n, s_timeout_ms, online, &e) !=
        GRPC_STATUS_OK) {
        free(online);
        return s_rpc_failed(&e);
    }
    for (size_t i = 0; i < n; i++) {
        s_print_str(stdout, uids[i]);
        puts(online[i] ? " online" : " offline");
    }
    free(online);
    return 0;
}

/* ------------------------------------------------------------------ main */

#define S_PEM_MAX (1u << 20) /* a PEM file larger than this is not a certificate */

/* Reads the PEM file given to `flag` into *out (malloc'ed, NUL-terminated).
 * Returns 0, or 2 after saying why on stderr. */
static int s_read_pem(const char *flag, const char *path, char **out)
{
    char *buf, msg[512];
    size_t n;
    if (im_read_file(path, S_PEM_MAX, &buf, &n, msg, sizeof msg))
        return s_usage_error("%s %s", flag, msg);
    if (memchr(buf, 0, n) || !strstr(buf, "-----BEGIN ")) {
        free(buf);
        return s_usage_error("%s %s: not a PEM file (no \"-----BEGIN \" line, or "
                             "binary)", flag, path);
    }
    *out = buf;
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"addr", required_argument, NULL, 'a'},
        {"token", required_argument, NULL, 't'},
        {"timeout", required_argument, NULL, 'T'},
        {"tls", no_argument, NULL, 'S'},
        {"tls-ca", required_argument, NULL, 'C'},
        {"tls-cert", required_argument, NULL, 'c'},
        {"tls-key", required_argument, NULL, 'k'},
        {"tls-server-name", required_argument, NULL, 'n'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *addr = getenv("IMBOX_ADDR");
    const char *token = getenv("IMBOX_TOKEN");
    if (!addr || !*addr)
        addr = S_DEFAULT_ADDR;
    bool tls = false;
    const char *tls_ca = NULL, *tls_cert = NULL, *tls_key = NULL, *tls_name = NULL;
    int ch;
    /* "+": stop at the command; its own flags are parsed by the command. */
    while ((ch = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
        switch (ch) {
        case 'a':
            addr = optarg;
            break;
        case 't':
            token = optarg;
            break;
        case 'T': {
            char *end;
            errno = 0;
            long s = strtol(optarg, &end, 10);
            if (errno || *end || end == optarg || s < 1 || s > 86400)
                return s_usage_error("--timeout %s: not 1..86400 seconds",
                                     optarg);
            s_timeout_ms = (int)s * 1000;
            break;
        }
        case 'S':
            tls = true;
            break;
        case 'C':
            tls_ca = optarg;
            tls = true;
            break;
        case 'c':
            tls_cert = optarg;
            tls = true;
            break;
        case 'k':
            tls_key = optarg;
            tls = true;
            break;
        case 'n':
            if (!*optarg)
                return s_usage_error("--tls-server-name: empty");
            tls_name = optarg;
            tls = true;
            break;
        case 'h':
            fputs(s_usage_text, stdout);
            return 0;
        default:
            return 2;
        }
    }
    if (!tls_cert != !tls_key)
        return s_usage_error("--tls-cert and --tls-key go together");
    if (optind >= argc)
        return s_usage_error("a COMMAND is required (send, pull, watch, "
                             "presence, counts, ack)");
    const char *cmd = argv[optind];
    int (*run)(rpc_client *, int, char **) = NULL;
    if (strcmp(cmd, "help") == 0) {
        fputs(s_usage_text, stdout);
        return 0;
    } else if (strcmp(cmd, "send") == 0) {
        run = s_cmd_send;
    } else if (strcmp(cmd, "pull") == 0) {
        run = s_cmd_pull;
    } else if (strcmp(cmd, "watch") == 0) {
        run = s_cmd_watch;
    } else if (strcmp(cmd, "presence") == 0) {
        run = s_cmd_presence;
    } else if (strcmp(cmd, "counts") == 0) {
        run = s_cmd_counts;
    } else if (strcmp(cmd, "ack") == 0) {
        run = s_cmd_ack;
    } else {
        return s_usage_error("unknown command '%s'", cmd);
    }
    bool want_help = false;
    for (int i = optind + 1; i < argc && strcmp(argv[i], "--") != 0; i++)
        want_help |= strcmp(argv[i], "--help") == 0 ||
                     strcmp(argv[i], "-h") == 0;
    if (want_help) {
        fputs(s_usage_text, stdout);
        return 0;
    }
    if (!token || !*token)
        return s_usage_error("a token is required: --token T or IMBOX_TOKEN "
                             "(get one with `imbox token --uid U`)");

    char *ca_pem = NULL, *cert_pem = NULL, *key_pem = NULL;
    if ((tls_ca && s_read_pem("--tls-ca", tls_ca, &ca_pem)) ||
        (tls_cert && s_read_pem("--tls-cert", tls_cert, &cert_pem)) ||
        (tls_key && s_read_pem("--tls-key", tls_key, &key_pem))) {
        free(ca_pem);
        free(cert_pem);
        return 2;
    }
    rpc_tls t = {ca_pem, cert_pem, key_pem, tls_name};
    rpc_client *c = rpc_client_new_tls(addr, token, tls ? &t : NULL);
    free(ca_pem);
    free(cert_pem);
    free(key_pem);
    if (!c && tls)
        return s_usage_error("cannot set up TLS with these files, or cannot "
                             "use this token (one line of printable characters?)");
    if (!c)
        return s_usage_error("cannot use this token or address (is the "
                             "token one line of printable characters?)");
    int sub_argc = argc - optind;
    char **sub_argv = argv + optind;
    optind = 0; /* glibc: restart getopt on the command's arguments */
    int rc = run(c, sub_argc, sub_argv);
    rpc_client_destroy(&c);
    return rc;
}
