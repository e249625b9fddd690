# Picks CMAKE_CUDA_ARCHITECTURES before project() (TOOLCHAIN.md, "CMake with CUDA 13 and no GPU").
# A user value (-DCMAKE_CUDA_ARCHITECTURES=... or the CUDAARCHS environment variable) always wins.
function(moelab_pick_cuda_architectures)
  if(DEFINED CMAKE_CUDA_ARCHITECTURES OR DEFINED ENV{CUDAARCHS})
    return()
  endif()
  set(arch "90a")   # H100/H200 with the sm_90a features; also the compile check without a GPU
  find_program(MOELAB_NVIDIA_SMI nvidia-smi)
  if(MOELAB_NVIDIA_SMI)
    execute_process(COMMAND ${MOELAB_NVIDIA_SMI} --query-gpu=compute_cap --format=csv,noheader
                    OUTPUT_VARIABLE caps RESULT_VARIABLE rc ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE)
    if(rc EQUAL 0 AND caps MATCHES "^([0-9]+)\\.([0-9]+)")
      set(arch "${CMAKE_MATCH_1}${CMAKE_MATCH_2}")
      if(arch STREQUAL "90")
        set(arch "90a")
      endif()
    endif()
  endif()
  set(CMAKE_CUDA_ARCHITECTURES ${arch} CACHE STRING "CUDA architectures (moelab default: the local GPU, else 90a)")
endfunction()
