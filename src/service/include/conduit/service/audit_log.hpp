// The service's log: every refused call, every session's open and close,
// and the loop's own messages, one line each on stderr, as text or as JSON
// lines (`conduit serve --log-format json`). Lines come from gRPC's threads
// and the loop's; each is written whole.
#pragma once

#include <conduit/event_loop.hpp>

#include <chrono>
#include <mutex>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace conduit::service {

enum class LogFormat { text, json };

/// One field of a log line: a string, or a list of strings (an argv).
struct LogField {
  std::string key;
  std::string value;
  std::vector<std::string> list;
  bool is_list = false;
  bool is_number = false;  // written bare in JSON
  bool in_text = false;    // also in a text line (others are in its message already)
};

class AuditLog {
 public:
  /// Lines go to `out` (stderr by default); `quiet` keeps only warnings
  /// and errors (refusals are warnings: they are always written).
  explicit AuditLog(LogFormat format = LogFormat::text, bool quiet = false, std::ostream* out = nullptr);

  /// A call refused with `code` (UNAUTHENTICATED, PERMISSION_DENIED, ...).
  void refused(std::string_view peer, std::string_view method, std::string_view code, std::string_view reason);
  /// A line with `event` and its fields at `level`.
  void write(LogLevel level, std::string_view event, std::string_view message,
             const std::vector<LogField>& fields = {});
  /// For EventLoop::set_log_handler.
  void loop_message(LogLevel level, std::string_view message) { write(level, "log", message); }

  /// `when` as RFC 3339 in UTC with milliseconds: 2026-12-01T21:45:22.123Z.
  static std::string rfc3339(std::chrono::system_clock::time_point when);

 private:
  LogFormat format_;
  bool quiet_;
  std::ostream* out_;
  std::mutex mutex_;
};

/// Field helpers: `in_text` shows the field in text lines too, as key=value.
inline LogField field(std::string key, std::string value, bool in_text = false) {
  return {std::move(key), std::move(value), {}, false, false, in_text};
}
inline LogField number_field(std::string key, std::string value, bool in_text = false) {
  return {std::move(key), std::move(value), {}, false, true, in_text};
}
inline LogField list_field(std::string key, std::vector<std::string> list, bool in_text = true) {
  return {std::move(key), {}, std::move(list), true, false, in_text};
}

}  // namespace conduit::service
