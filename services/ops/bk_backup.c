/*
 * bk_backup.c - backups and restores of a data directory. The format and
 * the contract are in bk_backup.h.
 *
 * Only plain files and directories one level deep are written or read: a
 * RocksDB checkpoint is a flat directory (CURRENT, MANIFEST-*, OPTIONS-*,
 * *.sst, *.log), so a restore refuses anything else in a backup (a symlink
 * or a nested directory is not something this code wrote).
 */
#include "bk_backup.h"
#include "im_base.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BK_COPY_BUF (1u << 20) /* bytes per read/write of a restore's copy */
#define BK_MANIFEST_MAX 4096   /* bytes of a manifest we read */
#define BK_SECRET_MAX 4096     /* bytes of a secret file we copy */

/* Paths built here: a base of at most ST_DIR_MAX bytes (each entry point
 * checks) and a name of at most 255 (a directory entry) always fit. */
#define BK_PATH_MAX (ST_DIR_MAX + 300)

static void s_path(char *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void s_path(char *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, BK_PATH_MAX, fmt, ap);
    va_end(ap);
    assert(n >= 0 && n < BK_PATH_MAX);
    (void)n;
}

/* Refuses a base path longer than ST_DIR_MAX (see BK_PATH_MAX). */
static int s_check_base(const char *what, const char *path, char *err, size_t errlen)
{
    size_t n = strlen(path);
    if (n == 0 || n > ST_DIR_MAX)
        return im_fail(err, errlen, "%s: a path of %zu bytes, must be 1..%d", what, n,
                      ST_DIR_MAX);
    return 0;
}

static double s_now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

const char *bk_kind_name(bk_kind kind)
{
    return kind == BK_SERVE ? "serve" : kind == BK_SHARD ? "shard" : NULL;
}

bk_kind bk_kind_parse(const char *s)
{
    return !strcmp(s, "serve") ? BK_SERVE : !strcmp(s, "shard") ? BK_SHARD : 0;
}

/* Whether path exists (as anything, symlinks not followed). */
static bool s_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

/* fsync of a file or directory by path. */
static int s_fsync_path(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return im_fail(err, errlen, "%s: %s", path, strerror(errno));
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    return rc ? im_fail(err, errlen, "fsync %s: %s", path, strerror(e)) : 0;
}

/* The directory holding path (a copy of its text before the last '/'),
 * "/" for a top-level one. */
static void s_parent(const char *path, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s", path);
    char *slash = strrchr(out, '/');
    if (slash == out)
        out[1] = 0;
    else if (slash)
        *slash = 0;
    else
        snprintf(out, outlen, ".");
}

static int s_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

/* Removes path and everything under it (symlinks not followed). */
static void s_rmtree(const char *path)
{
    nftw(path, s_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Removes everything inside the directory path, keeping it. */
static void s_empty_dir(const char *path)
{
    DIR *d = opendir(path);
    if (!d)
        return;
    struct dirent *e;
    char sub[BK_PATH_MAX];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            s_path(sub, "%s/%s", path, e->d_name);
            s_rmtree(sub);
        }
    closedir(d);
}

/* fsyncs every regular file of the flat directory `dir` and then dir, and
 * adds them to *files and *bytes. Anything but a regular file is refused
 * when `strict`. */
static int s_sync_dir(const char *dir, bool strict, uint64_t *files, uint64_t *bytes,
                      char *err, size_t errlen)
{
    DIR *d = opendir(dir);
    if (!d)
        return im_fail(err, errlen, "%s: %s", dir, strerror(errno));
    struct dirent *e;
    char path[BK_PATH_MAX];
    int rc = 0;
    while (!rc && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        s_path(path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(path, &st)) {
            rc = im_fail(err, errlen, "%s: %s", path, strerror(errno));
        } else if (S_ISREG(st.st_mode)) {
            rc = s_fsync_path(path, err, errlen);
            *files += 1;
            *bytes += (uint64_t)st.st_size;
        } else if (strict) {
            rc = im_fail(err, errlen, "%s: not a regular file (a backup holds only files)",
                        path);
        }
    }
    closedir(d);
    return rc ? rc : s_fsync_path(dir, err, errlen);
}

/* Writes len bytes to a new file at path (O_EXCL, mode 0600) and fsyncs
 * it. */
static int s_write_new(const char *path, const void *buf, size_t len, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return im_fail(err, errlen, "%s: %s", path, strerror(errno));
    const char *p = buf;
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            int e = w < 0 ? errno : EIO;
            close(fd);
            return im_fail(err, errlen, "write %s: %s", path, strerror(e));
        }
        p += w;
        len -= (size_t)w;
    }
    if (fsync(fd)) {
        int e = errno;
        close(fd);
        return im_fail(err, errlen, "fsync %s: %s", path, strerror(e));
    }
    close(fd);
    return 0;
}

