"""Bucket origins: S3 against a local moto server that checks SigV4, OSS against a local
server that checks every signature with Alibaba's oss2 SDK; secrets never leak."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import time
import urllib.request
from email.utils import parsedate_to_datetime
from pathlib import Path

import botocore.session
import oss2
import oss2.auth
import pytest
import yaml
from aiohttp import web

from cdnkit.yamlsrc import load_yaml_text
from edge import config as edge_config
from edge.origin.bucket import Bucket, Secret
from tests.conftest import ROOT, free_port, serve_app, stop
from tests.edge.test_proxy import Edge

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"      # for the OSS flow
S3_REGION = "eu-west-1"


# --- configuration ------------------------------------------------------------------------

def build(origin: dict, tmp: Path | None = None) -> edge_config.EdgeConfig:
    raw = load_yaml_text(yaml.safe_dump({"customers": [
        {"directory": "b", "cnames": ["media.test.com"], "origin": origin}]}), "edge.yaml")
    return edge_config.build(raw, "edge.yaml", tmp)


def test_bucket_config_is_validated_with_lines(monkeypatch):
    with pytest.raises(edge_config.ConfigError) as err:
        build({"type": "s3", "address": "https://media.s3.amazonaws.com", "private": True,
               "secret_access_key_env": "NOPE_NOT_SET", "access_key_id": "AKIA1"})
    text = "\n".join(err.value.problems)
    assert "edge.yaml:" in text and "host name only" in text
    assert "NOPE_NOT_SET" in text and "is not set" in text
    with pytest.raises(edge_config.ConfigError) as err:
        build({"type": "oss", "address": "b.oss-cn-hangzhou.aliyuncs.com", "signature": "v2"})
    assert any("region" in p for p in err.value.problems)
    assert any("signature" in p for p in err.value.problems)
    monkeypatch.setenv("MEDIA_SECRET", "s3cr3t-value")
    cfg = build({"type": "s3", "address": "media.s3.eu-west-1.amazonaws.com",
                 "region": "eu-west-1", "access_key_id": "AKIA1",
                 "secret_access_key_env": "MEDIA_SECRET"})
    bucket = cfg.customers[0].origin.bucket
    assert bucket.name == "media" and bucket.private and bucket.addressing == "virtual"
    assert "s3cr3t-value" not in repr(cfg) and "s3cr3t-value" not in str(bucket)


def test_credentials_file(tmp_path):
    (tmp_path / "media.keys").write_text("[default]\naws_access_key_id = AKIA2\n"
                                         "aws_secret_access_key = from-a-file\n")
    cfg = build({"type": "s3", "address": "127.0.0.1:9", "bucket": "m", "addressing": "path",
                 "protocol": "http", "credentials_file": "media.keys"}, tmp_path)
    bucket = cfg.customers[0].origin.bucket
    assert (bucket.key_id, bucket.secret.value) == ("AKIA2", "from-a-file")


# --- OSS signatures against the SDK --------------------------------------------------------

def oss2_authorization(method: str, bucket: str, key: str, headers: dict, region: str,
                       version: str, when: dt.datetime, monkeypatch) -> str:
    """What oss2 puts in Authorization for this request at this time."""
    class Frozen(dt.datetime):
        @classmethod
        def utcnow(cls):
            return when

    monkeypatch.setattr(oss2.auth, "datetime", Frozen)
    monkeypatch.setattr(oss2.utils, "http_date",
                        lambda *a: when.strftime("%a, %d %b %Y %H:%M:%S GMT"))
    req = oss2.http.Request(method, f"http://x/{bucket}/{key}", headers=dict(headers),
                            region=region, product="oss")
    if version == "v4":
        auth = oss2.AuthV4("LTAI-id", SECRET)
        extra = [h for h in headers if h.lower() in ("range", "if-none-match",
                                                     "if-modified-since")]
        auth._sign_request(req, bucket, key, extra or None)
    else:
        oss2.Auth("LTAI-id", SECRET)._sign_request(req, bucket, key)
    return req.headers["authorization"]


@pytest.mark.parametrize("version", ["v4", "v1"])
@pytest.mark.parametrize("key,headers", [
    ("video/clip.mp4", {}),
    ("a b/ü+&=.txt", {"Range": "bytes=0-99"}),
    ("x.bin", {"If-None-Match": '"abc"', "Range": "bytes=5-"}),
])
def test_oss_signatures_equal_the_sdks(version, key, headers, monkeypatch):
    when = dt.datetime(2026, 11, 24, 10, 30, 5)
    bucket = Bucket("oss", "media", "media.oss-cn-hangzhou.aliyuncs.com", "cn-hangzhou",
                    "virtual", version, "LTAI-id", Secret(SECRET))
    path = "/" + urllib.parse.quote(key)
    ours = dict(bucket.sign("GET", bucket.address, path, list(headers.items()),
                            now=when.replace(tzinfo=dt.timezone.utc).timestamp()))
    expected = oss2_authorization("GET", "media", key, headers, "cn-hangzhou", version, when,
                                  monkeypatch)
    assert ours["Authorization"] == expected


# --- S3 with moto ---------------------------------------------------------------------------

class Moto:
    """A moto S3 server; with `auth`, every request after set-up must be signed correctly."""

    def __init__(self, auth: bool):
        self.port = free_port()
        self.auth = auth
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
        if auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "6"     # the set-up calls below
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                      "-p", str(self.port)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(150):
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        session = botocore.session.get_session()
        kw = dict(endpoint_url=self.url, region_name=S3_REGION,
                  aws_access_key_id="AKIASETUP", aws_secret_access_key="setup")
        iam = session.create_client("iam", **kw)
        iam.create_user(UserName="edge")
        key = iam.create_access_key(UserName="edge")["AccessKey"]
        self.key_id, self.secret = key["AccessKeyId"], key["SecretAccessKey"]
        iam.put_user_policy(UserName="edge", PolicyName="read", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        self.s3 = session.create_client("s3", **{**kw, "aws_access_key_id": self.key_id,
                                                 "aws_secret_access_key": self.secret})
        self.s3.create_bucket(Bucket="media", CreateBucketConfiguration={
            "LocationConstraint": S3_REGION})
        self.put("clip.mp4", b"v1" * 5000)                 # the 6th unauthenticated call

    def put(self, key: str, body: bytes) -> None:
        # A public bucket's objects are public-read; anonymous requests get them.
        extra = {} if self.auth else {"ACL": "public-read"}
        self.s3.put_object(Bucket="media", Key=key, Body=body, ContentType="video/mp4", **extra)

    def origin(self, **extra) -> dict:
        return {"type": "s3", "address": f"127.0.0.1:{self.port}", "bucket": "media",
                "addressing": "path", "protocol": "http", "region": S3_REGION, **extra}

    def close(self) -> None:
        stop(self.proc)


@pytest.fixture(scope="module")
def moto_auth():
    server = Moto(auth=True)
    yield server
    server.close()


def bucket_cfg(origin: dict, **cache) -> dict:
    return {"customers": [{"directory": "b", "cnames": ["media.test.com"], "origin": origin,
                           "cache": {"ttl_rules": [{"match": "*", "ttl": 1, "override": True}],
                                     **cache}}]}


async def get(edge: Edge, path: str, method: str = "GET", **headers):
    async with edge.client.request(method, edge.base + path,
                                   headers={"Host": "media.test.com", **headers}) as r:
        return r.status, await r.read(), r.headers.copy()


async def test_private_s3_bucket_signed_ranges_revalidation_and_refusals(moto_auth, monkeypatch,
                                                                          caplog):
    caplog.set_level(logging.INFO)
    unsigned = urllib.request.Request(f"{moto_auth.url}/media/clip.mp4")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(unsigned)
    assert refused.value.code == 403                      # the server does enforce signatures
    monkeypatch.setenv("S3_KEY_ID", moto_auth.key_id)
    monkeypatch.setenv("S3_SECRET", moto_auth.secret)
    origin = moto_auth.origin(access_key_id_env="S3_KEY_ID", secret_access_key_env="S3_SECRET")
    seen: list[bytes] = []
    async with Edge(bucket_cfg(origin)) as edge:
        status, body, h = await get(edge, "/clip.mp4?acl")         # query never reaches S3
        assert (status, body[:4], h["X-Cache"]) == (200, b"v1v1", "MISS")
        status, body, h = await get(edge, "/clip.mp4?acl")
        assert (status, h["X-Cache"]) == (200, "HIT")
        status, body, _ = await get(edge, "/clip.mp4", Range="bytes=2-5")
        assert (status, body) == (206, b"v1v1")
        status, body, h = await get(edge, "/nothing.mp4", "HEAD")
        assert status == 404
        await asyncio.sleep(1.2)                                    # expired: revalidated
        status, body, h = await get(edge, "/clip.mp4")
        assert (status, h["X-Cache"]) == (200, "REVALIDATED")
        moto_auth.put("clip.mp4", b"v2" * 5000)                     # changed in the bucket
        await asyncio.sleep(1.2)
        status, body, h = await get(edge, "/clip.mp4")
        assert (status, body[:4], h["X-Cache"]) == (200, b"v2v2", "MISS")
        status, body, h = await get(edge, "/missing.mp4")
        assert status == 404 and b"<" not in body and b"RequestId" not in body
        seen += [body, json.dumps(dict(h)).encode()]
        metrics = await (await edge.client.get(edge.base + "/metrics")).read()
        seen.append(metrics)
        assert b'reason="bucket_NoSuchKey"' in metrics
    # A wrong secret: refused, said clearly, never cached, nothing leaked.
    wrong = moto_auth.origin(access_key_id=moto_auth.key_id, secret_access_key="not-the-key")
    async with Edge(bucket_cfg(wrong)) as edge:
        for _ in range(2):
            status, body, h = await get(edge, "/clip.mp4")
            assert status == 403 and b"Signature" not in body and h.get("X-Cache") != "HIT"
            seen += [body, json.dumps(dict(h)).encode()]
        metrics = await (await edge.client.get(edge.base + "/metrics")).read()
        assert b'reason="bucket_SignatureDoesNotMatch"' in metrics
        seen.append(metrics)
    assert "SignatureDoesNotMatch" in caplog.text
    seen.append(caplog.text.encode())
    for secret in (moto_auth.secret, "not-the-key"):
        assert not any(secret.encode() in blob for blob in seen), secret


async def test_public_s3_bucket_goes_unsigned():
    server = Moto(auth=False)
    try:
        async with Edge(bucket_cfg(server.origin())) as edge:
            status, body, _ = await get(edge, "/clip.mp4")
            assert status == 200 and body == b"v1" * 5000
    finally:
        server.close()


def test_secret_stays_out_of_the_tools(tmp_path, moto_auth):
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(yaml.safe_dump(bucket_cfg(moto_auth.origin(
        access_key_id=moto_auth.key_id, secret_access_key=moto_auth.secret))))
    outputs = []
    for args in (["whitelist"], ["validate", "b"], ["whitelist", "--json"]):
        run = subprocess.run([sys.executable, "-m", "edge.cli", *args, "-c", str(cfg)]
                             if args[0] != "validate" else
                             [sys.executable, "-m", "edge.cli", "validate", "-c", str(cfg), "b"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        outputs.append(run.stdout + run.stderr)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(bucket_cfg({**moto_auth.origin(
        access_key_id=moto_auth.key_id, secret_access_key=moto_auth.secret),
        "address": f"http://127.0.0.1:{moto_auth.port}"})))
    run = subprocess.run([sys.executable, "-m", "edge.cli", "serve", "-c", str(bad)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "host name only" in run.stderr
    outputs.append(run.stdout + run.stderr)
    assert "source blocks" in outputs[0]
    assert not any(moto_auth.secret in out for out in outputs)


# --- OSS against a verifying server ---------------------------------------------------------

class OssServer:
    """Serves one bucket; refuses any request whose signature oss2 does not reproduce."""

    def __init__(self, version: str, monkeypatch):
        self.version, self.monkeypatch = version, monkeypatch
        self.port = free_port()
        self.objects = {"clip.mp4": (b"oss" * 3000, '"e1"')}
        self.checked = 0

    async def handle(self, request: web.Request) -> web.Response:
        bucket, _, key = request.path[1:].partition("/")
        got = request.headers.get("Authorization", "")
        v4_stamp = request.headers.get("x-oss-date")
        try:
            when = (dt.datetime.strptime(v4_stamp, "%Y%m%dT%H%M%SZ") if v4_stamp else
                    parsedate_to_datetime(request.headers.get("Date", "")).replace(tzinfo=None))
        except (ValueError, TypeError):
            return web.Response(status=403, text="<Error><Code>AccessDenied</Code></Error>")
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("range", "if-none-match", "if-modified-since")}
        expected = oss2_authorization(request.method, bucket, key, headers, "cn-hangzhou",
                                      self.version, when, self.monkeypatch)
        if got != expected or abs(time.time() - when.replace(
                tzinfo=dt.timezone.utc).timestamp()) > 900:
            return web.Response(status=403, content_type="application/xml", text=(
                "<Error><Code>SignatureDoesNotMatch</Code><RequestId>5F1</RequestId></Error>"))
        self.checked += 1
        if key not in self.objects:
            return web.Response(status=404, text="<Error><Code>NoSuchKey</Code></Error>")
        body, etag = self.objects[key]
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        rng = request.headers.get("Range")
        if rng:
            first, last = (int(x) for x in rng.removeprefix("bytes=").split("-"))
            return web.Response(status=206, body=body[first:last + 1], headers={
                "ETag": etag, "Content-Range": f"bytes {first}-{last}/{len(body)}"})
        return web.Response(body=body, headers={"ETag": etag})

    async def __aenter__(self) -> "OssServer":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner, _ = await serve_app(app, "127.0.0.83", self.port)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()

    def origin(self, secret: str = SECRET) -> dict:
        return {"type": "oss", "address": f"127.0.0.83:{self.port}", "bucket": "media",
                "addressing": "path", "protocol": "http", "region": "cn-hangzhou",
                "signature": self.version, "access_key_id": "LTAI-id",
                "secret_access_key": secret}


@pytest.mark.parametrize("version", ["v4", "v1"])
async def test_oss_flow_through_the_edge(version, monkeypatch):
    async with OssServer(version, monkeypatch) as oss:
        async with Edge(bucket_cfg(oss.origin())) as edge:
            status, body, h = await get(edge, "/clip.mp4")
            assert (status, body[:3], h["X-Cache"]) == (200, b"oss", "MISS")
            status, body, _ = await get(edge, "/clip.mp4", Range="bytes=3-5")
            assert (status, body) == (206, b"oss")
            await asyncio.sleep(1.2)
            status, _, h = await get(edge, "/clip.mp4")      # If-None-Match, signed too
            assert (status, h["X-Cache"]) == (200, "REVALIDATED")
            status, body, _ = await get(edge, "/gone.mp4")
            assert status == 404 and body == b"not found\n"
        assert oss.checked == 3
        async with Edge(bucket_cfg(oss.origin(secret="wrong"))) as edge:
            status, body, _ = await get(edge, "/clip.mp4")
            assert status == 403 and b"RequestId" not in body
        assert oss.checked == 3
