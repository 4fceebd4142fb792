#include <conduit/service/service.hpp>

#include <conduit/service/grpc_runtime.hpp>
#include "codec.hpp"
#include "name_lookup.hpp"
#include "session_link.hpp"
#include "session_reactor.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>

#include <openssl/crypto.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>

#include <vector>

namespace conduit::service {

ConduitService::ConduitService(ServiceOptions options)
    : options_(std::move(options)), audit_(options_.log_format, options_.quiet, options_.log_stream) {
  quiet_grpc_mutex_checks();
  loop_.set_log_handler([this](LogLevel level, std::string_view message) { audit_.loop_message(level, message); });
  sweep_timer_ = std::make_unique<asio::steady_timer>(loop_.context());
  sweep();
  loop_thread_ = std::thread([this] { loop_.run_forever(); });
  lookups_ = std::make_unique<NameLookups>();
}

void ConduitService::sweep() {
  sweep_timer_->expires_after(std::chrono::seconds(1));
  sweep_timer_->async_wait([this](const boost::system::error_code& ec) {
    if (ec) return;
    if (options_.idle_timeout.count() > 0) end_idle_sessions();
    end_late_opens();
    sweep();
  });
}

void ConduitService::end_idle_sessions() {
  const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
  const auto limit = std::chrono::duration_cast<std::chrono::steady_clock::duration>(options_.idle_timeout).count();
  std::vector<std::shared_ptr<SessionRecord>> idle;
  {
    std::lock_guard lock(sessions_mutex_);
    for (const auto& [id, record] : sessions_) {
      // A listening server waits for connections by design: not idle.
      if (record->kind != "server" && now - record->last_activity > limit) idle.push_back(record);
    }
  }
  for (const auto& record : idle) {
    loop_.log(LogLevel::info, "session " + record->id + " idle for " + std::to_string(options_.idle_timeout.count()) +
                                  " s: closing it");
    record->touch();  // one abort per timeout
    if (record->abort)
      record->abort("the service closed the session: idle for " + std::to_string(options_.idle_timeout.count()) + " s");
  }
}

// A stream that never opens holds a place among max_sessions and its
// buffers: it gets open_timeout to say what it wants.
void ConduitService::end_late_opens() {
  const auto deadline = std::chrono::steady_clock::now() - options_.open_timeout;
  std::vector<Unopened> late;
  {
    std::lock_guard lock(sessions_mutex_);
    for (auto it = unopened_.begin(); it != unopened_.end();) {
      if (it->second.record->started > deadline) {
        ++it;
        continue;
      }
      late.push_back(std::move(it->second));
      it = unopened_.erase(it);
    }
  }
  for (auto& stream : late) {
    const grpc::Status status(grpc::StatusCode::DEADLINE_EXCEEDED,
                              "no open message within " + std::to_string(options_.open_timeout.count()) +
                                  " s of the stream's start (the service's --open-timeout)");
    refuse(stream.record->peer, "/conduit.v1.Conduit/Session", status);
    if (auto link = stream.link.lock()) link->finish(status);
  }
}

ConduitService::~ConduitService() {
  asio::post(loop_.get_executor(), [this] {
    sweep_timer_->cancel();
    loop_.stop();
  });
  loop_thread_.join();
}

grpc::Status ConduitService::authenticate(const grpc::CallbackServerContext& context) const {
  if (options_.token.empty()) return grpc::Status::OK;
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "missing 'authorization: Bearer TOKEN' metadata");
  }
  std::string_view given(it->second.data(), it->second.size());
  // RFC 7235: the scheme is case-insensitive ("bearer", "BEARER").
  constexpr std::string_view scheme = "bearer ";
  if (given.size() < scheme.size() || !std::equal(scheme.begin(), scheme.end(), given.begin(), [](char a, char b) {
        return a == std::tolower(static_cast<unsigned char>(b));
      })) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "the authorization metadata is not 'Bearer TOKEN'");
  }
  given.remove_prefix(scheme.size());
  const std::string& expected = options_.token;
  // Constant time in the token's content (the length may leak; it is not secret).
  if (given.size() != expected.size() || CRYPTO_memcmp(given.data(), expected.data(), expected.size()) != 0) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "bad token");
  }
  return grpc::Status::OK;
}

grpc::Status ConduitService::refuse(const grpc::CallbackServerContext& context, std::string_view method,
                                    grpc::Status status) {
  refuse(peer_of(context), method, status);
  return status;
}

