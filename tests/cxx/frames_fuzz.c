/* Random and structured input into src/ww/core/frames.c (Cap'n Proto framing of untrusted
 * bytes), for a build with -fsanitize=address,undefined:
 *
 * - fr_rpc_member over messages of 1 to 600 segments (sizes small, or up to 2^32 - 1 words),
 *   heads of struct, list, capability, far and double-far pointers with random fields, then
 *   random bytes and bit flips, cut at any length; each head is copied into a buffer of
 *   exactly its length, so reading one byte past it is an ASan report;
 * - the framer over streams of such messages (tables of 0 to 600 segments, bodies that end,
 *   bodies that never end, tables past the limit), fed whole and in random pieces (each in
 *   a buffer of exactly its length): the events must be the same, every head exactly
 *   min(body, head size) bytes, and the sizes reported add up to what was fed; and once
 *   more with `broken` set back after each break, as Python code may.
 *
 * Every case must end in a clean answer; a sanitizer report, a crash or a broken invariant
 * is a bug.
 *
 *     gcc -g -O1 -fsanitize=address,undefined -I src/ww/core -o fuzz tests/cxx/frames_fuzz.c
 *     ./fuzz [CASES] [SEED]
 */
#include "frames.c" /* src/ww/core, on the include path */

#include <stdio.h>

#include "xorshift.h" /* rng, rnd() */

static uint64_t rnd64(void) { return (uint64_t)rnd() << 32 | rnd(); }

static void fail(const char *what, unsigned long c) {
    fprintf(stderr, "case %lu: %s\n", c, what);
    abort();
}

static void put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* A pointer word a reader may meet: mostly plausible, sometimes anything. */
static uint64_t pointer(uint32_t nseg, uint32_t words) {
    uint64_t data = rnd() % 4 ? rnd() % 3 : rnd() & 0xFFFF;
    uint64_t ptrs = rnd() % 4 ? rnd() % 3 : rnd() & 0xFFFF;
    int64_t offset = rnd() % 4 ? (int64_t)(rnd() % (words + 2)) - 1 : (int32_t)rnd() >> 2;
    uint64_t seg = rnd() % 4 ? rnd() % (nseg + 1) : rnd();
    uint64_t pad = rnd() % 4 ? rnd() % (words + 2) : rnd() & 0x1FFFFFFF;
    switch (rnd() % 8) {
    case 0: return 0;
    case 1: return rnd64();
    case 2: return 1 | (uint64_t)rnd() << 2; /* a list */
    case 3: return 3 | (uint64_t)rnd() << 32; /* a capability / other */
    case 4: return 2 | (pad & 0x1FFFFFFF) << 3 | seg << 32; /* single far */
    case 5: return 6 | (pad & 0x1FFFFFFF) << 3 | seg << 32; /* double far */
    default: return ((uint64_t)offset & 0x3FFFFFFF) << 2 | data << 32 | ptrs << 48; /* struct */
    }
}

static uint32_t seg_size(void) {
    switch (rnd() % 8) {
    case 0: return 0;
    case 1: return 0xFFFFFFFFu - rnd() % 3;
    case 2: return rnd();
    default: return rnd() % 9;
    }
}

/* A head of n bytes for the sizes: words of pointers, discriminants and ids, then mutated. */
static void head_bytes(uint8_t *h, size_t n, uint32_t nseg, uint32_t words) {
    for (size_t i = 0; i + 8 <= n; i += 8) {
        uint64_t w;
        switch (rnd() % 4) {
        case 0: w = rnd() % 16 | (uint64_t)rnd() << 32; break; /* a discriminant, an id */
        case 1: w = rnd64(); break;
        default: w = pointer(nseg, words);
        }
        put64(h + i, w);
    }
    for (size_t i = n & ~(size_t)7; i < n; i++) h[i] = (uint8_t)rnd();
    for (int i = rnd() % 3; i > 0 && n; i--) h[rnd() % n] ^= (uint8_t)(1u << (rnd() % 8));
}

static uint16_t member_set; /* which members (< 16) count, for the callback below */
static int some_members(void *ctx, unsigned which) {
    (void)ctx;
    return which < 16 && (member_set >> which) & 1;
}

static uint64_t checksum; /* so nothing is optimised away */