/* Copies the regular file src to the new file dst (mode 0600), fsync'ed. */
static int s_copy_file(const char *src, const char *dst, uint64_t *bytes, char *err,
                       size_t errlen, char *buf)
{
    int in = open(src, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (in < 0)
        return im_fail(err, errlen, "%s: %s", src, strerror(errno));
    int out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (out < 0) {
        int e = errno;
        close(in);
        return im_fail(err, errlen, "%s: %s", dst, strerror(e));
    }
    int rc = 0;
    for (;;) {
        ssize_t r = read(in, buf, BK_COPY_BUF);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = im_fail(err, errlen, "read %s: %s", src, strerror(errno));
            break;
        }
        if (r == 0)
            break;
        for (ssize_t off = 0; off < r;) {
            ssize_t w = write(out, buf + off, (size_t)(r - off));
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                rc = im_fail(err, errlen, "write %s: %s", dst, strerror(w < 0 ? errno : EIO));
                break;
            }
            off += w;
        }
        if (rc)
            break;
        *bytes += (uint64_t)r;
    }
    if (!rc && fsync(out))
        rc = im_fail(err, errlen, "fsync %s: %s", dst, strerror(errno));
    close(in);
    close(out);
    return rc;
}

/* Copies the regular files of the flat directory src into the existing
 * directory dst, then fsyncs dst. Refuses anything but regular files. */
static int s_copy_dir(const char *src, const char *dst, bk_result *r, char *err, size_t errlen)
{
    char *buf = malloc(BK_COPY_BUF);
    if (!buf)
        return im_fail(err, errlen, "out of memory");
    DIR *d = opendir(src);
    if (!d) {
        free(buf);
        return im_fail(err, errlen, "%s: %s", src, strerror(errno));
    }
    struct dirent *e;
    char from[BK_PATH_MAX], to[BK_PATH_MAX];
    int rc = 0;
    while (!rc && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        s_path(from, "%s/%s", src, e->d_name);
        s_path(to, "%s/%s", dst, e->d_name);
        struct stat st;
        if (lstat(from, &st))
            rc = im_fail(err, errlen, "%s: %s", from, strerror(errno));
        else if (!S_ISREG(st.st_mode))
            rc = im_fail(err, errlen, "%s: not a regular file (not a backup made by imbox)",
                        from);
        else if (!(rc = s_copy_file(from, to, &r->bytes, err, errlen, buf)))
            r->files++;
    }
    closedir(d);
    free(buf);
    return rc ? rc : s_fsync_path(dst, err, errlen);
}

/* ------------------------------------------------------------------ make */

