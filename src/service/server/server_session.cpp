// Server sessions (open_server): a listening server whose every accepted
// connection is a ConnectionSide tagged with a fresh id.
#include "session_kind.hpp"

#include "connection_session.hpp"
#include "session_open.hpp"

#include <conduit/server.hpp>
#include <conduit/tls.hpp>

#include <map>
#include <system_error>

namespace conduit::service {

namespace {

/// A protocol for a connection over a server session's max_connections:
/// dropped as soon as it is made.
class RefusedConnection final : public Protocol {
 public:
  void connection_made(std::shared_ptr<Transport> transport) override { transport->abort(); }
};

/// A listening server's session. Each accepted connection is a
/// ConnectionSide tagged with a fresh id; the client's commands reach it by
/// that id.
///
///   opening --started--> listening --stop_listening / close / abort / client done--> draining --last connection
///   gone--> ended
///      |                                                                               ^  (stopped listening)
///      (connection_lost, id 0)
///      +--stop_listening / close / abort / client done--> stopping --started-----------+  (closes the server at once)
///
/// close, abort and the client's half-close also close (or abort) every
/// connection; stop_listening leaves them open.
///
/// Backpressure: a slow client pauses reading on every connection. Each
/// connection's pause_writing / resume_writing, tagged with its id, tells
/// the client to stop writing to it, and a connection whose client writes
/// on regardless is aborted past the cap.
class ServerSide final : public SideEvents, public ConnectionOwner, public std::enable_shared_from_this<ServerSide> {
 public:
  ServerSide(std::shared_ptr<Link> link, const v1::OpenServer& open)
      : SideEvents(std::move(link)),
        connection_options_(ConnectionOptions::of(open)),
        max_connections_(open.max_connections() ? open.max_connections() : default_max_connections) {
    opened();  // a server takes close and abort while it opens; its connections come later
  }

  static constexpr std::size_t default_max_connections = 256;

  /// The server's protocol factory.
  std::shared_ptr<BaseProtocol> accept() {
    if (state_ != State::listening) {
      link_->service().loop().log(LogLevel::info,
                                  "session " + link_->record()->id + ": dropped a connection (the server is closing)");
      return std::make_shared<RefusedConnection>();
    }
    if (connections_.size() >= max_connections_) {
      log_session_refusal(
          *link_, grpc::StatusCode::RESOURCE_EXHAUSTED,
          "closed an accepted connection: max_connections " + std::to_string(max_connections_) + " open");
      return std::make_shared<RefusedConnection>();
    }
    // The accepted descriptor is open already: one more than at the last
    // count. Over budget, it goes.
    if (auto& descriptors = link_->service().descriptors(); !descriptors.allows(1)) {
      log_session_refusal(*link_, grpc::StatusCode::RESOURCE_EXHAUSTED,
                          "closed an accepted connection: the descriptor budget is spent: " + descriptors.describe());
      return std::make_shared<RefusedConnection>();
    }
    const std::uint64_t id = ++last_id_;
    auto side = std::make_shared<ConnectionSide>(link_, connection_options_, id, weak_from_this(), reading_);
    connections_.emplace(id, side);
    return side;
  }

  void started(std::shared_ptr<Server> server) {
    server_ = std::move(server);
    v1::Event event;
    auto* started = event.mutable_server_started();
    started->set_session_id(link_->record()->id);
    for (const auto& address : server_->sockets()) started->add_sockets(address.to_string());
    emit(std::move(event));
    if (state_ == State::stopping) {  // the client left while the server was opening
      state_ = State::draining;
      server_->close();
      return end_if_drained();
    }
    state_ = State::listening;
  }

  void command(const v1::Command& c) override {
    if (c.connection_id() != 0) {
      auto it = connections_.find(c.connection_id());
      if (it == connections_.end())
        return failed(c, "connection " + std::to_string(c.connection_id()) + " is not open");
      return it->second->deliver(c);
    }
    switch (c.kind_case()) {
      case v1::Command::kStopListening: return stop_listening();
      case v1::Command::kClose: return stop(false);
      case v1::Command::kAbort: return stop(true);
      default:
        return failed(c,
                      "a server session's command needs a connection_id (0, the server, takes stop_listening, close "
                      "and abort)");
    }
  }
  void client_done_writing() override { stop(false); }
  void abort() override { stop(true); }
  void set_reading(bool reading) override {
    reading_ = reading;
    for (auto& [id, connection] : connections_) connection->set_reading(reading);
  }

  // ---- from its connections ----
  void connection_gone(std::uint64_t id) override {
    connections_.erase(id);
    end_if_drained();
  }

 private:
  /// asyncio's Server.close(): no new connections; those open stay.
  void stop_listening() {
    if (state_ == State::opening) {
      state_ = State::stopping;
    } else if (state_ == State::listening) {
      state_ = State::draining;
      server_->close();
    }
    end_if_drained();
  }

  void stop(bool abort) {
    stop_listening();
    std::vector<std::shared_ptr<ConnectionSide>> open;
    for (auto& [id, connection] : connections_) open.push_back(connection);
    for (auto& connection : open) {
      if (abort)
        connection->abort();
      else
        connection->close();
    }
    end_if_drained();
  }

  void end_if_drained() {
    if (state_ != State::draining || !connections_.empty()) return;
    state_ = State::ended;
    server_.reset();
    lost(nullptr);
  }

