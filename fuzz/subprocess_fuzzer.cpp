// A child's argv, environment and working folder as a remote caller gives
// them (an OpenSubprocess message, protobuf): the service's validation
// (names, NUL bytes, --allow-exec, --allow-env), then the core's own checks
// and spawn, with the program forced to /bin/true. The raw values also go
// to the core unvalidated (but for LD_* variables): it must refuse what C
// strings cannot carry, never cut it short or crash.
#include <session_open.hpp>

#include <conduit/event_loop.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <vector>

namespace {

using namespace conduit;

class Child final : public SubprocessProtocol {
 public:
  bool done = false;
  void connection_made(std::shared_ptr<SubprocessTransport> transport) override {
    if (auto in = transport->get_pipe_transport(0)) in->close();
  }
  void connection_lost(std::exception_ptr) override { done = true; }
};

void spawn(EventLoop& loop, const std::vector<std::string>& args, const SubprocessOptions& options) {
  std::shared_ptr<Child> child;
  bool failed = false;
  loop.subprocess_exec([] { return std::make_shared<Child>(); }, "/bin/true", args, options,
                       [&](std::exception_ptr error, auto, std::shared_ptr<Child> c) {
                         failed = error != nullptr;
                         child = std::move(c);
                       });
  loop.run_until([&] { return failed || (child && child->done); }, std::chrono::seconds(5));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  v1::ClientMessage message;
  if (!message.mutable_open_subprocess()->ParseFromArray(data, static_cast<int>(size))) return 0;
  auto& open = *message.mutable_open_subprocess();
  if (open.argv_size() > 0) *open.mutable_argv(0) = "/bin/true";
  if (open.argv_size() > 32 || open.env_size() > 32) return 0;

  service::ServiceOptions options;
  options.policy.set_exec({"/bin/true"}, false);
  options.policy.set_env_patterns({"LC_*", "CONDUIT_?"});
  (void)service::validate_open(message, options);

  static EventLoop loop;
  std::vector<std::string> args(open.argv().begin() + (open.argv_size() > 0 ? 1 : 0), open.argv().end());
  SubprocessOptions spawn_options;
  if (!open.cwd().empty()) spawn_options.cwd = open.cwd();
  if (!open.env().empty()) {
    std::vector<std::string> env;
    for (const auto& [name, value] : open.env()) {
      // The dynamic loader's variables would load whatever they name into
      // /bin/true: not something to run on a fuzzing machine.
      if (name.rfind("LD_", 0) != 0) env.push_back(name + "=" + value);
    }
    spawn_options.env = std::move(env);
  }
  spawn(loop, args, spawn_options);
  return 0;
}