static void one_member(unsigned long c) {
    uint32_t nseg = rnd() % 16 ? 1 + rnd() % 4 : 1 + rnd() % 600;
    uint32_t *sizes = malloc(sizeof *sizes * nseg);
    uint64_t *starts = malloc(sizeof *starts * nseg);
    uint64_t total = 0;
    for (uint32_t i = 0; i < nseg; i++) total += sizes[i] = seg_size();
    size_t room = total * 8 < 4096 ? (size_t)total * 8 : 4096;
    size_t n = rnd() % 4 ? room : rnd() % (room + 1); /* truncated heads too */
    uint8_t *h = malloc(n ? n : 1);
    head_bytes(h, n, nseg, sizes[0] < 64 ? sizes[0] : 64);
    if (n >= 24 && rnd() % 4 == 0) { /* a root of one data word and one pointer, a member */
        put64(h, (uint64_t)1 << 32 | (uint64_t)1 << 48);
        put64(h + 8, rnd() % 4);
    } else if (n >= 8 && rnd() % 3 == 0) { /* a double far to a pad that is there */
        uint32_t seg = rnd() % nseg, pad = rnd() % 4;
        uint64_t at = 0;
        for (uint32_t i = 0; i < seg; i++) at += sizes[i];
        at = 8 * (at + pad);
        put64(h, 6 | (uint64_t)pad << 3 | (uint64_t)seg << 32);
        if (at + 16 <= n) {
            put64(h + at, 2 | (uint64_t)(rnd() % 4) << 3 | (uint64_t)(rnd() % nseg) << 32);
            put64(h + at + 8, (uint64_t)(rnd() % 3) << 32 | (uint64_t)(rnd() % 3) << 48);
        }
    }
    uint8_t *exact = malloc(n ? n : 1); /* exactly n bytes: ASan sees a read past it */
    memcpy(exact, h, n);
    member_set = (uint16_t)rnd();
    unsigned which = 0;
    uint32_t id = 0;
    unsigned pick = (unsigned)(rnd() % 3);
    fr_member_fn members = pick == 0 ? fr_call_or_return : pick == 1 ? fr_asked : some_members;
    int r = fr_rpc_member(exact, n, sizes, nseg, starts, members, NULL, (int)(rnd() % 2), &which,
                          &id);
    if (r < FR_UNKNOWN || r > FR_ID) fail("an answer out of range", c);
    if (which > 0xFFFF) fail("a discriminant past 16 bits", c);
    checksum += (uint64_t)r * 31 + which + id;
    /* the struct reader alone, from any word of any segment */
    fr_struct s;
    uint32_t seg = rnd() % nseg;
    uint64_t at = rnd() % 4 ? rnd() % 16 : rnd();
    if (fr_struct_at(exact, n, starts, sizes, nseg, seg, at, (int)(rnd() % 2), &s)) {
        if (s.segment >= nseg) fail("a struct in no segment", c);
        if ((s.data || s.pointers || s.first || s.segment) &&
            s.first + s.data + s.pointers > sizes[s.segment])
            fail("a struct past its segment", c);
    }
    free(exact);
    free(h);
    free(starts);
    free(sizes);
}

/* ---- the framer ---- */

typedef struct {
    int ev;
    uint64_t n;
} event_t;

typedef struct {
    event_t *ev;
    size_t len, cap;
    uint64_t reported;
} log_t;

static void log_add(log_t *l, int ev, uint64_t n) {
    if (l->len == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->ev = realloc(l->ev, sizeof *l->ev * l->cap);
        if (!l->ev) abort();
    }
    l->ev[l->len++] = (event_t){ev, n};
}

/* Feed stream[0, len) in pieces (whole if !split) into a framer of head size hs. */
static void run(const uint8_t *stream, size_t len, uint64_t hs, int split, int unbreak,
                log_t *l, unsigned long c) {
    fr_framer f;
    fr_init(&f, hs);
    uint64_t starts[FR_MAX_SEGMENTS];
    size_t off = 0;
    while (off < len) {
        size_t piece = split ? (rnd() % 4 ? 1 + rnd() % 16 : 1 + rnd() % (len - off)) : len;
        if (piece > len - off) piece = len - off;
        uint8_t *p = malloc(piece); /* exactly the piece: ASan sees a read past it */
        memcpy(p, stream + off, piece);
        size_t pos = 0;
        for (int guard = 0;; guard++) {
            if (guard > 1 << 20) fail("the framer does not stop", c);
            uint64_t n = 0;
            int ev = fr_step(&f, p, piece, &pos, &n);
            if (pos > piece) fail("past the piece", c);
            if (ev == FR_MORE) break;
            if (ev == FR_NOMEM) fail("out of memory", c);
            if (ev == FR_CLASSIFY) {
                uint64_t body = f.size - fr_header_size(f.nsizes);
                if (f.hlen != (body < hs ? body : hs)) fail("a head of the wrong length", c);
                uint8_t *exact = malloc(f.hlen ? f.hlen : 1);
                memcpy(exact, f.head, f.hlen);
                unsigned which = 0;
                uint32_t id = 0;
                int r = fr_rpc_member(exact, f.hlen, f.sizes, f.nsizes, starts,
                                      fr_call_or_return, NULL, 1, &which, &id);
                free(exact);
                log_add(l, 100 + r, (uint64_t)which << 32 | id);
                continue;
            }
            if (ev == FR_UNSURE && unbreak) f.broken = 0; /* as Python may set it back */
            if (ev == FR_MESSAGE || ev == FR_EMPTY) n = f.size;
            l->reported += n;
            log_add(l, ev, n);
        }
        free(p);
        off += piece;
    }
    if (l->reported > len) fail("more reported than fed", c);
    fr_free(&f);
}

