"""Pytest plugin: an S3 API on loopback (moto's server mode) for tests that speak real HTTP.

Load it with `pytest_plugins = ["tests.s3server"]`. `s3_endpoint` starts one moto server per
session; `s3_bucket_url` gives each test a fresh bucket on it, so tests never share state.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

# Dummy credentials for moto, plus isolation from the developer's own AWS setup: a profile
# named in AWS_PROFILE that does not exist would fail client creation, a real config could
# redirect the endpoint, and the instance-metadata lookup would cost seconds when keys are absent.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",  # moto accepts any key
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/retrain-tests/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/retrain-tests/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}
AWS_UNSET = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The http URL of a moto S3 server on 127.0.0.1, with dummy AWS credentials set."""
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        for name, value in AWS_ENV.items():
            mp.setenv(name, value)
        for name in AWS_UNSET:
            mp.delenv(name, raising=False)
        # Port 0: the OS picks a free port while binding, so there is no race with other
        # processes between choosing a port and listening on it.
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            yield f"http://{host}:{port}"
        finally:
            server.stop()
            # stop() shuts the serve loop down but leaves the listening socket open, which
            # would surface as a ResourceWarning (an error under filterwarnings=error).
            inner = getattr(server, "_server", None)
            if inner is not None:
                inner.server_close()


@pytest.fixture
def s3_bucket_url(s3_endpoint: str) -> str:
    """`s3://<fresh bucket>/some-prefix` on the moto server."""
    import boto3

    bucket = f"retrain-test-{uuid.uuid4().hex[:16]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    try:
        client.create_bucket(Bucket=bucket)
    finally:
        client.close()
    return f"s3://{bucket}/some-prefix"
