/* A libp2p connection in C, as much of it as a ww host speaks (design (e) in
 * docs/benchmarks.md): included by ext.c (the ww.p2p._native._ext module, not used by the
 * ww host yet) and by tests/cxx/native_p2p_fuzz.c (the sanitizer harness).
 *
 * - multistream-select 1.0 on the raw TCP connection (/multistream/1.0.0, then /noise, or
 *   /ww/lane/0.1.0 with the lane flag: a ww lane, the same Noise and Yamux after it) and
 *   inside Noise (/yamux/1.0.0); stream-level negotiation (/ww/0.1.0 ...) is left to the
 *   caller;
 * - Noise_XX_25519_ChaChaPoly_SHA256, libp2p's handshake payload (NoiseHandshakePayload:
 *   identity_key, identity_sig over "noise-libp2p-static-key:" + static key), frames of a
 *   2-byte big-endian length; Ed25519 identities only;
 * - Yamux: 12-byte headers, data / window update / ping / go away, SYN ACK FIN RST, 256 KiB
 *   initial window, credit returned once half of it has been taken: with app_credit (the
 *   extension) taken by the stream's reader (ww_stream_credit), else parsed;
 * - back-pressure on the socket: no frames are read while the out buffer holds more than
 *   OUT_HIGH (what the peer made us send and does not read), until it holds less than
 *   OUT_LOW (ww_conn_read_paused); streams' data is framed only under OUT_DATA;
 * - a bound on the work of one ww_conn_read: it reads at most READ_BUDGET (none while that
 *   much waits undecrypted), decrypts at most PARSE_BUDGET Noise messages (READ_BUDGET bytes of
 *   them) and parses at most PARSE_BUDGET Yamux frames; what is left waits in order for the
 *   next call, and ww_conn_more says whether there is any (the caller calls again soon,
 *   without waiting for the socket);
 * - the peer's stream ids: a SYN must name an id of the peer's parity that it has not used
 *   (above the highest it opened, or a late one among the ID_WINDOW - 1 below it), else the
 *   connection fails; ours only go up;
 * - the handshake's work: what one step reads is bounded (HS_IN_MAX), and inside Noise it
 *   decrypts at most HS_MUX_MSGS messages before the muxer is agreed, one at a time.
 *
 * libsodium gives X25519, ChaCha20-Poly1305 (IETF), SHA-256, HMAC-SHA-256 and Ed25519.
 * Nothing here waits on the socket except ww_conn_handshake (poll between steps, for the
 * ctypes driver and the fuzz harness): the caller's event loop calls
 * ww_conn_handshake_step() when the socket is readable until the handshake is done, then
 * ww_conn_read(), which gives the events (records, see EV_*) the peer's frames carried;
 * ww_stream_write() frames and encrypts, ww_conn_flush() sends what the socket takes.
 * Every length read from the wire is checked before use; each direction's nonce is a
 * counter that only goes up, and the connection fails before it could wrap.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#define NOISE_MAX 65535                   /* a Noise message, tag included */
#define NOISE_PT_MAX (NOISE_MAX - 16)     /* its plaintext */
#define YAMUX_HDR 12
#define YAMUX_WINDOW (256u * 1024u)
#define YAMUX_FRAME_MAX (NOISE_PT_MAX - YAMUX_HDR) /* a data frame in one Noise message */
#define MAX_STREAMS 1024
/* Streams the peer may open: a token bucket per connection, SYN_BURST at once and SYN_RATE a
 * second after that (a ww peer opens one /ww/0.1.0 stream per dial and a ping now and then:
 * far below).  A SYN past it is answered with RST here, and the caller never sees it; past
 * SYN_EXCESS such SYNs more than the rate refills, the connection fails: the peer keeps
 * opening streams that it is told are refused.  Besides, the caller may cap the streams the
 * peer holds open (ww_conn_set_max_inbound): SYNs past it are reset here too. */
#define SYN_BURST 64u
#define SYN_RATE 256u                     /* a second */
#define SYN_EXCESS 4096u
#define READ_BUDGET (256u << 10)          /* bytes read from the socket per ww_conn_read */
/* Noise messages decrypted, and Yamux frames parsed, per ww_conn_read at most (each SYN or
 * ping of a flood is one of each and costs an answer): the caller's loop turns in between. */
#define PARSE_BUDGET 128u
/* Ids below the highest the peer opened whose SYN may still come (go-yamux takes an id and
 * sends its SYN apart: streams opened at once may reach us out of order); each id is taken
 * once, and an id further down is refused.  ID_WINDOW bits: the ids' state is a counter and
 * a 64-bit mask, whatever the peer sends. */
#define ID_WINDOW 64u
#define BUF_LIMIT (64u << 20)             /* no buffer grows past this */
/* The out buffer (encrypted, not yet sent).  What the peer makes us send (answers to its
 * pings, ACKs and RSTs to the streams it opens, ...) while it does not read is bounded by
 * reading no more frames while the buffer holds more than OUT_HIGH, until it holds less
 * than OUT_LOW: the peer's frames wait in the kernel and in the peer.  The streams' own data
 * is framed only while it holds less than OUT_DATA (the rest waits in the stream, where its
 * writer sees it), so our data alone (at most OUT_DATA and one Noise message) never stops
 * reading, and two ends that both write a lot cannot stop each other's reading. */
#define OUT_DATA (128u << 10)
#define OUT_LOW (256u << 10)
#define OUT_HIGH (512u << 10)
_Static_assert(OUT_DATA + 2 + NOISE_MAX < OUT_LOW && OUT_LOW < OUT_HIGH, "out buffer marks");

enum { Y_DATA = 0, Y_WINDOW = 1, Y_PING = 2, Y_GOAWAY = 3 };
enum { F_SYN = 1, F_ACK = 2, F_FIN = 4, F_RST = 8 };
/* event records for the caller: u32 stream, u16 flags, u16 kind, u32 length, data */
enum { EV_DATA = 0, EV_GOAWAY = 1 };

typedef struct {
    uint8_t *p;
    size_t len, cap;
} buf_t;

typedef struct {
    uint32_t id;
    uint32_t send_window;   /* bytes the peer will still take */
    uint32_t recv_left;     /* bytes the peer may still send */
    uint32_t recv_unacked;  /* taken, credit not yet returned */
    int local_fin, remote_fin, fin_pending;
    buf_t pending;          /* written, waiting for window (from pending_off on) */
    size_t pending_off;
} stream_t;

typedef struct {
    int fd;
    int initiator;
    uint8_t tx_key[32], rx_key[32];
    uint64_t tx_n, rx_n;
    buf_t in;     /* raw bytes read, not yet decrypted */
    buf_t plain;  /* decrypted, not yet parsed */
    buf_t out;    /* encrypted, not yet sent */
    buf_t ev;     /* events of the last ww_conn_read */
    stream_t *streams[MAX_STREAMS];
    int nstreams;
    int inbound;          /* streams the peer opened, held */
    int max_inbound;      /* ... SYNs past it are reset (the caller's limit) */
    uint64_t syn_at_ns;   /* the bucket's last refill */
    uint32_t syn_tokens;  /* SYNs the peer may send now (x 1000: refilled per ms) */
    uint32_t syn_excess;  /* SYNs refused for lack of tokens, less the refill since */
    uint64_t syn_reset;   /* SYNs answered with RST here (the caller never saw them) */
    uint32_t next_id;     /* our next stream's id: only goes up (by 2) */
    uint32_t in_top;      /* the highest id the peer opened a stream with (0: none yet) */
    uint64_t in_seen;     /* bit k: the peer opened in_top - 2k (k < ID_WINDOW) */
    uint32_t parse_most;  /* the most frames one ww_conn_read parsed (<= PARSE_BUDGET) */
    uint64_t parse_cut;   /* ww_conn_read calls that stopped at the budget, input left */
    uint8_t remote_ed25519[32];
    /* A responder's peer whose identity is not Ed25519 (RSA, secp256k1), with other_keys:
     * its PublicKey message, its signature and the Noise static key it signed, for the
     * caller to check before it trusts the connection (ww_conn_other_identity). */
    int other_keys;
    uint8_t *other_key, *other_sig, other_static[32];
    size_t other_key_n, other_sig_n;
    struct hs_state *hs; /* from ww_conn_handshake_start until the handshake ends */
    int lane_offer; /* initiator: propose LANE first; responder: accept it */
    int lane;       /* LANE was agreed (the security protocol; Noise as for /noise) */
    int app_credit; /* credit only for what the caller says was taken (ww_stream_credit) */
    int read_paused; /* the out buffer went over OUT_HIGH and not yet under OUT_LOW */
    unsigned pump_next; /* where pump_streams() starts, to share the out buffer's room */
    int failed, eof;
    char err[160];
} conn_t;

