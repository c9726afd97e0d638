"""A local S3 server for the object-storage tests: moto's server on 127.0.0.1 (a free port), fake credentials in the
environment, ``AWS_ENDPOINT_URL`` pointing at it, and a fresh bucket for each test. Skips when moto is missing
(``pip install 'moto[server]'``; the ``test`` extra has it)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

#: The fake secret key: the tests check that it reaches no stored object and no output.
SECRET = "sEcReT-" + uuid.uuid4().hex


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    server_module = pytest.importorskip("moto.server", reason="needs moto[server]: pip install 'moto[server]'")
    pytest.importorskip("boto3")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@dataclass
class S3:
    endpoint: str
    bucket: str
    client: Any  # boto3's S3 client: the tests' own view of the bucket

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}"

    def upload(self, local: Path, key: str) -> None:
        self.client.upload_file(str(local), self.bucket, key)

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)


def s3_environment(monkeypatch: pytest.MonkeyPatch, endpoint: str, tmp_path: Path) -> None:
    """What a user's shell would hold for an S3-compatible server; nothing of the developer's own AWS setup."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[S3]:
    import boto3

    from imagereward.collection import storage

    s3_environment(monkeypatch, s3_endpoint, tmp_path)
    storage.forget()
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing-key-id",
        aws_secret_access_key=SECRET,
    )
    bucket = "b-" + uuid.uuid4().hex[:12]
    client.create_bucket(Bucket=bucket)
    yield S3(s3_endpoint, bucket, client)
    storage.forget()


@pytest.fixture(scope="session")
def s3_auth_endpoint() -> Iterator[str]:
    """A second moto server, in its own process, that checks credentials (``INITIAL_NO_AUTH_ACTION_COUNT=0``):
    it knows no access key, so every request is refused as a real server refuses a wrong or missing one."""
    import os
    import socket
    import subprocess
    import sys
    import time

    pytest.importorskip("moto.server", reason="needs moto[server]: pip install 'moto[server]'")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.skip("moto's server did not start")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)