/* The body of bk_make once `to` exists; the caller removes it on failure. */
static int s_make_in(st_shard *const *shards, int n, bk_kind kind, int index, int count,
                     const char *secret_path, const char *to, bk_result *r, char *err,
                     size_t errlen)
{
    char path[BK_PATH_MAX];
    int64_t created_ms = (int64_t)time(NULL) * 1000;
    struct timespec now;
    if (!clock_gettime(CLOCK_REALTIME, &now))
        created_ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    for (int i = 0; i < n; i++) {
        if (kind == BK_SERVE)
            s_path(path, "%s/shard-%d", to, i);
        else
            s_path(path, "%s/shard", to);
        st_error e;
        if (st_checkpoint(shards[i], path, &e))
            return im_fail(err, errlen, "shard %d: %s", kind == BK_SERVE ? i : index, e.msg);
        if (chmod(path, 0700)) /* RocksDB made it 0755; `to` is 0700 anyway */
            return im_fail(err, errlen, "chmod %s: %s", path, strerror(errno));
        if (s_sync_dir(path, false, &r->files, &r->bytes, err, errlen))
            return -1;
    }
    if (kind == BK_SERVE) {
        char buf[BK_SECRET_MAX];
        int fd = open(secret_path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return im_fail(err, errlen, "%s: %s", secret_path, strerror(errno));
        ssize_t len = read(fd, buf, sizeof buf);
        int e = errno;
        close(fd);
        if (len <= 0 || (size_t)len == sizeof buf)
            return im_fail(err, errlen, "%s: %s", secret_path,
                          len < 0 ? strerror(e) : "empty or too long for a secret file");
        s_path(path, "%s/auth.secret", to);
        int rc = s_write_new(path, buf, (size_t)len, err, errlen);
        memset(buf, 0, sizeof buf);
        if (rc)
            return rc;
        r->files++;
        r->bytes += (uint64_t)len;
    }
    char man[512];
    int mlen;
    if (kind == BK_SERVE)
        mlen = snprintf(man, sizeof man, "%s\nkind serve\nshards %d\ncreated_ms %lld\n",
                        BK_FORMAT, n, (long long)created_ms);
    else if (index >= 0)
        mlen = snprintf(man, sizeof man, "%s\nkind shard\nindex %d\ncount %d\n"
                        "created_ms %lld\n", BK_FORMAT, index, count, (long long)created_ms);
    else
        mlen = snprintf(man, sizeof man, "%s\nkind shard\ncreated_ms %lld\n", BK_FORMAT,
                        (long long)created_ms);
    char tmp[BK_PATH_MAX];
    s_path(tmp, "%s/%s.tmp", to, BK_MANIFEST);
    s_path(path, "%s/%s", to, BK_MANIFEST);
    if (s_write_new(tmp, man, (size_t)mlen, err, errlen))
        return -1;
    if (rename(tmp, path))
        return im_fail(err, errlen, "rename %s: %s", tmp, strerror(errno));
    r->files++;
    r->bytes += (uint64_t)mlen;
    char parent[BK_PATH_MAX];
    s_parent(to, parent, sizeof parent);
    if (s_fsync_path(to, err, errlen) || s_fsync_path(parent, err, errlen))
        return -1;
    return 0;
}

int bk_make(st_shard *const *shards, int n, bk_kind kind, int index, int count,
            const char *secret_path, const char *to, bk_result *out, char *err,
            size_t errlen)
{
    double t0 = s_now_s();
    bk_result r = {.kind = kind, .shards = n, .index = index, .count = count};
    if (!bk_kind_name(kind) || n < 1 || n > BK_MAX_SHARDS || (kind == BK_SHARD && n != 1))
        return im_fail(err, errlen, "bad backup request (%d databases of kind %d)", n, kind);
    if (to[0] != '/')
        return im_fail(err, errlen, "%s: the backup's directory must be an absolute path", to);
    if (s_check_base("the backup's directory", to, err, errlen))
        return -1;
    if (mkdir(to, 0700)) {
        if (errno == EEXIST)
            return im_fail(err, errlen, "%s exists: a backup goes into a new directory", to);
        return im_fail(err, errlen, "%s: %s", to, strerror(errno));
    }
    if (s_make_in(shards, n, kind, index, count, secret_path, to, &r, err, errlen)) {
        s_rmtree(to);
        return -1;
    }
    r.seconds = s_now_s() - t0;
    if (out)
        *out = r;
    return 0;
}

int bk_offline(const char *data_dir, const char *to, bk_result *out, char *err, size_t errlen)
{
    if (s_check_base("the data directory", data_dir, err, errlen))
        return -1;
    char path[BK_PATH_MAX];
    st_shard *shards[BK_MAX_SHARDS] = {0};
    bk_kind kind;
    int n = 0;
    s_path(path, "%s/CURRENT", data_dir);
    if (s_exists(path)) {
        kind = BK_SHARD;
        n = 1;
    } else {
        kind = BK_SERVE;
        for (; n < BK_MAX_SHARDS; n++) {
            s_path(path, "%s/shard-%d/CURRENT", data_dir, n);
            if (!s_exists(path))
                break;
        }
        if (n == 0)
            return im_fail(err, errlen, "%s holds no imbox data (neither a database nor "
                          "shard-0/ with one)", data_dir);
    }
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        if (kind == BK_SERVE)
            s_path(path, "%s/shard-%d", data_dir, i);
        else
            s_path(path, "%s", data_dir);
        st_error e;
        if (st_open(path, NULL, &shards[i], &e)) {
            if (strstr(e.msg, "lock"))
                rc = im_fail(err, errlen, "%s is in use by a process that does not answer on "
                            "%s/admin.sock (a server starting or stopping? try again): %s",
                            path, data_dir, e.msg);
            else
                rc = im_fail(err, errlen, "%s", e.msg);
        }
    }
    if (!rc) {
        s_path(path, "%s/auth.secret", data_dir);
        rc = bk_make(shards, n, kind, -1, -1, path, to, out, err, errlen);
    }
    for (int i = 0; i < n; i++)
        st_close(&shards[i]);
    return rc;
}