static int fail(conn_t *c, const char *what) {
    if (!c->failed) snprintf(c->err, sizeof c->err, "%s", what);
    c->failed = 1;
    return -1;
}

static int buf_reserve(buf_t *b, size_t more) {
    if (more > BUF_LIMIT || b->len > BUF_LIMIT - more) return -1;
    if (b->len + more <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more) cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int buf_put(buf_t *b, const void *data, size_t n) {
    if (buf_reserve(b, n)) return -1;
    if (n) memcpy(b->p + b->len, data, n);
    b->len += n;
    return 0;
}

/* An empty buffer that grew past BUF_KEEP gives its memory back: a stream that once carried a
 * big answer (or a reset one not yet collected) does not keep its size for life. */
#define BUF_KEEP (256u << 10)
static void buf_shrink(buf_t *b) {
    if (b->len || b->cap <= BUF_KEEP) return;
    free(b->p);
    b->p = NULL;
    b->cap = 0;
}

/* A buffer past BUF_KEEP holding a quarter of its capacity or less gives back what it does
 * not need (halved while so): a stream's pending bytes that its peer took down to a few,
 * without ever taking the last, gave nothing back (30 MiB of answers taken but 700 KiB kept
 * each stream's 32 MiB, the node's answer budget counting only the 700 KiB). */
static void buf_fit(buf_t *b) {
    size_t cap = b->cap;
    while (cap > BUF_KEEP && b->len <= cap / 4) cap /= 2;
    if (cap == b->cap) return;
    uint8_t *p = realloc(b->p, cap);
    if (!p) return; /* kept as it was */
    b->p = p;
    b->cap = cap;
}

static void buf_drop(buf_t *b, size_t n) {
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}
static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* ---- Noise ---- */

typedef struct {
    uint8_t ck[32], h[32], k[32];
    int has_k;
    uint64_t n;
} sym_t;

static void mix_hash(sym_t *s, const uint8_t *data, size_t n) {
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    crypto_hash_sha256_update(&st, s->h, 32);
    crypto_hash_sha256_update(&st, data, n);
    crypto_hash_sha256_final(&st, s->h);
}

static void hmac(const uint8_t key[32], const uint8_t *a, size_t an, const uint8_t *b,
                 size_t bn, uint8_t out[32]) {
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, key, 32);
    crypto_auth_hmacsha256_update(&st, a, an);
    if (bn) crypto_auth_hmacsha256_update(&st, b, bn);
    crypto_auth_hmacsha256_final(&st, out);
}

/* Noise's HKDF with two outputs */
static void hkdf2(const uint8_t ck[32], const uint8_t *ikm, size_t n, uint8_t o1[32],
                  uint8_t o2[32]) {
    uint8_t temp[32], one = 1, two = 2, t1[32];
    hmac(ck, ikm, n, NULL, 0, temp);
    hmac(temp, &one, 1, NULL, 0, t1);
    hmac(temp, t1, 32, &two, 1, o2);
    memcpy(o1, t1, 32);
    sodium_memzero(temp, sizeof temp);
    sodium_memzero(t1, sizeof t1);
}

static void mix_key(sym_t *s, const uint8_t *ikm, size_t n) {
    hkdf2(s->ck, ikm, n, s->ck, s->k);
    s->has_k = 1;
    s->n = 0;
}

static void nonce_of(uint64_t n, uint8_t nonce[12]) {
    memset(nonce, 0, 4);
    for (int i = 0; i < 8; i++) nonce[4 + i] = (uint8_t)(n >> (8 * i));
}

/* out gets n (+16 once keyed) bytes */
static size_t encrypt_and_hash(sym_t *s, const uint8_t *pt, size_t n, uint8_t *out) {
    size_t len = n;
    if (s->has_k) {
        uint8_t nonce[12];
        unsigned long long clen;
        nonce_of(s->n++, nonce);
        crypto_aead_chacha20poly1305_ietf_encrypt(out, &clen, pt, n, s->h, 32, NULL, nonce,
                                                  s->k);
        len = (size_t)clen;
    } else {
        if (n) memmove(out, pt, n);
    }
    mix_hash(s, out, len);
    return len;
}

static int decrypt_and_hash(sym_t *s, const uint8_t *ct, size_t n, uint8_t *out,
                            size_t *outn) {
    uint8_t h[32];
    memcpy(h, s->h, 32);
    if (s->has_k) {
        uint8_t nonce[12];
        unsigned long long mlen;
        if (n < 16) return -1;
        nonce_of(s->n++, nonce);
        if (crypto_aead_chacha20poly1305_ietf_decrypt(out, &mlen, NULL, ct, n, h, 32, nonce,
                                                      s->k))
            return -1;
        *outn = (size_t)mlen;
    } else {
        if (n) memmove(out, ct, n);
        *outn = n;
    }
    mix_hash(s, ct, n);
    return 0;
}

static int dh(uint8_t out[32], const uint8_t sk[32], const uint8_t pk[32]) {
    return crypto_scalarmult(out, sk, pk); /* fails on a low-order point (all-zero result) */
}

/* ---- the handshake's I/O: never waits (the caller's loop, or ww_conn_handshake, does) ---- */

#define HS_IN_MAX (4u * NOISE_MAX) /* bytes of the handshake read and not yet used */
#define HS_WAIT_MS 10000           /* ww_conn_handshake: how long one wait on the peer lasts */
/* Noise messages decrypted, in all, before the muxer's multistream lines are whole (an honest
 * peer's header and at most MS_TRIES_MUXER proposals, or the answer): a peer sending
 * anything else there (empty messages, as fast as it can) fails the handshake, rather than
 * holding one handshake step, and the loop with it, for as long as it sends. */
#define HS_MUX_MSGS 32

/* Read what the socket has now into c->in: 1 if bytes came, 0 if none yet, -1 on failure
 * (end of file among them). */
static int hs_recv(conn_t *c) {
    if (c->in.len > HS_IN_MAX) return fail(c, "handshake: too many bytes unused");
    if (buf_reserve(&c->in, 16384)) return fail(c, "buffer limit");
    for (;;) {
        ssize_t r = recv(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len, MSG_DONTWAIT);
        if (r > 0) {
            c->in.len += (size_t)r;
            return 1;
        }
        if (r == 0) return fail(c, "connection closed during the handshake");
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        return fail(c, "recv failed during the handshake");
    }
}

/* multistream-select messages: uvarint length, the line, '\n' (in the length) */
static size_t ms_encode(const char *proto, uint8_t *out) {
    size_t n = strlen(proto) + 1, i = 0, v = n;
    while (v >= 0x80) { out[i++] = (uint8_t)(v | 0x80); v >>= 7; }
    out[i++] = (uint8_t)v;
    memcpy(out + i, proto, n - 1);
    out[i + n - 1] = '\n';
    return i + n;
}

static int noise_send(conn_t *c, const uint8_t *pt, size_t n);
static long noise_decrypt(conn_t *c, size_t msgs, size_t *bytes, size_t limit);

/* One multistream message from b into line (without '\n'): 1, 0 for more bytes first, or
 * -1 on a malformed one. */
