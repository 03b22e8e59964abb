"""Object-storage origins: AWS S3 and Alibaba Cloud OSS buckets, addressed and signed.

A bucket is an origin with one server (its address) and three rules of its
own: only the headers a bucket understands are sent (Range and the
conditionals; never the client's cookies or query string, which could name a
sub-resource such as `?acl`), private buckets get every request signed, and
error bodies (XML with request IDs) are not shown to clients. S3 requests are
signed with botocore's SigV4 signer; OSS has its own schemes (V4
`OSS4-HMAC-SHA256`, and V1 for older setups), built here from the standard
library's HMAC and checked in the tests against Alibaba's `oss2` SDK.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from urllib.parse import quote, unquote

# What goes to a bucket: the cache layer's range and validators, nothing of the client's.
FORWARD = frozenset({"range", "if-none-match", "if-modified-since", "if-match",
                     "if-unmodified-since"})
OSS_V4_SIGNED = frozenset({"content-type", "content-md5"})


@dataclass(frozen=True)
class Secret:
    """A secret access key. Its repr and str never show it, so no log or error can."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__


@dataclass(frozen=True)
class Bucket:
    """An S3 or OSS bucket as an origin."""

    kind: str                    # "s3" | "oss"
    name: str
    address: str                 # host[:port] the requests go to, and their Host
    region: str = ""
    addressing: str = "virtual"  # "virtual": bucket in the host name; "path": /bucket/key
    signature: str = "v4"        # s3: v4; oss: v4 | v1
    key_id: str = ""
    secret: Secret | None = None   # None: a public bucket, requests go unsigned
    expose_errors: bool = False  # pass the bucket's error bodies to clients
    cache_errors: bool = False   # let 403/404 answers be cached like content

    @property
    def private(self) -> bool:
        return self.secret is not None

    def object_path(self, path: str) -> str:
        """The request path at the bucket for a client path (query string dropped)."""
        path = path.split("?", 1)[0]
        return f"/{self.name}{path}" if self.addressing == "path" else path

    def request_headers(self, headers: list[tuple[str, str]], host: str
                        ) -> list[tuple[str, str]]:
        return [("Host", host)] + [(k, v) for k, v in headers if k.lower() in FORWARD]

    def sign(self, method: str, host: str, path: str, headers: list[tuple[str, str]],
             now: float | None = None) -> list[tuple[str, str]]:
        """`headers` plus the authentication headers for this request (if private)."""
        if self.secret is None:
            return headers
        now = time.time() if now is None else now
        if self.kind == "s3":
            return self._s3_v4(method, host, path, headers)
        if self.signature == "v1":
            return self._oss_v1(method, path, headers, now)
        return self._oss_v4(method, path, headers, now)

    # --- S3 ---------------------------------------------------------------------------

    def _s3_v4(self, method: str, host: str, path: str,
               headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        assert self.secret is not None
        request = AWSRequest(method=method, url=f"http://{host}{path}",
                             headers={k: v for k, v in headers if k.lower() != "host"})
        S3SigV4Auth(Credentials(self.key_id, self.secret.value), "s3",
                    self.region or "us-east-1").add_auth(request)
        return [("Host", host)] + list(request.headers.items())

    # --- OSS --------------------------------------------------------------------------

    def _oss_key(self, path: str) -> str:
        """The object name (decoded) from the path sent to the bucket."""
        if self.addressing == "path":
            path = path[len(self.name) + 1:]
        return unquote(path[1:])

    def _oss_v4(self, method: str, path: str, headers: list[tuple[str, str]],
                now: float) -> list[tuple[str, str]]:
        assert self.secret is not None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        day = stamp[:8]
        headers = headers + [("x-oss-date", stamp), ("x-oss-content-sha256", "UNSIGNED-PAYLOAD")]
        lower = [(k.lower(), v.strip()) for k, v in headers if k.lower() != "host"]
        additional = sorted({k for k, _ in lower if k in FORWARD})
        signed = sorted((k, v) for k, v in lower
                        if k.startswith("x-oss-") or k in OSS_V4_SIGNED or k in additional)
        uri = quote(f"/{self.name}/{self._oss_key(path)}", safe="/~")
        canonical = "\n".join([method, uri, "", "".join(f"{k}:{v}\n" for k, v in signed),
                               ";".join(additional), "UNSIGNED-PAYLOAD"])
        scope = f"{day}/{self.region}/oss/aliyun_v4_request"
        to_sign = "\n".join(["OSS4-HMAC-SHA256", stamp, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        key = ("aliyun_v4" + self.secret.value).encode()
        for part in (day, self.region, "oss", "aliyun_v4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        auth = f"OSS4-HMAC-SHA256 Credential={self.key_id}/{scope}, Signature={signature}"
        if additional:
            auth += f", AdditionalHeaders={';'.join(additional)}"
        return headers + [("Authorization", auth)]

    def _oss_v1(self, method: str, path: str, headers: list[tuple[str, str]],
                now: float) -> list[tuple[str, str]]:
        assert self.secret is not None
        date = formatdate(now, usegmt=True)
        headers = headers + [("Date", date)]
        oss = sorted((k.lower(), v.strip()) for k, v in headers if k.lower().startswith("x-oss-"))
        resource = f"/{self.name}/{self._oss_key(path)}"
        to_sign = "\n".join([method, "", "", date,
                             "".join(f"{k}:{v}\n" for k, v in oss) + resource])
        digest = hmac.new(self.secret.value.encode(), to_sign.encode(), hashlib.sha1).digest()
        return headers + [("Authorization",
                           f"OSS {self.key_id}:{base64.b64encode(digest).decode()}")]
