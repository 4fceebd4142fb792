#include "output.hpp"

#include <cstdio>
#include <iostream>
#include <stdexcept>
#include <system_error>

namespace conduit::cli {

void add_output_flags(CLI::App& app, OutputOptions& options) {
  app.add_flag("-v,--verbose", options.verbose, "Log each protocol event to stderr");
  app.add_flag("-x,--hex", options.hex, "Hex-dump the data of each event to stderr");
  app.add_flag("--json", options.json, "Print final statistics as JSON on stdout");
  app.add_flag("-q,--quiet", options.quiet, "Print nothing but errors (and --json)");
}

void EventLog::event(std::string_view who, std::string_view what) const {
  if (!enabled()) return;
  std::cerr << '[' << who << "] " << what << '\n';
}

void EventLog::write_data(std::string_view who, std::string_view what, std::span<const std::byte> data) const {
  std::cerr << '[' << who << "] " << what << ' ' << data.size() << " bytes\n";
  if (options_.hex) std::cerr << hex_dump(data);
}

RttSummary::RttSummary(const std::vector<double>& rtts_ms) {
  if (rtts_ms.empty()) return;
  min = *std::min_element(rtts_ms.begin(), rtts_ms.end());
  max = *std::max_element(rtts_ms.begin(), rtts_ms.end());
  double sum = 0;
  for (double v : rtts_ms) sum += v;
  avg = sum / static_cast<double>(rtts_ms.size());
}

std::string RttSummary::json() const {
  return "{\"min\":" + std::to_string(min) + ",\"avg\":" + std::to_string(avg) + ",\"max\":" + std::to_string(max) +
         "}";
}

std::string hex_dump(std::span<const std::byte> data) {
  std::string out;
  char line[128];
  for (std::size_t off = 0; off < data.size(); off += 16) {
    int n = std::snprintf(line, sizeof line, "  %08zx ", off);
    out.append(line, static_cast<std::size_t>(n));
    std::string ascii;
    for (std::size_t i = 0; i < 16; ++i) {
      if (off + i < data.size()) {
        const auto b = static_cast<unsigned char>(data[off + i]);
        n = std::snprintf(line, sizeof line, " %02x", b);
        out.append(line, static_cast<std::size_t>(n));
        ascii += (b >= 0x20 && b < 0x7f) ? static_cast<char>(b) : '.';
      } else {
        out += "   ";
      }
    }
    out += "  |" + ascii + "|\n";
  }
  return out;
}

std::string describe(std::exception_ptr error) {
  if (!error) return {};
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown error";
  }
}

void print_loop_errors(EventLoop& loop, std::string tool) {
  loop.set_exception_handler([tool = std::move(tool)](EventLoop&, const ExceptionContext& context) {
    std::cerr << "conduit " << tool << ": " << context.message
              << (context.exception ? ": " + describe(context.exception) : std::string()) << std::endl;
  });
}

}  // namespace conduit::cli
