/* Random and mutated input into src/ww/p2p/_native/conn.c's parsers, for a build with
 * -fsanitize=address,undefined: multistream-select and the Noise handshake (as responder
 * and as initiator, each with the lane flag on and off, over a socketpair whose other end
 * sends the bytes and closes), the handshake payload's protobuf, Noise transport frames,
 * Yamux frames (credit as parsed, or as the caller says it was taken; a third of them with
 * the out buffer near or over the marks where reading pauses, drained at random, and checked
 * against a twin that parses without; a third parsed a budget at a time, as ww_conn_read does,
 * against a twin that parses all at once).  Every case must end in a clean failure or a clean
 * parse; a sanitizer report or a crash is a bug.  First, the lane negotiation's and the
 * window's expected answers, reading paused and resumed, the SYN bucket, the peer's stream
 * ids (never one used before) and one read's budget are checked once.
 *
 *     gcc -g -O1 -fsanitize=address,undefined -I src/ww/p2p/_native -o fuzz \
 *         tests/cxx/native_p2p_fuzz.c -lsodium
 *     ./fuzz [CASES] [SEED]
 */
#include "conn.c" /* src/ww/p2p/_native, on the include path */

#include <sys/ioctl.h>

/* Every whole frame, no budget (what one ww_conn_read parses is bounded: budget_checks). */
static int yamux_parse(conn_t *c) { return yamux_parse_n(c, SIZE_MAX) < 0 ? -1 : 0; }
/* Decrypt every whole Noise message in c->in onto c->plain. */
static int noise_decrypt_all(conn_t *c) {
    size_t bytes = 0;
    return noise_decrypt(c, SIZE_MAX, &bytes, SIZE_MAX) < 0 ? -1 : 0;
}

#include "xorshift.h" /* rng, rnd() */

static void fill(uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)rnd();
}

/* A valid-looking start (multistream lines either side may send: the header, proposals,
 * answers), then mutations: what a random peer cannot easily reach. */
