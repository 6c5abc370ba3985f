"""One-shot start of the container deployment: wait for the object store, create the lake's
and MLflow's buckets, and create the lake's tables, so that N workers starting at once do not
race to create them.  Run as ``python docker/bootstrap.py``; exits 0 when done.
"""

from __future__ import annotations

import os
import sys
import time
from urllib.parse import urlparse

import boto3
from botocore.exceptions import ClientError, EndpointConnectionError


def _bucket(uri: str) -> str:
    return urlparse(uri).netloc


def main() -> int:
    from lake import Lake

    lake_uri = os.environ["PLANTPULSE_LAKE"]
    buckets = {_bucket(lake_uri)}
    artifacts = os.environ.get("MLFLOW_ARTIFACTS_DESTINATION", "")
    if artifacts.startswith("s3://"):
        buckets.add(_bucket(artifacts))
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    deadline = time.monotonic() + 120
    while True:
        try:
            existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
            break
        except (EndpointConnectionError, ClientError) as exc:
            if time.monotonic() > deadline:
                print(f"bootstrap: object store not reachable: {exc}", file=sys.stderr)
                return 1
            time.sleep(1)
    for name in sorted(buckets - existing):
        s3.create_bucket(Bucket=name)
        print(f"bootstrap: created bucket {name}")
    Lake(lake_uri).create_tables()
    print(f"bootstrap: lake tables ready at {lake_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
