// The gRPC service: remote callers open transports on this host and drive
// them as sessions (proto/conduit/v1/conduit.proto). The core runs on one
// EventLoop thread; gRPC's callback threads only post work to it.
#pragma once

#include <conduit/service/audit_log.hpp>
#include <conduit/service/descriptor_budget.hpp>
#include <conduit/service/policy.hpp>
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

class Link;         // session_link.hpp (the library's own)
class NameLookups;  // name_lookup.hpp (the library's own)

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
  /// The largest message a client may send (gRPC enforces it; the service
  /// names it when a call fails on it).
  std::size_t max_message_bytes = 4 << 20;
  /// Events queued for a slow client before the session's transport stops
  /// reading (and resumes below a quarter of it).
  std::size_t max_buffered_events_bytes = 1 << 20;
  /// A session with no event and no command for this long is aborted
  /// (zero: never); server sessions are exempt (they wait by design).
  std::chrono::seconds idle_timeout{0};
  /// A Session() stream that has not sent its open message this long after
  /// it started is ended (DEADLINE_EXCEEDED); until then it counts against
  /// max_sessions like an open session.
  std::chrono::seconds open_timeout{5};
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
  std::string name;               // the open message's (proxies), or empty
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
  /// ControlProxy's way in: posts `command` (from caller `by`) to the loop,
  /// where the session's side answers it through `answer`, exactly once,
  /// on the loop thread.
  using ControlAnswer = std::function<void(grpc::Status, v1::ProxyState)>;
  std::function<void(v1::Command command, std::string by, ControlAnswer answer)> control;
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
  grpc::ServerUnaryReactor* ControlProxy(grpc::CallbackServerContext* context, const v1::ControlProxyRequest* request,
                                         v1::ProxyState* response) override;
  grpc::ServerUnaryReactor* GetAddrInfo(grpc::CallbackServerContext* context, const v1::GetAddrInfoRequest* request,
                                        v1::GetAddrInfoResponse* response) override;
  grpc::ServerUnaryReactor* GetNameInfo(grpc::CallbackServerContext* context, const v1::GetNameInfoRequest* request,
                                        v1::GetNameInfoResponse* response) override;

  EventLoop& loop() { return loop_; }
  /// The descriptors sessions may spend (checked at each open and accept).
  DescriptorBudget& descriptors() { return descriptors_; }
  const ServiceOptions& options() const { return options_; }
  AuditLog& audit() { return audit_; }

  /// UNAUTHENTICATED unless the call carries the token (constant-time check
  /// of the token; the scheme, "Bearer", in any case).
  grpc::Status authenticate(const grpc::CallbackServerContext& context) const;
  /// Who the caller of `context` is, for the log: gRPC's peer ("ipv4:
  /// 127.0.0.1:5555"), or for a caller on the service's Unix socket its
  /// credentials ("unix:pid=7,uid=1000,gid=1000").
  std::string peer_of(const grpc::ServerContextBase& context) const;
  /// The connection handed to gRPC as descriptor `fd` is `peer`
  /// (UnixListener; gRPC names it "fd:N").
  void name_peer(int fd, std::string peer);

  /// Log a refusal of `method` from the caller of `context`; returns `status`.
  grpc::Status refuse(const grpc::CallbackServerContext& context, std::string_view method, grpc::Status status);
  void refuse(std::string_view peer, std::string_view method, const grpc::Status& status);

  /// Where the service itself listens, once it does (a TCP port, or a Unix
  /// path): no session may ever listen there.
  void set_own_address(std::uint16_t port, std::string unix_path);
  /// A reason to refuse listening on `port` or on the canonical
  /// `unix_path` (its folder resolved), if it is the service's own (or the
  /// service does not know its own yet).
  std::optional<std::string> check_not_own_address(std::uint16_t port, const std::string& unix_path) const;

  /// Abort every session (on shutdown), telling each client `reason`.
  void abort_all_sessions(const std::string& reason);

  /// A Session() stream started (authenticated) and is not open yet: it
  /// counts against max_sessions from now on (RESOURCE_EXHAUSTED past it),
  /// and `link` is finished with DEADLINE_EXCEEDED if no open message came
  /// within open_timeout.
  grpc::Status admit_stream(const std::shared_ptr<SessionRecord>& record, std::weak_ptr<Link> link);
  /// Its open message came: the stream becomes a registered session.
  /// ALREADY_EXISTS if an open session has its name (the stream is
  /// forgotten then); ABORTED if the open deadline ended it first (its call
  /// is finishing: nothing more to do).
  grpc::Status add_session(const std::shared_ptr<SessionRecord>& record);
  /// It ended before opening. False if the open deadline ended it first.
  bool forget_stream(const std::string& id);
  /// Log the open of a registered session (the policy let it through).
  void log_session_opened(SessionRecord& record);
  void remove_session(const std::string& id);
  std::string next_session_id();

 private:
  /// The open session named `name` (none for ""); sessions_mutex_ held.
  std::shared_ptr<SessionRecord> session_named_locked(const std::string& name) const;
  /// Every second, on the loop: idle sessions and late opens.
  void sweep();
  void end_idle_sessions();
  void end_late_opens();

  ServiceOptions options_;
  AuditLog audit_;
  DescriptorBudget descriptors_;
  std::atomic<int> own_port_{-1};  // -1: not listening yet
  std::string own_unix_path_;      // set with own_port_, before it
  mutable std::mutex peers_mutex_;
  std::map<int, std::string> peers_by_fd_;  // UnixListener's callers, by descriptor
  EventLoop loop_;
  std::thread loop_thread_;
  mutable std::mutex sessions_mutex_;
  std::map<std::string, std::shared_ptr<SessionRecord>> sessions_;
  /// Streams admitted and not open yet, by session id.
  struct Unopened {
    std::shared_ptr<SessionRecord> record;
    std::weak_ptr<Link> link;
  };
  std::map<std::string, Unopened> unopened_;
  std::atomic<std::uint64_t> next_id_{1};
  std::unique_ptr<asio::steady_timer> sweep_timer_;  // on the loop
  /// Last: destroyed first, it waits for the lookups under way (they log).
  std::unique_ptr<NameLookups> lookups_;
};

}  // namespace conduit::service