static size_t handshake_input(uint8_t *out, size_t cap) {
    static const char *const LINES[] = {MS_HEADER, NOISE, LANE, "na", YAMUX, "/tls/1.0.0", "x"};
    size_t n = 0;
    if (rnd() % 4) {
        n += ms_encode(MS_HEADER, out + n);
        for (int i = rnd() % 6; i > 0; i--)
            n += ms_encode(LINES[rnd() % (sizeof LINES / sizeof *LINES)], out + n);
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

static void one_handshake(int initiator, int lane) {
    int sv[2];
    uint8_t input[1024], seed[32], expect[32];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) abort();
    size_t n = handshake_input(input, sizeof input);
    if (send(sv[1], input, n, MSG_NOSIGNAL) != (ssize_t)n) abort();
    shutdown(sv[1], SHUT_WR);
    conn_t *c = ww_conn_new(sv[0], initiator);
    fill(seed, 32);
    fill(expect, 32);
    if (handshake_waiting(c, seed, rnd() % 2 ? expect : NULL, lane) == 0)
        abort(); /* no key: no success */
    ww_conn_free(c);
    close(sv[0]);
    close(sv[1]);
}

/* A payload whose identity is not Ed25519, for a listener that takes such keys for its
 * caller to check (other_keys): kept whole within the bounds, refused past them. */
static void one_other_payload(void) {
    uint8_t data[1200], key[1300], sig[1100], msg[2500], rs[32];
    conn_t c = {0};
    size_t datan = rnd() % sizeof data, sign = rnd() % sizeof sig;
    uint64_t type = rnd() % 5;
    fill(data, datan);
    fill(sig, sign);
    fill(rs, 32);
    key[0] = 0x08; /* Type, then Data */
    key[1] = (uint8_t)type;
    size_t keyn = 2 + pb_bytes(key + 2, 2, data, datan);
    c.other_keys = 1;
    size_t n = pb_bytes(msg, 1, key, keyn);
    n += pb_bytes(msg + n, 2, sig, sign);
    int ok = check_payload(&c, msg, n, rs, NULL) == 0;
    int want = (type == 0 || type == 2) && keyn <= OTHER_KEY_MAX && sign && sign <= OTHER_SIG_MAX;
    if (ok != want) abort();
    if (ok && (c.other_key_n != keyn || memcmp(c.other_key, key, keyn) ||
               c.other_sig_n != sign || memcmp(c.other_sig, sig, sign) ||
               memcmp(c.other_static, rs, 32)))
        abort();
    free(c.other_key);
    free(c.other_sig);
}

static void one_payload(void) {
    uint8_t msg[200], rs[32];
    conn_t c = {0};
    size_t n;
    c.other_keys = rnd() % 2; /* a listener taking other keys for its caller, or not */
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
    free(c.other_key);
    free(c.other_sig);
}

/* The same input parsed by b while its out buffer holds `prefill` bytes (reading pauses over
 * OUT_HIGH) and by twin (empty): b's buffer never grows past what it held or OUT_HIGH by more
 * than one answer, and as it drains (a random amount each time, as a socket would take it)
 * b parses on; in the end both saw the same events, answered as many frames and failed
 * alike. */
static void paused_parse(conn_t *b, conn_t *twin, size_t prefill) {
    int twin_rc = yamux_parse(twin);
    buf_reserve(&b->out, prefill);
    fill(b->out.p, prefill);
    b->out.len = prefill;
    int rc = 0;
    for (int turns = 0; turns < 10000; turns++) {
        size_t before = b->out.len;
        rc = yamux_parse(b);
        size_t bound = (before > OUT_HIGH ? before : OUT_HIGH) + 2 + 16 + YAMUX_HDR;
        if (b->out.len > bound) abort(); /* more than one answer past the mark */
        if (rc || !b->read_paused) break;
        buf_drop(&b->out, rnd() % 2 ? b->out.len : rnd() % (b->out.len + 1)); /* it drains */
    }
    if (b->read_paused && !rc) abort(); /* 10 000 drains, still paused */
    if ((rc != 0) != (twin_rc != 0) || b->tx_n != twin->tx_n || b->ev.len != twin->ev.len ||
        (b->ev.len && memcmp(b->ev.p, twin->ev.p, b->ev.len)) || b->plain.len != twin->plain.len)
        abort();
}

/* The same input parsed by b as ww_conn_read does (conn_parse: at most PARSE_BUDGET frames
 * and messages a call, called again while ww_conn_more says input is left) and by twin (all
 * decrypted, then all parsed): no call goes past the budget, and in the end both saw the same
 * events in the same order, answered alike and failed alike (twin fails at once on a message
 * that does not decrypt, b once it gets there). */
static void budget_parse(conn_t *b, conn_t *twin) {
    int twin_dec = noise_decrypt_all(twin), twin_rc = twin_dec ? -1 : yamux_parse(twin);
    int rc = 0, turns = 0;
    do {
        uint64_t rx = b->rx_n;
        long k = conn_parse(b);
        if (k < 0) { rc = -1; break; }
        if (k > (long)PARSE_BUDGET || b->rx_n - rx > PARSE_BUDGET) abort();
        if (++turns > 100000) abort();
    } while (ww_conn_more(b));
    if ((rc != 0) != (twin_rc != 0)) abort();
    if (twin_dec) return; /* (b parsed the frames before the bad message; twin none) */
    if (b->tx_n != twin->tx_n || b->ev.len != twin->ev.len ||
        (b->ev.len && memcmp(b->ev.p, twin->ev.p, b->ev.len)))
        abort();
    if (!rc && (b->plain.len != twin->plain.len || b->in.len != twin->in.len)) abort();
}

/* Yamux frames (valid headers mostly, random fields) in Noise frames, or raw junk. */
static void one_transport(void) {
    conn_t *a = ww_conn_new(-1, 1), *b = ww_conn_new(-1, 0);
    uint8_t key[32];
    b->app_credit = rnd() % 2;
    fill(key, 32);
    memcpy(a->tx_key, key, 32);
    memcpy(b->rx_key, key, 32);
    uint8_t frame[YAMUX_HDR + 600];
    int frames = rnd() % 8 ? 1 + rnd() % 20 : 1 + rnd() % 400; /* (past a budget, some) */
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
    if (rnd() % 3 == 0) { /* read while the out buffer is near or over its marks */
        conn_t *twin = ww_conn_new(-1, 0);
        twin->app_credit = b->app_credit;
        memcpy(twin->rx_key, key, 32);
        buf_put(&twin->in, a->out.p, a->out.len);
        if (!noise_decrypt_all(b) && !noise_decrypt_all(twin)) {
            size_t marks[] = {OUT_LOW, OUT_HIGH};
            size_t prefill = marks[rnd() % 2] + rnd() % 64 - 32;
            if (rnd() % 4 == 0) prefill = rnd() % (OUT_HIGH + 65536);
            paused_parse(b, twin, prefill);
        }
        ww_conn_free(twin);
    } else if (rnd() % 2) { /* a budget at a time, against a twin that parses at once */
        conn_t *twin = ww_conn_new(-1, 0);
        twin->app_credit = b->app_credit;
        memcpy(twin->rx_key, key, 32);
        buf_put(&twin->in, a->out.p, a->out.len);
        budget_parse(b, twin);
        ww_conn_free(twin);
    } else if (noise_decrypt_all(b) == 0 && yamux_parse(b) == 0)
        for (int i = rnd() % 4; i > 0; i--) /* the reader took some (any stream id) */
            ww_stream_credit(b, rnd() % 3 ? 2 * (rnd() % 4) : rnd(), rnd() % (1u << 19));
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

/* The handshake's first steps with bytes from `peer` (the socket's other end kept open: no
 * more bytes, no end of file): what c queued must be `want` (or wn bytes, want NULL). */
static void expect_answer(conn_t *c, int sv, const char *peer, size_t pn, const char *want,
                          size_t wn, int lane) {
    if (pn && send(sv, peer, pn, MSG_NOSIGNAL) != (ssize_t)pn) abort();
    if (ww_conn_handshake_step(c) != 0) abort();
    if (c->out.len != wn || (want && memcmp(c->out.p, want, wn)) || c->lane != lane) abort();
    c->out.len = 0;
}

#define M(s) s, sizeof s - 1
static void lane_checks(void) {
    static const char HDR[] = "\x13/multistream/1.0.0\n", PROPOSE[] = "\x0f/ww/lane/0.1.0\n";
    uint8_t seed[32] = {1};
    for (int listener_lane = 0; listener_lane < 2; listener_lane++) { /* a listener */
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) abort();
        conn_t *c = ww_conn_new(sv[0], 0);
        if (ww_conn_handshake_start(c, seed, NULL, listener_lane)) abort();
        if (listener_lane) /* the lane agreed: echoed */
            expect_answer(c, sv[1], M("\x13/multistream/1.0.0\n\x0f/ww/lane/0.1.0\n"),
                          M("\x13/multistream/1.0.0\n\x0f/ww/lane/0.1.0\n"), 1);
        else
            expect_answer(c, sv[1], M("\x13/multistream/1.0.0\n\x0f/ww/lane/0.1.0\n"),
                          M("\x13/multistream/1.0.0\n\x03na\n"), 0);
        if (!listener_lane) { /* then /noise, as a lane dialer falls back */
            expect_answer(c, sv[1], M("\x07/noise\n"), M("\x07/noise\n"), 0);
            if (c->hs->state != HS_NOISE_1) abort();
        }
        ww_conn_free(c);
        close(sv[0]);
        close(sv[1]);
    }
    for (int answer_lane = 0; answer_lane < 2; answer_lane++) { /* a lane dialer */
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) abort();
        conn_t *c = ww_conn_new(sv[0], 1);
        if (ww_conn_handshake_start(c, seed, NULL, 1)) abort();
        if (c->out.len != sizeof HDR - 1 + sizeof PROPOSE - 1) abort(); /* one write */
        c->out.len = 0;
        if (answer_lane) {
            expect_answer(c, sv[1], M("\x13/multistream/1.0.0\n\x0f/ww/lane/0.1.0\n"), NULL,
                          2 + 32, 1); /* Noise's first message: e */
            if (c->hs->state != HS_NOISE_2) abort();
        } else {
            expect_answer(c, sv[1], M("\x13/multistream/1.0.0\n\x03na\n"), M("\x07/noise\n"),
                          0);
            if (c->hs->state != HS_MS_NOISE) abort();
        }
        ww_conn_free(c);
        close(sv[0]);
        close(sv[1]);
    }
}

