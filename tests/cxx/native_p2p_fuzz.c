/* Random and mutated input into src/ww/p2p/_native/conn.c's parsers, for a build with
 * -fsanitize=address,undefined: multistream-select and the Noise handshake (as responder
 * and as initiator, over a socketpair whose other end sends the bytes and closes), the
 * handshake payload's protobuf, Noise transport frames, Yamux frames.  Every case must end
 * in a clean failure or a clean parse; a sanitizer report or a crash is a bug.
 *
 *     gcc -g -O1 -fsanitize=address,undefined -I src/ww/p2p/_native -o fuzz \
 *         tests/cxx/native_p2p_fuzz.c -lsodium
 *     ./fuzz [CASES] [SEED]
 */
#include "conn.c" /* src/ww/p2p/_native, on the include path */


static uint32_t rng;
static uint32_t rnd(void) { /* xorshift: reproducible from the seed */
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

static void fill(uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)rnd();
}

/* A valid-looking start, then mutations: what a random peer cannot easily reach. */
static size_t handshake_input(uint8_t *out, size_t cap) {
    size_t n = 0;
    if (rnd() % 4) {
        n += ms_encode("/multistream/1.0.0", out + n);
        n += ms_encode(rnd() % 2 ? "/noise" : "/yamux/1.0.0", out + n);
    }
    size_t more = rnd() % 300;
    if (rnd() % 2 && n + 2 + 32 <= cap) { /* a frame of a plausible length */
        size_t len = rnd() % 2 ? 32 : rnd() % 200;
        out[n++] = (uint8_t)(len >> 8);
        out[n++] = (uint8_t)len;
    }
    if (n + more > cap) more = cap - n;
    fill(out + n, more);
    n += more;
    for (int i = rnd() % 4; i > 0 && n; i--) out[rnd() % n] ^= (uint8_t)(1u << (rnd() % 8));
    return n;
}

static void one_handshake(int initiator) {
    int sv[2];
    uint8_t input[1024], seed[32], expect[32];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) abort();
    size_t n = handshake_input(input, sizeof input);
    if (send(sv[1], input, n, MSG_NOSIGNAL) != (ssize_t)n) abort();
    shutdown(sv[1], SHUT_WR);
    conn_t *c = ww_conn_new(sv[0], initiator);
    fill(seed, 32);
    fill(expect, 32);
    if (ww_conn_handshake(c, seed, rnd() % 2 ? expect : NULL) == 0) abort(); /* no key: no success */
    ww_conn_free(c);
    close(sv[0]);
    close(sv[1]);
}

static void one_payload(void) {
    uint8_t msg[200], rs[32];
    conn_t c = {0};
    size_t n;
    if (rnd() % 2) { /* a real payload, mutated */
        uint8_t seed[32], pk[32], sk[64];
        fill(seed, 32);
        crypto_sign_seed_keypair(pk, sk, seed);
        fill(rs, 32);
        n = make_payload(sk, rs, msg);
        int flips = rnd() % 3;
        for (int i = 0; i < flips; i++) msg[rnd() % n] ^= (uint8_t)(1u << (rnd() % 8));
        if (rnd() % 4 == 0) n = rnd() % n;
        int ok = check_payload(&c, msg, n, rs, NULL) == 0;
        if (!flips && n == 104 && !ok) abort(); /* an intact payload must verify */
    } else {
        n = rnd() % sizeof msg;
        fill(msg, n);
        fill(rs, 32);
        check_payload(&c, msg, n, rs, NULL);
    }
}

/* Yamux frames (valid headers mostly, random fields) in Noise frames, or raw junk. */
static void one_transport(void) {
    conn_t *a = ww_conn_new(-1, 1), *b = ww_conn_new(-1, 0);
    uint8_t key[32];
    fill(key, 32);
    memcpy(a->tx_key, key, 32);
    memcpy(b->rx_key, key, 32);
    uint8_t frame[YAMUX_HDR + 600];
    int frames = 1 + rnd() % 20;
    for (int i = 0; i < frames; i++) {
        size_t body = rnd() % 4 ? rnd() % 64 : rnd() % 600;
        frame[0] = rnd() % 16 ? 0 : (uint8_t)rnd();
        frame[1] = (uint8_t)(rnd() % 5);
        frame[2] = 0;
        frame[3] = (uint8_t)(rnd() % 16);
        put32(frame + 4, rnd() % 3 ? 1 + 2 * (rnd() % 4) : rnd());
        uint32_t len = rnd() % 4 ? (uint32_t)body : rnd();
        put32(frame + 8, len);
        fill(frame + YAMUX_HDR, body);
        noise_send(a, frame, YAMUX_HDR + body);
    }
    if (rnd() % 3 == 0 && a->out.len) a->out.p[rnd() % a->out.len] ^= 1; /* tampered */
    if (rnd() % 3 == 0) a->out.len = rnd() % (a->out.len + 1);                 /* cut */
    buf_put(&b->in, a->out.p, a->out.len);
    if (noise_decrypt_all(b) == 0) yamux_parse(b);
    /* and straight into the Yamux parser, no Noise */
    conn_t *d = ww_conn_new(-1, rnd() % 2);
    size_t n = rnd() % 400;
    buf_reserve(&d->plain, n);
    fill(d->plain.p, n);
    d->plain.len = n;
    for (size_t off = 0; off + 12 <= n; off += 12 + rnd() % 40) d->plain.p[off] = 0;
    yamux_parse(d);
    ww_conn_free(a);
    ww_conn_free(b);
    ww_conn_free(d);
}

int main(int argc, char **argv) {
    long cases = argc > 1 ? atol(argv[1]) : 20000;
    rng = argc > 2 ? (uint32_t)atol(argv[2]) : 12345u;
    if (!rng) rng = 1;
    if (sodium_init() < 0) return 2;
    for (long i = 0; i < cases; i++) {
        switch (i % 4) {
        case 0: one_handshake(0); break;
        case 1: one_handshake(1); break;
        case 2: one_payload(); break;
        default: one_transport(); break;
        }
    }
    printf("%ld cases, no crash\n", cases);
    return 0;
}
