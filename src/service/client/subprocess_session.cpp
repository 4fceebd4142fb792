#include <conduit/service/remote.hpp>

#include "remote_session.hpp"
#include "sessions.hpp"

#include <conduit/detail/write_flow_control.hpp>

#include <signal.h>

#include <algorithm>
#include <string>
#include <system_error>

namespace conduit::service {

namespace {

class RemoteSubprocess;

/// The child's stdin, as get_pipe_transport(0) returns it: writes and close
/// (EOF) go to the session. Its write buffer is what waits to go to the
/// service; `pressure(true/false)` tells the child's transport when that
/// passes the high watermark and when it drains below the low one.
class RemoteStdin final : public Transport {
 public:
  RemoteStdin(std::shared_ptr<SessionStream> stream, std::function<void(bool)> pressure)
      : stream_(std::move(stream)), pressure_(std::move(pressure)) {}
  bool is_closing() const override { return closed_; }
  void close() override { write_eof(); }
  void set_protocol(std::shared_ptr<BaseProtocol>) override {
    throw std::logic_error("set_protocol: a remote child's stdin has no protocol of its own");
  }
  std::shared_ptr<BaseProtocol> get_protocol() const override { return nullptr; }
  bool is_reading() const override { return false; }
  void pause_reading() override {}
  void resume_reading() override {}
  void set_write_buffer_limits(std::optional<std::int64_t> high, std::optional<std::int64_t> low) override {
    flow_.set_limits(high, low);
    check_pressure();
  }
  std::pair<std::size_t, std::size_t> get_write_buffer_limits() const override { return flow_.limits(); }
  std::size_t get_write_buffer_size() const override { return stream_->queued_bytes(); }
  using WriteTransport::write;
  void write(std::span<const std::byte> data) override {
    if (data.empty() || closed_) return;
    for (std::size_t at = 0; at < data.size(); at += max_command_data) {
      auto chunk = data.subspan(at, std::min(max_command_data, data.size() - at));
      stream_->command(make_command([&](v1::Command& c) { c.set_write(std::string(as_string_view(chunk))); }));
    }
    check_pressure();
  }
  using WriteTransport::writelines;
  /// One write of everything (SPEC RS5).
  void writelines(std::span<const std::span<const std::byte>> buffers) override {
    std::string joined;
    for (auto b : buffers) joined.append(as_string_view(b));
    write(as_bytes(joined));
  }
  void write_eof() override {
    if (closed_) return;
    closed_ = true;
    stream_->command(make_command([](v1::Command& c) { c.mutable_write_eof(); }));
  }
  bool can_write_eof() const override { return true; }
  void abort() override { write_eof(); }

  /// A queued command went out.
  void check_pressure() {
    const std::size_t size = get_write_buffer_size();
    if (!paused_ && flow_.should_pause(size)) {
      paused_ = true;
      pressure_(true);
    } else if (paused_ && flow_.should_resume(size)) {
      paused_ = false;
      pressure_(false);
    }
  }

 protected:
  std::any extra_info(std::string_view) const override { return {}; }

 private:
  std::shared_ptr<SessionStream> stream_;
  std::function<void(bool)> pressure_;
  bool closed_ = false;
  bool paused_ = false;
  detail::WriteFlowControl flow_{WriteTransport::default_high_water};
};

/// A SubprocessTransport for a child running on the service's host.
class RemoteSubprocess final : public SubprocessTransport {
 public:
  RemoteSubprocess(EventLoop& loop, std::shared_ptr<SubprocessProtocol> protocol,
                   std::function<void(std::exception_ptr)> done)
      : loop_(loop), done_(std::move(done)) {
    protocol_.set(std::move(protocol));
  }

  void start(const RemoteOptions& remote, v1::OpenSubprocess open) {
    v1::ClientMessage first;
    *first.mutable_open_subprocess() = std::move(open);
    auto self = std::shared_ptr<RemoteSubprocess>(shared_from_this(), this);
    stream_ = SessionStream::start(loop_, remote, std::move(first),
                                   {[self](const v1::Event& e) { self->on_event(e); },
                                    [self](std::uint64_t) {
                                      if (self->stdin_) self->stdin_->check_pressure();
                                    },
                                    [self](const grpc::Status& s) { self->on_finished(s); }});
    std::weak_ptr<RemoteSubprocess> weak = self;
    stdin_ = std::make_shared<RemoteStdin>(stream_, [weak](bool paused) {
      if (auto owner = weak.lock()) owner->pauses_.set_local(paused, &owner->protocol_);
    });
  }

