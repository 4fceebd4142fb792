// The asyncio docs' subprocess_exec example, in Conduit: run a child that
// prints the date and read its output through a SubprocessProtocol.
//
//   subprocess_date
#include <conduit/event_loop.hpp>

#include <boost/asio/use_awaitable.hpp>

#include <iostream>
#include <string>

using namespace conduit;

class DateProtocol : public SubprocessProtocol {
 public:
  void pipe_data_received(int, std::span<const std::byte> data) override { output.append(as_string_view(data)); }

  void pipe_connection_lost(int, std::exception_ptr) override {
    pipe_closed = true;
    check_for_exit();
  }

  // process_exited() may come before pipe_connection_lost(): wait for both.
  void process_exited() override {
    exited = true;
    check_for_exit();
  }

  std::string output;
  bool done = false;

 private:
  void check_for_exit() { done = pipe_closed && exited; }
  bool pipe_closed = false;
  bool exited = false;
};

int main() {
  EventLoop loop;
  SubprocessOptions options;
  options.stdin_stream = Stdio::devnull();
  options.stderr_stream = Stdio::fd(2);  // the child's errors go to ours
  auto [transport, protocol] = loop.run_until_complete(loop.subprocess_exec(
      [] { return std::make_shared<DateProtocol>(); }, "date", {"+%Y-%m-%d %H:%M:%S"}, options, asio::use_awaitable));
  loop.run_until([&] { return protocol->done; }, std::chrono::seconds(10));
  transport->close();
  while (!protocol->output.empty() && protocol->output.back() == '\n') protocol->output.pop_back();
  std::cout << "Current date: " << protocol->output << std::endl;
}
