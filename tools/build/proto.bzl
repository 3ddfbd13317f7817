"""Generates C++ protobuf and gRPC code from .proto files with the system protoc and grpc_cpp_plugin.

Bazel 4.2.3's native proto rules would download @com_google_protobuf; livekv builds offline against Debian's
protobuf 3.21 and gRPC 1.51, so code generation is a genrule over the system tools. Generated files live only in
bazel-out, never in the tree.
"""

def livekv_cc_grpc_library(name, srcs, deps = [], grpc = True, visibility = None):
    """C++ library of the messages (and gRPC services, when grpc) declared in srcs.

    srcs: .proto files of this package; imports are resolved from the workspace root, so a file imports
    "proto/livekv/v1/common.proto". deps: other livekv_cc_grpc_library targets whose protos are imported.
    """
    pkg = native.package_name()
    outs = []
    hdrs = []
    for src in srcs:
        base = src[:-len(".proto")]
        outs += [base + ".pb.h", base + ".pb.cc"]
        hdrs.append(base + ".pb.h")
        if grpc:
            outs += [base + ".grpc.pb.h", base + ".grpc.pb.cc", base + "_mock.grpc.pb.h"]
            hdrs += [base + ".grpc.pb.h", base + "_mock.grpc.pb.h"]
    grpc_flags = ("--grpc_out=generate_mock_code=true:$(GENDIR) " +
                  "--plugin=protoc-gen-grpc=/usr/bin/grpc_cpp_plugin ") if grpc else ""
    native.genrule(
        name = name + "_gen",
        srcs = srcs + [d + "_srcs" for d in deps],
        outs = outs,
        cmd = "/usr/bin/protoc -I. --cpp_out=$(GENDIR) " + grpc_flags +
              " ".join(["%s/%s" % (pkg, s) for s in srcs]),
    )
    native.filegroup(name = name + "_srcs", srcs = srcs + [d + "_srcs" for d in deps], visibility = visibility)
    native.cc_library(
        name = name,
        srcs = [o for o in outs if o.endswith(".cc")],
        hdrs = hdrs,
        deps = deps + ["//third_party:grpc"],
        visibility = visibility,
    )
