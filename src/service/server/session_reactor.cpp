#include "session_reactor.hpp"

#include "session_kind.hpp"
#include "session_open.hpp"

namespace conduit::service {

namespace {
constexpr std::string_view session_method = "/conduit.v1.Conduit/Session";
}  // namespace

SessionReactor::SessionReactor(ConduitService& service, grpc::CallbackServerContext* context)
    : service_(service), context_(context) {
  if (auto status = service.authenticate(*context); !status.ok()) {
    Finish(service.refuse(*context, session_method, status));
    return;
  }
  auto record = std::make_shared<SessionRecord>();
  record->id = service.next_session_id();
  record->peer = service.peer_of(*context);
  link_ = std::make_shared<Link>(service, record);
  link_->attach(this);
  // From its first byte a stream holds a place among --max-sessions, and
  // has --open-timeout to send its open message.
  if (auto status = service.admit_stream(record, link_); !status.ok()) {
    link_->finish(service.refuse(*context, session_method, status));
    return;
  }
  admitted_ = true;
  StartRead(&incoming_);
}

void SessionReactor::fail(grpc::Status status) {
  // The status first: the abort ends the transport on the loop, whose
  // connection_lost would otherwise finish the call with OK before us.
  link_->finish(service_.refuse(*context_, session_method, std::move(status)));
  link_->abort();
}

void SessionReactor::OnReadDone(bool ok) {
  if (!ok) {
    // The client half-closed (or the call failed: OnCancel follows then).
    read_ended_running_ = !link_->finishing();
    if (!opened_) {
      if (!service_.forget_stream(link_->record()->id)) return;  // the open deadline ended it
      return link_->finish(service_.refuse(
          *context_, session_method,
          grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the stream ended before a message opened the session")));
    }
    link_->client_done_writing();
    return;
  }
  if (!opened_) {
    if (auto status = validate_open(incoming_, service_.options()); !status.ok()) {
      if (!service_.forget_stream(link_->record()->id)) return;
      return link_->finish(service_.refuse(*context_, session_method, status));
    }
    auto& record = *link_->record();
    const SessionKind& kind = *session_kind_of(incoming_);
    record.kind = kind.name;
    kind.describe(incoming_, record);
    if (kind.controllable) {
      record.control = [weak = std::weak_ptr<Link>(link_)](v1::Command command, std::string by,
                                                           SessionRecord::ControlAnswer answer) {
        auto link = weak.lock();
        if (!link) return answer(grpc::Status(grpc::StatusCode::NOT_FOUND, "the session has ended"), {});
        link->control(std::move(command), std::move(by), std::move(answer));
      };
    }
    record.abort = [weak = std::weak_ptr<Link>(link_)](std::string reason) {
      if (auto link = weak.lock()) link->abort(std::move(reason));
    };
    // The open deadline may have ended the stream meanwhile (its Finish is
    // on its way): then read no further.
    if (auto status = service_.add_session(link_->record()); !status.ok()) {
      if (status.error_code() == grpc::StatusCode::ABORTED) return;
      service_.forget_stream(link_->record()->id);
      return link_->finish(service_.refuse(*context_, session_method, status));
    }
    opened_ = true;
    link_->open(std::move(incoming_));
  } else if (incoming_.has_command()) {
    link_->record()->touch();
    link_->command(std::move(*incoming_.mutable_command()));
  } else {
    return fail(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "a session opens once: only commands may follow"));
  }
  StartRead(&incoming_);
}

void SessionReactor::OnWriteDone(bool ok) { link_->on_write_done(ok); }

void SessionReactor::OnCancel() {
  if (!link_) return;
  // Cancelled before the service's status reached the client. gRPC 1.51
  // tells the server no more: a message over the receive limit (the client
  // is told RESOURCE_EXHAUSTED; the read fails first, as a half-close does,
  // and may end the session), the client's cancel and a lost connection
  // look the same here, so the line names them all. Not logged: an error
  // status of the service's own (logged already), and a client that went
  // away once the session had ended, before its status arrived.
  if (!link_->finished_with_error() && (!link_->finishing() || read_ended_running_)) {
    service_.refuse(link_->record()->peer, session_method,
                    grpc::Status(grpc::StatusCode::CANCELLED,
                                 (opened_ ? "session " + link_->record()->id + ": " : std::string()) +
                                     "the call was cancelled before it ended: a message over "
                                     "--max-message-size (" +
                                     std::to_string(service_.options().max_message_bytes / 1024) +
                                     " KiB; gRPC answered RESOURCE_EXHAUSTED), or the client cancelled it or lost "
                                     "its connection"));
  }
  link_->abort();
}

void SessionReactor::OnDone() {
  if (link_) {
    link_->detach();
    if (opened_) {
      service_.remove_session(link_->record()->id);
      // If the transport still runs (the client vanished), end it.
      link_->abort();
    } else if (admitted_) {
      service_.forget_stream(link_->record()->id);
    }
  }
  delete this;
}

}  // namespace conduit::service
