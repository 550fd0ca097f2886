/*
 * bk_admin.c - the admin socket (contract in bk_admin.h): one thread in
 * poll(2) on the listening socket and a stop pipe; each connection gets one
 * request, served on this thread (backups one at a time: a second client
 * waits in the listen backlog).
 */
#include "bk_admin.h"
#include "im_base.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define BK_ADMIN_TMP BK_ADMIN_SOCK ".new" /* bound here, chmod'ed, renamed */
#define BK_ADMIN_BACKLOG 4

struct bk_admin {
    bk_admin_config c;
    char *data_dir;
    char *secret_path;
    st_shard **shards;
    int dirfd;        /* O_PATH descriptor of the data dir */
    int lfd;          /* the listening socket */
    ino_t ino;        /* admin.sock's inode, removed at stop if still ours */
    int stop[2];      /* pipe: bk_admin_stop writes a byte */
    pthread_t thread;
};

/* The address of `name` in the directory open as dirfd: through
 * /proc/self/fd, so that a data dir's path of any length fits sun_path. */
static void s_addr(int dirfd, const char *name, struct sockaddr_un *a)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    snprintf(a->sun_path, sizeof a->sun_path, "/proc/self/fd/%d/%s", dirfd, name);
}

static void s_write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return; /* the client left: nothing to tell */
        p += w;
        n -= (size_t)w;
    }
}

/* Reads one line (newline excluded) into buf within BK_ADMIN_IO_MS.
 * Returns its length, or -1 with a reason in why. */
static int s_read_line(int fd, char *buf, size_t cap, const char **why)
{
    size_t n = 0;
    int64_t deadline = im_mono_ms() + BK_ADMIN_IO_MS;
    for (;;) {
        int64_t left = deadline - im_mono_ms();
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (left <= 0 || poll(&p, 1, (int)left) == 0) {
            *why = "request not complete in time";
            return -1;
        }
        ssize_t r = recv(fd, buf + n, cap - 1 - n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            *why = "connection closed before a whole request";
            return -1;
        }
        char *nl = memchr(buf + n, '\n', (size_t)r);
        n += (size_t)r;
        if (nl) {
            *nl = 0;
            return (int)(nl - buf);
        }
        if (n == cap - 1) {
            *why = "request too long";
            return -1;
        }
    }
}

static void s_serve_one(bk_admin *a, int fd)
{
    char line[BK_ADMIN_LINE_MAX + 1];
    char reply[512];
    const char *why = NULL;
    struct ucred cred;
    socklen_t clen = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) ||
        (cred.uid != geteuid() && cred.uid != 0)) {
        snprintf(reply, sizeof reply, "ERR not the server's user\n");
    } else if (s_read_line(fd, line, sizeof line, &why) < 0) {
        snprintf(reply, sizeof reply, "ERR %s\n", why);
    } else if (strncmp(line, "checkpoint ", 11)) {
        snprintf(reply, sizeof reply, "ERR unknown request (expected: checkpoint DIR)\n");
    } else {
        bk_result r;
        char err[400];
        if (bk_make(a->shards, a->c.nshards, a->c.kind, a->c.index, a->c.count,
                    a->secret_path, line + 11, &r, err, sizeof err))
            snprintf(reply, sizeof reply, "ERR %s\n", err);
        else
            snprintf(reply, sizeof reply, "OK kind=%s shards=%d files=%llu bytes=%llu "
                     "seconds=%.3f\n", bk_kind_name(r.kind), r.shards,
                     (unsigned long long)r.files, (unsigned long long)r.bytes, r.seconds);
    }
    s_write_all(fd, reply, strlen(reply));
}

static void *s_thread(void *arg)
{
    bk_admin *a = arg;
    im_thread_name("admin");
    for (;;) {
        struct pollfd p[2] = {{.fd = a->lfd, .events = POLLIN},
                              {.fd = a->stop[0], .events = POLLIN}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[1].revents)
            break;
        if (p[0].revents & POLLIN) {
            int fd = accept4(a->lfd, NULL, NULL, SOCK_CLOEXEC);
            if (fd >= 0) {
                s_serve_one(a, fd);
                close(fd);
            }
        }
    }
    return NULL;
}

static void s_free(bk_admin *a)
{
    if (a->lfd >= 0)
        close(a->lfd);
    if (a->dirfd >= 0)
        close(a->dirfd);
    for (int i = 0; i < 2; i++)
        if (a->stop[i] >= 0)
            close(a->stop[i]);
    free(a->data_dir);
    free(a->secret_path);
    free(a->shards);
    free(a);
}

/* Removes `name` in the data dir if it is a socket (a stale one); refuses
 * anything else of that name. */
static int s_clear_stale(bk_admin *a, const char *name, char *err, size_t errlen)
{
    struct stat st;
    if (fstatat(a->dirfd, name, &st, AT_SYMLINK_NOFOLLOW)) {
        if (errno == ENOENT)
            return 0;
        return im_fail(err, errlen, "%s/%s: %s", a->data_dir, name, strerror(errno));
    }
    if (!S_ISSOCK(st.st_mode))
        return im_fail(err, errlen, "%s/%s exists and is not a socket: remove it", a->data_dir,
                      name);
    if (unlinkat(a->dirfd, name, 0))
        return im_fail(err, errlen, "%s/%s: %s", a->data_dir, name, strerror(errno));
    return 0;
}