static int ms_take(conn_t *c, buf_t *b, char *line, size_t cap) {
    size_t v = 0, i = 0;
    for (;;) {
        if (i >= b->len) return 0;
        uint8_t byte = b->p[i++];
        v |= (size_t)(byte & 0x7f) << (7 * (i - 1));
        if (!(byte & 0x80)) break;
        if (i >= 2) return fail(c, "multistream: message too long");
    }
    if (v < 1 || v > cap) return fail(c, "multistream: bad message length");
    if (b->len < i + v) return 0;
    if (b->p[i + v - 1] != '\n') return fail(c, "multistream: no newline");
    memcpy(line, b->p + i, v - 1);
    line[v - 1] = 0;
    buf_drop(b, i + v);
    return 1;
}

/* Queue one or two multistream messages, raw or inside Noise. */
static int ms_send(conn_t *c, int secure, const char *a, const char *b) {
    uint8_t msg[256];
    size_t n = ms_encode(a, msg);
    if (b) n += ms_encode(b, msg + n);
    if (secure) return noise_send(c, msg, n);
    return buf_put(&c->out, msg, n) ? fail(c, "send buffer limit") : 0;
}

static const char MS_HEADER[] = "/multistream/1.0.0";
static const char NOISE[] = "/noise";
static const char LANE[] = "/ww/lane/0.1.0"; /* Noise + Yamux as for /noise: a ww lane */
static const char YAMUX[] = "/yamux/1.0.0";
#define MS_TRIES_SECURITY 4 /* proposals a listener answers before the security protocol */
#define MS_TRIES_MUXER 8    /* ... and inside Noise, before the muxer */

/* The next multistream message after the header (which is checked, and which a listener
 * answers), into line: 1, 0 for more bytes first, -1. */
static int ms_next(conn_t *c, int secure, int *header_seen, char *line, size_t cap) {
    buf_t *b = secure ? &c->plain : &c->in;
    for (;;) {
        int r = ms_take(c, b, line, cap);
        if (r <= 0 || *header_seen) return r;
        if (strcmp(line, MS_HEADER)) return fail(c, "multistream: bad header");
        *header_seen = 1;
        if (!c->initiator && ms_send(c, secure, MS_HEADER, NULL)) return -1;
    }
}

/* A listener's answer to a proposal: 1 (echoed) if it is a or b (b may be NULL), else `na`
 * and 0, or -1 once more than `max` proposals came. */
static int ms_answer(conn_t *c, int secure, const char *line, const char *a, const char *b,
                     int *tries, int max) {
    if (!strcmp(line, a) || (b && !strcmp(line, b)))
        return ms_send(c, secure, line, NULL) ? -1 : 1;
    if (++*tries >= max) return fail(c, "multistream: too many proposals");
    return ms_send(c, secure, "na", NULL) ? -1 : 0;
}

/* Handshake messages: a 2-byte big-endian length, then the message. */
static int hs_put(conn_t *c, const uint8_t *msg, size_t n) {
    uint8_t len[2] = {(uint8_t)(n >> 8), (uint8_t)n};
    if (n > NOISE_MAX) return fail(c, "noise: handshake message too long");
    if (buf_put(&c->out, len, 2) || buf_put(&c->out, msg, n)) return fail(c, "buffer limit");
    return 0;
}

/* The next whole handshake message from c->in: 1, or 0 for more bytes first. */
static int hs_take(conn_t *c, uint8_t *msg, size_t *n) {
    if (c->in.len < 2) return 0;
    size_t len = (size_t)c->in.p[0] << 8 | c->in.p[1];
    if (c->in.len < 2 + len) return 0;
    memcpy(msg, c->in.p + 2, len);
    buf_drop(&c->in, 2 + len);
    *n = len;
    return 1;
}

static const char SIG_PREFIX[] = "noise-libp2p-static-key:";

/* protobuf: one length-delimited field */
static size_t pb_bytes(uint8_t *out, int field, const uint8_t *data, size_t n) {
    size_t i = 0;
    out[i++] = (uint8_t)(field << 3 | 2);
    size_t v = n;
    while (v >= 0x80) { out[i++] = (uint8_t)(v | 0x80); v >>= 7; }
    out[i++] = (uint8_t)v;
    memcpy(out + i, data, n);
    return i + n;
}

static int pb_varint(const uint8_t *p, size_t n, size_t *i, uint64_t *v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*i >= n) return -1;
        uint8_t b = p[(*i)++];
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) return 0;
    }
    return -1;
}

/* Walk a protobuf message; for each length-delimited field call back (field, data, n);
 * varints are skipped; any other wire type is refused. */
typedef int (*pb_cb)(void *ctx, uint64_t field, const uint8_t *data, size_t n);
static int pb_walk(const uint8_t *p, size_t n, pb_cb cb, void *ctx) {
    size_t i = 0;
    while (i < n) {
        uint64_t key, v;
        if (pb_varint(p, n, &i, &key)) return -1;
        if ((key & 7) == 0) {
            if (pb_varint(p, n, &i, &v)) return -1;
            if (cb(ctx, key >> 3, NULL, (size_t)v)) return -1;
        } else if ((key & 7) == 2) {
            if (pb_varint(p, n, &i, &v)) return -1;
            if (v > n - i) return -1;
            if (cb(ctx, key >> 3, p + i, (size_t)v)) return -1;
            i += (size_t)v;
        } else {
            return -1;
        }
    }
    return 0;
}

typedef struct {
    const uint8_t *key, *sig;
    size_t keyn, sign;
} payload_t;

static int payload_cb(void *ctx, uint64_t field, const uint8_t *data, size_t n) {
    payload_t *p = ctx;
    if (!data) return 0;
    if (field == 1) { p->key = data; p->keyn = n; }
    if (field == 2) { p->sig = data; p->sign = n; }
    return 0;
}

typedef struct {
    uint64_t type;
    int has_type;
    const uint8_t *data;
    size_t n;
} pubkey_t;

static int pubkey_cb(void *ctx, uint64_t field, const uint8_t *data, size_t n) {
    pubkey_t *k = ctx;
    if (field == 1 && !data) { k->type = n; k->has_type = 1; }
    if (field == 2 && data) { k->data = data; k->n = n; }
    return 0;
}

/* Bounds on an identity the caller checks (ww_conn_accept_other_keys): go-libp2p's largest
 * RSA key (8192 bits, MaxRsaKeyBits) marshals to about 1060 bytes and signs 1024. */
#define OTHER_KEY_MAX 1100
#define OTHER_SIG_MAX 1024

/* Keep an identity that is not Ed25519 for the caller to check: RSA (0) or secp256k1 (2). */
static int defer_payload(conn_t *c, const payload_t *p, uint64_t type, const uint8_t rs[32]) {
    if (type != 0 && type != 2) return fail(c, "noise: identity key type not supported");
    if (p->keyn > OTHER_KEY_MAX || !p->sign || p->sign > OTHER_SIG_MAX)
        return fail(c, "noise: identity key or signature too long");
    c->other_key = malloc(p->keyn);
    c->other_sig = malloc(p->sign);
    if (!c->other_key || !c->other_sig) return fail(c, "out of memory");
    memcpy(c->other_key, p->key, p->keyn);
    memcpy(c->other_sig, p->sig, p->sign);
    memcpy(c->other_static, rs, 32);
    c->other_key_n = p->keyn;
    c->other_sig_n = p->sign;
    return 0;
}

/* Check the peer's payload: an Ed25519 identity that signed its Noise static key (or, for a
 * responder with other_keys, another kind kept for the caller: defer_payload). */
