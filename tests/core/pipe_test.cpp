// SPEC P1-P3 (and R1): pipe transports over real pipes, a FIFO, a socket
// pair and /dev/null.
#include "support/recording_protocol.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

namespace conduit::testing {
namespace {

/// Both ends of a pipe(2); closes whatever the test did not hand over.
struct Pipe {
  int read_end = -1, write_end = -1;
  Pipe() {
    int fds[2];
    EXPECT_EQ(::pipe2(fds, O_CLOEXEC), 0);
    read_end = fds[0];
    write_end = fds[1];
  }
  ~Pipe() {
    if (read_end >= 0) ::close(read_end);
    if (write_end >= 0) ::close(write_end);
  }
  int take_read() { return std::exchange(read_end, -1); }
  int take_write() { return std::exchange(write_end, -1); }
  void close_read() { ::close(take_read()); }
  void close_write() { ::close(take_write()); }
};

template <class P = RecordingProtocol>
struct Opened {
  std::exception_ptr error;
  std::shared_ptr<P> protocol;
  bool done = false;
};

template <class P = RecordingProtocol>
std::shared_ptr<P> connect_pipe(EventLoop& loop, int fd, bool write_side) {
  auto opened = std::make_shared<Opened<P>>();
  auto on_done = [opened](std::exception_ptr e, std::shared_ptr<Transport>, std::shared_ptr<P> p) {
    opened->error = e;
    opened->protocol = std::move(p);
    opened->done = true;
  };
  auto factory = [] { return std::make_shared<P>(); };
  if (write_side)
    loop.connect_write_pipe(factory, fd, on_done);
  else
    loop.connect_read_pipe(factory, fd, on_done);
  run_until(loop, [&] { return opened->done; });
  if (opened->error) std::rethrow_exception(opened->error);
  run_until(loop, [&] { return opened->protocol->rec.made == 1; });
  return opened->protocol;
}

std::string pattern(std::size_t n) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + (i * 7) % 26);
  return s;
}

/// Reads what is available from `fd` (non-blocking) into `out`; true at EOF.
bool drain(int fd, std::string& out) {
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  char buffer[65536];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n > 0)
      out.append(buffer, static_cast<std::size_t>(n));
    else
      return n == 0;
  }
}

// ---- P1 -----------------------------------------------------------------------

TEST(Pipe, P1_RegularFileIsRefusedAndStaysTheCallers) {
  const auto path = std::filesystem::temp_directory_path() / ("conduit-pipe-" + std::to_string(::getpid()));
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  std::filesystem::remove(path);
  EventLoop loop;
  for (bool write_side : {false, true}) {
    try {
      connect_pipe(loop, fd, write_side);
      ADD_FAILURE() << "a regular file must be refused";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("pipes, FIFOs, sockets and character devices only"), std::string::npos)
          << e.what();
    }
    EXPECT_NE(::fcntl(fd, F_GETFD), -1) << "the descriptor must stay open";
  }
  ::close(fd);
}

TEST(Pipe, P1_CharacterDeviceIsAccepted) {
  const int fd = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  EventLoop loop;
  auto p = connect_pipe(loop, fd, true);
  p->rec.transport->write(pattern(100000));
  EXPECT_EQ(p->rec.transport->get_write_buffer_size(), 0u);
  p->rec.transport->close();
  ASSERT_TRUE(run_until(loop, [&] { return p->rec.is_lost(); }));
  EXPECT_FALSE(p->rec.lost_error);
}

// ---- P2 -----------------------------------------------------------------------

TEST(Pipe, P2_ReadPipeDeliversDataThenEofThenConnectionLost) {
  Pipe pipe;
  EventLoop loop;
  auto p = connect_pipe(loop, pipe.take_read(), false);
  EXPECT_EQ(p->rec.transport->get_extra_info_as<int>("pipe").has_value(), true);
  const std::string data = pattern(300000);
  std::size_t written = 0;
  ASSERT_TRUE(run_until(loop, [&] {
    if (written < data.size()) {
      const ssize_t n =
          ::write(pipe.write_end, data.data() + written, std::min<std::size_t>(4096, data.size() - written));
      if (n > 0) written += static_cast<std::size_t>(n);
      if (written == data.size()) pipe.close_write();
    }
    return p->rec.is_lost();
  }));
  EXPECT_EQ(p->rec.data, data);
  EXPECT_EQ(p->rec.events, (std::vector<std::string>{"made", "data", "eof", "lost"}));
  EXPECT_FALSE(p->rec.lost_error);
}

TEST(Pipe, P2_EofClosesEvenWhenEofReceivedReturnsTrue) {
  Pipe pipe;
  EventLoop loop;
  auto p = connect_pipe(loop, pipe.take_read(), false);
  p->keep_open_on_eof = true;
  pipe.close_write();
  ASSERT_TRUE(run_until(loop, [&] { return p->rec.is_lost(); }));
  EXPECT_EQ(p->rec.eofs, 1);
}