  bool is_closing() const override { return closed_; }
  void close() override {
    if (closed_) return;
    closed_ = true;
    stream_->command(make_command([](v1::Command& c) { c.mutable_close(); }));
  }
  void set_protocol(std::shared_ptr<BaseProtocol> protocol) override { protocol_.set(std::move(protocol)); }
  std::shared_ptr<BaseProtocol> get_protocol() const override { return protocol_.get(); }
  int get_pid() const override { return pid_; }
  std::shared_ptr<Transport> get_pipe_transport(int fd) const override { return fd == 0 ? stdin_ : nullptr; }
  std::optional<int> get_returncode() const override { return returncode_; }
  void send_signal(int signal) override {
    if (closed_) throw std::system_error(ESRCH, std::generic_category(), "ProcessLookupError: the transport is closed");
    if (returncode_) return;
    stream_->command(make_command([&](v1::Command& c) { c.mutable_send_signal()->set_signal(signal); }));
  }
  void send_signal_to_group(int signal) override {
    if (closed_) throw std::system_error(ESRCH, std::generic_category(), "ProcessLookupError: the transport is closed");
    if (ending_.lost) return;  // the session ended: nothing of the child's is left
    stream_->command(make_command([&](v1::Command& c) {
      c.mutable_send_signal()->set_signal(signal);
      c.mutable_send_signal()->set_process_group(true);
    }));
  }

 protected:
  std::any extra_info(std::string_view name) const override {
    if (name == "subprocess" && pid_) return pid_;
    return {};
  }

 private:
  /// A protocol callback that throws is reported, and the child carries
  /// on, as a local one's (SPEC RS6).
  void on_event(const v1::Event& event) {
    if (!protocol_) return;
    switch (event.kind_case()) {
      case v1::Event::kConnectionMade:
        pid_ = event.connection_made().pid();
        protocol_.connection_made();
        if (done_) std::exchange(done_, nullptr)(nullptr);
        break;
      case v1::Event::kPipeDataReceived:
        protocol_.pipe_data_received(event.pipe_data_received().fd(), as_bytes(event.pipe_data_received().data()));
        break;
      case v1::Event::kPipeConnectionLost:
        protocol_.pipe_connection_lost(
            event.pipe_connection_lost().fd(),
            event.pipe_connection_lost().has_error() ? exception_of(event.pipe_connection_lost().error()) : nullptr);
        break;
      case v1::Event::kProcessExited:
        returncode_ = event.process_exited().returncode();
        protocol_.process_exited();
        break;
      case v1::Event::kPauseWriting: pauses_.set_remote(true, &protocol_); break;
      case v1::Event::kResumeWriting: pauses_.set_remote(false, &protocol_); break;
      case v1::Event::kConnectionLost:
        ending_.lost = true;
        if (event.connection_lost().has_error()) ending_.lost_error = exception_of(event.connection_lost().error());
        break;
      case v1::Event::kOpenFailed: ending_.lost_error = exception_of(event.open_failed().error()); break;
      default: break;
    }
  }

  void on_finished(const grpc::Status& status) {
    if (done_)
      std::exchange(done_, nullptr)(ending_.for_status(status));
    else if (protocol_)
      protocol_.connection_lost(ending_.lost ? ending_.lost_error : broken_error(status));
    protocol_.reset();
    stdin_.reset();
  }

  WritingPauses pauses_;
  EventLoop& loop_;
  detail::ProtocolGuard protocol_{loop_, *this, detail::ProtocolGuard::subprocess, "a remote subprocess"};
  std::function<void(std::exception_ptr)> done_;
  std::shared_ptr<SessionStream> stream_;
  std::shared_ptr<RemoteStdin> stdin_;
  int pid_ = 0;
  std::optional<int> returncode_;
  bool closed_ = false;
  Ending ending_;
};

}  // namespace

std::shared_ptr<SubprocessTransport> open_subprocess_session(EventLoop& loop, const RemoteOptions& remote,
                                                             v1::OpenSubprocess open,
                                                             std::shared_ptr<SubprocessProtocol> protocol,
                                                             std::function<void(std::exception_ptr)> done) {
  auto transport = std::make_shared<RemoteSubprocess>(loop, std::move(protocol), std::move(done));
  transport->start(remote, std::move(open));
  return transport;
}

}  // namespace conduit::service
