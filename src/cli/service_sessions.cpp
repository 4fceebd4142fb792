// conduit sessions and conduit faults: a running service's sessions from the
// command line. `sessions` lists them (ListSessions); `faults` shows a proxy
// session's faults and changes them while it runs (ControlProxy), as the
// proxy's own session could: add or change, remove, clear, down, up.
#include "commands.hpp"
#include "common.hpp"
#include "fault_flags.hpp"
#include "service_call.hpp"

#include "conduit/v1/conduit.grpc.pb.h"

#include <conduit/service/remote.hpp>

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <iostream>

namespace conduit::cli {

namespace {

void add_service_flags(CLI::App& cmd, ViaFlags& via, double& timeout) {
  add_via_flags(cmd, via);
  cmd.get_option("--via")->required();
  cmd.add_option("-t,--timeout", timeout, "Give up after S seconds")->capture_default_str()->check(seconds_validator());
}

// ---- conduit sessions -----------------------------------------------------------

struct SessionsOptions {
  ViaFlags via;
  double timeout = 5;
  bool json = false;
};

int run_sessions(const SessionsOptions& o) {
  const char* tool = "conduit sessions";
  try {
    ServiceCall call(tool, o.via, o.timeout);
    if (!call.reach()) return exit_service_unreachable;
    v1::ListSessionsResponse response;
    const grpc::Status status = call.stub().ListSessions(call.context().get(), {}, &response);
    if (!status.ok()) return call.failed(status);
    if (o.json) {
      std::string out = "[";
      for (const auto& s : response.sessions()) {
        char age[32];
        std::snprintf(age, sizeof age, "%.3f", s.age_seconds());
        out += std::string(out.size() > 1 ? "," : "") + "{\"id\":" + json_string(s.session_id()) +
               ",\"name\":" + json_string(s.name()) + ",\"kind\":" + json_string(s.kind()) +
               ",\"target\":" + json_string(s.target()) + ",\"peer\":" + json_string(s.peer()) +
               ",\"bytes_in\":" + std::to_string(s.bytes_in()) + ",\"bytes_out\":" + std::to_string(s.bytes_out()) +
               ",\"age_s\":" + age + "}";
      }
      std::cout << out << "]" << std::endl;
      return exit_ok;
    }
    if (response.sessions().empty()) std::cout << "no sessions\n";
    for (const auto& s : response.sessions()) {
      char age[32];
      std::snprintf(age, sizeof age, "%.0fs", s.age_seconds());
      std::cout << s.session_id() << (s.name().empty() ? "" : " " + s.name()) << "  " << s.kind() << "  " << s.target()
                << "  by " << s.peer() << "  " << s.bytes_out() << " bytes out, " << s.bytes_in() << " bytes in, "
                << age << '\n';
    }
    std::cout << std::flush;
    return exit_ok;
  } catch (const std::invalid_argument& e) {
    std::cerr << tool << ": " << e.what() << '\n';
    return exit_usage;
  }
}

// ---- conduit faults ---------------------------------------------------------------

struct FaultsOptions {
  std::string session;
  FaultFlags faults;
  std::vector<std::string> remove;
  bool clear = false, down = false, up = false;
  ViaFlags via;
  double timeout = 5;
};

void print_state(const std::string& session, const v1::ProxyState& state) {
  std::cout << session << ": " << (state.up() ? "up" : "down");
  for (const auto& socket : state.sockets()) std::cout << ' ' << socket;
  std::cout << '\n';
  if (state.has_error()) std::cout << "  could not listen again: " << state.error().message() << '\n';
  if (state.faults().empty()) std::cout << "  no faults\n";
  for (const auto& spec : state.faults()) {
    std::string name = spec.name();
    std::string flags;
    try {
      flags = flags_of(service::fault_of(spec));
    } catch (const std::exception& e) {
      flags = std::string("(") + e.what() + ")";  // a fault this CLI has no flag for
    }
    std::cout << "  " << name << std::string(name.size() < 12 ? 12 - name.size() : 1, ' ') << flags << '\n';
  }
  std::cout << std::flush;
}

int run_faults(const FaultsOptions& o) {
  const char* tool = "conduit faults";
  try {
    if (o.down && o.up) throw std::invalid_argument("--down and --up together: choose one");
    // Which kind the proxy is decides which faults apply: the service
    // checks that.
    std::vector<Fault> to_set = faults_of(o.faults, std::nullopt);
    ServiceCall call(tool, o.via, o.timeout);
    if (!call.reach()) return exit_service_unreachable;
    v1::ControlProxyRequest request;
    request.set_session(o.session);
    v1::ProxyState state;
    auto send = [&](const v1::Command& command) {
      *request.mutable_command() = command;
      return call.stub().ControlProxy(call.context().get(), request, &state);
    };
    if (grpc::Status status = send({}); !status.ok()) return call.failed(status);
    std::vector<v1::Command> commands;
    if (o.clear) {
      for (const auto& spec : state.faults()) commands.emplace_back().mutable_remove_fault()->set_name(spec.name());
    }
    for (const auto& name : o.remove) commands.emplace_back().mutable_remove_fault()->set_name(name);
    for (const auto& fault : to_set) *commands.emplace_back().mutable_set_fault() = service::spec_of(fault);
    if (o.down) commands.emplace_back().mutable_proxy_down();
    if (o.up) commands.emplace_back().mutable_proxy_up();
    for (const auto& command : commands) {
      if (grpc::Status status = send(command); !status.ok()) return call.failed(status);
    }
    print_state(o.session, state);
    return exit_ok;
  } catch (const std::invalid_argument& e) {
    std::cerr << tool << ": " << e.what() << '\n';
    return exit_usage;
  }
}

}  // namespace

void set_sessions_command(CLI::App& app, int& exit_code) {
  auto o = std::make_shared<SessionsOptions>();
  CLI::App* cmd = app.add_subcommand("sessions", "List a conduit service's sessions");
  add_service_flags(*cmd, o->via, o->timeout);
  cmd->add_flag("--json", o->json, "One JSON array of the sessions");
  cmd->footer(std::string(R"(One line a session: its id and name (a proxy's --name), kind, target, the caller that
opened it, bytes each way and age.

Example:
  conduit sessions --via 127.0.0.1:50051 --token-file token.txt

)") + exit_codes_help);
  cmd->callback([o, &exit_code] { exit_code = run_sessions(*o); });
}

void set_faults_command(CLI::App& app, int& exit_code) {
  auto o = std::make_shared<FaultsOptions>();
  CLI::App* cmd = app.add_subcommand("faults", "Show or change a running proxy session's faults");
  cmd->add_option("session", o->session, "The proxy session: its --name, or its id from 'conduit sessions'")
      ->required();
  add_fault_flags(*cmd, o->faults);
  const char* group = "Changes (in this order: --clear, --remove, the fault flags, --down or --up)";
  cmd->add_option("--remove", o->remove, "Remove the fault of this name (latency, reset-after, ...); repeatable")
      ->group(group);
  cmd->add_flag("--clear", o->clear, "Remove every fault first")->group(group);
  cmd->add_flag("--down", o->down, "Stop listening and reset every connection")->group(group);
  cmd->add_flag("--up", o->up, "Listen again where it did")->group(group);
  add_service_flags(*cmd, o->via, o->timeout);
  cmd->footer(std::string(R"(Prints the proxy's state after the changes: up or down, where it listens, and each fault
by its name with the flags that ask for it. A fault flag adds the fault of its name (latency,
bandwidth, slice, blackhole, reset-after, limit-data, slow-close, loss, duplicate, reorder) or
changes the one there; the proxy's own session hears of every change (conduit proxy prints it).
Without changes, only prints the state.

Examples:
  conduit proxy --via 127.0.0.1:50051 --name db --listen tcp://*:7000 --upstream tcp://db:5432 &
  conduit faults --via 127.0.0.1:50051 db --latency 200ms --jitter 20ms
  conduit faults --via 127.0.0.1:50051 db --reset-after 64KiB --direction down
  conduit faults --via 127.0.0.1:50051 db --remove latency
  conduit faults --via 127.0.0.1:50051 db --down

)") + exit_codes_help);
  cmd->callback([o, &exit_code] { exit_code = run_faults(*o); });
}

}  // namespace conduit::cli
