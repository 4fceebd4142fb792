// What the tools print: -v / -x / --json / --quiet, the event log they
// drive, round-trip summaries, hex dumps and error text.
#pragma once

#include <conduit/event_loop.hpp>
#include <conduit/service/json_text.hpp>

#include <CLI/CLI.hpp>

#include <cstddef>
#include <exception>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace conduit::cli {

/// -v, -x, --json, --quiet.
struct OutputOptions {
  int verbose = 0;
  bool hex = false;
  bool json = false;
  bool quiet = false;
};
void add_output_flags(CLI::App& app, OutputOptions& options);

/// Logs protocol events to stderr as -v and -x ask.
class EventLog {
 public:
  explicit EventLog(const OutputOptions& options) : options_(options) {}
  bool enabled() const { return options_.verbose > 0 || options_.hex; }
  /// One event line, e.g. "[conn 3] eof_received".
  void event(std::string_view who, std::string_view what) const;
  /// data_received / write of `data`, with a hex dump under -x. The check
  /// is inline: it runs for every chunk an echo moves.
  void data(std::string_view who, std::string_view what, std::span<const std::byte> bytes) const {
    if (enabled()) write_data(who, what, bytes);
  }

 private:
  void write_data(std::string_view who, std::string_view what, std::span<const std::byte> data) const;
  const OutputOptions& options_;
};

/// Round-trip times in milliseconds, summarized (all 0 when empty).
struct RttSummary {
  double min = 0, avg = 0, max = 0;
  explicit RttSummary(const std::vector<double>& rtts_ms);
  /// As JSON: {"min":..,"avg":..,"max":..}.
  std::string json() const;
};

/// Classic hex dump: offset, 16 bytes in hex, printable ASCII.
std::string hex_dump(std::span<const std::byte> data);

/// A JSON string literal for `text`.
using service::json_string;

/// Text of an exception_ptr (empty for null).
std::string describe(std::exception_ptr error);

/// The loop's errors nobody else handles (a --via session that ended
/// unasked, a protocol's exception) on stderr as the tool's own lines:
/// "conduit TOOL: WHAT: WHY".
void print_loop_errors(EventLoop& loop, std::string tool);

}  // namespace conduit::cli
