// The fault flags of `conduit proxy` (--latency 100ms, --bandwidth 1MiB/s,
// --loss 1%, ...) and the quantities they take, with a clear error for a
// value that is not one.
#pragma once

#include <conduit/faults.hpp>

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace conduit::cli {

/// "100ms", "1.5s", "250us", "2m"; a bare number is refused (but 0). Throws
/// std::invalid_argument naming `flag` and the value.
std::chrono::microseconds parse_duration(std::string_view text, std::string_view flag);
/// "1MiB/s", "500KB/s", "64k", "1000" (bytes a second; K/M/G are 1000s,
/// Ki/Mi/Gi 1024s, a "b" suffix means bits).
std::uint64_t parse_rate(std::string_view text, std::string_view flag);
/// "1MiB", "500", "10KB": a byte count.
std::uint64_t parse_size(std::string_view text, std::string_view flag);
/// "1%", "0.01": a probability from 0 to 1.
double parse_probability(std::string_view text, std::string_view flag);

struct FaultFlags {
  std::string direction = "both";  // up, down or both: which way the flags below act
  std::string latency, jitter, bandwidth, slice, slice_delay, reset_after, limit_data, slow_close;
  std::string blackhole_close_after;  // with blackhole: close each connection this late
  std::string loss, duplicate, reorder;
  bool blackhole = false;
  // The scope of every fault above: some connections, clients, a window.
  std::string toxicity, clients, start_after, stop_after;
};
void add_fault_flags(CLI::App& app, FaultFlags& flags);

/// The faults the flags ask for, named after their flag ("latency",
/// "bandwidth", ...); throws std::invalid_argument naming a bad value, or a
/// fault that does not apply to this kind of proxy (`datagram`; nullopt:
/// either kind, for the service to check).
std::vector<Fault> faults_of(const FaultFlags& flags, std::optional<bool> datagram);

/// The flags that ask for `fault`, as a user would type them
/// ("--latency 100ms --jitter 10ms --direction up"; no --direction for both).
std::string flags_of(const Fault& fault);

}  // namespace conduit::cli
