// Conduit's side of bench/subprocess/run.sh.
//   spawn_bench spawn N [devnull]   N sequential /bin/true children; prints spawns/s
//   spawn_bench pipe BYTES          reads BYTES from `head -c BYTES /dev/zero`; prints MiB/s
#include <conduit/event_loop.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

using namespace conduit;
using Clock = std::chrono::steady_clock;

class Counter : public SubprocessProtocol {
 public:
  void pipe_data_received(int, std::span<const std::byte> data) override { bytes += data.size(); }
  void connection_lost(std::exception_ptr) override { done = true; }
  std::uint64_t bytes = 0;
  bool done = false;
};

std::shared_ptr<Counter> run_one(EventLoop& loop, const std::string& program, std::vector<std::string> args,
                                 const SubprocessOptions& options) {
  std::shared_ptr<Counter> counter;
  loop.subprocess_exec([] { return std::make_shared<Counter>(); }, program, std::move(args), options,
                       [&](std::exception_ptr error, auto, std::shared_ptr<Counter> c) {
                         if (error) std::rethrow_exception(error);
                         counter = std::move(c);
                       });
  loop.run_until([&] { return counter && counter->done; }, std::chrono::minutes(5));
  return counter;
}

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: spawn_bench spawn N [devnull] | pipe BYTES\n");
    return 2;
  }
  const std::string mode = argv[1];
  const long long n = std::atoll(argv[2]);
  EventLoop loop;
  const auto start = Clock::now();
  if (mode == "spawn") {
    SubprocessOptions options;
    if (argc > 3 && std::string(argv[3]) == "devnull") {
      options.stdin_stream = options.stdout_stream = options.stderr_stream = Stdio::devnull();
    }
    for (long long i = 0; i < n; ++i) run_one(loop, "/bin/true", {}, options);
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    std::printf("%.0f\n", static_cast<double>(n) / s);
  } else {
    auto counter = run_one(loop, "head", {"-c", std::to_string(n), "/dev/zero"}, SubprocessOptions{});
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    if (counter->bytes != static_cast<std::uint64_t>(n)) {
      std::fprintf(stderr, "read %llu of %lld bytes\n", static_cast<unsigned long long>(counter->bytes), n);
      return 1;
    }
    std::printf("%.0f\n", static_cast<double>(n) / s / (1 << 20));
  }
}
