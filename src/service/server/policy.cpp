#include <conduit/service/policy.hpp>

#include <fnmatch.h>
#include <sys/stat.h>

#include <algorithm>
#include <charconv>
#include <stdexcept>

namespace conduit::service {

namespace ip = boost::asio::ip;

namespace {

/// IPv4-mapped IPv6 addresses (::ffff:10.0.0.1) are the IPv4 address they
/// carry: a rule about 10.0.0.0/8 must hold for them too.
ip::address normalized(const ip::address& address) {
  if (address.is_v6() && address.to_v6().is_v4_mapped()) {
    return ip::make_address_v4(ip::v4_mapped, address.to_v6());
  }
  return address;
}

std::string bracketed(const ip::address& address) {
  return address.is_v6() ? "[" + address.to_string() + "]" : address.to_string();
}

std::uint16_t parse_port(std::string_view text, std::string_view rule) {
  unsigned value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || value > 65535) {
    throw std::invalid_argument("'" + std::string(rule) + "': '" + std::string(text) +
                                "' is not a port (1 to 65535, a range 7000-7100, or *)");
  }
  if (value == 0) {
    throw std::invalid_argument("'" + std::string(rule) + "': port 0 is not a port to allow; * allows any, 0 included");
  }
  return static_cast<std::uint16_t>(value);
}

bool is_host_name(std::string_view name) {
  if (name.empty() || name.size() > 253) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
           c == '_';
  });
}

/// Whether `path` is `dir` or lies under it (both canonical).
bool is_under(const std::filesystem::path& path, const std::filesystem::path& dir) {
  auto [d, p] = std::mismatch(dir.begin(), dir.end(), path.begin(), path.end());
  return d == dir.end();
}

std::string rules_text(const std::vector<AddressRule>& rules) {
  if (rules.empty()) return "none";
  std::string text;
  for (const auto& rule : rules) text += (text.empty() ? "" : ", ") + rule.text();
  return text;
}

}  // namespace

std::filesystem::path resolved_socket_path(const std::string& path, std::error_code& ec) {
  const std::filesystem::path given(path);
  auto folder = std::filesystem::canonical(given.parent_path(), ec);
  if (ec) return {};
  return folder / given.filename();
}

// ==== AddressRule ===============================================================

AddressRule AddressRule::parse(std::string_view text) {
  AddressRule rule;
  rule.text_ = std::string(text);
  std::string_view host, ports;
  if (!text.empty() && text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      throw std::invalid_argument("'" + rule.text_ + "': expected [IPV6]:PORTS or [IPV6/LENGTH]:PORTS");
    }
    host = text.substr(1, close - 1);
    ports = text.substr(close + 2);
    if (host.find(':') == std::string_view::npos) {
      throw std::invalid_argument("'" + rule.text_ + "': only IPv6 addresses go in brackets");
    }
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos) {
      throw std::invalid_argument("'" + rule.text_ +
                                  "': expected HOST:PORTS (HOST: *, an address, ADDRESS/LENGTH or a "
                                  "name; PORTS: 7000, 7000-7100 or *)");
    }
    host = text.substr(0, colon);
    ports = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      throw std::invalid_argument("'" + rule.text_ + "': write IPv6 addresses in brackets, [::1]:PORTS");
    }
  }

  boost::system::error_code ec;
  if (host == "*") {
    rule.any_host_ = true;
  } else if (host.find('/') != std::string_view::npos) {
    if (host.find(':') != std::string_view::npos)
      rule.v6_ = ip::make_network_v6(host, ec);
    else
      rule.v4_ = ip::make_network_v4(host, ec);
    if (ec) throw std::invalid_argument("'" + rule.text_ + "': '" + std::string(host) + "' is not an address prefix");
  } else if (auto address = ip::make_address(host, ec); !ec) {
    address = normalized(address);
    if (address.is_v4())
      rule.v4_ = ip::network_v4(address.to_v4(), 32);
    else
      rule.v6_ = ip::network_v6(address.to_v6(), 128);
  } else if (is_host_name(host)) {
    rule.name_ = std::string(host);
  } else {
    throw std::invalid_argument("'" + rule.text_ + "': '" + std::string(host) +
                                "' is not *, an IP address, an address prefix or a host name");
  }

  if (ports == "*") {
    rule.any_port_ = true;
  } else if (const auto dash = ports.find('-'); dash != std::string_view::npos) {
    rule.first_port_ = parse_port(ports.substr(0, dash), text);
    rule.last_port_ = parse_port(ports.substr(dash + 1), text);
    if (rule.first_port_ > rule.last_port_) {
      throw std::invalid_argument("'" + rule.text_ + "': the port range " + std::string(ports) + " is backwards");
    }
  } else {
    rule.first_port_ = rule.last_port_ = parse_port(ports, text);
  }
  return rule;
}

