"""CUDA build macros: cuda_library, cuda_test, cuda_binary.

.cu files are compiled by nvcc (the toolkit @local_cuda found; third_party/cuda/cuda_configure.bzl) for Hopper:
sm_90a machine code plus compute_90 PTX, so the binaries run on H100/H200 and JIT on anything newer. Other
sources (.cc) go through the normal C++ toolchain. The nvcc action sees exactly the headers of `hdrs`, `srcs`
and the transitive headers of `deps` (a Starlark rule, not a genrule, so that the dependency headers are inputs
and Bazel rebuilds when they change).

Without a CUDA toolkit (CUDA_AVAILABLE is False):
  cuda_library -> an empty cc_library (its headers are not exported: only other CUDA targets may depend on it);
  cuda_test    -> a test that prints a skip message and passes;
  cuda_binary  -> a binary that prints a message and exits 0.
So `bazel test //...` passes on a machine with neither a GPU nor CUDA.

GPU tests carry tags = ["gpu"] and link statically (linkstatic = True: the static cudart must end up in the test
binary itself, see ../shared/research/env.md §8); at run time they skip (GTEST_SKIP) when no device is present.
"""

load("@local_cuda//:defs.bzl", "CUDA_AVAILABLE", "NVCC")

CUDA_GENCODE = [
    "-gencode",
    "arch=compute_90a,code=sm_90a",
    "-gencode",
    "arch=compute_90,code=compute_90",
]

CUDA_NVCC_FLAGS = [
    "-O3",
    "-std=c++17",
    "--expt-relaxed-constexpr",
    "-lineinfo",
    "-DNDEBUG",
    "-Xcompiler",
    "-fPIC",
]

def _cuda_objects_impl(ctx):
    cc_infos = [d[CcInfo] for d in ctx.attr.deps if CcInfo in d]
    headers = depset(
        ctx.files.hdrs,
        transitive = [c.compilation_context.headers for c in cc_infos],
    )
    include_flags = ["-I.", "-I" + ctx.bin_dir.path, "-I" + ctx.genfiles_dir.path]
    for c in cc_infos:
        cctx = c.compilation_context
        for d in cctx.includes.to_list():
            include_flags.append("-I" + d)
        for d in cctx.quote_includes.to_list():
            include_flags.append("-I" + d)
        for d in cctx.system_includes.to_list():
            include_flags += ["-isystem", d]
        for d in cctx.defines.to_list():
            include_flags.append("-D" + d)
    outs = []
    for src in ctx.files.srcs:
        stem = src.basename[:-len(".cu")]
        out = ctx.actions.declare_file("_cuda_objs/%s/%s.o" % (ctx.attr.name, stem))
        outs.append(out)
        args = ctx.actions.args()
        args.add("-c")
        # Intermediate files beside the object, not in /tmp: the sandbox shares /tmp, and nvcc names its temporary
        # files after its PID, which is the same small number in every sandboxed action (parallel actions collided).
        args.add("--objdir-as-tempdir")
        args.add_all(CUDA_GENCODE)
        args.add_all(CUDA_NVCC_FLAGS)
        args.add_all(ctx.attr.copts)
        args.add_all(include_flags)
        args.add(src.path)
        args.add("-o", out.path)
        ctx.actions.run(
            executable = ctx.attr.nvcc,
            arguments = [args],
            inputs = depset([src], transitive = [headers]),
            outputs = [out],
            mnemonic = "NvccCompile",
            progress_message = "nvcc %s" % src.short_path,
            use_default_shell_env = True,
        )
    return [DefaultInfo(files = depset(outs))]

_cuda_objects = rule(
    implementation = _cuda_objects_impl,
    attrs = {
        "srcs": attr.label_list(allow_files = [".cu"]),
        "hdrs": attr.label_list(allow_files = True),
        "deps": attr.label_list(providers = [CcInfo]),
        "copts": attr.string_list(),
        "nvcc": attr.string(),
    },
)

def _write_file_impl(ctx):
    ctx.actions.write(ctx.outputs.out, ctx.attr.content)
    return [DefaultInfo(files = depset([ctx.outputs.out]))]

