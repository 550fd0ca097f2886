/* st_memo: the pages the engine read last (see st_memo.h). */
#include "st_memo.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "im_hash.h"

#define S_SEED 0x6d656d6fULL /* performance only: a collision evicts a memo */

typedef struct s_slot {
    char uid[ST_UID_MAX + 1];
    uint64_t stamp;           /* insertion order; 0 = free */
    st_memo_page *page;
} s_slot;

struct st_memo {
    pthread_mutex_t mu;
    uint64_t gen, stamp;
    size_t held;
    s_slot slots[ST_MEMO_SETS][ST_MEMO_WAYS];
};

st_memo *st_memo_new(void)
{
    st_memo *m = calloc(1, sizeof *m);
    if (m)
        pthread_mutex_init(&m->mu, NULL);
    return m;
}

static void s_drop(st_memo *m, s_slot *sl)
{
    st_memo_page_free(sl->page);
    sl->page = NULL;
    sl->stamp = 0;
    m->held--;
}

void st_memo_free(st_memo *m)
{
    if (!m)
        return;
    st_memo_clear(m);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

uint64_t st_memo_gen(st_memo *m)
{
    pthread_mutex_lock(&m->mu);
    uint64_t g = m->gen;
    pthread_mutex_unlock(&m->mu);
    return g;
}

static s_slot *s_set(st_memo *m, const char *uid)
{
    return m->slots[im_hash_table(S_SEED, uid, strlen(uid)) % ST_MEMO_SETS];
}

/* One allocation: the header, the rows, then the senders (consecutive
 * rows of one sender share its bytes). NULL when over ST_MEMO_BYTES. */
static st_memo_page *s_build(uint64_t lo, const st_msg *msgs, size_t n)
{
    size_t sbytes = 0;
    for (size_t i = 0; i < n; i++)
        if (i == 0 || strcmp(msgs[i].sender, msgs[i - 1].sender))
            sbytes += strlen(msgs[i].sender);
    size_t bytes = sizeof(st_memo_page) + n * sizeof(st_memo_row) + sbytes;
    if (bytes > ST_MEMO_BYTES)
        return NULL;
    st_memo_page *p = malloc(bytes);
    if (!p)
        return NULL;
    st_memo_row *rows = (st_memo_row *)(p + 1);
    char *senders = (char *)(rows + n);
    uint32_t off = 0;
    uint8_t len = 0;
    for (size_t i = 0; i < n; i++) {
        if (i == 0 || strcmp(msgs[i].sender, msgs[i - 1].sender)) {
            size_t l = strlen(msgs[i].sender);
            if (l > ST_UID_MAX || msgs[i].seq <= (i ? msgs[i - 1].seq : lo)) {
                free(p); /* not a page the engine reads: refuse it */
                return NULL;
            }
            off = (uint32_t)(i == 0 ? 0 : rows[i - 1].off + rows[i - 1].len);
            len = (uint8_t)l;
            memcpy(senders + off, msgs[i].sender, l);
        } else if (msgs[i].seq <= msgs[i - 1].seq) {
            free(p);
            return NULL;
        }
        rows[i] = (st_memo_row){.seq = msgs[i].seq, .off = off, .len = len};
    }
    *p = (st_memo_page){.lo = lo, .hi = msgs[n - 1].seq, .n = n, .rows = rows,
                        .senders = senders};
    return p;
}

void st_memo_put(st_memo *m, uint64_t gen, const char *uid, uint64_t lo, const st_msg *msgs,
                 size_t n)
{
    if (n == 0 || strlen(uid) > ST_UID_MAX)
        return;
    st_memo_page *p = s_build(lo, msgs, n); /* outside the lock */
    if (!p)
        return;
    pthread_mutex_lock(&m->mu);
    if (gen != m->gen) {
        pthread_mutex_unlock(&m->mu);
        free(p);
        return;
    }
    s_slot *set = s_set(m, uid), *to = NULL;
    for (int i = 0; i < ST_MEMO_WAYS; i++) {
        s_slot *sl = &set[i];
        if (sl->stamp && sl->page->lo == lo && !strcmp(sl->uid, uid)) {
            to = sl;
            break;
        }
        if (!to || (to->stamp && (!sl->stamp || sl->stamp < to->stamp)))
            to = sl; /* a free way, else the oldest */
    }
    if (to->stamp)
        s_drop(m, to);
    strcpy(to->uid, uid);
    to->page = p;
    to->stamp = ++m->stamp;
    m->held++;
    pthread_mutex_unlock(&m->mu);
}

st_memo_page *st_memo_take(st_memo *m, const char *uid, uint64_t floor, uint64_t upto)
{
    st_memo_page *p = NULL;
    pthread_mutex_lock(&m->mu);
    s_slot *set = s_set(m, uid);
    for (int i = 0; i < ST_MEMO_WAYS; i++) {
        s_slot *sl = &set[i];
        if (sl->stamp && sl->page->lo <= floor && upto <= sl->page->hi &&
            !strcmp(sl->uid, uid)) {
            p = sl->page;
            sl->page = NULL;
            sl->stamp = 0;
            m->held--;
            break;
        }
    }
    pthread_mutex_unlock(&m->mu);
    return p;
}

void st_memo_page_free(st_memo_page *p)
{
    free(p);
}

void st_memo_clear_uid(st_memo *m, const char *uid)
{
    pthread_mutex_lock(&m->mu);
    m->gen++;
    s_slot *set = s_set(m, uid);
    for (int i = 0; i < ST_MEMO_WAYS; i++)
        if (set[i].stamp && !strcmp(set[i].uid, uid))
            s_drop(m, &set[i]);
    pthread_mutex_unlock(&m->mu);
}

void st_memo_clear(st_memo *m)
{
    pthread_mutex_lock(&m->mu);
    m->gen++;
    for (int s = 0; s < ST_MEMO_SETS; s++)
        for (int i = 0; i < ST_MEMO_WAYS; i++)
            if (m->slots[s][i].stamp)
                s_drop(m, &m->slots[s][i]);
    pthread_mutex_unlock(&m->mu);
}

size_t st_memo_count(st_memo *m)
{
    pthread_mutex_lock(&m->mu);
    size_t n = m->held;
    pthread_mutex_unlock(&m->mu);
    return n;
}
