# Warnings for every target of ours; CI turns them into errors with CONDUIT_WERROR.
function(conduit_set_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow
    -Wnon-virtual-dtor -Wold-style-cast -Wcast-align -Woverloaded-virtual
    -Wimplicit-fallthrough)
  if(CONDUIT_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()
