// Test doubles: protocols that record every callback and fail the test on
// any break of the call grammar, plus helpers to drive a loop with a bound.
#pragma once

#include <conduit/event_loop.hpp>
#include <conduit/protocols.hpp>
#include <conduit/server.hpp>
#include <conduit/transports.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

namespace conduit::testing {

using namespace std::chrono_literals;

/// How long any test waits for an event before failing.
inline constexpr auto event_timeout = 10s;

/// Runs `loop` until `done()` or `timeout`; fails the test on timeout.
/// done() is also polled every few milliseconds, so it may watch things
/// outside the loop (a Peer socket the test reads from).
inline bool run_until(EventLoop& loop, const std::function<bool()>& done,
                      std::chrono::milliseconds timeout = event_timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  bool ok = done();
  while (!ok && std::chrono::steady_clock::now() < deadline) ok = loop.run_until(done, 5ms);
  EXPECT_TRUE(ok) << "timed out waiting for an event";
  return ok;
}

/// Runs whatever is ready now (posted callbacks), without waiting.
inline void run_ready(EventLoop& loop) {
  loop.context().restart();
  loop.context().poll();
}

/// The error code inside a connection_lost exception, or {} for none.
inline std::error_code error_code_of(std::exception_ptr exc) {
  if (!exc) return {};
  try {
    std::rethrow_exception(exc);
  } catch (const std::system_error& e) {
    return e.code();
  } catch (...) {
    return std::make_error_code(std::errc::io_error);
  }
}

/// The text of an exception, or "" for none.
inline std::string describe_error(std::exception_ptr exc) {
  if (!exc) return {};
  try {
    std::rethrow_exception(exc);
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown exception";
  }
}

/// What a recording protocol saw; shared by Protocol and BufferedProtocol.
struct Record {
  std::vector<std::string> events;  // "made", "data", "eof", "lost", "pause", "resume"
  std::string data;
  std::shared_ptr<Transport> transport;
  std::exception_ptr lost_error;
  int made = 0, eofs = 0, lost = 0, pauses = 0, resumes = 0, data_calls = 0;
  bool adopted = false;  // installed with set_protocol(): no connection_made owed

  bool is_lost() const { return lost > 0; }

  void on_made(std::shared_ptr<Transport> t) {
    EXPECT_TRUE(events.empty()) << "connection_made must be the first callback";
    events.push_back("made");
    ++made;
    transport = std::move(t);
  }
  void on_data(std::string_view bytes) {
    EXPECT_TRUE(made == 1 || adopted) << "data before connection_made";
    EXPECT_EQ(eofs, 0) << "data after eof_received";
    EXPECT_EQ(lost, 0) << "data after connection_lost";
    EXPECT_FALSE(bytes.empty()) << "data_received with empty data";
    if (events.empty() || events.back() != "data") events.push_back("data");
    data.append(bytes);
    ++data_calls;
  }
  void on_eof() {
    EXPECT_TRUE(made == 1 || adopted);
    EXPECT_EQ(eofs, 0) << "eof_received twice";
    EXPECT_EQ(lost, 0);
    events.push_back("eof");
    ++eofs;
  }
  void on_lost(std::exception_ptr exc) {
    EXPECT_TRUE(made == 1 || adopted) << "connection_lost without connection_made";
    EXPECT_EQ(lost, 0) << "connection_lost twice";
    events.push_back("lost");
    ++lost;
    lost_error = exc;
  }
  void on_pause() {
    EXPECT_EQ(pauses, resumes) << "pause_writing twice without resume_writing";
    events.push_back("pause");
    ++pauses;
  }
  void on_resume() {
    EXPECT_EQ(pauses, resumes + 1) << "resume_writing without pause_writing";
    events.push_back("resume");
    ++resumes;
  }
};

/// A Protocol that records; hooks let a test act inside each callback.
class RecordingProtocol : public Protocol {
 public:
  Record rec;
  bool keep_open_on_eof = false;
  std::function<void(Transport&)> on_made;
  std::function<void(Transport&, std::string_view)> on_data;
  std::function<void()> on_eof;
  std::function<void()> on_pause;
  std::function<void()> on_resume;

  void connection_made(std::shared_ptr<Transport> t) override {
    rec.on_made(t);
    if (on_made) on_made(*t);
  }
  void data_received(std::span<const std::byte> data) override {
    rec.on_data(as_string_view(data));
    if (on_data) on_data(*rec.transport, as_string_view(data));
  }
  bool eof_received() override {
    rec.on_eof();
    if (on_eof) on_eof();
    return keep_open_on_eof;
  }
  void connection_lost(std::exception_ptr exc) override {
    rec.on_lost(exc);
    rec.transport.reset();  // break the cycle as a real protocol would
  }
  void pause_writing() override {
    rec.on_pause();
    if (on_pause) on_pause();
  }
  void resume_writing() override {
    rec.on_resume();
    if (on_resume) on_resume();
  }
};

/// A BufferedProtocol that records; reads land in its own buffer.
class RecordingBufferedProtocol : public BufferedProtocol {
 public:
  Record rec;
  std::vector<std::byte> buffer = std::vector<std::byte>(4096);
  std::vector<std::size_t> sizehints;
  int get_buffer_calls = 0;
  bool keep_open_on_eof = false;
  std::function<void(Transport&)> on_made;

