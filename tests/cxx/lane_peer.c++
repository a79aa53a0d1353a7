// A remote peer with no Python in it, for benchmarks/p2p.py ("C++ peer -> ..." rows) and
// tests/cxx/test_cxx_cell.py: the lane's own C libp2p connection (src/ww/p2p/_native/conn.c:
// multistream-select, Noise XX, Yamux), Cap'n Proto's C++ RPC on one `/ww/0.1.0` stream of it,
// the measurement of `cell call` (echo_measure.h).  What a call costs then is host B's and its
// cell's, with next to nothing of the caller's.
//
//   lane_peer [--noise] ADDR N INFLIGHT
//       ADDR: /ip4/127.x.x.x/tcp/PORT/p2p/PEERID (the peer id is checked in the handshake);
//       prints echo_measure.h's JSON line.  The connection proposes `/ww/lane/0.1.0` first, as
//       a ww dialer does (the host's lane takes it); with --noise it proposes `/noise` alone,
//       as any other libp2p peer does (the host's py-libp2p node takes it): the same Noise
//       and Yamux bytes either way.
//
// Bad arguments: usage on stderr, exit 2.  Any other failure: one line on stderr, exit 1.
// Loopback only: an address that is not 127.0.0.0/8 is refused (exit 2).

#include <arpa/inet.h>
#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/async-unix.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sodium.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "cell.capnp.h"
#include "echo_measure.h"

extern "C" {  // src/ww/p2p/_native/conn.c, compiled apart as C
typedef struct ww_conn ww_conn;
ww_conn* ww_conn_new(int fd, int initiator);
const char* ww_conn_error(ww_conn* c);
int ww_conn_handshake_start(ww_conn* c, const uint8_t id_seed[32], const uint8_t* expect,
                            int lane);
int ww_conn_handshake_step(ww_conn* c);
long ww_conn_read(ww_conn* c);
int ww_conn_more(ww_conn* c);
int ww_conn_read_paused(ww_conn* c);
const uint8_t* ww_conn_events(ww_conn* c);
long ww_conn_flush(ww_conn* c);
uint32_t ww_stream_open(ww_conn* c);
int ww_stream_write(ww_conn* c, uint32_t id, const uint8_t* data, size_t n, int flags);
}

namespace {

const uint16_t EV_DATA = 0, F_FIN = 4, F_RST = 8;  // conn.c's event kinds and Yamux flags
const int HANDSHAKE_WAIT_MS = 10000;

[[noreturn]] void die(const std::string& why) {
  std::cerr << "lane_peer: " << why << "\n";
  exit(1);
}

// The Ed25519 key a libp2p peer id (base58btc of the identity multihash 00 24 of the key's
// protobuf 08 01 12 20 KEY) stands for; false if it is no such id.
bool peerKey(const std::string& id, uint8_t key[32]) {
  static const char ALPHABET[] = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
  std::vector<uint8_t> n;  // big-endian
  for (char ch: id) {
    const char* at = strchr(ALPHABET, ch);
    if (ch == '\0' || at == nullptr) return false;
    unsigned carry = static_cast<unsigned>(at - ALPHABET);
    for (auto b = n.rbegin(); b != n.rend(); ++b) {
      carry += 58u * *b;
      *b = carry & 0xff;
      carry >>= 8;
    }
    for (; carry; carry >>= 8) n.insert(n.begin(), carry & 0xff);
  }
  // a leading '1' is a zero byte: the identity multihash starts 00
  for (size_t i = 0; i < id.size() && id[i] == '1'; ++i) n.insert(n.begin(), 0);
  static const uint8_t PREFIX[] = {0x00, 0x24, 0x08, 0x01, 0x12, 0x20};
  if (n.size() != sizeof(PREFIX) + 32 || memcmp(n.data(), PREFIX, sizeof(PREFIX)) != 0)
    return false;
  memcpy(key, n.data() + sizeof(PREFIX), 32);
  return true;
}

// One `/ww/0.1.0` stream of the connection as KJ's byte stream.  The caller is this process's
// one KJ loop; the socket is watched edge-triggered (KJ's FdObserver), so before waiting a
// poll() with no timeout checks that nothing is left to read (conn.c reads at most its
// READ_BUDGET per call).  Writes are framed at once and sent as far as the socket takes them;
// the rest leaves as it becomes writable.  (What is written is not bounded here: this peer
// keeps at most INFLIGHT small calls in flight.)
class LaneStream final: public kj::AsyncIoStream, private kj::TaskSet::ErrorHandler {
public:
  LaneStream(ww_conn* conn, int fd, uint32_t sid, kj::UnixEventPort& port)
      : conn(conn), fd(fd), sid(sid),
        observer(port, fd, kj::UnixEventPort::FdObserver::OBSERVE_READ_WRITE), tasks(*this) {}