std::string ConduitService::peer_of(const grpc::ServerContextBase& context) const {
  std::string peer = context.peer();
  // A descriptor number is reused once its connection closes; name_peer
  // runs before gRPC sees the new one, so the map always has the caller
  // that holds the number now.
  if (peer.rfind("fd:", 0) == 0) {
    std::lock_guard lock(peers_mutex_);
    if (auto it = peers_by_fd_.find(std::atoi(peer.c_str() + 3)); it != peers_by_fd_.end()) return it->second;
  }
  return peer;
}

void ConduitService::name_peer(int fd, std::string peer) {
  std::lock_guard lock(peers_mutex_);
  peers_by_fd_[fd] = std::move(peer);
}

void ConduitService::refuse(std::string_view peer, std::string_view method, const grpc::Status& status) {
  audit_.refused(peer, method, status_code_name(status.error_code()), status.error_message());
}

void ConduitService::set_own_address(std::uint16_t port, std::string unix_path) {
  if (!unix_path.empty()) {
    // As sessions' paths are compared (claim_unix_listen_path).
    std::error_code ec;
    if (auto resolved = resolved_socket_path(unix_path, ec); !ec) unix_path = resolved.string();
  }
  own_unix_path_ = std::move(unix_path);
  own_port_.store(port, std::memory_order_release);
}

std::optional<std::string> ConduitService::check_not_own_address(std::uint16_t port,
                                                                 const std::string& unix_path) const {
  const int own = own_port_.load(std::memory_order_acquire);
  if (own < 0) return "the service is still starting: try again";
  if (!unix_path.empty()) {
    if (!own_unix_path_.empty() && unix_path == own_unix_path_) {
      return unix_path + " is the service's own listening socket";
    }
    return std::nullopt;
  }
  // Any address on that port: with SO_REUSEPORT, or a wildcard beside a
  // specific address, a session could take the service's own callers.
  if (own != 0 && port == own) {
    return "port " + std::to_string(port) +
           " is the service's own listening port (a session listening there could take other callers' calls)";
  }
  return std::nullopt;
}

std::string ConduitService::next_session_id() { return "s" + std::to_string(next_id_++); }

grpc::Status ConduitService::admit_stream(const std::shared_ptr<SessionRecord>& record, std::weak_ptr<Link> link) {
  std::lock_guard lock(sessions_mutex_);
  if (sessions_.size() + unopened_.size() >= options_.max_sessions) {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "the service has its maximum of " +
                                                                  std::to_string(options_.max_sessions) +
                                                                  " sessions open (streams not yet opened count too)");
  }
  unopened_[record->id] = {record, std::move(link)};
  return grpc::Status::OK;
}

grpc::Status ConduitService::add_session(const std::shared_ptr<SessionRecord>& record) {
  std::lock_guard lock(sessions_mutex_);
  if (!unopened_.contains(record->id)) return grpc::Status(grpc::StatusCode::ABORTED, "the open deadline passed");
  if (auto other = session_named_locked(record->name)) {
    return grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                        "session " + other->id + " is named '" + record->name + "' already: choose another name");
  }
  unopened_.erase(record->id);
  sessions_[record->id] = record;
  return grpc::Status::OK;
}

std::shared_ptr<SessionRecord> ConduitService::session_named_locked(const std::string& name) const {
  if (name.empty()) return nullptr;  // unnamed sessions share no name
  for (const auto& [id, record] : sessions_) {
    if (record->name == name) return record;
  }
  return nullptr;
}

bool ConduitService::forget_stream(const std::string& id) {
  std::lock_guard lock(sessions_mutex_);
  return unopened_.erase(id) != 0;
}

void ConduitService::log_session_opened(SessionRecord& record) {
  record.opened = true;
  std::vector<LogField> fields{field("session", record.id), field("peer", record.peer), field("kind", record.kind),
                               field("target", record.target)};
  if (!record.argv.empty()) fields.push_back(list_field("argv", record.argv));
  audit_.write(LogLevel::info, "session_opened",
               "session " + record.id + " opened by " + record.peer + ": " + record.kind + " " + record.target, fields);
}

void ConduitService::abort_all_sessions(const std::string& reason) {
  std::vector<std::shared_ptr<SessionRecord>> all;
  {
    std::lock_guard lock(sessions_mutex_);
    for (const auto& [id, record] : sessions_) all.push_back(record);
  }
  for (const auto& record : all) {
    if (record->abort) record->abort(reason);
  }
}

