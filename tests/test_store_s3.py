"""The S3 backend against a real SeaweedFS (tests/conftest.py): the conformance suite.
The backdoors talk to the server with a plain botocore client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from casreg.storage import ObjectStore
from casreg.storage.s3 import S3Store
from casreg.testing.seaweedfs import S3Server
from casreg.testing.store_suite import StoreSuite


class TestS3Store(StoreSuite):
    @pytest.fixture
    def store_factory(self, s3_env: S3Server) -> Iterator[Callable[[], ObjectStore]]:
        self.server = s3_env
        self.client: Any = s3_env.client()
        made: list[S3Store] = []

        def make() -> ObjectStore:
            made.append(S3Store(s3_env.url()))  # a fresh prefix of the test bucket
            return made[-1]

        yield make
        for store in made:
            for key in list(store.list("")):
                store.delete(key)

    def _where(self, store: ObjectStore, key: str) -> tuple[str, str]:
        assert isinstance(store, S3Store)
        return store.bucket, f"{store.prefix}/{key}" if store.prefix else key

    def raw_read(self, store: ObjectStore, key: str) -> bytes | None:
        bucket, name = self._where(store, key)
        try:
            body = self.client.get_object(Bucket=bucket, Key=name)["Body"]
        except self.client.exceptions.NoSuchKey:
            return None
        data: bytes = body.read()
        return data

    def raw_write(self, store: ObjectStore, key: str, data: bytes) -> None:
        bucket, name = self._where(store, key)
        self.client.put_object(Bucket=bucket, Key=name, Body=data)

    def raw_delete(self, store: ObjectStore, key: str) -> None:
        bucket, name = self._where(store, key)
        self.client.delete_object(Bucket=bucket, Key=name)