/* With app_credit: no credit until the reader takes half the window, and a peer that sends
 * past the window fails the connection. */
static void window_checks(void) {
    conn_t *a = ww_conn_new(-1, 1), *b = ww_conn_new(-1, 0);
    uint8_t frame[YAMUX_HDR + 65536] = {0};
    b->app_credit = 1;
    for (uint32_t sent = 0, i = 0; sent <= YAMUX_WINDOW; i++) {
        uint32_t n = 65536;
        frame[3] = i ? 0 : F_SYN;
        put32(frame + 4, 1);
        put32(frame + 8, n);
        noise_send(a, frame, YAMUX_HDR + n);
        buf_put(&b->in, a->out.p, a->out.len);
        a->out.len = 0;
        int rc = noise_decrypt_all(b) ? -1 : yamux_parse(b);
        sent += n;
        if ((rc != 0) != (sent > YAMUX_WINDOW)) abort(); /* fails past the window, not before */
        if (rc == 0) {
            size_t before = b->out.len; /* the ACK */
            if (ww_stream_credit(b, 1, 1000) != 0 || b->out.len != before) abort();
        }
    }
    if (strcmp(b->err, "yamux: peer overran the window")) abort();
    ww_conn_free(a);
    ww_conn_free(b);
    b = ww_conn_new(-1, 0);
    b->app_credit = 1;
    stream_t *s = add_stream(b, 1);
    s->recv_left = 0; /* the peer sent the whole window */
    if (ww_stream_credit(b, 1, YAMUX_WINDOW / 2 - 1) != 0) abort();
    if (ww_stream_credit(b, 1, YAMUX_WINDOW) != 1) abort(); /* counted up to what came */
    if (s->recv_left != YAMUX_WINDOW || s->recv_unacked) abort();
    ww_conn_free(b);
}

