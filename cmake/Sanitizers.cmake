# One switch for ASan+UBSan over the whole tree; halting on the first UB report
# makes UBSan findings fail the tests instead of scrolling past.
if(CONDUIT_SANITIZE)
  add_compile_options(-fsanitize=address,undefined -fno-sanitize-recover=undefined
                      -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined)
endif()

# The fuzz build: every library instrumented for libFuzzer's coverage and
# checked by ASan and UBSan; the fuzzers link libFuzzer (fuzz/CMakeLists.txt).
if(CONDUIT_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "CONDUIT_FUZZ needs clang (CXX=clang++)")
  endif()
  set(CONDUIT_BUILD_TESTS OFF CACHE BOOL "" FORCE)
  # -fno-sanitize=function: clang 14 cannot emit its checks for C++20
  # coroutines (Asio's awaitables): "Cannot represent a difference across
  # sections". GCC's UBSan, in the normal sanitized build, has no such check.
  add_compile_options(-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize=function
                      -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined -fno-sanitize=function)
endif()