static int check_payload(conn_t *c, const uint8_t *msg, size_t n, const uint8_t rs[32],
                         const uint8_t *expect) {
    payload_t p = {0};
    pubkey_t k = {0};
    uint8_t signed_data[sizeof SIG_PREFIX - 1 + 32];
    if (pb_walk(msg, n, payload_cb, &p) || !p.key || !p.sig)
        return fail(c, "noise: malformed handshake payload");
    if (pb_walk(p.key, p.keyn, pubkey_cb, &k) || !k.has_type || !k.data)
        return fail(c, "noise: malformed identity key");
    if (k.type != 1 && c->other_keys && !c->initiator && !expect)
        return defer_payload(c, &p, k.type, rs);
    if (k.type != 1 || k.n != 32) return fail(c, "noise: identity key is not Ed25519");
    if (p.sign != 64) return fail(c, "noise: bad signature length");
    memcpy(signed_data, SIG_PREFIX, sizeof SIG_PREFIX - 1);
    memcpy(signed_data + sizeof SIG_PREFIX - 1, rs, 32);
    if (crypto_sign_verify_detached(p.sig, signed_data, sizeof signed_data, k.data))
        return fail(c, "noise: identity signature does not verify");
    if (expect && sodium_memcmp(expect, k.data, 32))
        return fail(c, "noise: peer is not the one dialed");
    memcpy(c->remote_ed25519, k.data, 32);
    return 0;
}

static size_t make_payload(const uint8_t id_sk[64], const uint8_t s_pub[32], uint8_t *out) {
    uint8_t key[36] = {0x08, 0x01, 0x12, 0x20}, signed_data[sizeof SIG_PREFIX - 1 + 32],
            sig[64];
    memcpy(key + 4, id_sk + 32, 32);
    memcpy(signed_data, SIG_PREFIX, sizeof SIG_PREFIX - 1);
    memcpy(signed_data + sizeof SIG_PREFIX - 1, s_pub, 32);
    crypto_sign_detached(sig, NULL, signed_data, sizeof signed_data, id_sk);
    size_t n = pb_bytes(out, 1, key, sizeof key);
    return n + pb_bytes(out + n, 2, sig, sizeof sig);
}

/* ---- the handshake as a state machine: multistream /noise, Noise XX, multistream /yamux ----
 * ww_conn_handshake_step() takes what the socket has, goes as far as it lets, and queues
 * what to send (ww_conn_flush sends it); the caller calls it again when the socket is
 * readable, and bounds the whole with a deadline of its own. */

enum { HS_MS_NOISE, HS_NOISE_1, HS_NOISE_2, HS_NOISE_3, HS_MS_YAMUX, HS_DONE };

struct hs_state {
    int state, header_seen, tries, has_expect;
    int mux_msgs; /* Noise messages decrypted before the muxer was agreed (HS_MUX_MSGS) */
    const char *proposed; /* the initiator's security proposal: LANE, then NOISE */
    sym_t s;
    uint8_t id_sk[64], s_sk[32], s_pub[32], e_sk[32], e_pub[32], re[32], expect[32];
};

static void hs_end(conn_t *c) {
    if (!c->hs) return;
    sodium_memzero(c->hs, sizeof *c->hs);
    free(c->hs);
    c->hs = NULL;
}

/* The message this side sends next: e (initiator, first), e ee s es payload (responder), or
 * s se payload (initiator, last). */
static int noise_write(conn_t *c) {
    struct hs_state *h = c->hs;
    uint8_t msg[256], payload[160], shared[32];
    size_t m = 0;
    int rc = -1;
    if (h->state == HS_MS_NOISE) { /* -> e */
        memcpy(msg, h->e_pub, 32);
        mix_hash(&h->s, h->e_pub, 32);
        return hs_put(c, msg, 32 + encrypt_and_hash(&h->s, NULL, 0, msg + 32));
    }
    size_t payload_n = make_payload(h->id_sk, h->s_pub, payload);
    if (!c->initiator) { /* -> e, ee */
        memcpy(msg, h->e_pub, 32);
        mix_hash(&h->s, h->e_pub, 32);
        if (dh(shared, h->e_sk, h->re)) { fail(c, "noise: bad ephemeral key"); goto out; }
        mix_key(&h->s, shared, 32);
        m = 32;
    }
    m += encrypt_and_hash(&h->s, h->s_pub, 32, msg + m); /* s */
    if (dh(shared, h->s_sk, h->re)) { fail(c, "noise: bad ephemeral key"); goto out; }
    mix_key(&h->s, shared, 32); /* es (responder) or se (initiator) */
    m += encrypt_and_hash(&h->s, payload, payload_n, msg + m);
    rc = hs_put(c, msg, m);
out:
    sodium_memzero(shared, 32);
    return rc;
}

/* The message the peer sent: e (to the responder), e ee s es payload (to the initiator),
 * s se payload (to the responder, last); its static key and identity checked. */
static int noise_read(conn_t *c, const uint8_t *msg, size_t n) {
    struct hs_state *h = c->hs;
    uint8_t pt[NOISE_MAX], rs[32], shared[32];
    size_t ptn, off = 0;
    int rc = -1;
    if (h->state == HS_NOISE_1) { /* <- e */
        if (n < 32) return fail(c, "noise: short message 1");
        memcpy(h->re, msg, 32);
        mix_hash(&h->s, h->re, 32);
        return decrypt_and_hash(&h->s, msg + 32, n - 32, pt, &ptn)
            ? fail(c, "noise: message 1 does not decrypt") : 0;
    }
    const char *which = h->state == HS_NOISE_2 ? "noise: message 2 does not decrypt"
                                               : "noise: message 3 does not decrypt";
    if (h->state == HS_NOISE_2) { /* <- e, ee */
        if (n < 32 + 48) return fail(c, "noise: short message 2");
        memcpy(h->re, msg, 32);
        mix_hash(&h->s, h->re, 32);
        if (dh(shared, h->e_sk, h->re)) { fail(c, "noise: bad ephemeral key"); goto out; }
        mix_key(&h->s, shared, 32);
        off = 32;
    } else if (n < 48) {
        return fail(c, "noise: short message 3");
    }
    if (decrypt_and_hash(&h->s, msg + off, 48, rs, &ptn)) { fail(c, which); goto out; } /* s */
    if (dh(shared, h->e_sk, rs)) { fail(c, "noise: bad static key"); goto out; }
    mix_key(&h->s, shared, 32); /* es (initiator) or se (responder) */
    if (decrypt_and_hash(&h->s, msg + off + 48, n - off - 48, pt, &ptn)) {
        fail(c, which);
        goto out;
    }
    rc = check_payload(c, pt, ptn, rs, h->has_expect ? h->expect : NULL);
out:
    sodium_memzero(shared, 32);
    return rc;
}

/* Noise is done: the transport keys, then multistream /yamux inside it. */
static int noise_split(conn_t *c) {
    struct hs_state *h = c->hs;
    uint8_t k1[32], k2[32];
    hkdf2(h->s.ck, NULL, 0, k1, k2);
    memcpy(c->initiator ? c->tx_key : c->rx_key, k1, 32);
    memcpy(c->initiator ? c->rx_key : c->tx_key, k2, 32);
    sodium_memzero(k1, 32);
    sodium_memzero(k2, 32);
    c->tx_n = c->rx_n = 0;
    h->state = HS_MS_YAMUX;
    h->header_seen = h->tries = 0;
    return c->initiator ? ms_send(c, 1, MS_HEADER, YAMUX) : 0;
}

/* id_seed: our Ed25519 seed; expect: the peer's Ed25519 public key, or NULL; lane: as
 * initiator, propose LANE first (header and proposal in one queued write, so one send) and
 * fall back to /noise on `na`; as responder, accept LANE as well as /noise.  Queues the
 * dialer's first bytes.  0, or -1 (ww_conn_error). */