/* Pings by the thousand into a socket: ww_conn_read takes at most READ_BUDGET a call, reads
 * nothing while the out buffer is over OUT_HIGH, parses until it is over it (by at most one
 * answer) and, as the buffer drains under OUT_LOW, goes on, until every ping is answered
 * once.  And a stream's data goes into the out buffer only while it holds less than OUT_DATA;
 * flush sends the rest as the socket takes it. */
static void pause_checks(void) {
    enum { PINGS = 60000, ANSWER = 2 + 16 + YAMUX_HDR };
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) abort();
    int big = 8 << 20;
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    conn_t *a = ww_conn_new(-1, 1), *b = ww_conn_new(sv[0], 0);
    uint8_t frame[YAMUX_HDR] = {0, Y_PING, 0, F_SYN};
    for (uint32_t i = 0; i < PINGS; i++) {
        put32(frame + 8, i);
        noise_send(a, frame, sizeof frame);
    }
    size_t sent = 0; /* as much as the socket takes now; the rest as b reads */
    uint64_t answered = 0;
    buf_reserve(&b->out, OUT_HIGH + 1);
    b->out.len = OUT_HIGH + 1; /* over the mark: nothing is read */
    for (int turns = 0; answered < PINGS; turns++) {
        if (turns > 100000) abort();
        while (sent < a->out.len) {
            ssize_t w = send(sv[1], a->out.p + sent, a->out.len - sent, MSG_DONTWAIT);
            if (w <= 0) break;
            sent += (size_t)w;
        }
        int queued_before, queued_after, was_paused = read_paused(b);
        uint64_t tx_before = b->tx_n;
        if (ioctl(sv[0], FIONREAD, &queued_before)) abort();
        if (ww_conn_read(b) != 0) abort(); /* pings make no events */
        if (ioctl(sv[0], FIONREAD, &queued_after)) abort();
        if (was_paused && (queued_after != queued_before || b->tx_n != tx_before))
            abort(); /* paused: nothing read, nothing parsed */
        if (queued_before - queued_after > (int)READ_BUDGET) abort(); /* one call's reading */
        if (b->out.len > OUT_HIGH + ANSWER) abort();
        answered += b->tx_n - tx_before;
        if (read_paused(b)) b->out.len = rnd() % OUT_LOW; /* a flush that took most */
    }
    if (answered != PINGS) abort();
    ww_conn_free(a);
    ww_conn_free(b);
    close(sv[0]);
    close(sv[1]);
    /* the data bound: a big window, 1 MiB written, at most OUT_DATA and a frame framed */
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) abort();
    b = ww_conn_new(sv[0], 1);
    uint32_t id = ww_stream_open(b);
    stream_t *st = find(b, id);
    st->send_window = 4u << 20;
    static uint8_t data[1 << 20];
    fill(data, sizeof data);
    if (ww_stream_write(b, id, data, sizeof data, 0)) abort();
    if (b->out.len > OUT_DATA + 2 + NOISE_MAX || !ww_stream_unsent(b, id)) abort();
    size_t got = 0;
    static uint8_t sink[1 << 16];
    for (int turns = 0; ww_stream_unsent(b, id) || b->out.len; turns++) {
        if (turns > 100000 || ww_conn_flush(b) < 0) abort();
        if (b->out.len > OUT_DATA + 2 + NOISE_MAX) abort();
        ssize_t r;
        while ((r = recv(sv[1], sink, sizeof sink, MSG_DONTWAIT)) > 0) got += (size_t)r;
    }
    if (got < sizeof data) abort(); /* (and the framing: 30 bytes a frame) */
    /* a FIN waiting behind bytes the peer gives no window for: a reset drops them, and the
     * stream (the old reset was refused, -2, and they stayed until the connection ended) */
    id = ww_stream_open(b);
    find(b, id)->send_window = 0;
    if (ww_stream_write(b, id, data, sizeof data, F_FIN) || !find(b, id)->fin_pending) abort();
    if (ww_stream_unsent(b, id) != sizeof data) abort();
    if (ww_stream_write(b, id, NULL, 0, F_RST) || find(b, id) || ww_stream_unsent(b, id)) abort();
    /* a writer that does not wait for window: past BUF_LIMIT unsent its stream is reset
     * (-3), the connection and its other streams go on (it used to fail the connection) */
    uint32_t other = ww_stream_open(b);
    id = ww_stream_open(b);
    find(b, id)->send_window = 0;
    int rc = 0;
    for (size_t put = 0; put <= BUF_LIMIT && !rc; put += sizeof data)
        rc = ww_stream_write(b, id, data, sizeof data, 0);
    if (rc != -3 || find(b, id) || b->failed || !find(b, other)) abort();
    if (ww_stream_write(b, other, data, 16, 0)) abort();
    ww_conn_free(b);
    close(sv[0]);
    close(sv[1]);
}

