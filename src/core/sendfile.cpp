// loop.sendfile: the kernel's sendfile(2) on TCP and Unix transports, and
// asyncio's read/write fallback everywhere else.
#include "conduit/event_loop.hpp"

#include "completion.hpp"
#include "stream_transport.hpp"

#include <boost/asio/post.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <system_error>
#include <vector>

namespace conduit {

namespace {

using SendfileHandler = asio::any_completion_handler<void(std::exception_ptr, std::uint64_t)>;

// Bytes read from the file per write in the fallback (asyncio's
// SENDFILE_FALLBACK_READBUFFER_SIZE).
constexpr std::size_t fallback_chunk = 256 * 1024;

/// The fallback: stands in for the transport's protocol while the file is
/// copied, so that it sees pause/resume_writing and a lost connection
/// (asyncio's _SendfileFallbackProtocol), then gives the protocol back.
///
///   copying --pause_writing--> waiting --resume_writing--> copying
///   copying --all sent / EOF / error / connection lost--> done
class SendfileFallback final : public Protocol, public std::enable_shared_from_this<SendfileFallback> {
 public:
  SendfileFallback(EventLoop& loop, std::shared_ptr<Transport> transport, int file, std::uint64_t offset,
                   std::optional<std::uint64_t> count, SendfileHandler handler)
      : loop_(loop),
        transport_(std::move(transport)),
        original_(transport_->get_protocol()),
        file_(file),
        offset_(offset),
        remaining_(count),
        handler_(std::move(handler)) {}

  void start() {
    resume_reading_ = transport_->is_reading();
    transport_->pause_reading();
    transport_->set_protocol(shared_from_this());
    // Already over the high watermark: wait for the first resume.
    waiting_ = transport_->get_write_buffer_size() > transport_->get_write_buffer_limits().second;
    if (!waiting_) schedule();
  }

  void pause_writing() override { waiting_ = true; }
  void resume_writing() override {
    waiting_ = false;
    schedule();
  }
  void connection_lost(std::exception_ptr exc) override {
    // The real protocol must still hear of it.
    transport_->set_protocol(original_);
    if (original_) original_->connection_lost(exc);
    finish(exc ? exc
               : std::make_exception_ptr(std::system_error(std::make_error_code(std::errc::connection_aborted),
                                                           "sendfile: the connection was closed")),
           false);
  }

 private:
  void schedule() {
    if (done_ || scheduled_) return;
    scheduled_ = true;
    asio::post(loop_.get_executor(), [self = shared_from_this()] {
      self->scheduled_ = false;
      self->copy();
    });
  }

  // One chunk per turn of the loop, so the transport's own writes progress.
  void copy() {
    if (done_ || waiting_) return;
    if (remaining_ && *remaining_ == 0) return finish(nullptr, true);
    buffer_.resize(
        static_cast<std::size_t>(std::min<std::uint64_t>(remaining_.value_or(fallback_chunk), fallback_chunk)));
    ssize_t n;
    do {
      // A pipe or socket has no offsets: read it in sequence (from 0 only).
      n = sequential_ ? ::read(file_, buffer_.data(), buffer_.size())
                      : ::pread(file_, buffer_.data(), buffer_.size(), static_cast<off_t>(offset_ + sent_));
      if (n < 0 && errno == ESPIPE && !sequential_ && offset_ == 0) {
        sequential_ = true;
        errno = EINTR;  // retry as a plain read
      }
    } while (n < 0 && errno == EINTR);
    if (n < 0)
      return finish(std::make_exception_ptr(std::system_error(errno, std::generic_category(), "sendfile: read")), true);
    if (n == 0) return finish(nullptr, true);  // end of file
    sent_ += static_cast<std::uint64_t>(n);
    if (remaining_) *remaining_ -= static_cast<std::uint64_t>(n);
    transport_->write(std::span(buffer_.data(), static_cast<std::size_t>(n)));
    schedule();
  }

  void finish(std::exception_ptr error, bool give_back) {
    if (done_) return;
    done_ = true;
    if (give_back && transport_->get_protocol().get() == this) {
      transport_->set_protocol(original_);
      if (resume_reading_) transport_->resume_reading();
    }
    ::lseek(file_, static_cast<off_t>(offset_ + sent_), SEEK_SET);
    detail::post_completion(loop_, std::move(handler_), error, sent_);
  }

  EventLoop& loop_;
  std::shared_ptr<Transport> transport_;
  std::shared_ptr<BaseProtocol> original_;
  int file_;
  std::uint64_t offset_;
  std::optional<std::uint64_t> remaining_;
  std::uint64_t sent_ = 0;
  SendfileHandler handler_;
  std::vector<std::byte> buffer_;
  bool resume_reading_ = false;
  bool sequential_ = false;  // read() instead of pread()
  bool waiting_ = false;
  bool scheduled_ = false;
  bool done_ = false;
};

void start_fallback(EventLoop& loop, std::shared_ptr<Transport> transport, int file, std::uint64_t offset,
                    std::optional<std::uint64_t> count, SendfileHandler handler) {
  std::make_shared<SendfileFallback>(loop, std::move(transport), file, offset, count, std::move(handler))->start();
}

template <class Native>
void start_native(EventLoop& loop, Native& native, std::shared_ptr<Transport> transport, int file, std::uint64_t offset,
                  std::optional<std::uint64_t> count, bool fallback, SendfileHandler handler) {
  // std::function needs a copyable target; the handler is move-only.
  auto shared_handler = std::make_shared<SendfileHandler>(std::move(handler));
  native.send_file(file, offset, count,
                   [&loop, transport, file, offset, count, fallback, shared_handler](std::exception_ptr error,
                                                                                     std::uint64_t sent) mutable {
                     SendfileHandler done = std::move(*shared_handler);
                     if (error && fallback && sent == 0) {
                       try {
                         std::rethrow_exception(error);
                       } catch (const std::system_error& e) {
                         if (e.code() == std::errc::operation_not_supported) {
                           return start_fallback(loop, std::move(transport), file, offset, count, std::move(done));
                         }
                       } catch (...) {
                       }
                     }
                     detail::post_completion(loop, std::move(done), error, sent);
                   });
}

}  // namespace

void EventLoop::sendfile_impl(std::shared_ptr<Transport> transport, int file, std::uint64_t offset,
                              std::optional<std::uint64_t> count, bool fallback, SendfileHandler handler) {
  try {
    if (!transport) throw std::invalid_argument("sendfile: no transport");
    if (transport->is_closing()) throw std::logic_error("sendfile: the transport is closing");
    if (::fcntl(file, F_GETFD) < 0) throw std::invalid_argument("sendfile: the file descriptor is not open");
    if (auto* tcp = dynamic_cast<TcpTransport*>(transport.get())) {
      return start_native(*this, *tcp, transport, file, offset, count, fallback, std::move(handler));
    }
    if (auto* unix_socket = dynamic_cast<UnixTransport*>(transport.get())) {
      return start_native(*this, *unix_socket, transport, file, offset, count, fallback, std::move(handler));
    }
    if (!fallback) {
      throw std::system_error(std::make_error_code(std::errc::operation_not_supported),
                              "sendfile: this transport cannot use sendfile(2) and fallback is off");
    }
    start_fallback(*this, std::move(transport), file, offset, count, std::move(handler));
  } catch (...) {
    detail::post_completion(*this, std::move(handler), std::current_exception(), std::uint64_t{0});
  }
}

}  // namespace conduit