int ww_conn_handshake_start(conn_t *c, const uint8_t id_seed[32], const uint8_t *expect,
                            int lane) {
    static const char NAME[] = "Noise_XX_25519_ChaChaPoly_SHA256";
    uint8_t pk[32];
    if (c->hs || c->failed) return fail(c, "handshake already started");
    struct hs_state *h = c->hs = calloc(1, sizeof *h);
    if (!h) return fail(c, "out of memory");
    crypto_sign_seed_keypair(pk, h->id_sk, id_seed);
    if (expect) {
        memcpy(h->expect, expect, 32);
        h->has_expect = 1;
    }
    memcpy(h->s.h, NAME, 32);
    memcpy(h->s.ck, h->s.h, 32);
    mix_hash(&h->s, NULL, 0); /* empty prologue */
    randombytes_buf(h->s_sk, 32);
    crypto_scalarmult_base(h->s_pub, h->s_sk);
    randombytes_buf(h->e_sk, 32);
    crypto_scalarmult_base(h->e_pub, h->e_sk);
    h->state = HS_MS_NOISE;
    c->lane_offer = lane != 0;
    h->proposed = lane ? LANE : NOISE;
    return c->initiator ? ms_send(c, 0, MS_HEADER, h->proposed) : 0;
}

static int hs_step(conn_t *c);

/* What has come so far, as far as it goes: 1 once the handshake is done (bytes that came
 * after it wait for ww_conn_read), 0 for more bytes first, -1 on failure (ww_conn_error).
 * What to send is queued; ww_conn_flush sends it.  On failure what was queued (a listener's
 * `na`s to the proposals before the one too many) is sent as far as the socket takes it
 * now, before the caller closes it. */
int ww_conn_handshake_step(conn_t *c) {
    int r = hs_step(c);
    if (r < 0 && c->out.len) {
        size_t off = 0;
        while (off < c->out.len) {
            ssize_t w = send(c->fd, c->out.p + off, c->out.len - off,
                             MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) break;
            off += (size_t)w;
        }
        buf_drop(&c->out, off);
    }
    return r;
}

static int hs_step(conn_t *c) {
    uint8_t msg[NOISE_MAX];
    char line[128];
    struct hs_state *h = c->hs;
    if (c->failed) return -1;
    if (!h) return fail(c, "no handshake started");
    for (;;) {
        int r = 0;
        size_t n;
        switch (h->state) {
        case HS_MS_NOISE:
            r = ms_next(c, 0, &h->header_seen, line, sizeof line);
            if (r == 1 && c->initiator) {
                if (!strcmp(line, h->proposed)) {
                    c->lane = h->proposed == LANE;
                } else if (h->proposed == LANE && !strcmp(line, "na")) {
                    h->proposed = NOISE; /* not a ww lane: a standard libp2p connection */
                    if (ms_send(c, 0, NOISE, NULL)) return -1;
                    continue;
                } else {
                    return fail(c, "multistream: protocol refused");
                }
            } else if (r == 1) {
                r = ms_answer(c, 0, line, NOISE, c->lane_offer ? LANE : NULL, &h->tries,
                              MS_TRIES_SECURITY);
                if (r == 0) continue;
                if (r == 1) c->lane = !strcmp(line, LANE);
            }
            if (r == 1) {
                if (c->initiator && noise_write(c)) return -1;
                h->state = c->initiator ? HS_NOISE_2 : HS_NOISE_1;
            }
            break;
        case HS_NOISE_1:
        case HS_NOISE_2:
        case HS_NOISE_3:
            r = hs_take(c, msg, &n);
            if (r == 1) {
                if (noise_read(c, msg, n)) return -1;
                if (h->state == HS_NOISE_1) {
                    if (noise_write(c)) return -1;
                    h->state = HS_NOISE_3;
                } else {
                    if (h->state == HS_NOISE_2 && noise_write(c)) return -1;
                    if (noise_split(c)) return -1;
                }
            }
            break;
        default:
            /* one Noise message at a time while the lines are short, HS_MUX_MSGS in all;
             * what follows the lines waits, encrypted, for ww_conn_read's budget */
            r = ms_next(c, 1, &h->header_seen, line, sizeof line);
            if (r == 0) {
                size_t bytes = 0;
                long k = noise_decrypt(c, 1, &bytes, SIZE_MAX);
                if (k < 0) return -1;
                if (k && ++h->mux_msgs > HS_MUX_MSGS)
                    return fail(c, "multistream: too many Noise messages before the muxer");
                if (k) continue;
            }
            if (r == 1 && c->initiator && strcmp(line, YAMUX))
                return fail(c, "multistream: protocol refused");
            if (r == 1 && !c->initiator) {
                r = ms_answer(c, 1, line, YAMUX, NULL, &h->tries, MS_TRIES_MUXER);
                if (r == 0) continue;
            }
            if (r == 1) {
                hs_end(c);
                return 1;
            }
        }
        if (r < 0) return -1;
        if (r == 0 && (r = hs_recv(c)) <= 0) return r;
    }
}

/* ---- transport messages ---- */

/* Encrypt pt into Noise messages at the end of c->out. */
static int noise_send(conn_t *c, const uint8_t *pt, size_t n) {
    do {
        size_t chunk = n < NOISE_PT_MAX ? n : NOISE_PT_MAX;
        uint8_t nonce[12];
        unsigned long long clen;
        if (c->tx_n == UINT64_MAX) return fail(c, "noise: nonces used up");
        if (buf_reserve(&c->out, 2 + chunk + 16)) return fail(c, "send buffer limit");
        uint8_t *p = c->out.p + c->out.len;
        nonce_of(c->tx_n++, nonce);
        crypto_aead_chacha20poly1305_ietf_encrypt(p + 2, &clen, pt, chunk, NULL, 0, NULL,
                                                  nonce, c->tx_key);
        p[0] = (uint8_t)(clen >> 8);
        p[1] = (uint8_t)clen;
        c->out.len += 2 + (size_t)clen;
        pt += chunk;
        n -= chunk;
    } while (n);
    return 0;
}

/* Decrypt whole Noise messages of c->in onto c->plain, at most `msgs` of them, and none
 * once *bytes (the messages' bytes, counted on) has reached `limit`: how many, or -1. */
static long noise_decrypt(conn_t *c, size_t msgs, size_t *bytes, size_t limit) {
    size_t off = 0;
    long done = 0;
    int rc = 0;
    while (c->in.len - off >= 2 && (size_t)done < msgs && *bytes < limit) {
        size_t len = (size_t)c->in.p[off] << 8 | c->in.p[off + 1];
        if (len < 16) { rc = fail(c, "noise: short transport message"); break; }
        if (c->in.len - off < 2 + len) break;
        uint8_t nonce[12];
        unsigned long long mlen;
        if (c->rx_n == UINT64_MAX) { rc = fail(c, "noise: nonces used up"); break; }
        if (buf_reserve(&c->plain, len)) { rc = fail(c, "receive buffer limit"); break; }
        nonce_of(c->rx_n++, nonce);
        if (crypto_aead_chacha20poly1305_ietf_decrypt(c->plain.p + c->plain.len, &mlen, NULL,
                                                      c->in.p + off + 2, len, NULL, 0, nonce,
                                                      c->rx_key)) {
            rc = fail(c, "noise: transport message does not decrypt");
            break;
        }
        c->plain.len += (size_t)mlen;
        off += 2 + len;
        *bytes += 2 + len;
        done++;
    }
    if (off) buf_drop(&c->in, off);
    return rc ? -1 : done;
}

/* ---- Yamux ---- */

static stream_t *find(conn_t *c, uint32_t id) {
    for (int i = 0; i < c->nstreams; i++)
        if (c->streams[i]->id == id) return c->streams[i];
    return NULL;
}

static stream_t *add_stream(conn_t *c, uint32_t id) {
    if (c->nstreams >= MAX_STREAMS) return NULL;
    stream_t *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->id = id;
    s->send_window = YAMUX_WINDOW;
    s->recv_left = YAMUX_WINDOW;
    c->streams[c->nstreams++] = s;
    if ((id & 1) != (c->initiator ? 1 : 0)) c->inbound++;
    return s;
}

static void drop_stream(conn_t *c, stream_t *s) {
    for (int i = 0; i < c->nstreams; i++)
        if (c->streams[i] == s) {
            c->streams[i] = c->streams[--c->nstreams];
            if ((s->id & 1) != (c->initiator ? 1 : 0)) c->inbound--;
            break;
        }
    free(s->pending.p);
    free(s);
}

