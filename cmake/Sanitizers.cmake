# One switch for ASan+UBSan over the whole tree; halting on the first UB report
# makes UBSan findings fail the tests instead of scrolling past.
if(CONDUIT_SANITIZE)
  add_compile_options(-fsanitize=address,undefined -fno-sanitize-recover=undefined
                      -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined)
endif()