_write_file = rule(
    implementation = _write_file_impl,
    attrs = {"out": attr.output(), "content": attr.string()},
)

_CUDA_DEPS = ["@local_cuda//:headers", "@local_cuda//:cudart_static"]

# GPU binaries are shipped to a machine that lacks most of our shared libraries (tools/gpu/build_bundle.sh):
# record only the libraries a binary really uses (a CPU reference that pulls in one object of a library linked
# with OpenBLAS then does not drag the 36 MB libopenblas along).
_AS_NEEDED = ["-Wl,--as-needed"]

def cuda_library(name, srcs = [], hdrs = [], deps = [], copts = [], nvcc_copts = [], **kwargs):
    """A C++ library whose .cu sources are compiled by nvcc; .cc sources and hdrs as in cc_library.

    srcs: .cu (nvcc) and .cc/.h (C++ toolchain) files. hdrs: public headers (.h, .cuh).
    deps: cc_library-like targets; their headers are visible to nvcc. nvcc_copts: extra nvcc flags.
    Links the static CUDA runtime. Empty when no CUDA toolkit is present.
    """
    if not CUDA_AVAILABLE:
        native.cc_library(
            name = name,
            visibility = kwargs.get("visibility"),
            testonly = kwargs.get("testonly", False),
        )
        return
    cu_srcs = [s for s in srcs if s.endswith(".cu")]
    other_srcs = [s for s in srcs if not s.endswith(".cu")]
    objs = []
    if cu_srcs:
        _cuda_objects(
            name = name + "_cu",
            srcs = cu_srcs,
            hdrs = hdrs + [s for s in other_srcs if s.endswith(".h") or s.endswith(".cuh")],
            deps = deps + _CUDA_DEPS,
            copts = nvcc_copts,
            nvcc = NVCC,
            testonly = kwargs.get("testonly", False),
            visibility = ["//visibility:private"],
        )
        objs = [":" + name + "_cu"]
    native.cc_library(
        name = name,
        srcs = other_srcs + objs,
        hdrs = hdrs,
        deps = deps + _CUDA_DEPS,
        copts = copts,
        **kwargs
    )

_SKIP_MAIN = """// Generated by tools/build/cuda.bzl: this machine built without a CUDA toolkit.
#include <cstdio>
int main() {
  std::printf("SKIPPED: %s was built without a CUDA toolkit (@local_cuda is a stub); nothing to run.\\n");
  return 0;
}
"""

def _stub_main(name, label):
    _write_file(name = name + "_stub_main", out = name + "_stub_main.cc", content = _SKIP_MAIN % label)
    return name + "_stub_main.cc"

def cuda_test(name, srcs = [], deps = [], tags = [], size = "small", **kwargs):
    """A GPU test (tags gpu, linkstatic). A passing stub without a CUDA toolkit; skips at run time without a GPU."""
    if not CUDA_AVAILABLE:
        native.cc_test(
            name = name,
            srcs = [_stub_main(name, "//%s:%s" % (native.package_name(), name))],
            tags = tags + ["gpu"],
            size = size,
        )
        return
    native.cc_test(
        name = name,
        srcs = srcs,
        deps = deps + _CUDA_DEPS,
        tags = tags + ["gpu"],
        size = size,
        linkstatic = True,
        linkopts = _AS_NEEDED + kwargs.pop("linkopts", []),
        **kwargs
    )

def cuda_binary(name, srcs = [], deps = [], tags = [], **kwargs):
    """A program that needs CUDA (benchmarks). Prints a message and exits 0 without a CUDA toolkit."""
    if not CUDA_AVAILABLE:
        native.cc_binary(
            name = name,
            srcs = [_stub_main(name, "//%s:%s" % (native.package_name(), name))],
            tags = tags + ["gpu"],
        )
        return
    native.cc_binary(
        name = name,
        srcs = srcs,
        deps = deps + _CUDA_DEPS,
        tags = tags + ["gpu"],
        linkstatic = True,
        linkopts = _AS_NEEDED + kwargs.pop("linkopts", []),
        **kwargs
    )