void ConduitService::remove_session(const std::string& id) {
  std::shared_ptr<SessionRecord> record;
  {
    std::lock_guard lock(sessions_mutex_);
    auto it = sessions_.find(id);
    if (it == sessions_.end()) return;
    record = it->second;
    sessions_.erase(it);
  }
  if (!record->opened) return;  // refused by the policy: logged as such
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - record->started).count();
  char duration[32];
  std::snprintf(duration, sizeof duration, "%.3f", seconds);
  audit_.write(LogLevel::info, "session_closed",
               "session " + id + " closed (" + record->kind + " " + record->target + ", " +
                   std::to_string(record->bytes_in.load()) + " bytes in, " + std::to_string(record->bytes_out.load()) +
                   " bytes out)",
               {field("session", id), field("peer", record->peer), field("kind", record->kind),
                field("target", record->target), number_field("bytes_in", std::to_string(record->bytes_in.load())),
                number_field("bytes_out", std::to_string(record->bytes_out.load())),
                number_field("duration_s", duration, true)});
}

grpc::ServerBidiReactor<v1::ClientMessage, v1::Event>* ConduitService::Session(grpc::CallbackServerContext* context) {
  return new SessionReactor(*this, context);
}

grpc::ServerUnaryReactor* ConduitService::ListSessions(grpc::CallbackServerContext* context,
                                                       const v1::ListSessionsRequest*,
                                                       v1::ListSessionsResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (auto status = authenticate(*context); !status.ok()) {
    reactor->Finish(refuse(*context, "/conduit.v1.Conduit/ListSessions", status));
    return reactor;
  }
  const auto now = std::chrono::steady_clock::now();
  std::lock_guard lock(sessions_mutex_);
  for (const auto& [id, record] : sessions_) {
    auto* info = response->add_sessions();
    info->set_session_id(id);
    info->set_kind(record->kind);
    info->set_target(record->target);
    info->set_peer(record->peer);
    info->set_bytes_in(record->bytes_in);
    info->set_bytes_out(record->bytes_out);
    info->set_age_seconds(std::chrono::duration<double>(now - record->started).count());
    info->set_name(record->name);
  }
  response->set_unopened_streams(static_cast<std::uint32_t>(unopened_.size()));
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* ConduitService::CloseSession(grpc::CallbackServerContext* context,
                                                       const v1::CloseSessionRequest* request,
                                                       v1::CloseSessionResponse*) {
  auto* reactor = context->DefaultReactor();
  if (auto status = authenticate(*context); !status.ok()) {
    reactor->Finish(refuse(*context, "/conduit.v1.Conduit/CloseSession", status));
    return reactor;
  }
  std::shared_ptr<SessionRecord> record;
  {
    std::lock_guard lock(sessions_mutex_);
    if (auto it = sessions_.find(request->session_id()); it != sessions_.end()) record = it->second;
  }
  if (!record) {
    reactor->Finish(refuse(*context, "/conduit.v1.Conduit/CloseSession",
                           grpc::Status(grpc::StatusCode::NOT_FOUND, "no session '" + request->session_id() + "'")));
    return reactor;
  }
  if (record->abort) record->abort("the session was closed by CloseSession from " + peer_of(*context));
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* ConduitService::ControlProxy(grpc::CallbackServerContext* context,
                                                       const v1::ControlProxyRequest* request,
                                                       v1::ProxyState* response) {
  static constexpr std::string_view method = "/conduit.v1.Conduit/ControlProxy";
  auto* reactor = context->DefaultReactor();
  if (auto status = authenticate(*context); !status.ok()) {
    reactor->Finish(refuse(*context, method, status));
    return reactor;
  }
  const auto& command = request->command();
  switch (command.kind_case()) {
    case v1::Command::KIND_NOT_SET:
    case v1::Command::kRemoveFault:
    case v1::Command::kProxyDown:
    case v1::Command::kProxyUp: break;
    case v1::Command::kSetFault:
      // Checked here, so that a bad fault is the caller's INVALID_ARGUMENT.
      try {
        fault_of(command.set_fault()).validate();
      } catch (const std::exception& e) {
        reactor->Finish(refuse(
            *context, method, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::string("set_fault: ") + e.what())));
        return reactor;
      }
      break;
    default:
      reactor->Finish(refuse(*context, method,
                             grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                          "ControlProxy takes set_fault, remove_fault, proxy_down or proxy_up (or no "
                                          "command, for the proxy's state), not " +
                                              command_name(command))));
      return reactor;
  }
  std::shared_ptr<SessionRecord> record;
  {
    std::lock_guard lock(sessions_mutex_);
    auto it = sessions_.find(request->session());
    record = it != sessions_.end() ? it->second : session_named_locked(request->session());
  }
  if (!record) {
    reactor->Finish(refuse(
        *context, method,
        grpc::Status(grpc::StatusCode::NOT_FOUND, "no session has the id or name '" + request->session() + "'")));
    return reactor;
  }
  if (!record->control) {  // set for the kinds ControlProxy reaches (session_kind.hpp)
    reactor->Finish(refuse(*context, method,
                           grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                        "session " + record->id + " is a " + record->kind + " session, not a proxy")));
    return reactor;
  }
  const std::string by = peer_of(*context);
  // Answered on the loop thread: gRPC's callback API lets Finish come from any.
  record->control(command, by, [this, reactor, response, by](grpc::Status status, v1::ProxyState state) {
    if (!status.ok()) {
      refuse(by, method, status);
      reactor->Finish(status);
      return;
    }
    *response = std::move(state);
    reactor->Finish(grpc::Status::OK);
  });
  return reactor;
}

