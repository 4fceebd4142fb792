#include "connection_session.hpp"

#include "session_kind.hpp"
#include "session_open.hpp"

#include <conduit/tls.hpp>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <iterator>

namespace conduit::service {

namespace {

/// Make a vanished TCP peer (host down, cable cut) show up as ETIMEDOUT
/// within about `timeout`, instead of after the kernel's many minutes of
/// retransmissions; with TCP_USER_TIMEOUT set, Linux also ends a connection
/// whose keepalive probes go unanswered for that long.
void bound_dead_peer_detection(Transport& transport, std::chrono::seconds timeout) {
  if (timeout.count() == 0) return;
  auto peer = transport.get_extra_info_as<SocketAddress>("peername");
  auto fd = transport.get_extra_info_as<int>("socket");
  if (!peer || peer->is_unix() || !fd) return;
  const int seconds = static_cast<int>(timeout.count());
  const int on = 1, idle = std::max(1, seconds / 2), interval = std::max(1, seconds / 6), count = 3;
  const unsigned user_timeout_ms = static_cast<unsigned>(seconds) * 1000;
  // Best effort: a failure leaves the kernel's defaults, which still work.
  (void)::setsockopt(*fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
  (void)::setsockopt(*fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  (void)::setsockopt(*fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
  (void)::setsockopt(*fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
  (void)::setsockopt(*fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof user_timeout_ms);
}

}  // namespace

std::optional<std::string> ConnectionSide::set_socket_option(const v1::SocketOption& option) {
  // What a protocol tunes on its own connection; nothing that would reach
  // beyond it (SO_BINDTODEVICE, SO_MARK, IP_TRANSPARENT, ...).
  static constexpr std::pair<int, int> allowed[] = {
      {SOL_SOCKET, SO_KEEPALIVE},  {SOL_SOCKET, SO_SNDBUF},         {SOL_SOCKET, SO_RCVBUF},
      {IPPROTO_TCP, TCP_NODELAY},  {IPPROTO_TCP, TCP_KEEPIDLE},     {IPPROTO_TCP, TCP_KEEPINTVL},
      {IPPROTO_TCP, TCP_KEEPCNT},  {IPPROTO_TCP, TCP_USER_TIMEOUT}, {IPPROTO_IP, IP_TOS},
      {IPPROTO_IPV6, IPV6_TCLASS},
  };
  const std::pair<int, int> asked{option.level(), option.option()};
  if (std::find(std::begin(allowed), std::end(allowed), asked) == std::end(allowed)) {
    return "set_socket_option: level " + std::to_string(option.level()) + " option " + std::to_string(option.option()) +
           " is not one a session may set (see SocketOption)";
  }
  auto peer = transport_->get_extra_info_as<SocketAddress>("peername");
  auto fd = transport_->get_extra_info_as<int>("socket");
  if (!fd || (peer && peer->is_unix() && option.level() != SOL_SOCKET)) {
    return "set_socket_option: not a TCP connection";
  }
  const int value = option.value();
  if (::setsockopt(*fd, option.level(), option.option(), &value, sizeof value) != 0) {
    return "set_socket_option: " + std::string(std::strerror(errno));
  }
  return std::nullopt;
}

void ConnectionSide::pause_writing() { writing_paused_changed(true); }
void ConnectionSide::resume_writing() { writing_paused_changed(false); }

void ConnectionSide::writing_paused_changed(bool paused) {
  report_writing_paused(paused, transport_ ? transport_->get_write_buffer_size() : 0);
}

void ConnectionSide::connection_made(std::shared_ptr<Transport> transport) {
  transport_ = std::move(transport);
  options_.apply_limits(*transport_);
  // Paused before the protocol's first event goes out: nothing is read
  // until the client says resume_reading (a pause_reading in its
  // connection_made, SPEC RS2).
  if (client_paused_) transport_->pause_reading();
  bound_dead_peer_detection(*transport_, link_->service().options().dead_peer_timeout);
  v1::Event event;
  auto* made = connection_id_ ? event.mutable_connection_accepted() : event.mutable_connection_made();
  made->set_session_id(link_->record()->id);
  if (auto peer = transport_->get_extra_info_as<SocketAddress>("peername")) made->set_peername(peer->to_string());
  if (auto name = transport_->get_extra_info_as<SocketAddress>("sockname")) made->set_sockname(name->to_string());
  if (auto cipher = transport_->get_extra_info_as<CipherInfo>("cipher")) {
    made->set_tls_version(cipher->protocol);
    made->set_tls_cipher(cipher->name);
  }
  emit(std::move(event));
  if (!reading_) transport_->pause_reading();
  // Accepted while the server was stopping (connection_made comes a turn
  // after the accept), or the client left while it connected: end it the
  // way the others ended.
  if (ending_) {
    if (*ending_ == End::abort)
      transport_->abort();
    else
      transport_->close();
    return;
  }
  opened();
}

void ConnectionSide::connection_lost(std::exception_ptr exc) {
  transport_.reset();
  if (connection_id_ == 0) return lost(exc);
  emit(lost_event(exc));
  if (auto server = server_.lock()) server->connection_gone(connection_id_);  // may destroy this side: last
}

static void open_connection(const std::shared_ptr<Link>& link, const v1::OpenConnection& open) {
  EventLoop& loop = link->service().loop();
  const Policy& policy = link->service().options().policy;
  auto side = std::make_shared<ConnectionSide>(link, ConnectionOptions::of(open));
  link->set_loop_side(side);
  auto done = [link](std::exception_ptr error, auto, auto) { finish_open(link, error); };
  auto factory = [side] { return side; };
  if (!open.has_tcp()) {
    if (auto why = policy.check_unix("open_connection", open.unix_path(), false)) return refuse_open(link, *why);
    link->service().log_session_opened(*link->record());
    return loop.create_unix_connection(factory, open.unix_path(), [link](std::exception_ptr error, auto, auto) {
      if (error) fail_open(link, error);
    });
  }
  ConnectOptions options;
  if (open.tls().enabled()) {
    std::shared_ptr<asio::ssl::context> context;
    if (open.tls().insecure()) {
      context = tls::insecure_client_context();
    } else if (open.tls().ca_pem().empty()) {
      context = tls::client_context();
    } else {
      try {
        context = tls::client_context_from_pem(open.tls().ca_pem());
      } catch (const std::exception& e) {
        link->service().log_session_opened(*link->record());
        return fail_open(link, std::make_exception_ptr(std::invalid_argument(
                                   std::string("open_connection.tls.ca_pem: cannot use the CA: ") + e.what())));
      }
    }
    TlsOptions tls(context);
    if (!open.tls().server_hostname().empty()) tls.server_hostname = open.tls().server_hostname();
    options.tls = std::move(tls);
  }
  if (open.has_local_addr()) {
    // Numeric (checked at the open). Binding a port of one's choice is
    // listening's business; an ephemeral one only picks the interface.
    const auto& local = open.local_addr();
    const auto port = static_cast<std::uint16_t>(local.port());
    if (port != 0) {
      if (auto why = policy.check_listen("open_connection from " + host_port(local.host(), port),
                                         {asio::ip::make_address(local.host())}, port, {})) {
        return refuse_open(link, *why);
      }
    }
    options.local_addr = std::pair(local.host(), port);
  }
  with_rule_names(loop, policy.connect_names(),
                  [link, &loop, &policy, factory, done, options = std::move(options), host = open.tcp().host(),
                   port = static_cast<std::uint16_t>(open.tcp().port())](auto names) mutable {
                    options.check_remote_address =
                        policy_check(policy, AddressUse::connect, "open_connection to " + host_port(host, port), names);
                    loop.create_connection(factory, host, port, std::move(options), done);
                  });
}

namespace {

grpc::Status validate_connection(const v1::ClientMessage& message, const ServiceOptions&) {
  using grpc::Status;
  using grpc::StatusCode;
  const auto& open = message.open_connection();
  if (open.has_tcp()) {
    if (open.tcp().host().empty()) return Status(StatusCode::INVALID_ARGUMENT, "open_connection.tcp.host is empty");
    if (open.tcp().port() == 0 || open.tcp().port() > 65535) {
      return Status(StatusCode::INVALID_ARGUMENT, "open_connection.tcp.port must be 1 to 65535");
    }
    if (open.has_local_addr()) {
      boost::system::error_code ec;
      boost::asio::ip::make_address(open.local_addr().host(), ec);
      if (ec || open.local_addr().port() > 65535) {
        return Status(StatusCode::INVALID_ARGUMENT,
                      "open_connection.local_addr needs a numeric host and a port 0 to 65535");
      }
    }
  } else if (open.target_case() == v1::OpenConnection::kUnixPath) {
    if (open.unix_path().empty()) return Status(StatusCode::INVALID_ARGUMENT, "open_connection.unix_path is empty");
    if (open.unix_path().find('\0') != std::string::npos) {
      return Status(StatusCode::INVALID_ARGUMENT,
                    "open_connection.unix_path holds a NUL byte (abstract sockets are not supported)");
    }
    if (open.tls().enabled()) return Status(StatusCode::INVALID_ARGUMENT, "open_connection.tls: TLS needs tcp");
    if (open.has_local_addr()) {
      return Status(StatusCode::INVALID_ARGUMENT, "open_connection.local_addr: a local address needs tcp");
    }
  } else {
    return Status(StatusCode::INVALID_ARGUMENT, "open_connection: set tcp or unix_path");
  }
  return validate_buffer_limits("open_connection", open.write_buffer_high(), open.write_buffer_low());
}

void describe_connection(const v1::ClientMessage& message, SessionRecord& record) {
  const auto& c = message.open_connection();
  record.target = c.has_tcp() ? std::string(c.tls().enabled() ? "tls://" : "tcp://") + c.tcp().host() + ":" +
                                    std::to_string(c.tcp().port())
                              : "unix://" + c.unix_path();
}

void open_connection_session(const std::shared_ptr<Link>& link, const v1::ClientMessage& message) {
  open_connection(link, message.open_connection());
}

}  // namespace

const SessionKind connection_session_kind{v1::ClientMessage::kOpenConnection,
                                          "open_connection",
                                          "connection",
                                          1,
                                          validate_connection,
                                          describe_connection,
                                          open_connection_session};

}  // namespace conduit::service
