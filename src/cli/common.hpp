// What every conduit subcommand shares: exit codes, endpoint URLs, the
// -v / -x / --json output flags and the event log they drive.
#pragma once

#include <conduit/event_loop.hpp>
#include <conduit/socket_address.hpp>

#include <conduit/service/json_text.hpp>
#include <conduit/service/remote_transport.hpp>

#include <CLI/CLI.hpp>

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace conduit::cli {

/// Exit codes, distinct per failure kind so scripts can tell them apart.
enum ExitCode : int {
  exit_ok = 0,
  exit_failure = 1,         ///< anything not listed below
  exit_usage = 2,           ///< bad arguments
  exit_connect_failed = 3,  ///< refused, unreachable, unresolvable, cannot listen
  exit_timeout = 4,         ///< --timeout passed
  exit_mismatch = 5,        ///< the echo differed from what was sent, or the connection closed or broke early
  exit_lost = 6,            ///< udp-echo: some datagrams got no echo
  exit_service_unreachable = 7,  ///< --via: the service itself could not be reached
};

/// The exit-code table, for --help footers.
inline constexpr const char* exit_codes_help =
    "Exit codes: 0 ok, 1 other failure, 2 bad arguments, 3 cannot connect or listen,\n"
    "            4 timed out, 5 echo mismatch or connection closed (or reset) early,\n"
    "            6 datagrams lost (udp-echo client), 7 cannot reach the service (--via).\n";

/// A parsed endpoint: SCHEME://HOST:PORT (tcp, tls, udp; HOST may be [v6]),
/// HOST:PORT alone for the tool's first scheme, or unix:/PATH (unix:///PATH
/// too). Every tool's addresses, and serve --listen, take this one syntax.
struct Endpoint {
  enum class Kind { tcp, tls, udp, unix_path };
  Kind kind = Kind::tcp;
  std::string host;
  std::uint16_t port = 0;
  std::string path;

  /// Back to URL form.
  std::string to_string() const;
  /// "tcp", "tls", "udp" or "unix".
  std::string_view scheme() const;
  /// URL form of a bound or connected address; IP addresses get `scheme`.
  static std::string url_of(const SocketAddress& address, std::string_view scheme = "tcp");
};

/// URL schemes a tool accepts.
using Schemes = std::span<const std::string_view>;
inline constexpr std::string_view stream_scheme_list[] = {"tcp", "tls", "unix"};
inline constexpr Schemes stream_schemes = stream_scheme_list;
inline constexpr std::string_view datagram_scheme_list[] = {"udp"};
inline constexpr Schemes datagram_schemes = datagram_scheme_list;

/// Parse an endpoint URL; throws std::invalid_argument naming the problem
/// (also when its scheme is not among `schemes`).
Endpoint parse_endpoint(std::string_view url, Schemes schemes = stream_schemes);

/// `conduit serve --listen`: [tcp://]HOST:PORT ([IPV6]:PORT) or unix:/PATH.
struct ListenAddress {
  std::string host;  ///< empty for a Unix socket
  std::uint16_t port = 0;
  std::string unix_path;

  /// As gRPC takes it: "127.0.0.1:50051", "[::1]:50051", "unix:/run/c.sock".
  std::string grpc_uri() const;
  /// Whether only this host can reach it (for a Unix socket, its folder's
  /// permissions decide who may call).
  bool is_local() const;
};

/// Parse a --listen value; throws std::invalid_argument naming the problem.
ListenAddress parse_listen_address(const std::string& text);

/// A CLI11 validator for endpoint URLs of the given schemes.
CLI::Validator endpoint_validator(Schemes schemes = stream_schemes);

/// A CLI11 validator for a duration in seconds: a finite number from 0.001
/// to `max` (a year by default); NaN, infinities and 1e308 are refused.
CLI::Validator seconds_validator(double max = 365.0 * 86400);

/// Seconds as a person writes them: "1", "0.25", "1.5".
std::string format_seconds(double seconds);

/// --cert, --key, --cafile, --insecure of the TLS-capable tools.
struct TlsFlags {
  std::string cert, key, cafile;
  bool insecure = false;
};
/// Adds them to `app`; `server` words the help for a server.
void add_tls_flags(CLI::App& app, TlsFlags& flags, bool server);
/// Why these TLS flags cannot be used: given without a tls:// endpoint
/// (`uses_tls` false), or --cert without its key. Empty: fine.
std::string tls_flags_problem(const TlsFlags& flags, bool uses_tls, bool server);

/// TLS settings of a tls:// client from its flags (the system's CAs unless
/// --cafile; none checked with --insecure); throws what OpenSSL throws.
TlsOptions client_tls_options(const TlsFlags& flags);
/// The service's request to connect to `ep` (--via), with its TLS settings.
v1::OpenConnection remote_connect_request(const Endpoint& ep, const TlsFlags& flags);
/// The service's request to listen on `ep` (--via); a tls:// one carries
/// --cert, --key and --cafile as PEM. Throws std::invalid_argument naming a
/// file that cannot be read.
v1::OpenServer remote_listen_request(const Endpoint& ep, const TlsFlags& flags, int backlog);

/// --via HOST:PORT and --token-file: run the tool's protocol through a
/// `conduit serve` session instead of locally.
struct ViaFlags {
  std::string address;
  std::string token_file;
  std::string cafile, cert, key;  // TLS to the service
};
void add_via_flags(CLI::App& app, ViaFlags& flags);
/// The service's address as gRPC takes it: HOST[:PORT] with port 50051 if
/// left out, [IPv6][:PORT], or unix:/PATH as it is; throws
/// std::invalid_argument naming the problem (a URL, a bare IPv6 address, a
/// bad port).
std::string via_address(const std::string& text);
/// Why these flags cannot be used: --token-file or --via-* without --via,
/// --via-cert without --via-key or --via-cafile. Empty: fine.
std::string via_flags_problem(const ViaFlags& flags);
/// The token in flags.token_file's first line ("" without a file); throws
/// std::invalid_argument if it cannot be read.
std::string read_token(const ViaFlags& flags);
/// Everything --via's flags say, files read; throws std::invalid_argument
/// naming a file that cannot be read.
service::RemoteOptions read_remote(const ViaFlags& flags);
/// A file's whole content; throws std::invalid_argument naming it.
std::string read_file(const std::string& path, const char* what);

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
/// exit_service_unreachable for a ServiceUnreachable error, else `otherwise`.
int exit_code_for(std::exception_ptr error, int otherwise);

}  // namespace conduit::cli
