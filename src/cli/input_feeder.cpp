#include "input_feeder.hpp"

#include <boost/asio/post.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace conduit::cli {

class InputFeeder::PipeReader final : public Protocol {
 public:
  explicit PipeReader(InputFeeder& feeder) : feeder_(feeder) {}
  void data_received(std::span<const std::byte> data) override { feeder_.sink_(data); }
  bool eof_received() override {
    feeder_.end_of_input();
    return false;
  }

 private:
  InputFeeder& feeder_;
};

InputFeeder::InputFeeder(EventLoop& loop, Sink sink, std::function<void()> on_eof)
    : loop_(loop), sink_(std::move(sink)), on_eof_(std::move(on_eof)) {}

InputFeeder::~InputFeeder() {
  *alive_ = false;
  if (pipe_) pipe_->abort();
  if (fd_ >= 0) ::close(fd_);
}

bool InputFeeder::start(int fd, std::string& error) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    error = std::strerror(errno);
    ::close(fd);
    return false;
  }
  // epoll watches pipes, sockets and terminals; not regular files, nor some
  // character devices (/dev/zero): those are read by posted reads.
  const bool pollable = S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode) || (S_ISCHR(st.st_mode) && ::isatty(fd));
  if (pollable) {
    loop_.connect_read_pipe(
        [this] { return std::make_shared<PipeReader>(*this); }, fd,
        [this, fd, alive = alive_](std::exception_ptr e, std::shared_ptr<Transport> transport, auto) {
          if (!*alive) {
            if (transport) transport->abort();
            return;
          }
          if (e) {
            // Refused (the descriptor stays ours): read it the other way.
            fd_ = fd;
          } else {
            pipe_ = std::move(transport);
            if (stopped_) return pipe_->close();
          }
          set_paused(paused_);
        });
    return true;
  }
  fd_ = fd;
  set_paused(paused_);
  return true;
}

void InputFeeder::set_paused(bool paused) {
  paused_ = paused;
  if (stopped_ || finished_) return;
  if (pipe_) {
    if (paused)
      pipe_->pause_reading();
    else
      pipe_->resume_reading();
  } else if (fd_ >= 0 && !paused && !read_posted_) {
    read_posted_ = true;
    asio::post(loop_.get_executor(), [this, alive = alive_] {
      if (*alive) read_chunk();
    });
  }
}

void InputFeeder::read_chunk() {
  read_posted_ = false;
  if (stopped_ || finished_ || paused_ || fd_ < 0) return;
  std::byte chunk[65536];
  const ssize_t n = ::read(fd_, chunk, sizeof chunk);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return set_paused(false);
  if (n <= 0) return end_of_input();  // EOF, or an error, which ends the input too
  sink_(std::span<const std::byte>(chunk, static_cast<std::size_t>(n)));
  set_paused(paused_);  // the sink may have paused us (pause_writing runs inside a write)
}

void InputFeeder::end_of_input() {
  if (finished_ || stopped_) return;
  finished_ = true;
  if (fd_ >= 0) ::close(std::exchange(fd_, -1));
  if (on_eof_) on_eof_();
}

bool InputFeeder::stop() {
  if (stopped_ || finished_) return false;
  stopped_ = true;
  if (pipe_) pipe_->close();
  if (fd_ >= 0) ::close(std::exchange(fd_, -1));
  return true;
}

}  // namespace conduit::cli