/* A Yamux header at p (YAMUX_HDR bytes). */
static void yamux_header(uint8_t *p, uint8_t type, uint16_t flags, uint32_t id, uint32_t len) {
    p[0] = 0;
    p[1] = type;
    p[2] = (uint8_t)(flags >> 8);
    p[3] = (uint8_t)flags;
    put32(p + 4, id);
    put32(p + 8, len);
}

/* One Yamux frame (header + body) as one Noise message. */
static int yamux_send(conn_t *c, uint8_t type, uint16_t flags, uint32_t id, uint32_t len,
                      const uint8_t *body, size_t n) {
    uint8_t frame[YAMUX_HDR + YAMUX_FRAME_MAX];
    yamux_header(frame, type, flags, id, len);
    if (n) memcpy(frame + YAMUX_HDR, body, n);
    return noise_send(c, frame, YAMUX_HDR + n);
}

/* Send what the window and the out buffer's room (OUT_DATA) allow of the stream's pending
 * bytes. */
static int send_fin(conn_t *c, stream_t *s);

static int drain(conn_t *c, stream_t *s) {
    size_t off = s->pending_off;
    while (off < s->pending.len && s->send_window && c->out.len < OUT_DATA) {
        size_t n = s->pending.len - off;
        if (n > YAMUX_FRAME_MAX) n = YAMUX_FRAME_MAX;
        if (n > s->send_window) n = s->send_window;
        if (yamux_send(c, Y_DATA, 0, s->id, (uint32_t)n, s->pending.p + off, n)) return -1;
        s->send_window -= (uint32_t)n;
        off += n;
    }
    if (off == s->pending.len) {
        s->pending.len = 0;
        buf_shrink(&s->pending);
        off = 0;
    } else if (off > s->pending.len / 2) { /* compact now and then, not at every frame */
        buf_drop(&s->pending, off);
        buf_fit(&s->pending);
        off = 0;
    }
    s->pending_off = off;
    if (s->fin_pending && !s->pending.len) return send_fin(c, s);
    return 0;
}

/* FIN after everything written; may free s (both sides closed). */
static int send_fin(conn_t *c, stream_t *s) {
    s->fin_pending = 0;
    s->local_fin = 1;
    if (yamux_send(c, Y_WINDOW, F_FIN, s->id, 0, NULL, 0)) return -1;
    if (s->remote_fin) drop_stream(c, s);
    return 0;
}

/* Frame what the streams have pending and window for, while the out buffer has room
 * (OUT_DATA), from a stream that changes each call so that no stream keeps the room. */
static int pump_streams(conn_t *c) {
    stream_t *ready[MAX_STREAMS];
    int n = 0;
    for (int i = 0; i < c->nstreams; i++) {
        stream_t *s = c->streams[i];
        if (s->pending.len > s->pending_off && s->send_window) ready[n++] = s;
    }
    unsigned start = n ? c->pump_next++ % (unsigned)n : 0;
    for (int k = 0; k < n && c->out.len < OUT_DATA; k++) /* (drain frees only its own s) */
        if (drain(c, ready[(start + (unsigned)k) % (unsigned)n])) return -1;
    return 0;
}

/* Whether frames wait: the out buffer went over OUT_HIGH and is not under OUT_LOW yet. */
static int read_paused(conn_t *c) {
    if (c->out.len > OUT_HIGH) c->read_paused = 1;
    else if (c->out.len < OUT_LOW) c->read_paused = 0;
    return c->read_paused;
}

static int event(conn_t *c, uint32_t id, uint16_t flags, uint16_t kind, const uint8_t *data,
                 uint32_t n) {
    uint8_t rec[12];
    memcpy(rec, &id, 4);      /* little-endian host order for the caller */
    memcpy(rec + 4, &flags, 2);
    memcpy(rec + 6, &kind, 2);
    memcpy(rec + 8, &n, 4);
    if (buf_put(&c->ev, rec, 12) || buf_put(&c->ev, data, n))
        return fail(c, "event buffer limit");
    return 0;
}

/* Return the credit taken so far once it is half the window (go-yamux's rule): 1 if a window
 * update was queued, 0 if not yet, -1. */
static int give_credit(conn_t *c, stream_t *s) {
    if (s->recv_unacked < YAMUX_WINDOW / 2) return 0;
    if (yamux_send(c, Y_WINDOW, 0, s->id, s->recv_unacked, NULL, 0)) return -1;
    s->recv_left += s->recv_unacked;
    s->recv_unacked = 0;
    return 1;
}

static uint64_t mono_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* The SYN bucket refilled for the time since its last refill (tokens and excess in
 * thousandths). */
static void syn_refill(conn_t *c) {
    uint64_t now = mono_ns();
    if (now <= c->syn_at_ns) return;
    uint64_t add = (now - c->syn_at_ns) * SYN_RATE / 1000000u; /* thousandths */
    if (!add) return;                       /* (less than one: the time is kept) */
    c->syn_at_ns = now;
    uint64_t t = c->syn_tokens + add;
    c->syn_tokens = (uint32_t)(t > SYN_BURST * 1000u ? SYN_BURST * 1000u : t);
    c->syn_excess = add >= c->syn_excess ? 0 : c->syn_excess - (uint32_t)add;
}

/* A SYN of the peer: 1 to take the stream, 0 to reset it here, -1 once the peer went past
 * the rate by SYN_EXCESS (the connection fails). */
static int syn_admit(conn_t *c) {
    if (c->syn_tokens < 1000u) {
        c->syn_excess += 1000u;
        if (c->syn_excess > SYN_EXCESS * 1000u) return fail(c, "yamux: peer opens streams too fast");
        return 0;
    }
    c->syn_tokens -= 1000u;
    return c->inbound < c->max_inbound && c->nstreams < MAX_STREAMS;
}

/* A SYN's id, of the peer's parity: 1 if the peer has not used it (above the highest it
 * opened, or one of the ID_WINDOW - 1 below it not seen), now marked used; 0 if it has,
 * or it is too far below to tell. */
static int id_new(conn_t *c, uint32_t id) {
    if (id > c->in_top) {
        uint32_t up = (id - c->in_top) / 2;
        c->in_seen = (up >= ID_WINDOW ? 0 : c->in_seen << up) | 1u;
        c->in_top = id;
        return 1;
    }
    uint32_t k = (c->in_top - id) / 2;
    if (k >= ID_WINDOW || (c->in_seen >> k & 1u)) return 0;
    c->in_seen |= (uint64_t)1 << k;
    return 1;
}

/* Parse the whole Yamux frames in c->plain, at most `most` of them, none while reading is
 * paused: how many, or -1. */
