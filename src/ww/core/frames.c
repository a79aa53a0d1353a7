/* Cap'n Proto stream framing and rpc.capnp's Message member, read from untrusted bytes.
 *
 * The C half of ww.core.capnp_frames (wrapped for Python by _frames.c, fuzzed alone under
 * ASan/UBSan by tests/cxx/frames_fuzz.c): no Python here.  The semantics are those of the
 * pure-Python reader it replaced, kept as the reference model in tests/core/frames_reference.py
 * and checked against it by tests/core/test_frames_differential.py.
 *
 * Why by hand, in C (the project keeps a hand-written codec only with a measured reason):
 * py-spy on host B of benchmarks/p2p.py (docs/benchmarks.md, "Cap'n Proto framing in C")
 * put 11.9% of the host's busy time in the Python framer (Framer.feed, rpc_member,
 * struct_at) that cuts a cell's fd 3 into messages for the flow limit, plus its callers'
 * share; pycapnp offers no framing hook, so the host must cut the stream itself.
 * benchmarks/frames.py, per message of an echo call: Framer.feed as wire uses it 6.6 us in
 * Python, 0.31 us here (classifying in C too); rpc_member 2.2 us, 0.21 us; message_size
 * 0.86 us, 0.03 us.  benchmarks/p2p.py's end-to-end numbers: that section.
 *
 * Everything here reads bytes a jailed cell or a remote peer wrote: sizes are 64-bit (a
 * table of 512 segments of 2^32-1 words is 2^44 bytes), pointer offsets signed, and no
 * byte past `head` (or a fed piece) is read. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FR_MAX_SEGMENTS 512 /* KJ refuses a message with more segments */
#define FR_TABLE_MAX (((4 + 4 * FR_MAX_SEGMENTS) + 7) & ~7)

static uint64_t fr_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static uint32_t fr_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t fr_header_size(uint64_t segments) { return (4 + 4 * segments + 7) & ~(uint64_t)7; }

typedef struct {
    uint64_t segment, first, data, pointers;
} fr_struct;

/* The struct the pointer in word `at` of `segment` points to (1, *out); a null pointer is
 * (0, 0, 0, 0); 0 when it is not a struct pointer this reader can follow within `head`
 * (`hlen` bytes, the first bytes of the segments, `starts` the word each starts at).
 * `far`: follow far pointers into other segments.  `segment` < `nseg` on entry. */
static int fr_struct_at(const uint8_t *head, size_t hlen, const uint64_t *starts,
                        const uint32_t *sizes, size_t nseg, uint64_t segment, uint64_t at,
                        int far, fr_struct *out) {
    for (int hop = 0; hop < 3; hop++) { /* a pointer, a far pointer, a double-far's pad */
        if (at >= sizes[segment] || 8 * (starts[segment] + at + 1) > hlen) return 0;
        uint64_t word = fr_u64(head + 8 * (starts[segment] + at));
        unsigned kind = word & 3;
        if (word == 0) {
            *out = (fr_struct){0, 0, 0, 0};
            return 1;
        }
        if (kind == 0) { /* a struct pointer: signed offset from the word after it */
            int64_t offset = (int64_t)((word >> 2) & 0x3FFFFFFF);
            if (offset & 0x20000000) offset -= 0x40000000;
            uint64_t data = (word >> 32) & 0xFFFF, pointers = word >> 48;
            int64_t first = (int64_t)at + 1 + offset; /* at < 2^32: no overflow */
            if (first < 0 || (uint64_t)first + data + pointers > sizes[segment]) return 0;
            *out = (fr_struct){segment, (uint64_t)first, data, pointers};
            return 1;
        }
        if (kind != 2 || !far) return 0; /* a list or a capability where a struct belongs */
        uint64_t pad_segment = word >> 32, pad = (word >> 3) & 0x1FFFFFFF;
        if (pad_segment >= nseg) return 0;
        if (!((word >> 2) & 1)) { /* single far: the landing pad is an ordinary pointer */
            segment = pad_segment;
            at = pad;
            continue;
        }
        /* double far: the pad is a far pointer to the content, the word after it its tag */
        if (pad + 2 > sizes[pad_segment] || 8 * (starts[pad_segment] + pad + 2) > hlen) return 0;
        uint64_t far_word = fr_u64(head + 8 * (starts[pad_segment] + pad));
        uint64_t tag = fr_u64(head + 8 * (starts[pad_segment] + pad + 1));
        uint64_t target = far_word >> 32, first = (far_word >> 3) & 0x1FFFFFFF;
        if ((far_word & 7) != 2 || (tag & 3) != 0 || target >= nseg) return 0;
        uint64_t data = (tag >> 32) & 0xFFFF, pointers = tag >> 48;
        if (first + data + pointers > sizes[target]) return 0;
        *out = (fr_struct){target, first, data, pointers};
        return 1;
    }
    return 0;
}

