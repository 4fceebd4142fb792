// The gRPC service: remote callers open transports on this host and drive
// them as sessions (proto/conduit/v1/conduit.proto). The core runs on one
// EventLoop thread; gRPC's callback threads only post work to it.
#pragma once

#include <conduit/service/audit_log.hpp>
#include "conduit/v1/conduit.grpc.pb.h"
#include <conduit/service/policy.hpp>

#include <conduit/event_loop.hpp>

#include <grpcpp/grpcpp.h>

#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>

namespace conduit::service {

/// Policy and limits, from `conduit serve`'s flags.
struct ServiceOptions {
  /// Bearer token every call must present ("authorization: Bearer T");
  /// empty: no authentication (allowed on loopback only, by `serve`).
  std::string token;
  /// Whether mTLS authenticates callers (reflection then needs it too).
  bool mtls = false;
  /// What callers may listen on, connect to, run and set (--allow-*).
  Policy policy;
  std::size_t max_sessions = 1000;
  /// Events queued for a slow client before the session's transport stops
  /// reading (and resumes below a quarter of it).
  std::size_t max_buffered_events_bytes = 1 << 20;
  /// A session with no event and no command for this long is aborted
  /// (zero: never); server sessions are exempt (they wait by design).
  std::chrono::seconds idle_timeout{0};
  /// Sessions' TCP connections end with ETIMEDOUT when the peer acknowledges
  /// nothing for this long: keepalive probes while idle, TCP_USER_TIMEOUT
  /// while data waits (zero: the kernel's defaults).
  std::chrono::seconds dead_peer_timeout{60};
  LogFormat log_format = LogFormat::text;
  /// Where the log goes (stderr when null).
  std::ostream* log_stream = nullptr;
  /// Log warnings and errors only (refusals are warnings).
  bool quiet = false;
};

/// What ListSessions reports of one session; counters are updated from the
/// loop thread and read from gRPC threads.
struct SessionRecord {
  std::string id, kind, target, peer;
  std::vector<std::string> argv;  // a subprocess's whole command line
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  /// Set on the loop when the policy let the session open (and its open
  /// line was logged): only then is its close logged.
  std::atomic<bool> opened{false};
  std::atomic<std::uint64_t> bytes_in{0}, bytes_out{0};
  /// steady_clock ticks of the last event or command (for the idle timeout).
  std::atomic<std::int64_t> last_activity{std::chrono::steady_clock::now().time_since_epoch().count()};
  void touch() { last_activity = std::chrono::steady_clock::now().time_since_epoch().count(); }
  /// Posts an abort of its transport to the loop; `reason` becomes the
  /// error of its connection_lost, so the client learns why.
  std::function<void(std::string reason)> abort;
};

class ConduitService final : public v1::Conduit::CallbackService {
 public:
  explicit ConduitService(ServiceOptions options);
  ~ConduitService() override;

  grpc::ServerBidiReactor<v1::ClientMessage, v1::Event>* Session(grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* ListSessions(grpc::CallbackServerContext* context, const v1::ListSessionsRequest* request,
                                         v1::ListSessionsResponse* response) override;
  grpc::ServerUnaryReactor* CloseSession(grpc::CallbackServerContext* context, const v1::CloseSessionRequest* request,
                                         v1::CloseSessionResponse* response) override;

  EventLoop& loop() { return loop_; }
  const ServiceOptions& options() const { return options_; }
  AuditLog& audit() { return audit_; }

  /// UNAUTHENTICATED unless the call carries the token (constant-time check
  /// of the token; the scheme, "Bearer", in any case).
  grpc::Status authenticate(const grpc::CallbackServerContext& context) const;
  /// Log a refusal of `method` from the caller of `context`; returns `status`.
  grpc::Status refuse(const grpc::CallbackServerContext& context, std::string_view method, grpc::Status status);
  void refuse(std::string_view peer, std::string_view method, const grpc::Status& status);

  /// Where the service itself listens, once it does (a TCP port, or a Unix
  /// path): a server session may never bind it.
  void set_own_address(std::uint16_t port, std::string unix_path);
  /// A reason to refuse listening on `port` or `unix_path`, if it is the
  /// service's own (or the service does not know its own yet).
  std::optional<std::string> check_not_own_address(std::uint16_t port, const std::string& unix_path) const;

  /// Abort every session (on shutdown), telling each client `reason`.
  void abort_all_sessions(const std::string& reason);

  /// Register a session; RESOURCE_EXHAUSTED past max_sessions.
  grpc::Status add_session(const std::shared_ptr<SessionRecord>& record);
  /// Log the open of a registered session (the policy let it through).
  void log_session_opened(SessionRecord& record);
  void remove_session(const std::string& id);
  std::string next_session_id();

 private:
  void check_idle_sessions();

  ServiceOptions options_;
  AuditLog audit_;
  std::atomic<int> own_port_{-1};  // -1: not listening yet
  std::string own_unix_path_;       // set with own_port_, before it
  EventLoop loop_;
  std::thread loop_thread_;
  mutable std::mutex sessions_mutex_;
  std::map<std::string, std::shared_ptr<SessionRecord>> sessions_;
  std::atomic<std::uint64_t> next_id_{1};
  std::unique_ptr<asio::steady_timer> idle_timer_;  // on the loop, when idle_timeout is set
};

}  // namespace conduit::service
