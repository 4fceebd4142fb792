// What every conduit subcommand shares: exit codes, seconds, and (each in
// its own file, included here) the address syntax, the TLS and --via flags,
// and what the tools print.
#pragma once

#include "endpoint.hpp"
#include "output.hpp"
#include "tls_flags.hpp"
#include "via_flags.hpp"

#include <conduit/event_loop.hpp>

#include <CLI/CLI.hpp>

#include <exception>
#include <string>

namespace conduit::cli {

/// Exit codes, distinct per failure kind so scripts can tell them apart.
enum ExitCode : int {
  exit_ok = 0,
  exit_failure = 1,              ///< anything not listed below
  exit_usage = 2,                ///< bad arguments
  exit_connect_failed = 3,       ///< refused, unreachable, unresolvable, cannot listen
  exit_timeout = 4,              ///< --timeout passed
  exit_mismatch = 5,             ///< the echo differed from what was sent, or the connection closed or broke early
  exit_lost = 6,                 ///< udp-echo: some datagrams got no echo
  exit_service_unreachable = 7,  ///< --via: the service itself could not be reached
};

/// The exit-code table, for --help footers.
inline constexpr const char* exit_codes_help =
    "Exit codes: 0 ok, 1 other failure, 2 bad arguments, 3 cannot connect or listen,\n"
    "            4 timed out, 5 echo mismatch or connection closed (or reset) early,\n"
    "            6 datagrams lost (udp-echo client), 7 cannot reach the service (--via).\n";

/// A CLI11 validator for a duration in seconds: a finite number from 0.001
/// to `max` (a year by default); NaN, infinities and 1e308 are refused.
CLI::Validator seconds_validator(double max = 365.0 * 86400);

/// Seconds as a person writes them: "1", "0.25", "1.5".
std::string format_seconds(double seconds);

/// A file's whole content; throws std::invalid_argument naming it (`what`:
/// the flag that gave it).
std::string read_file(const std::string& path, const char* what);

/// exit_service_unreachable for a ServiceUnreachable error, else `otherwise`.
int exit_code_for(std::exception_ptr error, int otherwise);

}  // namespace conduit::cli