enum {
    FR_ERROR = -1,  /* the membership test failed (its error stands) */
    FR_UNKNOWN = 0, /* head does not show it: None */
    FR_OTHER,       /* (which, -1): not one of the members */
    FR_NULL,        /* (which, None): the member's pointer null or absent */
    FR_ID,          /* (which, id) */
};

/* The member test: 1 member, 0 not, -1 error. */
typedef int (*fr_member_fn)(void *ctx, unsigned which);

static int fr_call_or_return(void *ctx, unsigned which) { /* rpc_member's default members */
    (void)ctx;
    return which == 2 || which == 3; /* CALL, RETURN */
}

static int fr_asked(void *ctx, unsigned which) { /* and BOOTSTRAP, a question too */
    (void)ctx;
    return which == 2 || which == 3 || which == 8; /* CALL, RETURN, BOOTSTRAP */
}

/* rpc.capnp's Message member of a message from its segment sizes (`nseg` of them, in
 * words) and the first `hlen` bytes of its segments; `starts` is room for nseg words.
 * Returns one of FR_* with *which and *id set as they apply. */
static int fr_rpc_member(const uint8_t *head, size_t hlen, const uint32_t *sizes, size_t nseg,
                         uint64_t *starts, fr_member_fn is_member, void *ctx, int far,
                         unsigned *which, uint32_t *id) {
    if (!nseg) return FR_UNKNOWN;
    uint64_t total = 0;
    for (size_t i = 0; i < nseg; i++) {
        starts[i] = total;
        total += sizes[i];
    }
    fr_struct root, body;
    if (!fr_struct_at(head, hlen, starts, sizes, nseg, 0, 0, far, &root)) return FR_UNKNOWN;
    if (root.data == 0) {
        *which = 0; /* discriminant 0: unimplemented */
        return FR_OTHER;
    }
    uint64_t at = 8 * (starts[root.segment] + root.first);
    if (at + 2 > hlen) return FR_UNKNOWN;
    *which = (unsigned)head[at] | (unsigned)head[at + 1] << 8;
    int member = is_member(ctx, *which);
    if (member < 0) return FR_ERROR;
    if (!member) return FR_OTHER;
    if (root.pointers == 0) return FR_NULL;
    if (!fr_struct_at(head, hlen, starts, sizes, nseg, root.segment, root.first + root.data, far,
                      &body))
        return FR_UNKNOWN;
    if (!body.segment && !body.first && !body.data && !body.pointers) return FR_NULL;
    if (body.data == 0) {
        *id = 0;
        return FR_ID;
    }
    at = 8 * (starts[body.segment] + body.first);
    if (at + 4 > hlen) return FR_UNKNOWN;
    *id = fr_u32(head + at);
    return FR_ID;
}

/* The framer: a byte stream fed in pieces of any size, cut into messages.  fr_step reports
 * one event at a time (the caller does what the event says, then steps again). */
typedef struct {
    uint8_t table[FR_TABLE_MAX]; /* the segment table being collected */
    size_t tlen;
    uint32_t sizes[FR_MAX_SEGMENTS]; /* the current message's */
    size_t nsizes;
    uint64_t size; /* the current message's, table included */
    uint64_t left; /* bytes of its segments still to come */
    uint8_t *head; /* its first bytes of segments, up to head_size */
    size_t hlen, hcap;
    uint64_t want; /* bytes of the head still to collect */
    uint64_t head_size;
    int pending; /* the message ended with its head: report it after classifying */
    int broken;
} fr_framer;

