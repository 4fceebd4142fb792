// The floor for the service benchmark: the least a gRPC server can do per
// session message. It speaks conduit.v1.Conduit's Session() but has no
// transport behind it: each write is answered at once by a data_received
// with the same bytes (an echo with no socket), the open by connection_made,
// close or abort by connection_lost, the client's half-close by eof_received
// and connection_lost. Completion-
// queue API on one thread, as gRPC's own benchmarks' servers are.
//
// With --handoff, each message makes the trip the service's messages make
// between gRPC and a session loop on a thread of its own (an io_context,
// as EventLoop is): the read is handed to that thread, which makes the
// answer and hands it back (through a grpc::Alarm) to be written. The
// difference from the plain floor is what the hand-off alone costs.
//
//   usage: floor_server [--handoff] [HOST:PORT]   (prints "listening HOST:PORT")
#include "conduit/v1/conduit.grpc.pb.h"

#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <deque>
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <thread>

namespace {

using conduit::v1::ClientMessage;
using conduit::v1::Event;

/// A completion-queue tag: what to do when the operation completes.
struct Tag {
  std::function<void(bool)> done;
};

/// --handoff: the session loop's thread, or null.
boost::asio::io_context* session_loop = nullptr;

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
    if (ok && session_loop && in_.has_command()) {
      // To the loop thread and back, as the service's commands and events go.
      boost::asio::post(*session_loop, [this, message = std::move(in_)]() mutable {
        auto* back = new Handback{this, answer(message), {}, {}};
        back->tag.done = [back](bool) {
          back->call->queue_answer(std::move(back->event));
          delete back;
        };
        back->alarm.Set(&cq_, gpr_now(GPR_CLOCK_MONOTONIC), &back->tag);
      });
      return;
    }
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
    queue_answer(answer(in_));
  }

  /// The event that answers `in` (none for what needs no answer).
  static Event answer(ClientMessage& in) {
    Event out;
    const auto kind = in.command().kind_case();
    if (in.has_open_connection()) {
      out.mutable_connection_made()->set_session_id("floor");
    } else if (kind == conduit::v1::Command::kWrite) {
      *out.mutable_data_received()->mutable_data() = std::move(*in.mutable_command()->mutable_write());
    } else if (kind == conduit::v1::Command::kClose || kind == conduit::v1::Command::kAbort) {
      out.mutable_connection_lost();
    }
    return out;
  }

  void queue_answer(Event out) {
    if (out.has_connection_lost()) ending_ = true;
    if (out.kind_case() != Event::KIND_NOT_SET) queue(std::move(out));
    if (!ending_) stream_.Read(&in_, &read_);
  }

  /// An answer on its way back from the loop thread.
  struct Handback {
    Call* call;
    Event event;
    grpc::Alarm alarm;
    Tag tag;
  };

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
  boost::asio::io_context loop;
  auto work = boost::asio::make_work_guard(loop);
  std::thread loop_thread;
  int arg = 1;
  if (argc > arg && std::string(argv[arg]) == "--handoff") {
    session_loop = &loop;
    loop_thread = std::thread([&loop] { loop.run(); });
    ++arg;
  }
  const std::string address = argc > arg ? argv[arg] : "127.0.0.1:0";
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
  work.reset();
  if (loop_thread.joinable()) loop_thread.join();
  return 0;
}