static long yamux_parse_n(conn_t *c, size_t most) {
    size_t off = 0, frames = 0;
    int rc = 0;
    syn_refill(c);
    while (frames < most && c->plain.len - off >= YAMUX_HDR && !read_paused(c)) {
        const uint8_t *h = c->plain.p + off;
        uint8_t type = h[1];
        uint16_t flags = (uint16_t)(h[2] << 8 | h[3]);
        uint32_t id = get32(h + 4), len = get32(h + 8);
        if (h[0] != 0 || type > Y_GOAWAY) { rc = fail(c, "yamux: bad header"); break; }
        size_t body = type == Y_DATA ? len : 0;
        if (body > YAMUX_WINDOW) { rc = fail(c, "yamux: frame larger than the window"); break; }
        if (c->plain.len - off < YAMUX_HDR + body) break;
        const uint8_t *data = h + YAMUX_HDR;
        off += YAMUX_HDR + body;
        frames++;
        if (type == Y_PING) {
            if (flags & F_SYN && yamux_send(c, Y_PING, F_ACK, 0, len, NULL, 0)) { rc = -1; break; }
            continue;
        }
        if (type == Y_GOAWAY) {
            if (event(c, 0, 0, EV_GOAWAY, NULL, 0)) { rc = -1; break; }
            continue;
        }
        stream_t *s = find(c, id);
        if (flags & F_SYN) {
            /* the peer's streams have the other parity: odd from the dialer */
            if (s || id == 0 || (id & 1) != (c->initiator ? 0 : 1)) {
                rc = fail(c, "yamux: bad SYN");
                break;
            }
            /* an id the peer used before (its stream closed or reset, here or in the
             * caller, which may still hold it): ids are not reused, and one that is breaks
             * Yamux, as a SYN for an open stream does (go-yamux fails the session) */
            if (!id_new(c, id)) { rc = fail(c, "yamux: SYN for a stream id used before"); break; }
            int admit = syn_admit(c);
            if (admit < 0) { rc = -1; break; }
            s = admit ? add_stream(c, id) : NULL;
            if (!s) { /* reset here: the caller never hears of it */
                c->syn_reset++;
                if (yamux_send(c, Y_WINDOW, F_RST, id, 0, NULL, 0)) { rc = -1; break; }
                continue;
            }
            if (yamux_send(c, Y_WINDOW, F_ACK, id, 0, NULL, 0)) { rc = -1; break; }
        }
        if (!s) continue; /* a frame for a stream already gone (reset): dropped */
        if (type == Y_WINDOW) {
            if (len > UINT32_MAX - s->send_window) { rc = fail(c, "yamux: window overflow"); break; }
            s->send_window += len;
            int closing = s->fin_pending && s->remote_fin; /* drain may free s */
            if (drain(c, s)) { rc = -1; break; }
            if (closing && !find(c, id)) s = NULL;
        } else if (body) {
            /* past the credit given, or after FIN: the peer breaks Yamux, and the whole
             * connection fails (as go-yamux's session does): a peer that ignores the window
             * on one stream cannot be trusted with it on the others */
            if (body > s->recv_left || s->remote_fin) { rc = fail(c, "yamux: peer overran the window"); break; }
            s->recv_left -= (uint32_t)body;
            if (!c->app_credit) { /* (the ctypes driver: credit as frames are parsed) */
                s->recv_unacked += (uint32_t)body;
                if (give_credit(c, s) < 0) { rc = -1; break; }
            }
        }
        uint16_t shown = flags & (F_SYN | F_FIN | F_RST);
        if (body || shown) {
            if (event(c, id, shown, EV_DATA, data, (uint32_t)body)) { rc = -1; break; }
        }
        if (!s) continue;
        if (flags & F_FIN) s->remote_fin = 1;
        if (flags & F_RST || (s->remote_fin && s->local_fin)) drop_stream(c, s);
    }
    if (off) buf_drop(&c->plain, off);
    return rc ? -1 : (long)frames;
}

/* ---- the API (ext.c, and ctypes in benchmarks/p2p_native.py) ---- */

conn_t *ww_conn_new(int fd, int initiator) {
    if (sodium_init() < 0) return NULL;
    conn_t *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->fd = fd;
    c->initiator = initiator;
    c->next_id = initiator ? 1 : 2;
    c->max_inbound = MAX_STREAMS;
    c->syn_tokens = SYN_BURST * 1000u;
    c->syn_at_ns = mono_ns();
    return c;
}

void ww_conn_free(conn_t *c) {
    if (!c) return;
    hs_end(c);
    free(c->other_key);
    free(c->other_sig);
    while (c->nstreams) drop_stream(c, c->streams[0]);
    sodium_memzero(c->tx_key, 32);
    sodium_memzero(c->rx_key, 32);
    free(c->in.p);
    free(c->plain.p);
    free(c->out.p);
    free(c->ev.p);
    free(c);
}

const char *ww_conn_error(conn_t *c) { return c->err; }

const uint8_t *ww_conn_remote_key(conn_t *c) { return c->remote_ed25519; }

/* A responder, before its handshake starts: take a peer whose identity is not Ed25519 (RSA,
 * secp256k1) without checking its signature, which the caller then must check
 * (ww_conn_other_identity) before it reads a stream or trusts the peer's id. */
void ww_conn_accept_other_keys(conn_t *c) { c->other_keys = 1; }

/* 1 and the peer's PublicKey message, its signature and the Noise static key it signed, for
 * an identity kept unchecked (ww_conn_accept_other_keys); 0 for an Ed25519 peer (checked). */
int ww_conn_other_identity(conn_t *c, const uint8_t **key, size_t *keyn, const uint8_t **sig,
                           size_t *sign, const uint8_t **rs) {
    if (!c->other_key) return 0;
    *key = c->other_key;
    *keyn = c->other_key_n;
    *sig = c->other_sig;
    *sign = c->other_sig_n;
    *rs = c->other_static;
    return 1;
}

long ww_conn_flush(conn_t *c);

/* The whole handshake, waiting on the socket (poll) between steps, each wait bounded by
 * HS_WAIT_MS: for the ctypes driver (in a worker thread) and the fuzz harness. */
static int handshake_waiting(conn_t *c, const uint8_t id_seed[32], const uint8_t *expect,
                             int lane) {
    if (ww_conn_handshake_start(c, id_seed, expect, lane)) return -1;
    for (int done = 0;;) {
        if (!done && (done = ww_conn_handshake_step(c)) < 0) return -1;
        long left = ww_conn_flush(c);
        if (left < 0) return -1;
        if (done && !left) return 0;
        struct pollfd p = {c->fd, (short)((done ? 0 : POLLIN) | (left ? POLLOUT : 0)), 0};
        int k = poll(&p, 1, HS_WAIT_MS);
        if (k == 0) return fail(c, "handshake: the peer went silent");
        if (k < 0 && errno != EINTR) return fail(c, "poll failed during the handshake");
    }
}

int ww_conn_handshake(conn_t *c, const uint8_t id_seed[32], const uint8_t *expect) {
    return handshake_waiting(c, id_seed, expect, 0);
}

/* At most n streams the peer opened held at once: SYNs past it are reset here (0: all). */
void ww_conn_set_max_inbound(conn_t *c, int n) { c->max_inbound = n < 0 ? 0 : n; }

/* 1 if the handshake agreed on LANE */
int ww_conn_lane(conn_t *c) { return c->lane; }

/* 1 if input already read waits to be parsed (a whole Yamux frame decrypted, or a whole
 * Noise message), and reading is not paused: the caller calls ww_conn_read again soon,
 * without waiting for the socket (which may have nothing more to say). */
int ww_conn_more(conn_t *c) {
    if (c->failed || read_paused(c)) return 0;
    if (c->plain.len >= YAMUX_HDR) {
        const uint8_t *h = c->plain.p;
        size_t body = h[1] == Y_DATA ? get32(h + 8) : 0;
        if (h[0] != 0 || h[1] > Y_GOAWAY || body > YAMUX_WINDOW ||
            c->plain.len >= YAMUX_HDR + body)
            return 1; /* (a bad header too: the next call fails the connection) */
    }
    if (c->in.len >= 2) {
        size_t len = (size_t)c->in.p[0] << 8 | c->in.p[1];
        if (len < 16 || c->in.len >= 2 + len) return 1;
    }
    return 0;
}

/* One call's work on what was read: parse what is whole, and decrypt more only when nothing
 * whole is left (so the plain bytes waiting stay under a frame and one call's messages),
 * at most PARSE_BUDGET Yamux frames and PARSE_BUDGET Noise messages (READ_BUDGET bytes of
 * them); events are appended to c->ev.  The frames parsed, or -1. */
static long conn_parse(conn_t *c) {
    size_t frames = 0, msgs = 0, bytes = 0;
    for (;;) {
        long k = yamux_parse_n(c, PARSE_BUDGET - frames);
        if (k < 0) return -1;
        frames += (size_t)k;
        if (frames >= PARSE_BUDGET || msgs >= PARSE_BUDGET || bytes >= READ_BUDGET ||
            read_paused(c))
            break;
        k = noise_decrypt(c, PARSE_BUDGET - msgs, &bytes, READ_BUDGET);
        if (k < 0) return -1;
        if (!k) break;
        msgs += (size_t)k;
    }
    if (frames > c->parse_most) c->parse_most = (uint32_t)frames;
    return (long)frames;
}

