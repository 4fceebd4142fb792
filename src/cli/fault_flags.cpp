#include "fault_flags.hpp"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <type_traits>
#include <variant>

namespace conduit::cli {

namespace {

/// The number at the start of `text` and what follows it.
std::pair<double, std::string_view> number_and_unit(std::string_view text, std::string_view flag, const char* what) {
  double value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || !std::isfinite(value) || value < 0) {
    throw std::invalid_argument(std::string(flag) + ": '" + std::string(text) + "' is not " + what);
  }
  return {value, text.substr(static_cast<std::size_t>(end - text.data()))};
}

[[noreturn]] void bad_unit(std::string_view text, std::string_view flag, const char* what) {
  throw std::invalid_argument(std::string(flag) + ": '" + std::string(text) + "' is not " + what);
}

/// K, Ki, M, Mi, G, Gi (and lowercase k): the multiplier, and what follows.
std::pair<double, std::string_view> scale(std::string_view unit) {
  if (unit.empty()) return {1, unit};
  double base = 0;
  switch (unit.front()) {
    case 'k':
    case 'K': base = 1e3; break;
    case 'M': base = 1e6; break;
    case 'G': base = 1e9; break;
    default: return {1, unit};
  }
  unit.remove_prefix(1);
  if (!unit.empty() && unit.front() == 'i') {
    base = base == 1e3 ? 1024.0 : base == 1e6 ? 1024.0 * 1024 : 1024.0 * 1024 * 1024;
    unit.remove_prefix(1);
  }
  return {base, unit};
}

constexpr const char* duration_text = "a duration (100ms, 1.5s, 250us)";
constexpr const char* rate_text = "a rate (1MiB/s, 500KB/s, 100kbit/s, or bytes a second)";
constexpr const char* size_text = "a size (1MiB, 500KB, or bytes)";
constexpr const char* probability_text = "a probability (1%, 0.01)";

}  // namespace

std::chrono::microseconds parse_duration(std::string_view text, std::string_view flag) {
  auto [value, unit] = number_and_unit(text, flag, duration_text);
  // A bare number is refused (but 0): toxiproxy's users write milliseconds,
  // others seconds, and each would be silently wrong by a thousand.
  if (unit.empty() && value != 0) {
    throw std::invalid_argument(std::string(flag) + ": '" + std::string(text) + "' needs a unit: " + std::string(text) +
                                "ms or " + std::string(text) + "s? (" + duration_text + ")");
  }
  double micros = 0;
  if (unit.empty() || unit == "s")
    micros = value * 1e6;
  else if (unit == "ms")
    micros = value * 1e3;
  else if (unit == "us")
    micros = value;
  else if (unit == "m")
    micros = value * 60e6;
  else
    bad_unit(text, flag, duration_text);
  if (micros > 86400e6) {
    throw std::invalid_argument(std::string(flag) + ": '" + std::string(text) + "' is over a day");
  }
  return std::chrono::microseconds(static_cast<std::int64_t>(std::llround(micros)));
}

std::uint64_t parse_rate(std::string_view text, std::string_view flag) {
  auto [value, rest] = number_and_unit(text, flag, rate_text);
  auto [multiplier, unit] = scale(rest);
  if (unit.ends_with("/s")) unit.remove_suffix(2);
  double bytes = value * multiplier;
  if (unit == "bit" || unit == "b" || unit == "bps")
    bytes /= 8;
  else if (!unit.empty() && unit != "B" && unit != "Bps")
    bad_unit(text, flag, rate_text);
  if (bytes < 1)
    throw std::invalid_argument(std::string(flag) + ": '" + std::string(text) + "' is under a byte a second");
  if (bytes > 1e12) throw std::invalid_argument(std::string(flag) + ": '" + std::string(text) + "' is over 1 TB/s");
  return static_cast<std::uint64_t>(bytes);
}