/* A peer opening streams as fast as it can: at most SYN_BURST at once (and SYN_RATE a
 * second) reach the caller as events, the rest are reset here, none past max_inbound while
 * it is 0, and the connection fails once SYN_EXCESS past the rate. */
static void syn_checks(void) {
    conn_t *a = ww_conn_new(-1, 1), *b = ww_conn_new(-1, 0);
    uint8_t key[32], frame[YAMUX_HDR] = {0, Y_WINDOW, 0, F_SYN};
    fill(key, 32);
    memcpy(a->tx_key, key, 32);
    memcpy(b->rx_key, key, 32);
    uint64_t start = mono_ns();
    uint32_t events = 0, id = 1;
    int rc = 0;
    for (int round = 0; round < 100 && !rc; round++) {
        for (int i = 0; i < 100; i++, id += 2) {
            put32(frame + 4, id);
            noise_send(a, frame, YAMUX_HDR);
        }
        buf_put(&b->in, a->out.p, a->out.len);
        a->out.len = 0;
        b->ev.len = 0;
        b->out.len = 0; /* (sent) */
        rc = noise_decrypt_all(b) ? -1 : yamux_parse(b);
        events += (uint32_t)(b->ev.len / YAMUX_HDR);
    }
    double secs = (double)(mono_ns() - start) / 1e9;
    if (events > SYN_BURST + SYN_RATE * secs + 1) abort();
    if (!rc || strcmp(b->err, "yamux: peer opens streams too fast")) abort();
    ww_conn_free(b);
    b = ww_conn_new(-1, 0);
    memcpy(b->rx_key, key, 32);
    a->tx_n = 0;
    ww_conn_set_max_inbound(b, 0);
    put32(frame + 4, 1);
    noise_send(a, frame, YAMUX_HDR);
    buf_put(&b->in, a->out.p, a->out.len);
    if (noise_decrypt_all(b) || yamux_parse(b) || b->ev.len || b->syn_reset != 1) abort();
    ww_conn_free(a);
    ww_conn_free(b);
}