bool AddressRule::matches(const ip::address& given, std::uint16_t port, const ResolvedNames& names) const {
  if (!matches_port(port)) return false;
  if (any_host_) return true;
  const ip::address address = normalized(given);
  if (v4_) return address.is_v4() && (address.to_v4().to_uint() & v4_->netmask().to_uint()) == v4_->network().to_uint();
  if (v6_) {
    if (!address.is_v6()) return false;
    const auto bytes = address.to_v6().to_bytes();
    const auto network = v6_->network().to_bytes();
    const int length = v6_->prefix_length();
    for (int bit = 0; bit < length; ++bit) {
      const auto i = static_cast<std::size_t>(bit / 8);
      const int mask = 0x80 >> (bit % 8);
      if ((bytes[i] & mask) != (network[i] & mask)) return false;
    }
    return true;
  }
  auto it = names.find(name_);
  if (it == names.end()) return false;
  return std::any_of(it->second.begin(), it->second.end(),
                     [&](const ip::address& a) { return normalized(a) == address; });
}

// ==== Policy ====================================================================

Policy::Policy() {
  listen_ = {AddressRule::parse("127.0.0.1:*"), AddressRule::parse("[::1]:*")};
  connect_ = {AddressRule::parse("*:*")};
}

void Policy::set_listen_rules(const std::vector<std::string>& rules) {
  std::vector<AddressRule> parsed;
  for (const auto& rule : rules) parsed.push_back(AddressRule::parse(rule));
  listen_ = std::move(parsed);
}

void Policy::set_connect_rules(const std::vector<std::string>& rules) {
  if (rules.size() == 1 && rules.front() == "none") {
    connect_.clear();
    return;
  }
  std::vector<AddressRule> parsed;
  for (const auto& rule : rules) {
    if (rule == "none") throw std::invalid_argument("--allow-connect none cannot be combined with other rules");
    parsed.push_back(AddressRule::parse(rule));
  }
  connect_ = std::move(parsed);
}

void Policy::set_unix_dirs(const std::vector<std::string>& dirs) {
  unix_dirs_.clear();
  for (const auto& dir : dirs) {
    std::error_code ec;
    auto canonical = std::filesystem::canonical(dir, ec);
    if (ec || !std::filesystem::is_directory(canonical)) {
      throw std::invalid_argument("--allow-unix " + dir + ": not a folder" + (ec ? " (" + ec.message() + ")" : ""));
    }
    unix_dirs_.push_back(std::move(canonical));
  }
}

std::vector<std::string> Policy::names_of(const std::vector<AddressRule>& rules) {
  std::vector<std::string> names;
  for (const auto& rule : rules) {
    if (!rule.name().empty() && std::find(names.begin(), names.end(), rule.name()) == names.end()) {
      names.push_back(rule.name());
    }
  }
  return names;
}

