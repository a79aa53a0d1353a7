// A cell written in C++, for tests/cxx/test_cxx_cell.py and benchmarks/p2p.py: the protocol as
// docs/protocol.md describes it, with nothing but Cap'n Proto's C++ library and libsodium.
//
//   cell anonymous          log in without an identity; print `granted`; println on the console
//   cell signed             log in with the key the operator handed over (Host.identity)
//   cell fd NAME            print the bytes of the fd the operator named NAME (--fd NAME=N)
//   cell add NAME PIECE N   add the bytes of fd NAME to IPFS in PIECE-byte writes, N in flight,
//                           print the CID, cat it back, print whether it matches
//   cell deny               try to add on a read-only IPFS: print the error, exit 65
//   cell export             P2P.export a `Service` (echo ARGS...: the ARGS joined by spaces;
//                           any other method fails), print the host's first address
//                           (P2P.id), serve until stdin ends
//   cell call ADDR N INFLIGHT
//                           P2P.dial ADDR, cast to `Service`; check `echo hello from C++`,
//                           50 warm-up calls, N sequential `echo` calls (no ARGS: answer "")
//                           timed one by one, N with INFLIGHT in flight; print one JSON
//                           line: "echo" (that answer), "answers" (right answers counted),
//                           median_us, p10_us, p99_us, sequential_per_s, pipelined_per_s
//                           (benchmarks/p2p.py's columns).
//                           A wrong answer: exit 1
//
// The p2p modes need `ww run --with-p2p` (without it: exit 65).  Bad arguments: usage on
// stderr, exit 2.  Any other failure: the exception's description on stderr, exit 1.

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/thread.h>
#include <sodium.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <iostream>
#include <string>
#include <vector>

#include "cell.capnp.h"
#include "echo_measure.h"
#include "ipfs.capnp.h"

