// The gRPC service: remote callers open transports on this host and drive
// them as sessions (proto/conduit/v1/conduit.proto). The core runs on one
// EventLoop thread; gRPC's callback threads only post work to it.
#pragma once

#include "conduit/v1/conduit.grpc.pb.h"

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
  /// Programs a subprocess session may run (argv[0], exactly), unless
  /// allow_exec_any; shell sessions need allow_exec_any.
  std::set<std::string> allow_exec;
  bool allow_exec_any = false;
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
};

/// What ListSessions reports of one session; counters are updated from the
/// loop thread and read from gRPC threads.
struct SessionRecord {
  std::string id, kind, target, peer;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::atomic<std::uint64_t> bytes_in{0}, bytes_out{0};
  /// steady_clock ticks of the last event or command (for the idle timeout).
  std::atomic<std::int64_t> last_activity{std::chrono::steady_clock::now().time_since_epoch().count()};
  void touch() { last_activity = std::chrono::steady_clock::now().time_since_epoch().count(); }
  std::function<void()> abort;  // posts an abort of its transport to the loop
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

  /// UNAUTHENTICATED unless the call carries the token (constant-time check).
  grpc::Status authenticate(const grpc::CallbackServerContext& context) const;

  /// Register a session; RESOURCE_EXHAUSTED past max_sessions.
  grpc::Status add_session(const std::shared_ptr<SessionRecord>& record);
  void remove_session(const std::string& id);
  std::string next_session_id();

 private:
  void check_idle_sessions();

  ServiceOptions options_;
  EventLoop loop_;
  std::thread loop_thread_;
  mutable std::mutex sessions_mutex_;
  std::map<std::string, std::shared_ptr<SessionRecord>> sessions_;
  std::atomic<std::uint64_t> next_id_{1};
  std::unique_ptr<asio::steady_timer> idle_timer_;  // on the loop, when idle_timeout is set
};

}  // namespace conduit::service