  void connection_made(std::shared_ptr<Transport> t) override {
    rec.on_made(t);
    if (on_made) on_made(*t);
  }
  std::span<std::byte> get_buffer(std::size_t sizehint) override {
    EXPECT_EQ(rec.eofs, 0) << "get_buffer after eof_received";
    EXPECT_EQ(rec.lost, 0) << "get_buffer after connection_lost";
    sizehints.push_back(sizehint);
    ++get_buffer_calls;
    return buffer;
  }
  void buffer_updated(std::size_t nbytes) override {
    EXPECT_GT(nbytes, 0u);
    EXPECT_LE(nbytes, buffer.size());
    rec.on_data({reinterpret_cast<const char*>(buffer.data()), nbytes});
  }
  bool eof_received() override {
    rec.on_eof();
    return keep_open_on_eof;
  }
  void connection_lost(std::exception_ptr exc) override {
    rec.on_lost(exc);
    rec.transport.reset();
  }
  void pause_writing() override { rec.on_pause(); }
  void resume_writing() override { rec.on_resume(); }
};

/// A plain blocking-free peer socket driven from the test: the other end of
/// a connection under test.
class Peer {
 public:
  explicit Peer(asio::ip::tcp::socket socket) : socket_(std::move(socket)) { socket_.non_blocking(true); }

  /// Connect to a loopback port (completes inside the loop's context),
  /// from `source` if given (another loopback address, say).
  static Peer connect(EventLoop& loop, std::uint16_t port, const char* host = "127.0.0.1",
                      const char* source = nullptr) {
    asio::ip::tcp::socket s(loop.context());
    if (source) {
      s.open(asio::ip::tcp::v4());
      s.bind({asio::ip::make_address(source), 0});
    }
    s.connect({asio::ip::make_address(host), port});
    return Peer(std::move(s));
  }

  void send(std::string_view bytes) {
    std::size_t done = 0;
    while (done < bytes.size()) {
      boost::system::error_code ec;
      done += socket_.send(asio::buffer(bytes.data() + done, bytes.size() - done), 0, ec);
      if (ec == asio::error::would_block) {
        socket_.wait(asio::socket_base::wait_write);
        continue;
      }
      if (ec) throw boost::system::system_error(ec);
    }
  }

  /// Read what is available now, without blocking; false on EOF.
  bool read_available() {
    char buf[65536];
    for (;;) {
      boost::system::error_code ec;
      std::size_t n = socket_.read_some(asio::buffer(buf), ec);
      if (ec == asio::error::would_block) return true;
      if (ec == asio::error::eof) {
        eof_ = true;
        return false;
      }
      if (ec) {
        error_ = ec;
        return false;
      }
      received_.append(buf, n);
    }
  }

  /// Run `loop` until `n` bytes arrived here (or EOF / error / timeout).
  bool receive(EventLoop& loop, std::size_t n) {
    return run_until(loop,
                     [&] {
                       read_available();
                       return received_.size() >= n || eof_ || error_;
                     }) &&
           received_.size() >= n;
  }

  /// Run `loop` until the peer's EOF arrives here.
  bool receive_eof(EventLoop& loop) {
    return run_until(loop,
                     [&] {
                       read_available();
                       return eof_ || error_;
                     }) &&
           eof_;
  }

  void shutdown_send() { socket_.shutdown(asio::socket_base::shutdown_send); }
  void close() { socket_.close(); }
  /// Close with RST instead of FIN.
  void reset() {
    socket_.set_option(asio::socket_base::linger(true, 0));
    socket_.close();
  }

  std::string& received() { return received_; }
  bool eof() const { return eof_; }
  boost::system::error_code error() const { return error_; }
  asio::ip::tcp::socket& socket() { return socket_; }

 private:
  asio::ip::tcp::socket socket_;
  std::string received_;
  bool eof_ = false;
  boost::system::error_code error_;
};

/// A TCP connection under test: our transport on one end, a Peer on the
/// other, made through a real listening socket on 127.0.0.1.
template <class P = RecordingProtocol>
struct Connected {
  std::shared_ptr<P> protocol;
  std::shared_ptr<Transport> transport;
  std::unique_ptr<Peer> peer;
};

/// Open a loopback connection whose client side is a Conduit transport
/// with protocol `protocol`; the server side is a raw Peer.
template <class P>
Connected<P> connect_pair(EventLoop& loop, std::shared_ptr<P> protocol) {
  asio::ip::tcp::acceptor acceptor(loop.context(), {asio::ip::make_address("127.0.0.1"), 0});
  Connected<P> c;
  c.protocol = protocol;
  bool done = false;
  loop.create_connection([protocol] { return protocol; }, "127.0.0.1", acceptor.local_endpoint().port(), {},
                         [&](std::exception_ptr err, std::shared_ptr<Transport> t, std::shared_ptr<P>) {
                           EXPECT_FALSE(err);
                           c.transport = t;
                           done = true;
                         });
  // The kernel completes the handshake from the backlog; accept afterwards.
  run_until(loop, [&] { return done; });
  asio::ip::tcp::socket accepted(loop.context());
  acceptor.accept(accepted);
  c.peer = std::make_unique<Peer>(std::move(accepted));
  return c;
}

/// Captures the loop's exception-handler calls and log lines.
struct LoopRecorder {
  std::vector<ExceptionContext> exceptions;
  std::vector<std::pair<LogLevel, std::string>> logs;

  explicit LoopRecorder(EventLoop& loop) {
    loop.set_exception_handler([this](EventLoop&, const ExceptionContext& c) { exceptions.push_back(c); });
    loop.set_log_handler([this](LogLevel l, std::string_view m) { logs.emplace_back(l, std::string(m)); });
  }
  int warnings_containing(std::string_view text) const {
    int n = 0;
    for (const auto& [level, message] : logs) {
      if (level == LogLevel::warning && message.find(text) != std::string::npos) ++n;
    }
    return n;
  }
};

}  // namespace conduit::testing
