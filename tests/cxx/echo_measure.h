// The measurement of `cell call` (tests/cxx/cell.c++) and of tests/cxx/lane_peer.c++, on a
// `Service` capability however it was reached: `echo hello from C++` checked, 50 warm-up
// calls, N sequential `echo` calls (no ARGS: answer "") timed one by one, N with INFLIGHT in
// flight; one JSON line on stdout: "echo" (that answer), "answers" (right answers counted),
// median_us, p10_us, p99_us, sequential_per_s, pipelined_per_s (benchmarks/p2p.py's columns).
// 0, or 1 after a wrong answer (said on stderr, after `who`: the program's name).
#pragma once

#include <capnp/capability.h>
#include <kj/async.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "cell.capnp.h"

namespace echo_measure {

// What the answers to `echo` were: "" (right) or anything else (wrong).
struct Answers {
  size_t right = 0;
  size_t wrong = 0;
};

// One `Service.call("echo", [])`, its answer counted in `answers`.
inline kj::Promise<void> echoOnce(ww::cell::Service::Client& service, Answers& answers) {
  auto request = service.callRequest();
  request.setMethod("echo");
  request.initArgs(0);
  return request.send().then([&answers](capnp::Response<ww::cell::Service::CallResults>&& r) {
    ++(r.getResult().size() == 0 ? answers.right : answers.wrong);
  });
}

// Calls one after the other while `left` lasts: INFLIGHT of these keep INFLIGHT in flight.
inline kj::Promise<void> callsInTurn(ww::cell::Service::Client& service, size_t& left,
                                     Answers& answers) {
  if (left == 0) return kj::READY_NOW;
  --left;
  return echoOnce(service, answers).then([&service, &left, &answers]() {
    return callsInTurn(service, left, answers);
  });
}

inline std::string jsonText(kj::StringPtr text) {
  std::string out = "\"";
  for (char c: text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char escaped[8];
      snprintf(escaped, sizeof(escaped), "\\u%04x", c);
      out += escaped;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

inline int measure(ww::cell::Service::Client service, size_t calls, size_t inFlight,
                   kj::WaitScope& waitScope, const char* who) {
  using Clock = std::chrono::steady_clock;
  auto check = service.callRequest();
  check.setMethod("echo");
  auto args = check.initArgs(3);
  args.set(0, "hello");
  args.set(1, "from");
  args.set(2, "C++");
  auto checked = check.send().wait(waitScope);
  std::string echo = jsonText(checked.getResult());
  Answers answers;
  ++(checked.getResult() == "hello from C++" ? answers.right : answers.wrong);

  for (int i = 0; i < 50; ++i) echoOnce(service, answers).wait(waitScope);  // warm up
  std::vector<double> times;  // µs
  times.reserve(calls);
  for (size_t i = 0; i < calls; ++i) {
    auto started = Clock::now();
    echoOnce(service, answers).wait(waitScope);
    times.push_back(std::chrono::duration<double, std::micro>(Clock::now() - started).count());
  }
  auto started = Clock::now();
  size_t left = calls;
  auto chains = kj::heapArrayBuilder<kj::Promise<void>>(inFlight);
  for (size_t i = 0; i < inFlight; ++i) chains.add(callsInTurn(service, left, answers));
  kj::joinPromises(chains.finish()).wait(waitScope);
  double pipelined = std::chrono::duration<double>(Clock::now() - started).count();
  if (answers.wrong != 0) {
    std::cerr << who << ": " << answers.wrong << " wrong answers to echo\n";
    return 1;
  }

  double total = 0;
  for (double t: times) total += t;
  std::sort(times.begin(), times.end());
  size_t n = times.size();
  double median = n % 2 ? times[n / 2] : (times[n / 2 - 1] + times[n / 2]) / 2;
  printf("{\"echo\": %s, \"answers\": %zu, \"median_us\": %.1f, \"p10_us\": %.1f, "
         "\"p99_us\": %.1f, \"sequential_per_s\": %.1f, \"pipelined_per_s\": %.1f}\n",
         echo.c_str(), answers.right, median, times[n / 10],
         times[std::max<size_t>(1, n * 99 / 100) - 1], calls / (total / 1e6),
         calls / pipelined);
  fflush(stdout);
  return 0;
}

// A count from the command line: a whole number from 1 up, else 0.
inline size_t count(const char* text) {
  char* end = nullptr;
  errno = 0;
  unsigned long long n = strtoull(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || text[0] == '-' || n == 0 || n > 100000000)
    return 0;
  return n;
}

}  // namespace echo_measure
