# kl_add_unit_test(<name> SOURCES <files...> LIBS <targets...> [TIMEOUT s]
#                  [NO_TEST])
# One cmocka executable, one CTest entry, labelled "unit". NO_TEST builds
# the executable only, for a caller that registers its own entries (e.g.
# the same test once per isolation model).
function(kl_add_unit_test name)
  cmake_parse_arguments(T "NO_TEST" "TIMEOUT" "SOURCES;LIBS" ${ARGN})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 60)
  endif()
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE ${T_LIBS} PkgConfig::CMOCKA)
  if(NOT T_NO_TEST)
    add_test(NAME ${name} COMMAND ${name})
    set_tests_properties(${name} PROPERTIES TIMEOUT ${T_TIMEOUT} LABELS unit)
  endif()
endfunction()