enum {
    FR_NOMEM = -1,
    FR_MORE = 0,  /* the piece is used up */
    FR_CLASSIFY,  /* the head is in (head, hlen, sizes, nsizes): classify it */
    FR_MESSAGE,   /* a message is in: report (its kind, its id, size) */
    FR_UNSURE,    /* report (unsure, 0, *n): a table past FR_MAX_SEGMENTS, or what follows */
    FR_EMPTY,     /* a message without segments: kind, id = unsure, 0; report it (size) */
};

static void fr_init(fr_framer *f, uint64_t head_size) {
    memset(f, 0, offsetof(fr_framer, head_size));
    f->head_size = head_size;
    f->pending = f->broken = 0;
}

static void fr_free(fr_framer *f) {
    free(f->head);
    f->head = NULL;
    f->hlen = f->hcap = 0;
}

static int fr_append_head(fr_framer *f, const uint8_t *p, size_t n) {
    if (f->hlen + n > f->hcap) { /* grows with what arrives: want is at most head_size */
        size_t cap = f->hcap ? f->hcap : 256;
        while (cap < f->hlen + n) cap *= 2;
        uint8_t *h = realloc(f->head, cap);
        if (!h) return 0;
        f->head = h;
        f->hcap = cap;
    }
    memcpy(f->head + f->hlen, p, n);
    f->hlen += n;
    return 1;
}

/* One event from data[*pos, end): advances *pos; *n is FR_UNSURE's size. */
static int fr_step(fr_framer *f, const uint8_t *data, size_t end, size_t *pos, uint64_t *n) {
    if (f->pending) {
        f->pending = 0;
        return FR_MESSAGE;
    }
    while (*pos < end) {
        if (f->broken) {
            *n = end - *pos;
            *pos = end;
            return FR_UNSURE;
        }
        if (f->left) {
            uint64_t take = end - *pos < f->left ? end - *pos : f->left;
            int classify = 0;
            if (f->want) {
                uint64_t piece = take < f->want ? take : f->want;
                if (!fr_append_head(f, data + *pos, (size_t)piece)) return FR_NOMEM;
                f->want -= piece;
                classify = !f->want;
            }
            *pos += (size_t)take;
            f->left -= take;
            if (classify) {
                f->pending = !f->left;
                return FR_CLASSIFY;
            }
            if (!f->left) return FR_MESSAGE;
            continue;
        }
        /* the segment table */
        uint64_t need = 4;
        if (f->tlen >= 4) {
            uint64_t count = (uint64_t)fr_u32(f->table) + 1;
            if (count > FR_MAX_SEGMENTS) { /* only after `broken` was set back by hand */
                f->broken = 1;
                continue;
            }
            need = fr_header_size(count);
        }
        uint64_t take = need - f->tlen;
        if (take > end - *pos) take = end - *pos;
        memcpy(f->table + f->tlen, data + *pos, (size_t)take);
        f->tlen += (size_t)take;
        *pos += (size_t)take;
        if (f->tlen < need) continue;
        if (need == 4) {
            if (fr_u32(f->table) >= FR_MAX_SEGMENTS) {
                f->broken = 1;
                *n = f->tlen;
                return FR_UNSURE;
            }
            continue;
        }
        size_t count = (size_t)fr_u32(f->table) + 1;
        uint64_t body = 0;
        for (size_t i = 0; i < count; i++) {
            f->sizes[i] = fr_u32(f->table + 4 + 4 * i);
            body += (uint64_t)f->sizes[i];
        }
        body *= 8; /* at most 512 * (2^32 - 1) * 8 < 2^44 */
        f->nsizes = count;
        f->size = f->tlen + body;
        f->left = body;
        f->tlen = 0;
        f->hlen = 0;
        f->want = body < f->head_size ? body : f->head_size;
        if (!body) return FR_EMPTY;
    }
    return FR_MORE;
}