std::uint64_t parse_size(std::string_view text, std::string_view flag) {
  auto [value, rest] = number_and_unit(text, flag, size_text);
  auto [multiplier, unit] = scale(rest);
  if (!unit.empty() && unit != "B") bad_unit(text, flag, size_text);
  const double bytes = value * multiplier;
  if (bytes > 1e15) throw std::invalid_argument(std::string(flag) + ": '" + std::string(text) + "' is too large");
  return static_cast<std::uint64_t>(bytes);
}

double parse_probability(std::string_view text, std::string_view flag) {
  auto [value, unit] = number_and_unit(text, flag, probability_text);
  if (unit == "%")
    value /= 100;
  else if (!unit.empty())
    bad_unit(text, flag, probability_text);
  if (value > 1) throw std::invalid_argument(std::string(flag) + ": '" + std::string(text) + "' is over 100%");
  return value;
}

void add_fault_flags(CLI::App& app, FaultFlags& f) {
  // A --via proxy's faults change while it runs: `conduit faults` (which
  // takes these same flags), or its session (Python's RemoteProxy).
  const char* group = "Faults (a --via proxy's change while it runs: conduit faults)";
  app.add_option("--direction", f.direction, "Which way the faults act: up (client to upstream), down, or both")
      ->check(CLI::IsMember({"up", "down", "both"}))
      ->capture_default_str()
      ->group(group);
  app.add_option("--latency", f.latency, "Delay each chunk or datagram (100ms)")->group(group);
  app.add_option("--jitter", f.jitter, "With --latency: plus or minus up to this (10ms)")->group(group);
  app.add_option("--bandwidth", f.bandwidth, "At most this rate (1MiB/s, 500KB/s, 10Mbit/s)")->group(group);
  app.add_option("--slice", f.slice, "Streams: forward in pieces of about this many bytes")->group(group);
  app.add_option("--slice-delay", f.slice_delay, "With --slice: the time between pieces (1ms)")->group(group);
  app.add_flag("--blackhole", f.blackhole, "Forward nothing")->group(group);
  app.add_option("--blackhole-close-after", f.blackhole_close_after,
                 "With --blackhole: close each connection this long after it took hold (300ms)")
      ->group(group);
  app.add_option("--reset-after", f.reset_after,
                 "Streams: reset (RST) each connection after this many bytes (1MiB) or this long (2s)")
      ->group(group);
  app.add_option("--limit-data", f.limit_data, "Streams: close each connection after this many bytes")->group(group);
  app.add_option("--slow-close", f.slow_close, "Streams: pass each end of stream on this late (500ms)")->group(group);
  app.add_option("--loss", f.loss, "UDP: drop this share of datagrams (1%, 0.01)")->group(group);
  app.add_option("--duplicate", f.duplicate, "UDP: send this share of datagrams twice")->group(group);
  app.add_option("--reorder", f.reorder, "UDP: hold this share of datagrams back 10 ms")->group(group);
  app.add_option("--toxicity", f.toxicity, "The faults act on this share of connections, drawn for each (50%)")
      ->group(group);
  app.add_option("--clients", f.clients, "The faults act on these clients only (10.0.0.0/8,192.0.2.7)")->group(group);
  app.add_option("--start-after", f.start_after,
                 "The faults start this far into each connection: a time (2s) or bytes in their direction (1KiB)")
      ->group(group);
  app.add_option("--stop-after", f.stop_after, "The faults stop this far into each connection (time or bytes)")
      ->group(group);
}

