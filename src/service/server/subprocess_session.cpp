// Subprocess sessions (open_subprocess): a child's callbacks as events,
// commands onto it and its stdin.
#include "session_kind.hpp"

#include "session_open.hpp"
#include "side_events.hpp"

#include <algorithm>

namespace conduit::service {

namespace {

/// Events from a child's callbacks; commands onto it and its stdin.
class SubprocessSide final : public SubprocessProtocol, public SideEvents {
 public:
  explicit SubprocessSide(std::shared_ptr<Link> link) : SideEvents(std::move(link)) {}

  void connection_made(std::shared_ptr<SubprocessTransport> transport) override {
    transport_ = std::move(transport);
    v1::Event event;
    event.mutable_connection_made()->set_session_id(link_->record()->id);
    event.mutable_connection_made()->set_pid(transport_->get_pid());
    link_->emit(std::move(event));
    if (aborted_) return transport_->close();  // the client left while it started
    opened();
  }
  void pipe_data_received(int fd, std::span<const std::byte> data) override {
    link_->record()->bytes_in += data.size();
    for (std::size_t at = 0; at < data.size(); at += max_event_data) {
      auto chunk = data.subspan(at, std::min(max_event_data, data.size() - at));
      v1::Event event;
      event.mutable_pipe_data_received()->set_fd(fd);
      event.mutable_pipe_data_received()->set_data(std::string(as_string_view(chunk)));
      link_->emit(std::move(event));
    }
  }
  void pipe_connection_lost(int fd, std::exception_ptr exc) override {
    v1::Event event;
    event.mutable_pipe_connection_lost()->set_fd(fd);
    if (exc) *event.mutable_pipe_connection_lost()->mutable_error() = error_of(exc);
    link_->emit(std::move(event));
  }
  void process_exited() override {
    v1::Event event;
    event.mutable_process_exited()->set_returncode(transport_->get_returncode().value_or(0));
    link_->emit(std::move(event));
  }
  void pause_writing() override { report_writing_paused(true, stdin_buffered()); }
  void resume_writing() override { report_writing_paused(false, stdin_buffered()); }
  void connection_lost(std::exception_ptr exc) override {
    lost(exc);
    transport_.reset();
  }

  void command(const v1::Command& c) override {
    if (!transport_) return failed(c, "the process session is over");
    try {
      auto stdin_pipe = transport_->get_pipe_transport(0);
      switch (c.kind_case()) {
        case v1::Command::kWrite:
          if (!stdin_pipe) return failed(c, "the child's stdin is closed");
          link_->record()->bytes_out += c.write().size();
          stdin_pipe->write(c.write());
          if (over_cap(c, stdin_pipe->get_write_buffer_size(), "the child's stdin")) transport_->close();
          break;
        case v1::Command::kWriteEof:
          if (stdin_pipe) stdin_pipe->close();
          break;
        case v1::Command::kClose: transport_->close(); break;
        case v1::Command::kAbort: transport_->close(); break;
        case v1::Command::kClosePipe: {
          const int fd = c.close_pipe().fd();
          if (fd < 0 || fd > 2) return failed(c, "close_pipe.fd must be 0, 1 or 2");
          if (auto pipe = transport_->get_pipe_transport(fd)) pipe->close();
          break;
        }
        case v1::Command::kSendSignal:
          if (c.send_signal().process_group())
            transport_->send_signal_to_group(c.send_signal().signal());
          else
            transport_->send_signal(c.send_signal().signal());
          break;
        case v1::Command::kTerminate: transport_->terminate(); break;
        case v1::Command::kKill: transport_->kill(); break;
        case v1::Command::kPauseReading: set_output_reading(false); break;
        case v1::Command::kResumeReading: set_output_reading(true); break;
        default: failed(c, "not a command for a subprocess session");
      }
    } catch (const std::exception& e) {
      failed(c, e.what());
    }
  }
  void client_done_writing() override {
    if (!transport_) return;
    if (auto stdin_pipe = transport_->get_pipe_transport(0)) stdin_pipe->close();
  }
  void abort() override {
    if (transport_)
      transport_->close();  // kills the child (and its group)
    else
      aborted_ = true;
  }
  void set_reading(bool reading) override { set_output_reading(reading); }

 private:
  std::size_t stdin_buffered() const {
    auto stdin_pipe = transport_ ? transport_->get_pipe_transport(0) : nullptr;
    return stdin_pipe ? stdin_pipe->get_write_buffer_size() : 0;
  }