/* Frames from a (one Noise message each) into b, parsed (no budget): 0, or -1. */
static int feed(conn_t *a, conn_t *b, const uint8_t *frames, size_t n) {
    for (size_t off = 0; off + YAMUX_HDR <= n; off += YAMUX_HDR) noise_send(a, frames + off, YAMUX_HDR);
    buf_put(&b->in, a->out.p, a->out.len);
    a->out.len = 0;
    return noise_decrypt_all(b) ? -1 : yamux_parse(b);
}

static size_t hdr(uint8_t *p, uint8_t type, uint16_t flags, uint32_t id, uint32_t len) {
    yamux_header(p, type, flags, id, len);
    return YAMUX_HDR;
}

/* A pair: a sends, b (the listener: the peer's ids are odd) parses. */
static void pair_new(conn_t **a, conn_t **b) {
    uint8_t key[32];
    fill(key, 32);
    *a = ww_conn_new(-1, 1);
    *b = ww_conn_new(-1, 0);
    memcpy((*a)->tx_key, key, 32);
    memcpy((*b)->rx_key, key, 32);
}

/* The peer's stream ids: a SYN is taken for an id above the highest it opened, or a late one
 * within ID_WINDOW below it (SYNs of streams opened at once, out of order), each once; a SYN
 * for an id used before (its stream gone: reset, or closed both ways), one too far below, one
 * of the wrong parity or of an open stream fails the connection.  Our ids only go up. */
