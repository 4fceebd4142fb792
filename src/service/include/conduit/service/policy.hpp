// What a remote caller may make the service do on its host: listen, connect,
// use Unix paths, run programs and set their environment, from `conduit
// serve`'s --allow-* flags (OpenSSH's PermitListen / PermitOpen, with
// GatewayPorts no: listeners stay on loopback unless allowed).
//
// The checks here are pure: the session resolves names first and asks about
// every address a name gave, so a caller cannot reach a forbidden address
// through a name that also resolves to an allowed one.
#pragma once

#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/network_v4.hpp>
#include <boost/asio/ip/network_v6.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace conduit::service {

/// `path` as the kernel walks it to bind or reach a socket: its folder with
/// symbolic links resolved, its last name kept (that name may itself be a
/// link). Empty, with `ec` set, when the folder cannot be resolved.
std::filesystem::path resolved_socket_path(const std::string& path, std::error_code& ec);

/// The addresses each host name of a rule resolved to, for one check.
using ResolvedNames = std::map<std::string, std::vector<boost::asio::ip::address>>;

/// One HOST:PORTS rule of --allow-listen or --allow-connect.
///
/// HOST: `*` (any address, the wildcard ones included), an IP address
/// (IPv6 in brackets), an IP prefix (`10.0.0.0/8`, `[fd00::]/8`), or a host
/// name, which matches the addresses it resolves to at the time of the check.
/// PORTS: `7000`, `7000-7100`, or `*` (any, port 0 included: only `*` lets a
/// caller have the kernel pick the port).
class AddressRule {
 public:
  /// Parse `text`; throws std::invalid_argument naming what is wrong.
  static AddressRule parse(std::string_view text);

  /// Whether `address` (a resolved one) and `port` fall under this rule.
  bool matches(const boost::asio::ip::address& address, std::uint16_t port, const ResolvedNames& names) const;
  /// The host name to resolve before matching (empty: none).
  const std::string& name() const { return name_; }
  /// As given, for messages.
  const std::string& text() const { return text_; }

 private:
  bool matches_port(std::uint16_t port) const { return any_port_ || (port >= first_port_ && port <= last_port_); }

  std::string text_;
  bool any_host_ = false;
  std::optional<boost::asio::ip::network_v4> v4_;
  std::optional<boost::asio::ip::network_v6> v6_;
  std::string name_;
  bool any_port_ = false;
  std::uint16_t first_port_ = 0, last_port_ = 0;
};

/// The whole policy. A refusal is returned as its reason, naming the flag
/// that would allow it; std::nullopt means allowed.
class Policy {
 public:
  /// The defaults: listen on loopback only (127.0.0.1 and ::1, any port),
  /// connect to any TCP or UDP host, no Unix paths, no programs, no
  /// caller-set environment.
  Policy();

  /// Replace the rules of a flag (each throws std::invalid_argument naming
  /// the bad value). `none` as the only connect rule allows no connects.
  void set_listen_rules(const std::vector<std::string>& rules);
  void set_connect_rules(const std::vector<std::string>& rules);
  /// Folders under which Unix sockets may be used; each must exist.
  void set_unix_dirs(const std::vector<std::string>& dirs);
  void set_env_patterns(std::vector<std::string> patterns) { env_patterns_ = std::move(patterns); }
  void set_exec(std::set<std::string> programs, bool any) {
    exec_ = std::move(programs);
    exec_any_ = any;
  }

  /// Host names the listen or connect rules name, to resolve before a check.
  std::vector<std::string> listen_names() const { return names_of(listen_); }
  std::vector<std::string> connect_names() const { return names_of(connect_); }

  /// `what` is the request in words, e.g. "open_server on 0.0.0.0:80".
  std::optional<std::string> check_listen(const std::string& what,
                                          const std::vector<boost::asio::ip::address>& addresses, std::uint16_t port,
                                          const ResolvedNames& names) const;
  std::optional<std::string> check_connect(const std::string& what,
                                           const std::vector<boost::asio::ip::address>& addresses, std::uint16_t port,
                                           const ResolvedNames& names) const;
  /// A Unix socket path to connect to or (listening) to bind.
  std::optional<std::string> check_unix(const std::string& what, const std::string& path, bool listening) const;
  /// A program to run (argv[0]), or a shell command (shell true).
  std::optional<std::string> check_exec(const std::string& program, bool shell) const;
  /// An environment variable the caller sets for a child.
  std::optional<std::string> check_env(const std::string& name) const;

  /// One line per flag, for the start-up log.
  std::string describe() const;

 private:
  static std::vector<std::string> names_of(const std::vector<AddressRule>& rules);
  static std::optional<std::string> check_addresses(const std::vector<AddressRule>& rules, const char* flag,
                                                    const std::string& what,
                                                    const std::vector<boost::asio::ip::address>& addresses,
                                                    std::uint16_t port, const ResolvedNames& names);

  std::vector<AddressRule> listen_, connect_;
  std::vector<std::filesystem::path> unix_dirs_;  // canonical
  std::vector<std::string> env_patterns_;
  std::set<std::string> exec_;
  bool exec_any_ = false;
};

}  // namespace conduit::service