TEST(Pipe, P2_PauseAndResumeReadingAreIdempotent) {
  Pipe pipe;
  EventLoop loop;
  auto p = connect_pipe(loop, pipe.take_read(), false);
  auto& t = *p->rec.transport;
  t.pause_reading();
  t.pause_reading();
  EXPECT_FALSE(t.is_reading());
  ASSERT_EQ(::write(pipe.write_end, "held", 4), 4);
  run_ready(loop);  // a reading transport would get the data in these polls
  run_ready(loop);
  EXPECT_EQ(p->rec.data, "") << "no data while paused";
  t.resume_reading();
  t.resume_reading();
  EXPECT_TRUE(t.is_reading());
  ASSERT_TRUE(run_until(loop, [&] { return p->rec.data == "held"; }));
  t.close();
  ASSERT_TRUE(run_until(loop, [&] { return p->rec.is_lost(); }));
  EXPECT_EQ(p->rec.eofs, 0) << "close() is not EOF";
}

TEST(Pipe, P2_ReadPipeRefusesWrites) {
  Pipe pipe;
  EventLoop loop;
  auto p = connect_pipe(loop, pipe.take_read(), false);
  EXPECT_THROW(p->rec.transport->write("x"), std::logic_error);
  EXPECT_FALSE(p->rec.transport->can_write_eof());
}

TEST(Pipe, P2_SocketAndFifoWorkAsReadPipes) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  const auto fifo = std::filesystem::temp_directory_path() / ("conduit-fifo-" + std::to_string(::getpid()));
  std::filesystem::remove(fifo);
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const int fifo_read = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  const int fifo_write = ::open(fifo.c_str(), O_WRONLY | O_CLOEXEC);
  std::filesystem::remove(fifo);
  ASSERT_GE(fifo_read, 0);
  ASSERT_GE(fifo_write, 0);
  EventLoop loop;
  auto from_socket = connect_pipe(loop, sv[0], false);
  auto from_fifo = connect_pipe(loop, fifo_read, false);
  ASSERT_EQ(::write(sv[1], "sock", 4), 4);
  ASSERT_EQ(::write(fifo_write, "fifo", 4), 4);
  ::close(sv[1]);
  ::close(fifo_write);
  ASSERT_TRUE(run_until(loop, [&] { return from_socket->rec.is_lost() && from_fifo->rec.is_lost(); }));
  EXPECT_EQ(from_socket->rec.data, "sock");
  EXPECT_EQ(from_fifo->rec.data, "fifo");
}

// ---- P3 -----------------------------------------------------------------------

TEST(Pipe, P3_WritesBufferWithFlowControlAndArriveInOrder) {
  Pipe pipe;
  EventLoop loop;
  auto p = connect_pipe(loop, pipe.take_write(), true);
  auto& t = *p->rec.transport;
  const std::string data = pattern(1 << 20);
  t.write(data);
  EXPECT_GT(t.get_write_buffer_size(), 0u) << "a pipe holds far less than 1 MiB";
  EXPECT_EQ(p->rec.pauses, 1);
  std::string got;
  ASSERT_TRUE(run_until(loop, [&] {
    drain(pipe.read_end, got);
    return got.size() == data.size();
  }));
  EXPECT_EQ(got, data);
  EXPECT_EQ(p->rec.resumes, 1);
  EXPECT_EQ(t.get_write_buffer_size(), 0u);
}

TEST(Pipe, P3_WriteEofFlushesThenClosesThePipe) {
  Pipe pipe;
  EventLoop loop;
  auto p = connect_pipe(loop, pipe.take_write(), true);
  auto transport = p->rec.transport;
  EXPECT_TRUE(transport->can_write_eof());
  const std::string data = pattern(200000);
  transport->write(data);
  transport->write_eof();
  EXPECT_TRUE(transport->is_closing());
  transport->write("dropped");  // nothing more after write_eof
  std::string got;
  bool eof = false;
  ASSERT_TRUE(run_until(loop, [&] {
    eof = drain(pipe.read_end, got);
    return eof && p->rec.is_lost();
  }));
  EXPECT_EQ(got, data);
  EXPECT_FALSE(p->rec.lost_error);
}

TEST(Pipe, P3_ReaderLeavingWhileIdleEndsTheTransport) {
  Pipe pipe;
  EventLoop loop;
  auto p = connect_pipe(loop, pipe.take_write(), true);
  pipe.close_read();
  ASSERT_TRUE(run_until(loop, [&] { return p->rec.is_lost(); }));
  EXPECT_FALSE(p->rec.lost_error) << "nothing was buffered: a clean end";
}

TEST(Pipe, P3_ReaderLeavingWithDataBufferedIsBrokenPipe) {
  Pipe pipe;
  EventLoop loop;
  auto p = connect_pipe(loop, pipe.take_write(), true);
  p->rec.transport->write(pattern(1 << 20));
  ASSERT_GT(p->rec.transport->get_write_buffer_size(), 0u);
  pipe.close_read();
  ASSERT_TRUE(run_until(loop, [&] { return p->rec.is_lost(); }));
  EXPECT_EQ(error_code_of(p->rec.lost_error), std::errc::broken_pipe);
}

TEST(Pipe, R1_WritingToAPipeWithoutReaderIsEpipeNotSigpipe) {
  Pipe pipe;
  EventLoop loop;
  auto p = connect_pipe(loop, pipe.take_write(), true);
  pipe.close_read();
  p->rec.transport->write("into the void");  // before the loop notices: the write itself fails
  ASSERT_TRUE(run_until(loop, [&] { return p->rec.is_lost(); }));
  EXPECT_EQ(error_code_of(p->rec.lost_error), std::errc::broken_pipe);
}

}  // namespace
}  // namespace conduit::testing