static void id_checks(void) {
    uint8_t f[16 * YAMUX_HDR];
    conn_t *a, *b;
    size_t n = 0;
    pair_new(&a, &b);
    n += hdr(f + n, Y_WINDOW, F_SYN, 1, 0);
    n += hdr(f + n, Y_WINDOW, F_SYN, 7, 0);
    n += hdr(f + n, Y_WINDOW, F_SYN, 3, 0); /* late: taken */
    n += hdr(f + n, Y_WINDOW, F_SYN, 5, 0);
    n += hdr(f + n, Y_WINDOW, F_RST, 3, 0); /* 3 gone */
    if (feed(a, b, f, n) || b->nstreams != 3 || b->ev.len != 5 * YAMUX_HDR) abort();
    n = hdr(f, Y_WINDOW, F_SYN, 3, 0); /* 3 again */
    if (feed(a, b, f, n) != -1 || strcmp(b->err, "yamux: SYN for a stream id used before")) abort();
    ww_conn_free(a);
    ww_conn_free(b);
    pair_new(&a, &b); /* closed both ways, then opened again */
    n = hdr(f, Y_WINDOW, F_SYN | F_FIN, 1, 0);
    if (feed(a, b, f, n) || ww_stream_write(b, 1, NULL, 0, F_FIN) || b->nstreams) abort();
    n = hdr(f, Y_DATA, F_SYN, 1, 0);
    if (feed(a, b, f, n) != -1 || strcmp(b->err, "yamux: SYN for a stream id used before")) abort();
    ww_conn_free(a);
    ww_conn_free(b);
    pair_new(&a, &b); /* the window's edge, and past it */
    uint32_t top = 1 + 2 * ID_WINDOW;
    n = hdr(f, Y_WINDOW, F_SYN, 1, 0);
    n += hdr(f + n, Y_WINDOW, F_SYN | F_RST, top, 0);
    n += hdr(f + n, Y_WINDOW, F_SYN | F_RST, top - 2 * (ID_WINDOW - 1), 0); /* just in it */
    if (feed(a, b, f, n)) abort();
    n = hdr(f, Y_WINDOW, F_SYN, top - 2 * ID_WINDOW, 0); /* = 1: past it, and used */
    if (feed(a, b, f, n) != -1) abort();
    ww_conn_free(b);
    b = ww_conn_new(-1, 0);
    memcpy(b->rx_key, a->tx_key, 32);
    a->tx_n = 0;
    n = hdr(f, Y_WINDOW, F_SYN, 1001, 0);
    n += hdr(f + n, Y_WINDOW, F_SYN, 999 - 2 * ID_WINDOW, 0); /* never used, but too far */
    if (feed(a, b, f, n) != -1 || b->nstreams != 1) abort();
    ww_conn_free(b);
    b = ww_conn_new(-1, 0);
    memcpy(b->rx_key, a->tx_key, 32);
    a->tx_n = 0;
    n = hdr(f, Y_WINDOW, F_SYN, UINT32_MAX, 0); /* the last id: nothing above it */
    n += hdr(f + n, Y_WINDOW, F_SYN, 2, 0);     /* our parity */
    if (feed(a, b, f, n) != -1 || strcmp(b->err, "yamux: bad SYN") || b->in_top != UINT32_MAX)
        abort();
    ww_conn_free(a);
    ww_conn_free(b);
    b = ww_conn_new(-1, 1); /* ours: only up, even past streams gone */
    uint32_t last = 0;
    for (int i = 0; i < 3000; i++) { /* (more than MAX_STREAMS) */
        uint32_t id = ww_stream_open(b);
        if (!id || id <= last || (id & 1) != 1) abort();
        last = id;
        if (ww_stream_write(b, id, NULL, 0, F_RST)) abort();
        b->out.len = 0;
    }
    b->next_id = UINT32_MAX - 1; /* (no id past the last) */
    if (ww_stream_open(b)) abort();
    ww_conn_free(b);
}

/* ww_conn_read's budget: each call parses at most PARSE_BUDGET frames and decrypts at most
 * PARSE_BUDGET messages (READ_BUDGET bytes of them, and one more message at most); while
 * input is left ww_conn_more says so, and calls go on until every ping is answered and the
 * data came whole and in order, with nothing more from the socket; a socket with bytes
 * waiting is read no further while READ_BUDGET waits undecrypted. */
