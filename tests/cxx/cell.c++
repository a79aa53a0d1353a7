// A cell written in C++, for tests/cxx/test_cxx_cell.py: the protocol as docs/protocol.md
// describes it, with nothing but Cap'n Proto's C++ library and libsodium.
//
//   cell anonymous          log in without an identity; print `granted`; println on the console
//   cell signed             log in with the key the operator handed over (Host.identity)
//   cell fd NAME            print the bytes of the fd the operator named NAME (--fd NAME=N)
//   cell add NAME PIECE N   add the bytes of fd NAME to IPFS in PIECE-byte writes, N in flight,
//                           print the CID, cat it back, print whether it matches
//   cell deny               try to add on a read-only IPFS: print the error, exit 65
//
// Any other failure: the exception's description on stderr, exit 1.

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <sodium.h>
#include <unistd.h>

#include <cctype>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <iostream>
#include <string>

#include "cell.capnp.h"
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

int run(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "anonymous";
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
  std::cerr << "cell: usage: cell anonymous|signed|fd NAME|add NAME PIECE N|deny\n";
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