  kj::Promise<size_t> tryRead(void* buffer, size_t minBytes, size_t maxBytes) override {
    return readFrom(static_cast<kj::byte*>(buffer), minBytes, maxBytes, 0);
  }

  kj::Promise<void> write(const void* buffer, size_t size) override {
    put(static_cast<const uint8_t*>(buffer), size, 0);
    flush();
    return kj::READY_NOW;
  }

  kj::Promise<void> write(kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces) override {
    if (pieces.size() == 1) return write(pieces[0].begin(), pieces[0].size());
    joined.clear();  // one message, one Yamux frame (up to its size)
    for (auto& piece: pieces) joined.insert(joined.end(), piece.begin(), piece.end());
    return write(joined.data(), joined.size());
  }

  kj::Promise<void> whenWriteDisconnected() override { return kj::NEVER_DONE; }

  void shutdownWrite() override {
    put(nullptr, 0, F_FIN);
    flush();
  }

private:
  ww_conn* conn;
  int fd;
  uint32_t sid;
  kj::UnixEventPort::FdObserver observer;
  kj::TaskSet tasks;
  std::vector<uint8_t> inbox, joined;
  size_t taken = 0;  // of inbox
  bool eof = false, flushing = false;

  void taskFailed(kj::Exception&& e) override { die(e.getDescription().cStr()); }

  void put(const uint8_t* data, size_t n, int flags) {
    if (ww_stream_write(conn, sid, data, n, flags) != 0)
      die(std::string("write: ") + ww_conn_error(conn));
  }

  void flush() {
    long left = ww_conn_flush(conn);
    if (left < 0) die(std::string("send: ") + ww_conn_error(conn));
    if (left > 0 && !flushing) {
      flushing = true;
      tasks.add(observer.whenBecomesWritable().then([this]() {
        flushing = false;
        flush();
      }));
    }
  }

  // conn.c's events for this stream into the inbox: a FIN or a reset ends it
  void pump() {
    long n = ww_conn_read(conn);
    if (n == -1) die(std::string("read: ") + ww_conn_error(conn));
    if (n == -2) {
      eof = true;
      return;
    }
    const uint8_t* ev = ww_conn_events(conn);
    for (long at = 0; at + 12 <= n;) {
      uint32_t id, length;
      uint16_t flags, kind;
      memcpy(&id, ev + at, 4);
      memcpy(&flags, ev + at + 4, 2);
      memcpy(&kind, ev + at + 6, 2);
      memcpy(&length, ev + at + 8, 4);
      if (id == sid && kind == EV_DATA) {
        inbox.insert(inbox.end(), ev + at + 12, ev + at + 12 + length);
        if (flags & (F_FIN | F_RST)) eof = true;
      }
      at += 12 + length;
    }
    flush();  // window updates, ping answers, data let go by the peer's window
  }