namespace {

/// A time if it ends in s (2s, 500ms, 250us), else a size (1MiB, 1500).
bool is_time(std::string_view text) { return text.ends_with("s"); }

/// --toxicity, --clients, --start-after, --stop-after as a fault's scope.
void scope_faults(const FaultFlags& f, std::vector<Fault>& faults) {
  fault::Scope scope;
  try {
    scope.clients = fault::Network::parse_list(f.clients);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(std::string("--clients: ") + e.what());
  }
  if (!f.start_after.empty()) {
    if (is_time(f.start_after))
      scope.start_after = parse_duration(f.start_after, "--start-after");
    else
      scope.start_after_bytes = parse_size(f.start_after, "--start-after");
  }
  if (!f.stop_after.empty()) {
    if (is_time(f.stop_after))
      scope.stop_after = parse_duration(f.stop_after, "--stop-after");
    else
      scope.stop_after_bytes = parse_size(f.stop_after, "--stop-after");
  }
  const bool scoped = !f.toxicity.empty() || !f.clients.empty() || scope.timed();
  if (scoped && faults.empty()) {
    throw std::invalid_argument("--toxicity, --clients, --start-after and --stop-after need a fault to act on");
  }
  for (auto& fault : faults) {
    if (!f.toxicity.empty()) fault.toxicity = parse_probability(f.toxicity, "--toxicity");
    fault.scope = scope;
    fault.validate();
  }
}

}  // namespace

std::vector<Fault> faults_of(const FaultFlags& f, std::optional<bool> datagram) {
  const FaultDirection direction = f.direction == "up"     ? FaultDirection::upstream
                                   : f.direction == "down" ? FaultDirection::downstream
                                                           : FaultDirection::both;
  std::vector<Fault> faults;
  auto add = [&](const char* name, fault::Kind kind) {
    Fault fault{name, direction, std::move(kind)};
    if (datagram && (*datagram ? !fault::for_datagrams(fault.kind) : !fault::for_streams(fault.kind))) {
      throw std::invalid_argument(std::string("--") + name + " is for " +
                                  (*datagram ? "stream (tcp, tls, unix)" : "udp") + " proxies");
    }
    fault.validate();
    faults.push_back(std::move(fault));
  };
  if (!f.jitter.empty() && f.latency.empty()) throw std::invalid_argument("--jitter needs --latency");
  if (!f.slice_delay.empty() && f.slice.empty()) throw std::invalid_argument("--slice-delay needs --slice");
  if (!f.latency.empty()) {
    const auto delay = parse_duration(f.latency, "--latency");
    const auto jitter = f.jitter.empty() ? std::chrono::microseconds(0) : parse_duration(f.jitter, "--jitter");
    add("latency", fault::Latency{delay, jitter});
  }
  if (!f.bandwidth.empty()) add("bandwidth", fault::Bandwidth{parse_rate(f.bandwidth, "--bandwidth")});
  if (!f.slice.empty()) {
    const auto size = parse_size(f.slice, "--slice");
    if (size == 0) throw std::invalid_argument("--slice: give at least 1 byte");
    add("slice", fault::Slicer{static_cast<std::size_t>(size), static_cast<std::size_t>(size / 2),
                               f.slice_delay.empty() ? std::chrono::microseconds(1000)
                                                     : parse_duration(f.slice_delay, "--slice-delay")});
  }
  if (!f.blackhole_close_after.empty() && !f.blackhole)
    throw std::invalid_argument("--blackhole-close-after needs --blackhole");
  if (f.blackhole) {
    fault::Blackhole blackhole;
    if (!f.blackhole_close_after.empty()) {
      blackhole.close_after = parse_duration(f.blackhole_close_after, "--blackhole-close-after");
    }
    add("blackhole", blackhole);
  }
  if (!f.reset_after.empty()) {
    if (is_time(f.reset_after))
      add("reset-after", fault::Reset{std::nullopt, parse_duration(f.reset_after, "--reset-after")});
    else
      add("reset-after", fault::Reset{parse_size(f.reset_after, "--reset-after"), std::nullopt});
  }
  if (!f.limit_data.empty()) add("limit-data", fault::LimitData{parse_size(f.limit_data, "--limit-data")});
  if (!f.slow_close.empty()) add("slow-close", fault::SlowClose{parse_duration(f.slow_close, "--slow-close")});
  if (!f.loss.empty()) add("loss", fault::Loss{parse_probability(f.loss, "--loss")});
  if (!f.duplicate.empty()) add("duplicate", fault::Duplicate{parse_probability(f.duplicate, "--duplicate")});
  if (!f.reorder.empty()) add("reorder", fault::Reorder{parse_probability(f.reorder, "--reorder")});
  scope_faults(f, faults);
  return faults;
}

