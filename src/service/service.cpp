#include "service.hpp"

#include "grpc_runtime.hpp"
#include "session.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>

#include <openssl/crypto.h>

#include <vector>

namespace conduit::service {

ConduitService::ConduitService(ServiceOptions options) : options_(std::move(options)) {
  quiet_grpc_mutex_checks();
  if (options_.idle_timeout.count() > 0) {
    idle_timer_ = std::make_unique<asio::steady_timer>(loop_.context());
    check_idle_sessions();
  }
  loop_thread_ = std::thread([this] { loop_.run_forever(); });
}

// Every second, on the loop: abort the sessions idle for longer than allowed.
void ConduitService::check_idle_sessions() {
  idle_timer_->expires_after(std::chrono::seconds(1));
  idle_timer_->async_wait([this](const boost::system::error_code& ec) {
    if (ec) return;
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
      if (record->abort) record->abort();
    }
    check_idle_sessions();
  });
}

ConduitService::~ConduitService() {
  asio::post(loop_.get_executor(), [this] {
    if (idle_timer_) idle_timer_->cancel();
    loop_.stop();
  });
  loop_thread_.join();
}

grpc::Status ConduitService::authenticate(const grpc::CallbackServerContext& context) const {
  if (options_.token.empty()) return grpc::Status::OK;
  const std::string expected = "Bearer " + options_.token;
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "missing 'authorization: Bearer TOKEN' metadata");
  }
  const std::string_view given(it->second.data(), it->second.size());
  // Constant time in the token's content (the length may leak; it is not secret).
  if (given.size() != expected.size() || CRYPTO_memcmp(given.data(), expected.data(), expected.size()) != 0) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "bad token");
  }
  return grpc::Status::OK;
}

std::string ConduitService::next_session_id() { return "s" + std::to_string(next_id_++); }

grpc::Status ConduitService::add_session(const std::shared_ptr<SessionRecord>& record) {
  std::lock_guard lock(sessions_mutex_);
  if (sessions_.size() >= options_.max_sessions) {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        "the service has its maximum of " + std::to_string(options_.max_sessions) + " sessions open");
  }
  sessions_[record->id] = record;
  loop_.log(LogLevel::info, "session " + record->id + " opened by " + record->peer + ": " + record->kind + " " + record->target);
  return grpc::Status::OK;
}

void ConduitService::remove_session(const std::string& id) {
  std::lock_guard lock(sessions_mutex_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  loop_.log(LogLevel::info, "session " + id + " closed (" + it->second->kind + " " + it->second->target + ", " +
                                std::to_string(it->second->bytes_in.load()) + " bytes in, " +
                                std::to_string(it->second->bytes_out.load()) + " bytes out)");
  sessions_.erase(it);
}

grpc::ServerBidiReactor<v1::ClientMessage, v1::Event>* ConduitService::Session(grpc::CallbackServerContext* context) {
  return new SessionReactor(*this, context);
}

grpc::ServerUnaryReactor* ConduitService::ListSessions(grpc::CallbackServerContext* context,
                                                       const v1::ListSessionsRequest*,
                                                       v1::ListSessionsResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (auto status = authenticate(*context); !status.ok()) {
    reactor->Finish(status);
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
  }
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* ConduitService::CloseSession(grpc::CallbackServerContext* context,
                                                       const v1::CloseSessionRequest* request,
                                                       v1::CloseSessionResponse*) {
  auto* reactor = context->DefaultReactor();
  if (auto status = authenticate(*context); !status.ok()) {
    reactor->Finish(status);
    return reactor;
  }
  std::shared_ptr<SessionRecord> record;
  {
    std::lock_guard lock(sessions_mutex_);
    if (auto it = sessions_.find(request->session_id()); it != sessions_.end()) record = it->second;
  }
  if (!record) {
    reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, "no session '" + request->session_id() + "'"));
    return reactor;
  }
  if (record->abort) record->abort();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace conduit::service