/* --------------------------------------------------------------- restore */

/* Reads and checks the manifest of the backup at from into *r. */
static int s_read_manifest(const char *from, bk_result *r, char *err, size_t errlen)
{
    char path[BK_PATH_MAX];
    s_path(path, "%s/%s", from, BK_MANIFEST);
    FILE *f = fopen(path, "re");
    if (!f)
        return im_fail(err, errlen, "%s: %s (not a complete imbox backup)", path,
                      strerror(errno));
    char line[256];
    int lineno = 0, rc = 0;
    r->shards = 0;
    r->index = r->count = -1;
    r->kind = 0;
    while (!rc && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (lineno++ == 0) {
            if (strcmp(line, BK_FORMAT))
                rc = im_fail(err, errlen, "%s: not an imbox backup of a format this imbox "
                            "reads (first line '%.40s', expected '%s')", path, line, BK_FORMAT);
            continue;
        }
        char *sp = strchr(line, ' ');
        if (!sp)
            continue;
        *sp = 0;
        const char *v = sp + 1;
        if (!strcmp(line, "kind"))
            r->kind = bk_kind_parse(v);
        else if (!strcmp(line, "shards"))
            r->shards = atoi(v);
        else if (!strcmp(line, "index"))
            r->index = atoi(v);
        else if (!strcmp(line, "count"))
            r->count = atoi(v);
    }
    fclose(f);
    if (rc)
        return rc;
    if (lineno == 0)
        return im_fail(err, errlen, "%s: empty", path);
    if (!r->kind)
        return im_fail(err, errlen, "%s: no valid kind line", path);
    if (r->kind == BK_SHARD)
        r->shards = 1;
    if (r->shards < 1 || r->shards > BK_MAX_SHARDS)
        return im_fail(err, errlen, "%s: shards %d out of 1..%d", path, r->shards,
                      BK_MAX_SHARDS);
    return 0;
}

/* Whether path is a directory with nothing in it. */
static int s_check_empty(const char *path, char *err, size_t errlen)
{
    DIR *d = opendir(path);
    if (!d)
        return im_fail(err, errlen, "%s: %s", path, strerror(errno));
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            rc = im_fail(err, errlen, "%s is not empty (it holds %.64s): a restore goes into "
                        "an empty or missing directory", path, e->d_name);
            break;
        }
    closedir(d);
    return rc;
}