  void set_output_reading(bool reading) {
    if (!transport_) return;
    for (int fd : {1, 2}) {
      if (auto pipe = transport_->get_pipe_transport(fd)) {
        if (reading)
          pipe->resume_reading();
        else
          pipe->pause_reading();
      }
    }
  }

  std::shared_ptr<SubprocessTransport> transport_;
  bool aborted_ = false;  // before connection_made
};

}  // namespace

static void open_subprocess(const std::shared_ptr<Link>& link, const v1::OpenSubprocess& open) {
  EventLoop& loop = link->service().loop();
  auto side = std::make_shared<SubprocessSide>(link);
  link->set_loop_side(side);
  SubprocessOptions options;
  if (!open.cwd().empty()) options.cwd = open.cwd();
  if (!open.env().empty()) {
    std::vector<std::string> env;
    for (const auto& [k, v] : open.env()) env.push_back(k + "=" + v);
    options.env = std::move(env);
  }
  link->service().log_session_opened(*link->record());
  auto done = [link](std::exception_ptr error, auto, auto) {
    if (error) fail_open(link, error);
  };
  auto factory = [side] { return side; };
  if (!open.shell().empty()) {
    loop.subprocess_shell(factory, open.shell(), options, done);
  } else {
    std::vector<std::string> args(open.argv().begin() + 1, open.argv().end());
    loop.subprocess_exec(factory, open.argv(0), args, options, done);
  }
}

namespace {

grpc::Status validate_subprocess(const v1::ClientMessage& message, const ServiceOptions& options) {
  using grpc::Status;
  using grpc::StatusCode;
  const auto& open = message.open_subprocess();
  if (open.argv().empty() == open.shell().empty()) {
    return Status(StatusCode::INVALID_ARGUMENT, "open_subprocess: set exactly one of argv and shell");
  }
  if (!open.argv().empty() && open.argv(0).empty()) {
    return Status(StatusCode::INVALID_ARGUMENT, "open_subprocess.argv[0] (the program) is empty");
  }
  for (int i = 0; i < open.argv_size(); ++i) {
    if (open.argv(i).find('\0') != std::string::npos) {
      return Status(StatusCode::INVALID_ARGUMENT, "open_subprocess.argv[" + std::to_string(i) + "] holds a NUL byte");
    }
  }
  if (open.shell().find('\0') != std::string::npos || open.cwd().find('\0') != std::string::npos) {
    return Status(StatusCode::INVALID_ARGUMENT, "open_subprocess: shell and cwd may not hold NUL bytes");
  }
  for (const auto& [name, value] : open.env()) {
    if (name.empty() || name.find('=') != std::string::npos || name.find('\0') != std::string::npos ||
        value.find('\0') != std::string::npos) {
      return Status(StatusCode::INVALID_ARGUMENT, "open_subprocess.env: '" + name +
                                                      "' is not a variable name (empty, or holds '=' or NUL), "
                                                      "or its value holds NUL");
    }
  }
  const bool shell = !open.shell().empty();
  if (auto why = options.policy.check_exec(shell ? std::string() : open.argv(0), shell)) {
    return Status(StatusCode::PERMISSION_DENIED, *why);
  }
  // The caller's environment replaces the child's: LD_PRELOAD and the
  // like would make any allowed program run any code.
  for (const auto& [name, value] : open.env()) {
    if (auto why = options.policy.check_env(name)) return Status(StatusCode::PERMISSION_DENIED, *why);
  }
  return Status::OK;
}

void describe_subprocess(const v1::ClientMessage& message, SessionRecord& record) {
  const auto& s = message.open_subprocess();
  record.target = s.shell().empty() ? s.argv(0) : "sh -c " + s.shell();
  if (s.shell().empty())
    record.argv.assign(s.argv().begin(), s.argv().end());
  else
    record.argv = {"/bin/sh", "-c", s.shell()};
}

void open_subprocess_session(const std::shared_ptr<Link>& link, const v1::ClientMessage& message) {
  open_subprocess(link, message.open_subprocess());
}

}  // namespace

const SessionKind subprocess_session_kind{v1::ClientMessage::kOpenSubprocess,
                                          "open_subprocess",
                                          "subprocess",
                                          4,
                                          validate_subprocess,
                                          describe_subprocess,
                                          open_subprocess_session};

}  // namespace conduit::service