bk_admin *bk_admin_start(const bk_admin_config *c, char *err, size_t errlen)
{
    bk_admin *a = calloc(1, sizeof *a);
    if (!a) {
        im_fail(err, errlen, "out of memory");
        return NULL;
    }
    a->c = *c;
    a->dirfd = a->lfd = a->stop[0] = a->stop[1] = -1;
    a->data_dir = strdup(c->data_dir);
    a->secret_path = strdup(c->secret_path ? c->secret_path : "");
    a->shards = calloc((size_t)c->nshards, sizeof *a->shards);
    if (!a->data_dir || !a->secret_path || !a->shards) {
        im_fail(err, errlen, "out of memory");
        s_free(a);
        return NULL;
    }
    for (int i = 0; i < c->nshards; i++)
        a->shards[i] = c->shards[i];
    a->c.data_dir = a->data_dir;
    a->c.secret_path = a->secret_path;
    a->c.shards = a->shards;
    if ((a->dirfd = open(a->data_dir, O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0) {
        im_fail(err, errlen, "admin socket: %s: %s", a->data_dir, strerror(errno));
        s_free(a);
        return NULL;
    }
    if (s_clear_stale(a, BK_ADMIN_SOCK, err, errlen) ||
        s_clear_stale(a, BK_ADMIN_TMP, err, errlen)) {
        s_free(a);
        return NULL;
    }
    struct sockaddr_un addr;
    s_addr(a->dirfd, BK_ADMIN_TMP, &addr);
    struct stat st;
    const char *what = "socket";
    bool placed = false; /* admin.sock is ours: remove it on failure */
    if ((a->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
        goto fail;
    what = "bind";
    if (bind(a->lfd, (struct sockaddr *)&addr, sizeof addr))
        goto fail;
    what = "chmod";
    if (fchmodat(a->dirfd, BK_ADMIN_TMP, 0600, 0)) {
        unlinkat(a->dirfd, BK_ADMIN_TMP, 0);
        goto fail;
    }
    what = "rename";
    if (renameat(a->dirfd, BK_ADMIN_TMP, a->dirfd, BK_ADMIN_SOCK)) {
        unlinkat(a->dirfd, BK_ADMIN_TMP, 0);
        goto fail;
    }
    placed = true;
    what = "stat";
    if (fstatat(a->dirfd, BK_ADMIN_SOCK, &st, AT_SYMLINK_NOFOLLOW))
        goto fail;
    a->ino = st.st_ino;
    what = "listen";
    if (listen(a->lfd, BK_ADMIN_BACKLOG))
        goto fail;
    what = "pipe";
    if (pipe2(a->stop, O_CLOEXEC))
        goto fail;
    what = "thread";
    errno = pthread_create(&a->thread, NULL, s_thread, a);
    if (!errno)
        return a;
fail:
    im_fail(err, errlen, "admin socket %s/%s: %s: %s", a->data_dir, BK_ADMIN_SOCK, what,
           strerror(errno));
    if (placed)
        unlinkat(a->dirfd, BK_ADMIN_SOCK, 0);
    s_free(a);
    return NULL;
}

void bk_admin_stop(bk_admin **ap)
{
    if (!ap || !*ap)
        return;
    bk_admin *a = *ap;
    char b = 1;
    while (write(a->stop[1], &b, 1) < 0 && errno == EINTR)
        ;
    pthread_join(a->thread, NULL);
    struct stat st;
    if (!fstatat(a->dirfd, BK_ADMIN_SOCK, &st, AT_SYMLINK_NOFOLLOW) && st.st_ino == a->ino)
        unlinkat(a->dirfd, BK_ADMIN_SOCK, 0);
    s_free(a);
    *ap = NULL;
}

int bk_admin_call(const char *data_dir, const char *request, char *reply, size_t replylen,
                  char *err, size_t errlen)
{
    int dirfd = open(data_dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0)
        return im_fail(err, errlen, "%s: %s", data_dir, strerror(errno));
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        close(dirfd);
        return im_fail(err, errlen, "socket: %s", strerror(errno));
    }
    struct sockaddr_un addr;
    s_addr(dirfd, BK_ADMIN_SOCK, &addr);
    int rc = 0;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr)) {
        if (errno == ENOENT || errno == ECONNREFUSED)
            rc = BK_ADMIN_NOBODY;
        else
            rc = im_fail(err, errlen, "%s/%s: %s", data_dir, BK_ADMIN_SOCK, strerror(errno));
    }
    close(dirfd);
    if (rc) {
        close(fd);
        return rc;
    }
    s_write_all(fd, request, strlen(request));
    s_write_all(fd, "\n", 1);
    size_t n = 0;
    for (;;) {
        ssize_t r = recv(fd, reply + n, replylen - 1 - n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
        if (memchr(reply, '\n', n) || n == replylen - 1)
            break;
    }
    close(fd);
    reply[n] = 0;
    char *nl = strchr(reply, '\n');
    if (!nl)
        return im_fail(err, errlen, "%s/%s: the server closed the connection without an "
                      "answer", data_dir, BK_ADMIN_SOCK);
    *nl = 0;
    return 0;
}
