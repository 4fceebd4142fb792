#include "codec.hpp"

#include <boost/asio/ip/address.hpp>

#include <stdexcept>
#include <system_error>

namespace conduit::service {

v1::Error error_of(std::exception_ptr exc) {
  v1::Error error;
  try {
    std::rethrow_exception(exc);
  } catch (const std::system_error& e) {
    if (e.code().category() == std::generic_category() || e.code().category() == std::system_category() ||
        std::string_view(e.code().category().name()) == "system") {
      error.set_errno_value(e.code().value());
    }
    error.set_message(e.what());
  } catch (const std::exception& e) {
    error.set_message(e.what());
  } catch (...) {
    error.set_message("unknown error");
  }
  return error;
}

std::exception_ptr exception_of(const v1::Error& error) {
  if (error.errno_value() != 0) {
    // The service's text already ends with the errno's; system_error adds it again.
    const std::error_code code(error.errno_value(), std::generic_category());
    std::string what = error.message();
    const std::string suffix = ": " + code.message();
    if (what.size() >= suffix.size() && what.compare(what.size() - suffix.size(), suffix.size(), suffix) == 0) {
      what.resize(what.size() - suffix.size());
    }
    return std::make_exception_ptr(std::system_error(code, what));
  }
  return std::make_exception_ptr(std::runtime_error(error.message()));
}

std::optional<SocketAddress> parse_address(const std::string& text) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos) return std::nullopt;
  std::string host = text.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  boost::system::error_code ec;
  auto ip = boost::asio::ip::make_address(host, ec);
  if (ec) return std::nullopt;
  return SocketAddress(ip, static_cast<std::uint16_t>(std::stoi(text.substr(colon + 1))));
}

std::optional<SocketAddress> parse_stream_address(const std::string& text) {
  if (text.empty()) return std::nullopt;
  if (auto ip = parse_address(text)) return ip;
  return SocketAddress::unix_path(text);
}

std::string command_name(const v1::Command& command) {
  const auto* field = v1::Command::descriptor()->FindFieldByNumber(command.kind_case());
  return field ? field->name() : "unknown";
}

}  // namespace conduit::service
