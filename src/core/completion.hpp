// Completing an asynchronous operation of the core: always posted, never
// run inside the call that started it, and on the handler's own executor.
#pragma once

#include "conduit/event_loop.hpp"

#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>

namespace conduit::detail {

template <class Handler, class... Args>
void post_completion(EventLoop& loop, Handler handler, Args... args) {
  asio::post(loop.get_executor(), [&loop, h = std::move(handler), ... a = std::move(args)]() mutable {
    auto ex = asio::get_associated_executor(h, loop.get_executor());
    asio::dispatch(ex, [h = std::move(h), ... a = std::move(a)]() mutable { std::move(h)(std::move(a)...); });
  });
}

}  // namespace conduit::detail
