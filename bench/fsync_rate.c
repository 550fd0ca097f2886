/*
 * fsync_rate - the machine's single-writer durable-write rate, as a
 * database write-ahead log sees it: one thread, one file, write a record
 * then fdatasync(), again and again for a fixed time.
 *
 *   fsync_rate [--dir DIR] [--seconds S] [--size BYTES] [--mode append|overwrite]
 *
 *   --dir      directory for the scratch file (default: a fresh directory
 *              ./fsync-rate-XXXXXX under the current directory, removed at
 *              the end; /tmp may be tmpfs, which would measure nothing)
 *   --seconds  how long to measure (default 3)
 *   --size     bytes per write (default 4096)
 *   --mode     append: every write extends the file (the size changes, so
 *              fdatasync also flushes the inode, like a fresh WAL segment);
 *              overwrite: rewrite the first --size bytes of a preallocated
 *              file (a recycled WAL). Default append.
 *
 * Prints one line "fsync_rate: N/s" then details (mean and p99 latency of
 * write+fdatasync in microseconds). The scratch file is always removed.
 * Exit 0 on success, 1 on any I/O error.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#define TMPFS_MAGIC_ 0x01021994

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s [--dir DIR] [--seconds S] [--size BYTES] "
            "[--mode append|overwrite]\n",
            argv0);
}

static const char *fs_name(long type) {
    switch ((unsigned long)type) {
    case 0xEF53: return "ext4";
    case 0x58465342: return "xfs";
    case 0x9123683E: return "btrfs";
    case TMPFS_MAGIC_: return "tmpfs";
    case 0x794c7630: return "overlayfs";
    case 0x6969: return "nfs";
    default: return "other";
    }
}

int main(int argc, char **argv) {
    const char *dir = NULL;
    double seconds = 3.0;
    size_t size = 4096;
    int overwrite = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(argv[0]);
            return 0;
        }
        if (!v) {
            usage(argv[0]);
            return 2;
        }
        if (strcmp(a, "--dir") == 0) {
            dir = v;
        } else if (strcmp(a, "--seconds") == 0) {
            seconds = atof(v);
        } else if (strcmp(a, "--size") == 0) {
            size = (size_t)strtoull(v, NULL, 10);
        } else if (strcmp(a, "--mode") == 0) {
            if (strcmp(v, "append") == 0) overwrite = 0;
            else if (strcmp(v, "overwrite") == 0) overwrite = 1;
            else { usage(argv[0]); return 2; }
        } else {
            usage(argv[0]);
            return 2;
        }
        i++;
    }
    if (!(seconds > 0 && seconds <= 3600) || size == 0 || size > (64u << 20)) {
        fprintf(stderr, "fsync_rate: --seconds must be in (0, 3600], --size in 1..64 MiB\n");
        return 2;
    }

    char tmpdir[PATH_MAX];
    int own_dir = 0;
    if (!dir) {
        snprintf(tmpdir, sizeof tmpdir, "./fsync-rate-XXXXXX");
        if (!mkdtemp(tmpdir)) {
            fprintf(stderr, "fsync_rate: mkdtemp: %s\n", strerror(errno));
            return 1;
        }
        dir = tmpdir;
        own_dir = 1;
    }
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/fsync_rate.%ld.dat", dir, (long)getpid()) >=
        (int)sizeof path) {
        fprintf(stderr, "fsync_rate: --dir too long\n");
        return 2;
    }

    int rc = 1;
    uint64_t *lat = NULL;
    char *buf = NULL;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "fsync_rate: open %s: %s\n", path, strerror(errno));
        goto out_dir;
    }

    struct statfs sf;
    const char *fs = fstatfs(fd, &sf) == 0 ? fs_name((long)sf.f_type) : "unknown";
    if (strcmp(fs, "tmpfs") == 0)
        fprintf(stderr, "fsync_rate: warning: %s is on tmpfs, fdatasync is a no-op\n", dir);

    buf = malloc(size);
    if (!buf) {
        fprintf(stderr, "fsync_rate: out of memory\n");
        goto out_file;
    }
    memset(buf, 'w', size);

    if (overwrite) { /* preallocate and persist the block so only data moves */
        if (pwrite(fd, buf, size, 0) != (ssize_t)size || fsync(fd) != 0) {
            fprintf(stderr, "fsync_rate: preallocate: %s\n", strerror(errno));
            goto out_file;
        }
    } else if (fsync(fd) != 0) { /* the creation itself is not measured */
        fprintf(stderr, "fsync_rate: fsync: %s\n", strerror(errno));
        goto out_file;
    }

    size_t cap = 1 << 16, n = 0;
    lat = malloc(cap * sizeof *lat);
    if (!lat) {
        fprintf(stderr, "fsync_rate: out of memory\n");
        goto out_file;
    }

    off_t off = 0;
    double t0 = now_s(), t = t0, end = t0 + seconds;
    while (t < end) {
        double a = t;
        buf[0] = (char)('a' + (n % 26)); /* not the same bytes every time */
        if (pwrite(fd, buf, size, overwrite ? 0 : off) != (ssize_t)size) {
            fprintf(stderr, "fsync_rate: write: %s\n", strerror(errno));
            goto out_file;
        }
        if (fdatasync(fd) != 0) {
            fprintf(stderr, "fsync_rate: fdatasync: %s\n", strerror(errno));
            goto out_file;
        }
        if (!overwrite) off += (off_t)size;
        t = now_s();
        if (n == cap) {
            uint64_t *p = realloc(lat, 2 * cap * sizeof *lat);
            if (!p) {
                fprintf(stderr, "fsync_rate: out of memory\n");
                goto out_file;
            }
            lat = p;
            cap *= 2;
        }
        lat[n++] = (uint64_t)((t - a) * 1e9); /* ns */
    }
    double secs = t - t0;

    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += (double)lat[i];
    qsort(lat, n, sizeof *lat, cmp_u64);
    double mean_us = n ? sum / (double)n / 1e3 : 0;
    double p50_us = n ? (double)lat[n / 2] / 1e3 : 0;
    double p99_us = n ? (double)lat[(size_t)((double)(n - 1) * 0.99)] / 1e3 : 0;

    printf("fsync_rate: %.0f/s\n", (double)n / secs);
    printf("fsync_rate_detail mode=%s size=%zu fs=%s syncs=%zu secs=%.3f "
           "mean_us=%.1f p50_us=%.1f p99_us=%.1f\n",
           overwrite ? "overwrite" : "append", size, fs, n, secs, mean_us, p50_us,
           p99_us);
    rc = 0;

out_file:
    if (fd >= 0) close(fd);
    if (unlink(path) != 0 && errno != ENOENT) {
        fprintf(stderr, "fsync_rate: unlink %s: %s\n", path, strerror(errno));
        rc = 1;
    }
out_dir:
    if (own_dir && rmdir(dir) != 0) {
        fprintf(stderr, "fsync_rate: rmdir %s: %s\n", dir, strerror(errno));
        rc = 1;
    }
    free(lat);
    free(buf);
    return rc;
}