static void budget_checks(void) {
    enum { PINGS = 5000, EMPTY = 10000 };
    conn_t *a, *b;
    uint8_t f[YAMUX_HDR + 64];
    pair_new(&a, &b);
    b->app_credit = 1; /* (no window updates: only the ACK and the pongs are sent) */
    noise_send(a, f, hdr(f, Y_WINDOW, F_SYN, 1, 0));
    uint8_t want[PINGS / 50 * 64];
    size_t wn = 0;
    for (uint32_t i = 0; i < PINGS; i++) {
        noise_send(a, f, hdr(f, Y_PING, F_SYN, 0, i));
        if (i % 50 == 49) {
            fill(f + YAMUX_HDR, 64);
            memcpy(want + wn, f + YAMUX_HDR, 64);
            wn += 64;
            noise_send(a, f, hdr(f, Y_DATA, 0, 1, 64) + 64);
        }
    }
    buf_put(&b->in, a->out.p, a->out.len);
    uint8_t got[sizeof want];
    size_t gn = 0;
    int calls = 0;
    do {
        b->ev.len = 0;
        uint64_t rx = b->rx_n;
        long k = conn_parse(b);
        if (k < 0 || k > (long)PARSE_BUDGET || b->rx_n - rx > PARSE_BUDGET) abort();
        for (size_t off = 0; off + 12 <= b->ev.len;) {
            uint32_t len;
            memcpy(&len, b->ev.p + off + 8, 4);
            if (gn + len > sizeof got) abort();
            memcpy(got + gn, b->ev.p + off + 12, len);
            gn += len;
            off += 12 + len;
        }
        if (++calls > 1000) abort();
        if (b->out.len > OUT_LOW) b->out.len = 0; /* (sent) */
    } while (ww_conn_more(b));
    if (b->tx_n != 1 + PINGS || gn != wn || memcmp(got, want, wn) || b->in.len || b->plain.len)
        abort();
    if (calls < (int)((PINGS + PINGS / 50) / PARSE_BUDGET) || b->parse_most != PARSE_BUDGET)
        abort();
    ww_conn_free(a);
    ww_conn_free(b);
    pair_new(&a, &b); /* empty Noise messages: no frame, but each one decrypted */
    for (int i = 0; i < EMPTY; i++) noise_send(a, NULL, 0);
    buf_put(&b->in, a->out.p, a->out.len);
    calls = 0;
    do {
        uint64_t rx = b->rx_n;
        if (conn_parse(b) != 0 || b->rx_n - rx > PARSE_BUDGET) abort();
        if (++calls > 1000) abort();
    } while (ww_conn_more(b));
    if (b->rx_n != EMPTY || b->in.len) abort();
    ww_conn_free(a);
    ww_conn_free(b);
    pair_new(&a, &b); /* a whole window in one frame: its messages over calls, one event */
    static uint8_t big[YAMUX_HDR + YAMUX_WINDOW];
    hdr(big, Y_DATA, F_SYN, 1, YAMUX_WINDOW);
    fill(big + YAMUX_HDR, YAMUX_WINDOW);
    noise_send(a, big, sizeof big);
    buf_put(&b->in, a->out.p, a->out.len);
    b->ev.len = 0;
    calls = 0;
    do {
        size_t in = b->in.len;
        if (conn_parse(b) < 0) abort();
        if (in - b->in.len > READ_BUDGET + 2 + NOISE_MAX) abort();
        if (++calls > 10) abort();
    } while (ww_conn_more(b));
    if (calls < 2 || b->ev.len != 12 + YAMUX_WINDOW || memcmp(b->ev.p + 12, big + YAMUX_HDR, YAMUX_WINDOW))
        abort();
    ww_conn_free(b);
    /* over a socket: 1 MiB of pings waiting, ww_conn_read reads no more while READ_BUDGET
     * waits undecrypted, and every ping is answered, call after call */
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) abort();
    int size = 4 << 20;
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    b = ww_conn_new(sv[0], 0);
    memcpy(b->rx_key, a->tx_key, 32);
    a->tx_n = 0;
    a->out.len = 0;
    uint32_t pings = (1u << 20) / (2 + 16 + YAMUX_HDR);
    for (uint32_t i = 0; i < pings; i++) noise_send(a, f, hdr(f, Y_PING, F_SYN, 0, i));
    size_t sent = 0;
    for (int turns = 0; b->tx_n < pings; turns++) {
        if (turns > 100000) abort();
        while (sent < a->out.len) {
            ssize_t w = send(sv[1], a->out.p + sent, a->out.len - sent, MSG_DONTWAIT);
            if (w <= 0) break;
            sent += (size_t)w;
        }
        if (ww_conn_read(b) != 0 || b->in.len > READ_BUDGET) abort();
        b->out.len = 0; /* (sent) */
    }
    if (b->tx_n != pings || b->parse_cut == 0) abort();
    ww_conn_free(a);
    ww_conn_free(b);
    close(sv[0]);
    close(sv[1]);
}

int main(int argc, char **argv) {
    long cases = argc > 1 ? atol(argv[1]) : 20000;
    rng = argc > 2 ? (uint32_t)atol(argv[2]) : 12345u;
    if (!rng) rng = 1;
    if (sodium_init() < 0) return 2;
    lane_checks();
    window_checks();
    pause_checks();
    syn_checks();
    id_checks();
    budget_checks();
    for (long i = 0; i < cases; i++) {
        switch (i % 4) {
        case 0: one_handshake(0, (i / 4) % 2); break;
        case 1: one_handshake(1, (i / 4) % 2); break;
        case 2: (i / 4) % 2 ? one_payload() : one_other_payload(); break;
        default: one_transport(); break;
        }
    }
    printf("%ld cases, no crash\n", cases);
    return 0;
}
