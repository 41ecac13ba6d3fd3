"""The S3 calls the signer must really make (create a multipart upload), through aioboto3.

One client per signer process, opened at start and closed at stop. botocore errors become
``StoreUnavailable`` here, once; messages name the operation, never a key or credential.
"""

from __future__ import annotations

import contextlib
from typing import Any

import aioboto3
import botocore.exceptions
from botocore.config import Config

from app.errors import StoreUnavailable
from app.signer.sigv4 import Credentials


class Store:
    def __init__(
        self, credentials: Credentials, region: str, endpoint_url: str | None, addressing: str
    ) -> None:
        self._creds, self._region = credentials, region
        self._endpoint, self._addressing = endpoint_url, addressing
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def open(self) -> None:
        session = aioboto3.Session(
            aws_access_key_id=self._creds.access_key,
            aws_secret_access_key=self._creds.secret_key,
            aws_session_token=self._creds.session_token,
            region_name=self._region,
        )
        config = Config(
            s3={"addressing_style": self._addressing},
            connect_timeout=3,
            read_timeout=10,
            retries={"max_attempts": 2, "mode": "standard"},
        )
        self._client = await self._stack.enter_async_context(
            session.client("s3", endpoint_url=self._endpoint, config=config)
        )

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    async def create_multipart(self, bucket: str, key: str) -> str:
        """Start a multipart upload; its id."""
        if self._client is None:
            raise StoreUnavailable("object store client is not open")
        try:
            answer = await self._client.create_multipart_upload(Bucket=bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            raise StoreUnavailable(
                f"object store refused create_multipart_upload ({code})"
            ) from exc
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise StoreUnavailable("object store unreachable") from exc
        upload_id: str = answer["UploadId"]
        return upload_id