/* mkdir -p, new directories mode 0700. */
static int s_mkdirs(const char *path, char *err, size_t errlen)
{
    char p[BK_PATH_MAX];
    s_path(p, "%s", path);
    for (char *s = p + 1; *s; s++)
        if (*s == '/') {
            *s = 0;
            if (mkdir(p, 0700) && errno != EEXIST)
                return im_fail(err, errlen, "%s: %s", p, strerror(errno));
            *s = '/';
        }
    if (mkdir(p, 0700) && errno != EEXIST)
        return im_fail(err, errlen, "%s: %s", p, strerror(errno));
    return 0;
}

static int s_restore_in(const char *from, const char *data_dir, bk_result *r, char *err,
                        size_t errlen)
{
    char src[BK_PATH_MAX], dst[BK_PATH_MAX];
    if (r->kind == BK_SHARD) {
        s_path(src, "%s/shard", from);
        return s_copy_dir(src, data_dir, r, err, errlen);
    }
    for (int i = 0; i < r->shards; i++) {
        s_path(src, "%s/shard-%d", from, i);
        s_path(dst, "%s/shard-%d", data_dir, i);
        if (mkdir(dst, 0700))
            return im_fail(err, errlen, "%s: %s", dst, strerror(errno));
        if (s_copy_dir(src, dst, r, err, errlen))
            return -1;
    }
    /* The secret last. A failed restore removes what it wrote (the
     * caller); one cut short by a crash leaves a partial directory that
     * the next restore refuses as not empty: empty it and restore again. */
    char *buf = malloc(BK_COPY_BUF);
    if (!buf)
        return im_fail(err, errlen, "out of memory");
    s_path(src, "%s/auth.secret", from);
    s_path(dst, "%s/auth.secret", data_dir);
    int rc = s_copy_file(src, dst, &r->bytes, err, errlen, buf);
    free(buf);
    if (rc)
        return rc;
    r->files++;
    return s_fsync_path(data_dir, err, errlen);
}

int bk_restore(const char *from, const char *data_dir, bk_kind kind, bk_result *out, char *err,
               size_t errlen)
{
    double t0 = s_now_s();
    bk_result r = {0};
    if (s_check_base("the backup", from, err, errlen) ||
        s_check_base("the data directory", data_dir, err, errlen))
        return -1;
    if (s_read_manifest(from, &r, err, errlen))
        return -1;
    if (kind && r.kind != kind)
        return im_fail(err, errlen, "%s is a backup of an `imbox %s`, not of an `imbox %s`",
                      from, bk_kind_name(r.kind), bk_kind_name(kind));
    kind = r.kind;
    char path[BK_PATH_MAX];
    for (int i = 0; i < r.shards; i++) {
        if (kind == BK_SERVE)
            s_path(path, "%s/shard-%d/CURRENT", from, i);
        else
            s_path(path, "%s/shard/CURRENT", from);
        if (!s_exists(path))
            return im_fail(err, errlen, "%s: missing: the backup is damaged", path);
    }
    s_path(path, "%s/auth.secret", from);
    if (kind == BK_SERVE && !s_exists(path))
        return im_fail(err, errlen, "%s: missing: the backup is damaged", path);
    struct stat st;
    bool created = false;
    if (lstat(data_dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            return im_fail(err, errlen, "%s exists and is not a directory", data_dir);
        if (s_check_empty(data_dir, err, errlen))
            return -1;
    } else if (errno == ENOENT) {
        if (s_mkdirs(data_dir, err, errlen))
            return -1;
        created = true;
    } else {
        return im_fail(err, errlen, "%s: %s", data_dir, strerror(errno));
    }
    int rc = s_restore_in(from, data_dir, &r, err, errlen);
    if (!rc) {
        char parent[BK_PATH_MAX];
        s_parent(data_dir, parent, sizeof parent);
        rc = s_fsync_path(parent, err, errlen);
    }
    if (rc) {
        if (created)
            s_rmtree(data_dir);
        else
            s_empty_dir(data_dir);
        return -1;
    }
    r.seconds = s_now_s() - t0;
    if (out)
        *out = r;
    return 0;
}
