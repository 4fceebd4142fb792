// The reactor of one Session() call: gRPC's callbacks, and nothing else.
// What it reads goes to the session's Link; what the Link queues it writes.
#pragma once

#include "session_link.hpp"

#include <atomic>

namespace conduit::service {

/// The reactor of one Session() call.
class SessionReactor final : public grpc::ServerBidiReactor<v1::ClientMessage, v1::Event> {
 public:
  SessionReactor(ConduitService& service, grpc::CallbackServerContext* context);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  void fail(grpc::Status status);

  ConduitService& service_;
  grpc::CallbackServerContext* context_;  // gRPC's, valid until OnDone
  std::shared_ptr<Link> link_;
  v1::ClientMessage incoming_;
  bool admitted_ = false;  // counted among the service's streams
  /// The client's messages ended (or failed) before the service ended the
  /// call; OnReadDone and OnCancel may run on two threads at once.
  std::atomic<bool> read_ended_running_{false};
  std::atomic<bool> opened_{false};  // read by OnCancel too
};

}  // namespace conduit::service
