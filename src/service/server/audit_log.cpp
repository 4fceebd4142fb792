#include <conduit/service/audit_log.hpp>

#include <conduit/service/json_text.hpp>

#include <ctime>
#include <iostream>

namespace conduit::service {

namespace {

const char* level_name(LogLevel level) {
  switch (level) {
    case LogLevel::debug: return "debug";
    case LogLevel::info: return "info";
    case LogLevel::warning: return "warning";
    case LogLevel::error: return "error";
  }
  return "info";
}

/// A word of a text line: quoted when it holds a space, a quote or anything
/// printable_text() would escape, so an argv like ["sh", "-c", "echo a b"]
/// reads back unambiguously and no value can forge a line.
std::string text_word(const std::string& word) {
  if (!word.empty() && word.find_first_of(" \"") == std::string::npos && !needs_escaping(word)) return word;
  return json_string(word);
}

}  // namespace

AuditLog::AuditLog(LogFormat format, bool quiet, std::ostream* out)
    : format_(format), quiet_(quiet), out_(out ? out : &std::cerr) {}

std::string AuditLog::rfc3339(std::chrono::system_clock::time_point when) {
  const auto since = when.time_since_epoch();
  const std::time_t seconds = std::chrono::duration_cast<std::chrono::seconds>(since).count();
  const auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(since).count() % 1000;
  std::tm utc{};
  ::gmtime_r(&seconds, &utc);
  char text[40];
  const std::size_t n = std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &utc);
  std::snprintf(text + n, sizeof text - n, ".%03dZ", static_cast<int>(millis));
  return text;
}

void AuditLog::refused(std::string_view peer, std::string_view method, std::string_view code, std::string_view reason) {
  write(LogLevel::warning, "refused",
        "refused " + std::string(method) + " from " + std::string(peer) + ": " + std::string(code),
        {field("peer", std::string(peer)), field("method", std::string(method)), field("code", std::string(code)),
         field("reason", std::string(reason), true)});
}

void AuditLog::write(LogLevel level, std::string_view event, std::string_view message,
                     const std::vector<LogField>& fields) {
  if (level == LogLevel::debug || (quiet_ && level < LogLevel::warning)) return;
  const std::string time = rfc3339(std::chrono::system_clock::now());
  std::string line;
  if (format_ == LogFormat::json) {
    line = "{\"time\":" + json_string(time) + ",\"level\":\"" + level_name(level) +
           "\",\"event\":" + json_string(event) + ",\"message\":" + json_string(message);
    for (const auto& f : fields) {
      line += "," + json_string(f.key) + ":";
      if (f.is_list) {
        line += "[";
        for (std::size_t i = 0; i < f.list.size(); ++i) line += (i ? "," : "") + json_string(f.list[i]);
        line += "]";
      } else {
        line += f.is_number ? f.value : json_string(f.value);
      }
    }
    line += "}";
  } else {
    // The message holds callers' values (hosts, paths, reasons): escaped,
    // so one line is always one record.
    line = time + " conduit serve: " + printable_text(message);
    for (const auto& f : fields) {
      if (!f.in_text) continue;
      line += " " + f.key + "=";
      if (f.is_list) {
        std::string words;
        for (const auto& w : f.list) words += (words.empty() ? "" : " ") + text_word(w);
        line += "[" + words + "]";
      } else {
        line += f.is_number ? f.value : text_word(f.value);
      }
    }
  }
  line += '\n';
  std::lock_guard lock(mutex_);
  *out_ << line << std::flush;
}

}  // namespace conduit::service
