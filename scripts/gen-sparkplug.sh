#!/usr/bin/env bash
# Regenerate adapters/proto/sparkplug_b_pb2.py from adapters/proto/sparkplug_b.proto.
# Needs grpcio-tools (a code generator only, not a runtime dependency), e.g. in a throw-away
# venv: python -m venv /tmp/gt && /tmp/gt/bin/pip install "grpcio-tools<1.80" (its protoc makes
# code for protobuf 6.31+, which the lock has; 1.80+ needs protobuf 7) && PY=/tmp/gt/bin/python
set -euo pipefail
cd "$(dirname "$0")/../adapters/proto"
"${PY:-python}" -m grpc_tools.protoc --proto_path=. --python_out=. --pyi_out=. sparkplug_b.proto
