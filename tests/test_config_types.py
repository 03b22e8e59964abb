"""Every scalar of both configs is checked for its type, with file:line: a list or a
mapping where a string, a number or true/false belongs is an error, never `str([...])`
(`secret_access_key: [SECRET, 1]` was accepted as the secret "['SECRET', 1]")."""
from __future__ import annotations

import pytest

from cdnkit.check import ConfigError
from edge import config as edge_config
from gslb.config import load_config
from tests.conftest import DATA

GSLB = f"""\
server:
  listen: ["127.0.0.1:8053"]
  cookies: "yes"                                   # T-COOKIES
  nsid: [a]                                        # T-NSID
  cookie_secret_env: {{x: 1}}                        # T-SECRET-ENV
  rate_limit: {{enabled: "on"}}                      # T-RRL-ENABLED
dashboard:
  token: [t]                                       # T-TOKEN
  edges: {{e1: [http://x]}}                          # T-EDGE-URL
health:
  state_file: [x]                                  # T-STATE-FILE
geoip:
  database: [{DATA / "demo-city.mmdb"}]            # T-DATABASE
nets:
  10.0.0.0/8: {{sites: [[nyc]]}}                     # T-NETS-SITES
checks:
  edge:
    type: [http]                                   # T-CHECK-TYPE
    port: 8081
    host: {{a: 1}}                                   # T-CHECK-HOST
    verify_tls: "no"                               # T-VERIFY
sites:
  nyc:
    city: [New York]                               # T-CITY
    lat: 40.7
    lon: -74.0
    check: {{edge: 1}}                               # T-SITE-CHECK
    addresses:
      - {{address: [127.0.0.11]}}                    # T-ADDRESS
      - {{address: "::1", probe: [x]}}               # T-PROBE
      - {{address: 127.0.0.21, check: [edge]}}       # T-ADDR-CHECK
zones:
  cdn.example.net.:
    soa: {{mname: [ns1.cdn.example.net.]}}           # T-MNAME
    ns: [[ns1.cdn.example.net.]]                   # T-NS
    records:
      ns1: [{{type: A, value: 127.0.0.1}}]
      www: [{{type: [A], value: 127.0.0.2}}]         # T-RTYPE
      txt: [{{type: TXT, value: {{a: 1}}}}]            # T-RVALUE
services:
  "*.cdn.example.net.":
    pool: [nyc, [nyc]]                             # T-POOL
    algorithm: [nearest]                           # T-ALGORITHM
"""

EDGE = """\
listen: [[127.0.0.1:8081]]                         # T-LISTEN
account: [800001]                                  # T-ACCOUNT
name: {a: 1}                                       # T-NAME
region: [eu]                                       # T-REGION
cache_disk: [x]                                    # T-CACHE-DISK
egress: [[10.0.0.0/8]]                             # T-EGRESS
resolver: [{a: 1}]                                 # T-RESOLVER
shields:
  - {name: [s1], address: "127.0.0.14:8081"}       # T-SHIELD-NAME
customers:
  - directory: [test]                              # T-DIRECTORY
    cnames: [www.test.com, [x]]                    # T-CNAMES
    origin: {http: [[127.0.0.1:9000]], retry_5xx: "yes"}   # T-ORIGIN
    cache: {enabled: 1, key_headers: [[x]]}        # T-CACHE
  - directory: media
    origin:
      type: s3
      address: media.s3.eu-west-1.amazonaws.com
      region: eu-west-1
      private: "yes"                               # T-PRIVATE
      access_key_id: AKIDEXAMPLE
      secret_access_key: [SECRET, 1]               # T-SECRET
      expose_errors: "true"                        # T-EXPOSE
"""


def line_of(text: str, marker: str) -> int:
    return next(n for n, l in enumerate(text.splitlines(), 1) if l.endswith(f"# {marker}"))


def problems_of(load, text: str, tmp_path) -> tuple[str, list[str]]:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(path)
    return str(path), info.value.problems


def assert_each_marker_reported(text: str, path: str, problems: list[str]) -> None:
    markers = [l.rsplit("# ", 1)[1] for l in text.splitlines() if "# T-" in l]
    for marker in markers:
        prefix = f"{path}:{line_of(text, marker)}: "
        found = [p for p in problems if p.startswith(prefix)]
        assert any(w in p for p in found for w in ("must be", "is a string")), (marker, found,
                                                                                problems)


def test_every_gslb_scalar_is_type_checked(tmp_path):
    path, problems = problems_of(load_config, GSLB, tmp_path)
    assert_each_marker_reported(GSLB, path, problems)


def test_every_edge_scalar_is_type_checked(tmp_path):
    path, problems = problems_of(edge_config.load, EDGE, tmp_path)
    assert_each_marker_reported(EDGE, path, problems)
    secret = next(p for p in problems if p.startswith(f"{path}:{line_of(EDGE, 'T-SECRET')}: "))
    assert "secret_access_key must be a string, got a list" in secret
    assert "SECRET" not in "\n".join(problems)             # a secret is never echoed


def test_edge_keys_get_a_did_you_mean_too(tmp_path):
    text = ("listen: ['127.0.0.1:8081']\ncache_memroy: 1G\ncustomers:\n"
            "  - directory: test\n    orgin: {http: ['127.0.0.1:9000']}\n")
    path, problems = problems_of(edge_config.load, text, tmp_path)
    joined = "\n".join(problems)
    assert f"{path}:2: unknown key 'cache_memroy' in the top level (did you mean " \
           "'cache_memory'?)" in joined
    assert "unknown key 'orgin' in customer test (did you mean 'origin'?)" in joined