namespace {

/// In the largest unit that keeps it whole: 2s, 150ms, 250us.
std::string duration_text_of(std::chrono::microseconds d) {
  const auto us = d.count();
  if (us != 0 && us % 1000000 == 0) return std::to_string(us / 1000000) + "s";
  if (us != 0 && us % 1000 == 0) return std::to_string(us / 1000) + "ms";
  return us == 0 ? "0" : std::to_string(us) + "us";
}

/// 1MiB, 64KiB, 1500 (bytes).
std::string size_text_of(std::uint64_t bytes) {
  if (bytes != 0 && bytes % (1024 * 1024) == 0) return std::to_string(bytes / (1024 * 1024)) + "MiB";
  if (bytes != 0 && bytes % 1024 == 0) return std::to_string(bytes / 1024) + "KiB";
  return std::to_string(bytes);
}

std::string probability_text_of(double p) {
  char text[32];
  std::snprintf(text, sizeof text, "%g%%", p * 100);
  return text;
}

}  // namespace

std::string flags_of(const Fault& fault) {
  std::string out = std::visit(
      [](const auto& k) -> std::string {
        using K = std::decay_t<decltype(k)>;
        if constexpr (std::is_same_v<K, fault::Latency>) {
          return "--latency " + duration_text_of(k.delay) +
                 (k.jitter.count() ? " --jitter " + duration_text_of(k.jitter) : std::string());
        } else if constexpr (std::is_same_v<K, fault::Bandwidth>) {
          return "--bandwidth " + size_text_of(k.bytes_per_second) + "/s";
        } else if constexpr (std::is_same_v<K, fault::Slicer>) {
          return "--slice " + size_text_of(k.average_size) + " --slice-delay " + duration_text_of(k.delay);
        } else if constexpr (std::is_same_v<K, fault::Blackhole>) {
          return "--blackhole" +
                 (k.close_after ? " --blackhole-close-after " + duration_text_of(*k.close_after) : std::string());
        } else if constexpr (std::is_same_v<K, fault::Reset>) {
          if (k.after_bytes) return "--reset-after " + size_text_of(*k.after_bytes);
          if (k.after) return "--reset-after " + duration_text_of(*k.after);
          return "--reset-after 0";
        } else if constexpr (std::is_same_v<K, fault::LimitData>) {
          return "--limit-data " + size_text_of(k.bytes);
        } else if constexpr (std::is_same_v<K, fault::SlowClose>) {
          return "--slow-close " + duration_text_of(k.delay);
        } else if constexpr (std::is_same_v<K, fault::Loss>) {
          return "--loss " + probability_text_of(k.probability);
        } else if constexpr (std::is_same_v<K, fault::Duplicate>) {
          return "--duplicate " + probability_text_of(k.probability);
        } else {
          static_assert(std::is_same_v<K, fault::Reorder>);
          return "--reorder " + probability_text_of(k.probability);
        }
      },
      fault.kind);
  if (fault.direction == FaultDirection::upstream) out += " --direction up";
  if (fault.direction == FaultDirection::downstream) out += " --direction down";
  if (fault.toxicity != 1) out += " --toxicity " + probability_text_of(fault.toxicity);
  if (!fault.scope.clients.empty()) {
    out += " --clients ";
    for (std::size_t i = 0; i < fault.scope.clients.size(); ++i) {
      out += (i ? "," : "") + fault.scope.clients[i].to_string();
    }
  }
  const fault::Scope& s = fault.scope;
  if (s.start_after) out += " --start-after " + duration_text_of(*s.start_after);
  if (s.start_after_bytes) out += " --start-after " + size_text_of(*s.start_after_bytes);
  if (s.stop_after) out += " --stop-after " + duration_text_of(*s.stop_after);
  if (s.stop_after_bytes) out += " --stop-after " + size_text_of(*s.stop_after_bytes);
  return out;
}

}  // namespace conduit::cli