/* Non-blocking: read what the socket has (while less than READ_BUDGET waits undecrypted;
 * nothing while reading is paused: ww_conn_read_paused), decrypt and parse, at most
 * PARSE_BUDGET messages and frames (ww_conn_more: whether some are left).  Returns the bytes
 * of events (ww_conn_events), -1 on failure (ww_conn_error), -2 at end of file once
 * everything before it was parsed. */
long ww_conn_read(conn_t *c) {
    c->ev.len = 0;
    if (c->failed) return -1;
    while (c->in.len < READ_BUDGET && !c->eof && !read_paused(c)) {
        if (buf_reserve(&c->in, 65536)) return fail(c, "receive buffer limit");
        size_t room = c->in.cap - c->in.len;
        if (room > READ_BUDGET - c->in.len) room = READ_BUDGET - c->in.len;
        ssize_t r = recv(c->fd, c->in.p + c->in.len, room, MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            return fail(c, "recv failed");
        }
        if (r == 0) { c->eof = 1; break; }
        c->in.len += (size_t)r;
        if ((size_t)r < room) break; /* drained for now */
    }
    if (conn_parse(c) < 0) return -1;
    int more = ww_conn_more(c);
    if (more) c->parse_cut++;
    if (c->eof && !c->ev.len && !c->read_paused && !more) return -2;
    return (long)c->ev.len;
}

/* 1 while reading is paused (the out buffer went over OUT_HIGH and is not under OUT_LOW
 * yet): ww_conn_read reads and parses nothing, so the caller stops watching the socket for
 * reading until ww_conn_flush brings the buffer under OUT_LOW, then calls ww_conn_read (the
 * frames already read wait for it). */
int ww_conn_read_paused(conn_t *c) { return read_paused(c); }

const uint8_t *ww_conn_events(conn_t *c) { return c->ev.p; }

/* Non-blocking: send what is queued, and the streams' data that waits for room in the out
 * buffer as it makes room.  Returns the bytes still queued, -1 on failure. */
long ww_conn_flush(conn_t *c) {
    if (c->failed) return -1;
    for (;;) {
        if (c->out.len < OUT_DATA && pump_streams(c)) return -1;
        if (!c->out.len) break;
        ssize_t w = send(c->fd, c->out.p, c->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            return fail(c, "send failed");
        }
        buf_drop(&c->out, (size_t)w);
    }
    read_paused(c);
    return (long)c->out.len;
}

/* Open a stream (SYN on a window update); its id, or 0. */
uint32_t ww_stream_open(conn_t *c) {
    if (c->failed || c->next_id > UINT32_MAX - 2) return 0;
    uint32_t id = c->next_id;
    stream_t *s = add_stream(c, id);
    if (!s) return 0;
    c->next_id += 2;
    if (yamux_send(c, Y_WINDOW, F_SYN, id, 0, NULL, 0)) return 0;
    return id;
}

/* Queue data on a stream (framed and encrypted now, what the window allows); flags F_FIN
 * closes our side after it, F_RST resets.  -1 on failure of the connection, -2 for a
 * stream that is gone (reset, or closed), -3 when the stream's unsent bytes would pass
 * BUF_LIMIT: its writer did not wait for the peer (the caller pauses a writer long before,
 * ext.c's WRITE_HIGH), so that stream is reset here, its bytes dropped, and the connection
 * and its other streams go on (nothing of the peer's is at fault). */
int ww_stream_write(conn_t *c, uint32_t id, const uint8_t *data, size_t n, int flags) {
    if (c->failed) return -1;
    stream_t *s = find(c, id);
    if (!s) return -2;
    if (flags & F_RST) { /* a FIN waiting behind unsent bytes too: they are dropped */
        int rc = yamux_send(c, Y_WINDOW, F_RST, id, 0, NULL, 0);
        drop_stream(c, s);
        return rc;
    }
    if (s->local_fin || s->fin_pending) return -2;
    if (s->pending_off && s->pending.len + n > s->pending.cap) { /* sent bytes make room */
        buf_drop(&s->pending, s->pending_off);
        s->pending_off = 0;
    }
    if (buf_put(&s->pending, data, n)) {
        if (yamux_send(c, Y_WINDOW, F_RST, id, 0, NULL, 0)) return -1;
        drop_stream(c, s);
        return -3;
    }
    if (drain(c, s)) return -1;
    if (flags & F_FIN) {
        if (s->pending.len) s->fin_pending = 1; /* sent once the window lets the rest go */
        else return send_fin(c, s);
    }
    return 0;
}

/* With app_credit: n bytes of stream id were taken by its reader (at most what came and was
 * not credited yet counts); credit goes back to the peer once it is half the window, so a
 * stream whose reader stops holds at most its window and the peer waits.  1 if a window
 * update was queued (ww_conn_flush sends it), 0 if not yet, -1 on failure of the
 * connection, -2 for a stream that is gone. */
int ww_stream_credit(conn_t *c, uint32_t id, size_t n) {
    if (c->failed) return -1;
    stream_t *s = find(c, id);
    if (!s) return -2;
    size_t held = YAMUX_WINDOW - s->recv_left - s->recv_unacked;
    s->recv_unacked += (uint32_t)(n < held ? n : held);
    return give_credit(c, s);
}

/* Bytes written on stream id that are not framed yet (waiting for send window, or for room
 * in the out buffer): 0 for a stream that is gone. */
size_t ww_stream_unsent(conn_t *c, uint32_t id) {
    stream_t *s = find(c, id);
    return s ? s->pending.len - s->pending_off : 0;
}

/* Encrypted bytes queued and not yet taken by the socket. */
size_t ww_conn_unsent(conn_t *c) { return c->out.len; }

/* Yamux ping (the answer is handled by ww_conn_read) */
int ww_conn_ping(conn_t *c, uint32_t opaque) {
    if (c->failed) return -1;
    return yamux_send(c, Y_PING, F_SYN, 0, opaque, NULL, 0);
}

/* ---- for the benchmark: the transport's own cost, no wake-ups ---- */

/* Read until stream id has n bytes, into out; -1 on failure. */
static int pump(conn_t *c, uint32_t id, uint8_t *out, size_t n) {
    size_t got = 0;
    for (long spins = 0; got < n; spins++) {
        if (spins > 100000000L) return fail(c, "pump: nothing came");
        long r = ww_conn_read(c);
        if (r < 0) return -1;
        for (size_t off = 0; off + 12 <= (size_t)r;) {
            uint32_t sid, len;
            memcpy(&sid, c->ev.p + off, 4);
            memcpy(&len, c->ev.p + off + 8, 4);
            if (sid == id && len <= n - got) {
                memcpy(out + got, c->ev.p + off + 12, len);
                got += len;
            }
            off += 12 + len;
        }
    }
    return 0;
}

/* Two connected, handshaken connections in this thread (their sockets a connected pair,
 * non-blocking): `rounds` echoes of `size` bytes from a to b and back on a new stream, all
 * the framing, encryption and parsing done and checked, no event loop and no wake-ups.
 * Returns nanoseconds per round trip, or -1. */
double ww_bench_pingpong(conn_t *a, conn_t *b, size_t size, long rounds) {
    uint8_t msg[4096], back[4096];
    struct timespec t0, t1;
    if (size > sizeof msg) return -1;
    uint32_t id = ww_stream_open(a);
    if (!id) return -1;
    randombytes_buf(msg, size);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < rounds; i++) {
        msg[0] = (uint8_t)i;
        if (ww_stream_write(a, id, msg, size, 0) || ww_conn_flush(a)) return -1;
        if (pump(b, id, back, size)) return -1;
        if (ww_stream_write(b, id, back, size, 0) || ww_conn_flush(b)) return -1;
        if (pump(a, id, back, size) || memcmp(msg, back, size)) return -1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / rounds;
}