grpc::ServerUnaryReactor* ConduitService::GetAddrInfo(grpc::CallbackServerContext* context,
                                                      const v1::GetAddrInfoRequest* request,
                                                      v1::GetAddrInfoResponse* response) {
  static constexpr std::string_view method = "/conduit.v1.Conduit/GetAddrInfo";
  auto* reactor = context->DefaultReactor();
  if (auto status = authenticate(*context); !status.ok()) {
    reactor->Finish(refuse(*context, method, status));
    return reactor;
  }
  const std::string host = request->has_host() ? request->host() : "(none)";
  const std::string port = request->has_port() ? request->port() : "(none)";
  if (host.size() > 1024 || port.size() > 64) {
    reactor->Finish(
        refuse(*context, method, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "host or port too long for a name")));
    return reactor;
  }
  auto peer = peer_of(*context);
  const bool queued = lookups_->submit([this, reactor, request, response, host, port, peer = std::move(peer)] {
    NameLookups::getaddrinfo(*request, *response);
    const std::string outcome =
        response->gai_error() != 0 ? response->message() : std::to_string(response->addresses_size()) + " addresses";
    audit_.write(LogLevel::info, "getaddrinfo", "getaddrinfo " + host + " " + port + " by " + peer + ": " + outcome,
                 {field("peer", peer), field("host", host), field("port", port),
                  number_field("gai_error", std::to_string(response->gai_error())),
                  number_field("addresses", std::to_string(response->addresses_size()))});
    reactor->Finish(grpc::Status::OK);
  });
  if (!queued) {
    reactor->Finish(refuse(*context, method,
                           grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "too many name lookups under way")));
  }
  return reactor;
}

grpc::ServerUnaryReactor* ConduitService::GetNameInfo(grpc::CallbackServerContext* context,
                                                      const v1::GetNameInfoRequest* request,
                                                      v1::GetNameInfoResponse* response) {
  static constexpr std::string_view method = "/conduit.v1.Conduit/GetNameInfo";
  auto* reactor = context->DefaultReactor();
  if (auto status = authenticate(*context); !status.ok()) {
    reactor->Finish(refuse(*context, method, status));
    return reactor;
  }
  if (request->host().size() > 64) {
    reactor->Finish(
        refuse(*context, method, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "host is not a numeric address")));
    return reactor;
  }
  auto peer = peer_of(*context);
  const bool queued = lookups_->submit([this, reactor, request, response, peer = std::move(peer)] {
    NameLookups::getnameinfo(*request, *response);
    const std::string outcome = response->gai_error() != 0 ? response->message() : response->host();
    audit_.write(
        LogLevel::info, "getnameinfo",
        "getnameinfo " + request->host() + " " + std::to_string(request->port()) + " by " + peer + ": " + outcome,
        {field("peer", peer), field("host", request->host()), number_field("port", std::to_string(request->port())),
         number_field("gai_error", std::to_string(response->gai_error()))});
    reactor->Finish(grpc::Status::OK);
  });
  if (!queued) {
    reactor->Finish(refuse(*context, method,
                           grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "too many name lookups under way")));
  }
  return reactor;
}

}  // namespace conduit::service
