# Shared build settings: warnings, sanitizers, and one helper that declares a module
# library the way every top-level folder does (pgferry::<name>, public headers under
# <folder>/include, sources in <folder>/src).

add_library(pgferry_warnings INTERFACE)
target_compile_options(pgferry_warnings INTERFACE -Wall -Wextra -Wpedantic -Wshadow
                                                  -Wnon-virtual-dtor -Wimplicit-fallthrough)
if(PGFERRY_WERROR)
  target_compile_options(pgferry_warnings INTERFACE -Werror)
endif()
if(PGFERRY_SANITIZE)
  target_compile_options(pgferry_warnings INTERFACE -fsanitize=address,undefined
                                                    -fno-omit-frame-pointer -fno-sanitize-recover=all)
  target_link_options(pgferry_warnings INTERFACE -fsanitize=address,undefined)
endif()

# pgferry_module(<name> DEPS <targets...>)
# Sources are every .cpp below src/ (a big module groups them in subfolders by stage); a folder with none yet is a header-only
# (INTERFACE) library so that dependants can already link it.
function(pgferry_module name)
  cmake_parse_arguments(ARG "" "" "DEPS" ${ARGN})
  file(GLOB_RECURSE sources CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/src/*.cpp)
  if(sources)
    add_library(pgferry_${name} STATIC ${sources})
    target_include_directories(pgferry_${name}
      PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/include
      PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src)
    target_link_libraries(pgferry_${name} PUBLIC ${ARG_DEPS} PRIVATE pgferry_warnings)
  else()
    add_library(pgferry_${name} INTERFACE)
    target_include_directories(pgferry_${name} INTERFACE ${CMAKE_CURRENT_SOURCE_DIR}/include)
    target_link_libraries(pgferry_${name} INTERFACE ${ARG_DEPS})
  endif()
  add_library(pgferry::${name} ALIAS pgferry_${name})
endfunction()