std::optional<std::string> Policy::check_addresses(const std::vector<AddressRule>& rules, const char* flag,
                                                   const std::string& what, const std::vector<ip::address>& addresses,
                                                   std::uint16_t port, const ResolvedNames& names) {
  for (const auto& address : addresses) {
    const bool allowed =
        std::any_of(rules.begin(), rules.end(), [&](const AddressRule& r) { return r.matches(address, port, names); });
    if (!allowed) {
      return what + ": " + bracketed(address) + " port " + std::to_string(port) + " is not allowed by the service's " +
             flag + " (it allows: " + rules_text(rules) + ")";
    }
  }
  return std::nullopt;
}

std::optional<std::string> Policy::check_listen(const std::string& what, const std::vector<ip::address>& addresses,
                                                std::uint16_t port, const ResolvedNames& names) const {
  return check_addresses(listen_, "--allow-listen", what, addresses, port, names);
}

std::optional<std::string> Policy::check_connect(const std::string& what, const std::vector<ip::address>& addresses,
                                                 std::uint16_t port, const ResolvedNames& names) const {
  return check_addresses(connect_, "--allow-connect", what, addresses, port, names);
}

std::optional<std::string> Policy::check_unix(const std::string& what, const std::string& path, bool listening) const {
  const std::string refused = what + ": the Unix path " + path + " ";
  if (unix_dirs_.empty()) return refused + "is not allowed: the service allows no Unix paths (--allow-unix DIR)";
  if (path.empty() || path.front() != '/') return refused + "must be absolute";
  std::filesystem::path given(path);
  if (!given.has_filename() || given.filename() == "." || given.filename() == "..") {
    return refused + "does not name a socket";
  }
  // The folder as the kernel will walk it (symbolic links followed), and for
  // a connect to an existing socket, where a link there points.
  std::error_code ec;
  std::filesystem::path target = resolved_socket_path(path, ec);
  if (ec) return refused + "is in a folder that cannot be resolved (" + ec.message() + ")";
  struct stat st {};
  if (::lstat(target.c_str(), &st) == 0 && S_ISLNK(st.st_mode)) {
    if (listening) return refused + "is a symbolic link: a server binds a path itself";
    target = std::filesystem::canonical(target, ec);
    if (ec) return refused + "is a symbolic link that cannot be resolved (" + ec.message() + ")";
  }
  for (const auto& dir : unix_dirs_) {
    if (is_under(target, dir)) return std::nullopt;
  }
  std::string dirs;
  for (const auto& dir : unix_dirs_) dirs += (dirs.empty() ? "" : ", ") + dir.string();
  return refused + "(" + target.string() + ") is not under a folder the service's --allow-unix allows (" + dirs + ")";
}

std::optional<std::string> Policy::check_exec(const std::string& program, bool shell) const {
  if (exec_any_) return std::nullopt;
  if (shell) return "shell sessions need the service's --allow-exec-any";
  if (!exec_.count(program)) return "'" + program + "' is not in the service's --allow-exec list";
  return std::nullopt;
}

std::optional<std::string> Policy::check_env(const std::string& name) const {
  for (const auto& pattern : env_patterns_) {
    if (::fnmatch(pattern.c_str(), name.c_str(), 0) == 0) return std::nullopt;
  }
  return "open_subprocess.env: the variable " + name + " is not allowed by the service's --allow-env" +
         (env_patterns_.empty() ? std::string(" (it allows none)") : "");
}

std::string Policy::describe() const {
  std::string dirs;
  for (const auto& dir : unix_dirs_) dirs += (dirs.empty() ? "" : ", ") + dir.string();
  std::string env;
  for (const auto& p : env_patterns_) env += (env.empty() ? "" : ", ") + p;
  std::string exec = exec_any_ ? "any" : "";
  if (!exec_any_) {
    for (const auto& p : exec_) exec += (exec.empty() ? "" : ", ") + p;
  }
  return "listen " + rules_text(listen_) + "; connect " + rules_text(connect_) + "; unix " +
         (dirs.empty() ? "none" : dirs) + "; exec " + (exec.empty() ? "none" : exec) + "; env " +
         (env.empty() ? "none" : env);
}

}  // namespace conduit::service