  kj::Promise<size_t> readFrom(kj::byte* buffer, size_t minBytes, size_t maxBytes, size_t got) {
    for (;;) {
      size_t n = std::min(maxBytes - got, inbox.size() - taken);
      memcpy(buffer + got, inbox.data() + taken, n);
      taken += n;
      got += n;
      if (taken == inbox.size()) {
        inbox.clear();
        taken = 0;
      }
      if (got >= minBytes || eof) return got;
      if (ww_conn_read_paused(conn)) break;
      pump();
      if (inbox.size() > taken || eof || ww_conn_more(conn)) continue;
      struct pollfd p = {fd, POLLIN, 0};
      if (poll(&p, 1, 0) > 0) continue;
      break;
    }
    auto more = ww_conn_read_paused(conn) ? observer.whenBecomesWritable().then([this]() {
      flush();
    }) : observer.whenBecomesReadable();
    return more.then([this, buffer, minBytes, maxBytes, got]() {
      return readFrom(buffer, minBytes, maxBytes, got);
    });
  }
};

// The connection's handshake, waiting on the socket between steps.
void handshake(ww_conn* conn, int fd, const uint8_t key[32], int lane) {
  uint8_t seed[32];
  randombytes_buf(seed, sizeof(seed));
  if (ww_conn_handshake_start(conn, seed, key, lane) != 0) die(ww_conn_error(conn));
  for (int done = 0;;) {
    if (!done && (done = ww_conn_handshake_step(conn)) < 0) die(ww_conn_error(conn));
    long left = ww_conn_flush(conn);
    if (left < 0) die(ww_conn_error(conn));
    if (done && !left) return;
    struct pollfd p = {fd, static_cast<short>((done ? 0 : POLLIN) | (left ? POLLOUT : 0)), 0};
    int k = poll(&p, 1, HANDSHAKE_WAIT_MS);
    if (k == 0) die("handshake: the peer went silent");
    if (k < 0 && errno != EINTR) die("poll failed during the handshake");
  }
}

std::string msLine(const std::string& text) {  // multistream-select: length, text, newline
  return std::string(1, static_cast<char>(text.size() + 1)) + text + "\n";
}

// The next multistream-select line the peer sent on the stream (short lines only).
std::string readLine(kj::AsyncIoStream& stream, kj::WaitScope& waitScope) {
  uint8_t length = 0;
  stream.read(&length, 1).wait(waitScope);
  if (length == 0 || length > 127) die("multistream: a bad length");
  std::string line(length, '\0');
  stream.read(&line[0], length).wait(waitScope);
  return line;
}

int run(int argc, char** argv) {
  int lane = 1;
  if (argc > 1 && strcmp(argv[1], "--noise") == 0) {
    lane = 0;
    --argc;
    ++argv;
  }
  size_t calls = 0, inFlight = 0;
  char ip[16] = {0};
  unsigned port = 0;
  char id[80] = {0};
  int used = 0;
  struct in_addr address {};
  if (argc != 4 || !(calls = echo_measure::count(argv[2])) ||
      !(inFlight = echo_measure::count(argv[3])) ||
      sscanf(argv[1], "/ip4/%15[0-9.]/tcp/%u/p2p/%79[1-9A-HJ-NP-Za-km-z]%n", ip, &port, id,
             &used) != 3 || argv[1][used] != '\0' || port == 0 || port > 65535 ||
      inet_pton(AF_INET, ip, &address) != 1 || (ntohl(address.s_addr) >> 24) != 127) {
    std::cerr << "lane_peer: usage: lane_peer [--noise] /ip4/127.x.x.x/tcp/PORT/p2p/PEERID N INFLIGHT\n";
    return 2;
  }
  uint8_t key[32];
  if (!peerKey(id, key)) {
    std::cerr << "lane_peer: not an Ed25519 peer id: " << id << "\n";
    return 2;
  }
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in to {};
  to.sin_family = AF_INET;
  to.sin_port = htons(static_cast<uint16_t>(port));
  to.sin_addr = address;
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof(to)) != 0)
    die(std::string("connect: ") + strerror(errno));
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  ww_conn* conn = ww_conn_new(fd, 1);
  if (conn == nullptr) die("out of memory");
  handshake(conn, fd, key, lane);

  auto io = kj::setupAsyncIo();
  uint32_t sid = ww_stream_open(conn);
  if (sid == 0) die(std::string("stream: ") + ww_conn_error(conn));
  LaneStream stream(conn, fd, sid, io.unixEventPort);
  std::string hello = msLine("/multistream/1.0.0") + msLine("/ww/0.1.0");
  stream.write(hello.data(), hello.size()).wait(io.waitScope);
  if (readLine(stream, io.waitScope) != "/multistream/1.0.0\n" ||
      readLine(stream, io.waitScope) != "/ww/0.1.0\n")
    die("the peer does not speak /ww/0.1.0");

  capnp::TwoPartyClient client(stream);
  auto gateway = client.bootstrap().castAs<ww::cell::Gateway>();
  auto exported = gateway.serviceRequest().send();
  auto service = exported.getService().castAs<ww::cell::Service>();  // pipelined
  return echo_measure::measure(service, calls, inFlight, io.waitScope, "lane_peer");
}

}  // namespace

int main(int argc, char** argv) {
  if (sodium_init() < 0) return 1;
  try {
    return run(argc, argv);
  } catch (const kj::Exception& e) {
    std::cerr << "lane_peer: " << e.getDescription().cStr() << "\n";
    return 1;
  }
}