namespace {

// The identity file, and Host.identity: libp2p's PrivateKey protobuf,
// 08 01 (Type = Ed25519) 12 40 (Data, 64 bytes) seed(32) public key(32).
const kj::byte KEY_PREFIX[] = {0x08, 0x01, 0x12, 0x40};
// The public key protobuf a Signer answers with: 08 01 12 20 then the 32 key bytes.
const kj::byte PUBLIC_PREFIX[] = {0x08, 0x01, 0x12, 0x20};
const char LOGIN_CONTEXT[] = "ww-login-v1";  // then one zero byte, then the challenge

class Signer final: public ww::cell::Signer::Server {
public:
  explicit Signer(const kj::byte* seed) { crypto_sign_seed_keypair(pk, sk, seed); }

protected:
  kj::Promise<void> sign(SignContext context) override {
    auto challenge = context.getParams().getChallenge();
    std::string message(LOGIN_CONTEXT, sizeof(LOGIN_CONTEXT));  // includes the zero byte
    message.append(reinterpret_cast<const char*>(challenge.begin()), challenge.size());
    kj::byte signature[crypto_sign_BYTES];
    crypto_sign_detached(signature, nullptr,
                         reinterpret_cast<const kj::byte*>(message.data()), message.size(), sk);
    kj::byte publicKey[sizeof(PUBLIC_PREFIX) + crypto_sign_PUBLICKEYBYTES];
    memcpy(publicKey, PUBLIC_PREFIX, sizeof(PUBLIC_PREFIX));
    memcpy(publicKey + sizeof(PUBLIC_PREFIX), pk, sizeof(pk));
    auto results = context.getResults();
    results.setPublicKey(kj::arrayPtr(publicKey, sizeof(publicKey)));
    results.setSignature(kj::arrayPtr(signature, sizeof(signature)));
    return kj::READY_NOW;
  }

private:
  kj::byte pk[crypto_sign_PUBLICKEYBYTES];
  kj::byte sk[crypto_sign_SECRETKEYBYTES];  // libsodium's form: seed || public key
};

std::string readFd(const char* name) {
  std::string variable = "WW_FD_";
  for (const char* c = name; *c; ++c) variable += static_cast<char>(toupper(*c));
  const char* number = getenv(variable.c_str());
  if (number == nullptr) {
    std::cerr << "cell: no fd named " << name << "\n";
    exit(65);
  }
  int fd = atoi(number);
  std::string data;
  char buffer[65536];
  ssize_t n;
  while ((n = read(fd, buffer, sizeof(buffer))) > 0) data.append(buffer, n);
  return data;
}

void println(ww::cell::Session::Reader session, kj::StringPtr line, kj::WaitScope& waitScope) {
  auto request = session.getConsole().printlnRequest();
  request.setLine(line);
  request.send().wait(waitScope);
}


// `Service` as `cell export` serves it: echo, or a one-line failure.
class Echo final: public ww::cell::Service::Server {
protected:
  kj::Promise<void> call(CallContext context) override {
    auto params = context.getParams();
    auto method = params.getMethod();
    if (method != "echo") {
      return KJ_EXCEPTION(FAILED, kj::str("unknown method '", method, "' (try echo)"));
    }
    auto args = params.getArgs();
    std::string joined;
    for (unsigned i = 0; i < args.size(); ++i) {
      if (i > 0) joined += ' ';
      joined += args[i].cStr();
    }
    context.getResults().setResult(joined);
    return kj::READY_NOW;
  }
};

// Resolves when stdin reaches its end.  A thread reads it, so that stdin may be anything,
// a pipe, a terminal, a file or /dev/null (epoll refuses the last two).
kj::Promise<void> stdinEnds() {
  auto eof = kj::newPromiseAndCrossThreadFulfiller<void>();
  kj::Thread([fulfiller = kj::mv(eof.fulfiller)]() mutable {
    char buffer[4096];
    for (;;) {
      ssize_t n = read(0, buffer, sizeof(buffer));
      if (n > 0 || (n < 0 && errno == EINTR)) continue;
      break;
    }
    fulfiller->fulfill();
  }).detach();  // it ends at the end of stdin, or with the process
  return kj::mv(eof.promise);
}

int serve(ww::cell::P2P::Client p2p, kj::WaitScope& waitScope) {
  auto request = p2p.exportRequest();
  request.setService(kj::heap<Echo>());
  request.send().wait(waitScope);
  auto id = p2p.idRequest().send().wait(waitScope);
  if (id.getAddrs().size() == 0) {
    std::cerr << "cell: the host listens nowhere (ww run --listen)\n";
    return 65;
  }
  std::cout << id.getAddrs()[0].cStr() << std::endl;
  stdinEnds().wait(waitScope);  // the export is served meanwhile
  return 0;
}

int measure(ww::cell::P2P::Client p2p, const char* addr, size_t calls, size_t inFlight,
            kj::WaitScope& waitScope) {
  auto dial = p2p.dialRequest();
  dial.setAddr(addr);
  auto dialed = dial.send().wait(waitScope);  // owns the capability: keep it
  auto service = dialed.getService().castAs<ww::cell::Service>();
  return echo_measure::measure(service, calls, inFlight, waitScope, "cell");
}

int run(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "anonymous";
  size_t calls = 0, inFlight = 0;
  if (mode == "call" && (argc != 5 || !(calls = echo_measure::count(argv[3])) ||
                          !(inFlight = echo_measure::count(argv[4])))) {
    std::cerr << "cell: usage: cell call ADDR N INFLIGHT (N, INFLIGHT: whole numbers from 1)\n";
    return 2;
  }
  auto io = kj::setupAsyncIo();
  auto& waitScope = io.waitScope;
  auto stream = io.lowLevelProvider->wrapSocketFd(3);
  capnp::TwoPartyClient client(*stream);
  auto host = client.bootstrap().castAs<ww::cell::Host>();

  auto login = host.loginRequest();
  if (mode == "signed") {
    auto identity = host.identityRequest().send().wait(waitScope);  // owns the key bytes
    auto key = identity.getKey();
    if (key.size() != sizeof(KEY_PREFIX) + 64 ||
        memcmp(key.begin(), KEY_PREFIX, sizeof(KEY_PREFIX)) != 0) {
      std::cerr << "cell: the operator handed over no Ed25519 key\n";
      return 64;
    }
    login.setAccount(kj::heap<Signer>(key.begin() + sizeof(KEY_PREFIX)));
  }
  auto response = login.send().wait(waitScope);  // owns the session: keep it
  auto session = response.getSession();

  if (mode == "anonymous" || mode == "signed") {
    for (auto name: session.getGranted()) std::cout << name.cStr() << "\n";
    std::cout.flush();
    if (!session.hasConsole()) return 65;
    println(session, kj::str("hello from C++, ", mode.c_str()), waitScope);
    return 0;
  }
  if (mode == "export" || mode == "call") {
    if (!session.hasP2p()) {
      std::cerr << "cell: p2p not granted (ww run --with-p2p)\n";
      return 65;
    }
    if (mode == "export") return serve(session.getP2p(), waitScope);
    return measure(session.getP2p(), argv[2], calls, inFlight, waitScope);
  }
  if (mode == "fd" && argc == 3) {
    std::cout << readFd(argv[2]);
    return 0;
  }
  if (!session.hasIpfs()) return 65;
  auto ipfs = session.getIpfs();
  if (mode == "add" && argc == 5) {
    std::string data = readFd(argv[2]);
    size_t piece = std::stoul(argv[3]), inFlight = std::stoul(argv[4]), most = 0;
    auto add = ipfs.addRequest().send();
    auto writer = add.getWriter();  // pipelined: the writes go out before add returns
    std::deque<kj::Promise<void>> pending;
    for (size_t offset = 0; offset < data.size(); offset += piece) {
      auto write = writer.writeRequest();
      size_t n = std::min(piece, data.size() - offset);
      write.setData(kj::arrayPtr(reinterpret_cast<const kj::byte*>(data.data()) + offset, n));
      pending.push_back(write.send());  // a stream method: a Promise<void>
      most = std::max(most, pending.size());
      if (pending.size() >= inFlight) {
        pending.front().wait(waitScope);
        pending.pop_front();
      }
    }
    while (!pending.empty()) {
      pending.front().wait(waitScope);
      pending.pop_front();
    }
    auto done = writer.doneRequest().send().wait(waitScope);
    std::string cid = done.getCid().cStr();
    std::cout << cid << "\n" << "in flight " << most << "\n";

    auto cat = ipfs.catRequest();
    cat.setPath(kj::str("/ipfs/", cid.c_str()));
    cat.setLength(-1);
    auto reader = cat.send().getReader();
    std::string back;
    for (;;) {
      auto read = reader.readRequest();
      read.setCount(1 << 20);
      auto response = read.send().wait(waitScope);
      auto got = response.getData();
      if (got.size() == 0) break;
      back.append(reinterpret_cast<const char*>(got.begin()), got.size());
    }
    std::cout << "cat " << back.size() << (back == data ? " same" : " different") << "\n";
    return 0;
  }
  if (mode == "deny") {
    try {
      auto add = ipfs.addRequest().send();
      auto write = add.getWriter().writeRequest();
      write.setData(kj::arrayPtr(reinterpret_cast<const kj::byte*>("x"), 1));
      write.send().wait(waitScope);  // a stream call: its error may come with the next call
      add.getWriter().doneRequest().send().wait(waitScope);
      std::cout << "allowed\n";
      return 0;
    } catch (const kj::Exception& e) {
      std::cerr << e.getDescription().cStr() << "\n";
      return 65;  // capability access denied
    }
  }
  std::cerr << "cell: usage: cell anonymous|signed|fd NAME|add NAME PIECE N|deny|export|"
               "call ADDR N INFLIGHT\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (sodium_init() < 0) return 1;
  try {
    return run(argc, argv);
  } catch (const kj::Exception& e) {
    std::cerr << "cell: " << e.getDescription().cStr() << "\n";
    return 1;
  }
}
