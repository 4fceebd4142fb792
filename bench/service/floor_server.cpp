// The floor for the service benchmark: the least a gRPC server can do per
// session message. It speaks conduit.v1.Conduit's Session() but has no
// transport behind it: each write is answered at once by a data_received
// with the same bytes (an echo with no socket), the open by connection_made,
// close or abort by connection_lost, the client's half-close by eof_received
// and connection_lost. Completion-
// queue API on one thread, as gRPC's own benchmarks' servers are.
//
//   usage: floor_server [HOST:PORT]   (prints "listening HOST:PORT")
#include "conduit/v1/conduit.grpc.pb.h"

#include <grpcpp/grpcpp.h>

#include <deque>
#include <functional>
#include <iostream>
#include <memory>
#include <string>

namespace {

using conduit::v1::ClientMessage;
using conduit::v1::Event;

/// A completion-queue tag: what to do when the operation completes.
struct Tag {
  std::function<void(bool)> done;
};

/// One Session() call.
class Call {
 public:
  Call(conduit::v1::Conduit::AsyncService& service, grpc::ServerCompletionQueue& cq) : service_(service), cq_(cq) {
    accepted_.done = [this](bool ok) { on_accepted(ok); };
    read_.done = [this](bool ok) { on_read(ok); };
    written_.done = [this](bool ok) { on_written(ok); };
    finished_.done = [this](bool) { delete this; };
    service_.RequestSession(&context_, &stream_, &cq_, &cq_, &accepted_);
  }

 private:
  void on_accepted(bool ok) {
    if (!ok) return delete this;  // shutting down
    new Call(service_, cq_);      // the next caller
    stream_.Read(&in_, &read_);
  }

  void on_read(bool ok) {
    if (!ok) {  // the client half-closed: the session ends
      if (ending_) return;
      Event eof;
      eof.mutable_eof_received();
      queue(std::move(eof));
      Event lost;
      lost.mutable_connection_lost();
      queue(std::move(lost));
      ending_ = true;
      return;
    }
    Event out;
    const auto kind = in_.command().kind_case();
    if (in_.has_open_connection()) {
      out.mutable_connection_made()->set_session_id("floor");
    } else if (kind == conduit::v1::Command::kWrite) {
      *out.mutable_data_received()->mutable_data() = std::move(*in_.mutable_command()->mutable_write());
    } else if (kind == conduit::v1::Command::kClose || kind == conduit::v1::Command::kAbort) {
      out.mutable_connection_lost();
      ending_ = true;
    }
    if (out.kind_case() != Event::KIND_NOT_SET) queue(std::move(out));
    if (!ending_) stream_.Read(&in_, &read_);
  }

  void queue(Event event) {
    event.set_seq(++seq_);
    out_.push_back(std::move(event));
    if (!writing_) write_next();
  }

  void write_next() {
    if (out_.empty()) {
      if (ending_) stream_.Finish(grpc::Status::OK, &finished_);
      return;
    }
    writing_ = true;
    stream_.Write(out_.front(), &written_);
  }

  void on_written(bool ok) {
    writing_ = false;
    out_.pop_front();
    if (!ok) return stream_.Finish(grpc::Status::CANCELLED, &finished_);
    write_next();
  }

  conduit::v1::Conduit::AsyncService& service_;
  grpc::ServerCompletionQueue& cq_;
  grpc::ServerContext context_;
  grpc::ServerAsyncReaderWriter<Event, ClientMessage> stream_{&context_};
  ClientMessage in_;
  std::deque<Event> out_;
  bool writing_ = false;
  bool ending_ = false;
  std::uint64_t seq_ = 0;
  Tag accepted_, read_, written_, finished_;
};

}  // namespace

int main(int argc, char** argv) {
  const std::string address = argc > 1 ? argv[1] : "127.0.0.1:0";
  conduit::v1::Conduit::AsyncService service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterService(&service);
  auto cq = builder.AddCompletionQueue();
  auto server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::cerr << "floor_server: cannot listen on " << address << '\n';
    return 3;
  }
  std::cout << "listening " << address.substr(0, address.rfind(':')) << ":" << port << std::endl;
  new Call(service, *cq);
  void* tag = nullptr;
  bool ok = false;
  while (cq->Next(&tag, &ok)) static_cast<Tag*>(tag)->done(ok);
  return 0;
}