  /// The diagram above.
  enum class State {
    opening,    ///< binding; no server yet
    stopping,   ///< asked to stop while binding: stops once it has the server
    listening,  ///< accepting connections
    draining,   ///< stopped listening; waiting for its connections to end
    ended,      ///< connection_lost sent
  };

  ConnectionOptions connection_options_;
  std::size_t max_connections_;
  std::shared_ptr<Server> server_;
  std::map<std::uint64_t, std::shared_ptr<ConnectionSide>> connections_;
  std::uint64_t last_id_ = 0;
  bool reading_ = true;  // the events queue lets connections read
  State state_ = State::opening;
};

}  // namespace

static void open_server(const std::shared_ptr<Link>& link, const v1::OpenServer& open) {
  EventLoop& loop = link->service().loop();
  const Policy& policy = link->service().options().policy;
  if (open.has_tcp()) {
    if (auto why = link->service().check_not_own_address(open.tcp().port(), {})) {
      return refuse_open(link, "open_server: " + *why);
    }
  }
  auto side = std::make_shared<ServerSide>(link, open);
  link->set_loop_side(side);
  ServerOptions options;
  if (open.backlog()) options.backlog = static_cast<int>(open.backlog());
  options.reuse_port = open.reuse_port();
  if (open.tls().enabled()) {
    try {
      options.tls = TlsOptions(
          tls::server_context_from_pem(open.tls().cert_pem(), open.tls().key_pem(), open.tls().client_ca_pem()));
    } catch (const std::exception& e) {
      link->service().log_session_opened(*link->record());
      return fail_open(link, std::make_exception_ptr(std::invalid_argument(
                                 std::string("open_server.tls: cannot use the certificate or key: ") + e.what())));
    }
  }
  // Weak: the server keeps its factory, and the side keeps the server.
  auto factory = [weak = std::weak_ptr<ServerSide>(side)]() -> std::shared_ptr<BaseProtocol> {
    if (auto server = weak.lock()) return server->accept();
    return std::make_shared<RefusedConnection>();
  };
  auto done = [link, side](std::exception_ptr error, std::shared_ptr<Server> server) {
    finish_open(link, error);
    if (!error) side->started(std::move(server));
  };
  if (!open.has_tcp()) {
    auto path = claim_unix_listen_path(link, "open_server", open.unix_path());
    if (!path) return;
    return loop.create_unix_server(factory, *path, options, done);
  }
  std::vector<std::string> hosts;
  if (!open.tcp().host().empty() && open.tcp().host() != "*") hosts.push_back(open.tcp().host());
  const std::string what = "open_server on " + host_port(hosts.empty() ? "*" : hosts.front(), open.tcp().port());
  with_rule_names(loop, policy.listen_names(),
                  [&loop, &policy, factory, done, what, options = std::move(options), hosts = std::move(hosts),
                   port = static_cast<std::uint16_t>(open.tcp().port())](auto names) mutable {
                    options.check_local_address = policy_check(policy, AddressUse::listen, what, names);
                    loop.create_server(factory, std::move(hosts), port, std::move(options), done);
                  });
}

namespace {

grpc::Status validate_server(const v1::ClientMessage& message, const ServiceOptions&) {
  using grpc::Status;
  using grpc::StatusCode;
  const auto& open = message.open_server();
  if (open.has_tcp()) {
    if (open.tcp().port() > 65535)
      return Status(StatusCode::INVALID_ARGUMENT, "open_server.tcp.port must be 0 to 65535");
  } else if (open.target_case() == v1::OpenServer::kUnixPath) {
    if (open.unix_path().empty()) return Status(StatusCode::INVALID_ARGUMENT, "open_server.unix_path is empty");
    if (open.unix_path().find('\0') != std::string::npos) {
      return Status(StatusCode::INVALID_ARGUMENT,
                    "open_server.unix_path holds a NUL byte (abstract sockets are not supported)");
    }
    if (open.tls().enabled()) return Status(StatusCode::INVALID_ARGUMENT, "open_server.tls: TLS needs tcp");
  } else {
    return Status(StatusCode::INVALID_ARGUMENT, "open_server: set tcp or unix_path");
  }
  if (open.tls().enabled() && (open.tls().cert_pem().empty() || open.tls().key_pem().empty())) {
    return Status(StatusCode::INVALID_ARGUMENT, "open_server.tls needs cert_pem and key_pem");
  }
  return validate_buffer_limits("open_server", open.write_buffer_high(), open.write_buffer_low());
}

void describe_server(const v1::ClientMessage& message, SessionRecord& record) {
  const auto& o = message.open_server();
  record.target = o.has_tcp()
                      ? std::string(o.tls().enabled() ? "tls://" : "tcp://") +
                            (o.tcp().host().empty() ? "*" : o.tcp().host()) + ":" + std::to_string(o.tcp().port())
                      : "unix://" + o.unix_path();
}

void open_server_session(const std::shared_ptr<Link>& link, const v1::ClientMessage& message) {
  open_server(link, message.open_server());
}

}  // namespace

const SessionKind server_session_kind{
    v1::ClientMessage::kOpenServer, "open_server", "server", 2, validate_server, describe_server, open_server_session};

}  // namespace conduit::service
