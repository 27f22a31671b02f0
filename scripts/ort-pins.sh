# The one place the ONNX Runtime wheel is pinned. scripts/setup-ort.sh and
# scripts/build-ort-layer.sh source this file; infra/Dockerfile repeats the
# values as ARGs (a Dockerfile cannot source a file), and
# infra/checks/static_checks.py fails when they differ from these.
# sha256 of onnxruntime-<version>-cp311-cp311-manylinux_2_28_<arch>.whl on PyPI.
ORT_VERSION="1.32.0"
SHA256_x86_64="5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d"
SHA256_aarch64="2303372a85299b6757b0e11e1cbf13e410ddf7e10c37f4b37e99d1c90e7daf7c"
