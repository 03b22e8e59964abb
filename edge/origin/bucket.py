"""What the edge adds to bucket origins (cdnkit.bucket has the bucket itself, its
addressing and its signatures): reading the provider's error code, and the text a
client sees instead of the bucket's XML error body."""
from __future__ import annotations

import re

from cdnkit.bucket import Bucket, Secret

__all__ = ["CLIENT_TEXT", "Bucket", "Secret", "error_code"]


ERROR_CODE = re.compile(rb"<Code>([A-Za-z0-9_.-]{1,64})</Code>")


def error_code(body: bytes) -> str:
    """The provider's error code from an S3/OSS XML error body ("" if there is none)."""
    match = ERROR_CODE.search(body[:65536])
    return match.group(1).decode() if match else ""


CLIENT_TEXT = {403: "access to this object was refused by the origin bucket\n",
               404: "not found\n"}