static size_t message(uint8_t *out, size_t cap, int *whole) {
    uint32_t nseg;
    switch (rnd() % 8) {
    case 0: nseg = 513 + rnd() % 100; break; /* past the limit */
    case 1: nseg = 1 + rnd() % 512; break;
    default: nseg = 1 + rnd() % 3;
    }
    if (rnd() % 64 == 0) nseg = 0xFFFFFFFFu; /* count + 1 wraps past 32 bits */
    size_t table = (size_t)fr_header_size(nseg > 600 ? 1 : nseg);
    if (table > cap) return 0;
    put32(out, nseg - 1);
    if (nseg > FR_MAX_SEGMENTS) { /* the rest of the stream is unreadable: some bytes of it */
        size_t more = rnd() % 64;
        if (4 + more > cap) more = cap - 4;
        for (size_t i = 0; i < more; i++) out[4 + i] = (uint8_t)rnd();
        *whole = 0;
        return 4 + more;
    }
    uint64_t body = 0;
    memset(out + 4, 0, table - 4);
    for (uint32_t i = 0; i < nseg; i++) {
        uint32_t s = rnd() % 32 ? rnd() % 6 : seg_size();
        if (i == 0 && rnd() % 2) s = 1 + rnd() % 600; /* a head longer than small head sizes */
        put32(out + 4 + 4 * i, s);
        body += 8 * (uint64_t)s;
    }
    if (table + body > cap) { /* one that never ends: what fits of it, then the stream ends */
        size_t n = table + (size_t)(rnd() % (cap - table + 1));
        head_bytes(out + table, n - table, nseg, 8);
        *whole = 0;
        return n;
    }
    head_bytes(out + table, (size_t)body, nseg, 8);
    *whole = 1;
    return table + (size_t)body;
}

static void one_stream(unsigned long c) {
    static uint8_t stream[1 << 16];
    size_t len = 0;
    int whole = 1;
    for (int m = rnd() % 6; m >= 0 && whole; m--) {
        size_t n = message(stream + len, sizeof stream - len, &whole);
        if (!n) break;
        len += n;
    }
    static const uint64_t HEADS[] = {0, 1, 7, 8, 64, 4096};
    uint64_t hs = HEADS[rnd() % 6];
    log_t a = {0}, b = {0}, u = {0};
    run(stream, len, hs, 0, 0, &a, c);
    run(stream, len, hs, 1, 0, &b, c);
    run(stream, len, hs, 1, 1, &u, c); /* `broken` set back after each break: no check but ASan's */
    free(u.ev);
    /* the pieces may cut a broken stream's unsure bytes differently: compare the rest */
    size_t i = 0, j = 0;
    while (i < a.len && j < b.len && a.ev[i].ev != FR_UNSURE) {
        if (a.ev[i].ev != b.ev[j].ev || a.ev[i].n != b.ev[j].n) fail("pieces changed an event", c);
        i++, j++;
    }
    if (a.reported != b.reported) fail("pieces changed the bytes reported", c);
    if (whole && a.reported != len) fail("a whole stream not all reported", c);
    checksum += a.len + a.reported;
    free(a.ev);
    free(b.ev);
}

int main(int argc, char **argv) {
    unsigned long cases = argc > 1 ? strtoul(argv[1], NULL, 10) : 100000;
    rng = argc > 2 ? (uint32_t)strtoul(argv[2], NULL, 10) : 2026;
    if (!rng) rng = 1;
    for (unsigned long c = 0; c < cases; c++) {
        one_member(c);
        one_stream(c);
    }
    printf("%lu cases, no crash\n", cases);
    return checksum == 0xFFFFFFFFFFFFFFFFull; /* never: uses the checksum */
}
