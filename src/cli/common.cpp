#include "common.hpp"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <system_error>

namespace conduit::cli {

CLI::Validator seconds_validator(double max) {
  return CLI::Validator(
      [max](std::string& value) -> std::string {
        double seconds = 0;
        const char* end = value.data() + value.size();
        auto [ptr, ec] = std::from_chars(value.data(), end, seconds);
        char limit[32];
        std::snprintf(limit, sizeof limit, "%.10g", max);
        const std::string range = "a number of seconds from 0.001 to " + std::string(limit);
        if (ec != std::errc() || ptr != end || !std::isfinite(seconds)) return "'" + value + "' is not " + range;
        if (seconds < 0.001 || seconds > max) return "'" + value + "' is out of range: give " + range;
        return {};
      },
      "SECONDS");
}

std::string format_seconds(double seconds) {
  char text[32];
  std::snprintf(text, sizeof text, "%.10g", seconds);
  return text;
}

int exit_code_for(std::exception_ptr error, int otherwise) {
  try {
    if (error) std::rethrow_exception(error);
  } catch (const service::ServiceUnreachable&) {
    return exit_service_unreachable;
  } catch (...) {
  }
  return otherwise;
}

std::string read_file(const std::string& path, const char* what) {
  std::ifstream file(path);
  if (!file) throw std::invalid_argument(std::string("cannot read ") + what + " " + path);
  return std::string(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
}

}  // namespace conduit::cli
