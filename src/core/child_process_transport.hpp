// The subprocess transport (asyncio's BaseSubprocessTransport with its pipe
// protocols): a child started with posix_spawn, its stdio pipes as pipe
// transports, and its exit watched through a pidfd, so the loop never
// blocks on it and it is always reaped. child_process_transport.cpp also holds
// the loop's subprocess_exec.
#pragma once

#include "conduit/detail/protocol_guard.hpp"
#include "conduit/event_loop.hpp"
#include "conduit/transports.hpp"
#include "pipe_transport.hpp"

#include <boost/asio/posix/stream_descriptor.hpp>

#include <array>
#include <memory>
#include <optional>

namespace conduit {

/// A SubprocessTransport for a child this loop spawned.
///
///   running --exit noticed (pidfd)--> exited --every pipe closed--> finished
///      \--every pipe closed--> pipes_done --exit noticed----------/
///
/// process_exited() is called on the exit, pipe_connection_lost(fd) as each
/// pipe closes, and connection_lost(nullptr) once, on reaching "finished"
/// (SPEC X4). close() (in any state: is_closing() from then on) closes the
/// pipes, kills a running child and, with a process group of its own,
/// everything left in that group, exited child or not; the callbacks still
/// follow as the pipes close and the child is reaped.
class ChildProcessTransport final : public SubprocessTransport, private detail::LoopResource {
 public:
  /// Takes the spawned child `pid`, its `pidfd`, and its pipes (null where
  /// a stream is not a pipe), not started yet.
  ChildProcessTransport(EventLoop& loop, int pid, int pidfd, bool own_process_group,
                        std::shared_ptr<PipeTransport> stdin_pipe, std::shared_ptr<PipeTransport> stdout_pipe,
                        std::shared_ptr<PipeTransport> stderr_pipe);
  ~ChildProcessTransport() override;

  /// Connect the pipes, then post connection_made and watch for the exit.
  void start(std::shared_ptr<SubprocessProtocol> protocol);

  bool is_closing() const override { return close_called_; }
  void close() override;
  void set_protocol(std::shared_ptr<BaseProtocol> protocol) override { protocol_.set(std::move(protocol)); }
  std::shared_ptr<BaseProtocol> get_protocol() const override { return protocol_.get(); }

  int get_pid() const override { return pid_; }
  std::shared_ptr<Transport> get_pipe_transport(int fd) const override;
  std::optional<int> get_returncode() const override { return returncode_; }
  void send_signal(int signal) override;
  void send_signal_to_group(int signal) override;

  // From the pipe protocols.
  void on_pipe_data(int fd, std::span<const std::byte> data);
  void on_pipe_lost(int fd, std::exception_ptr exc);
  void on_stdin_pause();
  void on_stdin_resume();

 protected:
  std::any extra_info(std::string_view name) const override;

 private:
  enum class State {
    running,     // the child runs and a pipe is open
    exited,      // the child was reaped (returncode_ is set); a pipe is open
    pipes_done,  // every pipe closed; the child runs
    finished,    // exited and every pipe closed: connection_lost is posted or done
  };

  void on_loop_destroyed() override;
  std::shared_ptr<ChildProcessTransport> self();
  void watch_exit();
  void on_exit_signalled();
  void kill_running_child();
  void kill_process_group();
  /// Move along the diagram after an exit or the last pipe's close.
  void advance();
  void call_connection_lost();

  EventLoop& loop_;
  int pid_;
  boost::asio::posix::stream_descriptor pidfd_;
  bool own_process_group_;
  std::shared_ptr<PipeTransport> stdin_pipe_;
  std::array<std::shared_ptr<PipeTransport>, 2> output_pipes_;  // fds 1 and 2
  std::array<bool, 3> pipe_open_{};                             // a pipe whose connection_lost has not come yet
  detail::ProtocolGuard protocol_{loop_, *this, detail::ProtocolGuard::subprocess, "a subprocess transport"};
  State state_ = State::running;
  std::optional<int> returncode_;  // set when reaped
  bool close_called_ = false;      // close() was called (orthogonal to state_)
};

}  // namespace conduit
