"""Config validation: every problem, each with file:line, and `gslb check`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cdnkit.check import ConfigError
from gslb.config import load_config
from tests.conftest import DATA, DEFAULT_CONFIG, ROOT

BROKEN = """\
server:
  listen: ["127.0.0.1:8053", "localhost:99999"]   # BAD-LISTEN
  wrokers: 2                                      # UNKNOWN-SERVER-KEY
geoip:
  database: /nonexistent/city.mmdb                # MISSING-DB
nets:
  10.0.0.0/33: {sites: [nyc]}                     # BAD-CIDR
  10.1.0.0/16: {sites: [atlantis]}                # UNKNOWN-NET-SITE
sites:
  nyc:
    lat: 40.7
    lon: -74.0
    addresses: [127.0.0.11, 127.0.0.300]          # BAD-IP
  fra:
    lat: 95                                       # BAD-LAT
    lon: 8.6
    addresses: [127.0.0.11]                       # DUP-ADDR
  v4only:
    lat: 1.3
    lon: 103.8
    addresses: [127.0.0.13]
zones:
  cdn.example.net.:
    soa: {mname: ns1.cdn.example.net., minimum: 60}
    ns: [ns1.cdn.example.net.]                    # NO-GLUE
    records:
      www:
        - {type: A, value: not-an-ip}             # BAD-RDATA
        - {type: CNAME, value: other.example.}
services:
  "*.cdn.example.net.":
    pool: [nyc, fra, ghost]                       # UNKNOWN-POOL-SITE
    ip_version: v5_only                           # BAD-POLICY
  "v6.cdn.example.net.":
    pool: [v4only]                                # FAMILY-MISMATCH
    ip_version: v6_only
  "www.elsewhere.org.":                           # OUTSIDE-ZONE
    pool: [nyc]
    all_down: fallback                            # FALLBACK-NEEDS-ADDRS
"""

EXPECTED = {
    "BAD-LISTEN": "localhost:99999",
    "UNKNOWN-SERVER-KEY": "unknown key 'wrokers'",
    "MISSING-DB": "does not exist",
    "BAD-CIDR": "bad CIDR",
    "UNKNOWN-NET-SITE": "unknown site 'atlantis'",
    "BAD-IP": "'127.0.0.300' is not an IP address",
    "BAD-LAT": "lat = 95 is out of range",
    "DUP-ADDR": "already used by site 'nyc'",
    "NO-GLUE": "has no A/AAAA record (glue)",
    "BAD-RDATA": "cannot parse value 'not-an-ip'",
    "UNKNOWN-POOL-SITE": "unknown site 'ghost'",
    "BAD-POLICY": "'v5_only' is not one of",
    "FAMILY-MISMATCH": "needs IPv6 addresses but no site in the pool has any",
    "OUTSIDE-ZONE": "is outside every zone",
    "FALLBACK-NEEDS-ADDRS": "all_down: fallback needs fallback",
}


def line_of(marker: str) -> int:
    for number, line in enumerate(BROKEN.splitlines(), 1):
        if line.rstrip().endswith(f"# {marker}"):
            return number
    raise AssertionError(marker)


def test_every_problem_is_reported_with_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = info.value.problems
    for marker, text in EXPECTED.items():
        prefix = f"{path}:{line_of(marker)}: "
        assert any(p.startswith(prefix) and text in p for p in problems), (marker, problems)
    # the CNAME clash is reported at the name that has both
    assert any("CNAME cannot coexist" in p for p in problems)


def test_check_command_lists_all_and_exits_1(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    out = subprocess.run([sys.executable, "-m", "gslb.cli", "check", str(path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 1
    for marker in EXPECTED:
        assert f"{path}:{line_of(marker)}:" in out.stderr, marker


def test_check_command_accepts_the_default_config():
    out = subprocess.run([sys.executable, "-m", "gslb.cli", "check", str(DEFAULT_CONFIG)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n") == 1 and "OK" in out.stdout and "1 zone(s)" in out.stdout


def test_yaml_syntax_error_has_line(tmp_path):
    path = tmp_path / "syntax.yaml"
    path.write_text("server:\n  listen: [\n zones: {\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems[0].startswith(f"{path}:")
    assert int(info.value.problems[0].split(":")[1]) >= 2


def test_duplicate_yaml_key_is_an_error(tmp_path):
    path = tmp_path / "dup.yaml"
    text = DEFAULT_CONFIG.read_text().replace("sites:\n  nyc:", "sites:\n  nyc: {}\n  nyc:", 1)
    path.write_text(text.replace("demo-city.mmdb", str(DATA / "demo-city.mmdb")))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "duplicate key 'nyc'" in info.value.problems[0]


def test_wrong_kind_of_geo_database(tmp_path):
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet
    db = tmp_path / "asn.mmdb"
    w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-ASN")
    w.insert_network(IPSet(["192.0.2.0/24"]), {"autonomous_system_number": 64496})
    w.to_db_file(str(db))
    text = DEFAULT_CONFIG.read_text().replace("database: demo-city.mmdb", f"database: {db}")
    path = tmp_path / "asn.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    line = next(i for i, l in enumerate(text.splitlines(), 1) if "database:" in l)
    assert info.value.problems == [
        f"{path}:{line}: GeoIP database {db} is of type 'GeoLite2-ASN'; a City or Country "
        "database is needed"]


def test_unused_site_and_unknown_top_level_key(tmp_path):
    text = DEFAULT_CONFIG.read_text().replace("demo-city.mmdb", str(DATA / "demo-city.mmdb"))
    text += "\nextras: 1\n"
    text = text.replace("pool: [nyc, fra, sin]", "pool: [nyc, fra]")
    path = tmp_path / "unused.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    joined = "\n".join(info.value.problems)
    assert "site 'sin' is in no service's pool" in joined
    assert "unknown key 'extras'" in joined


def test_default_config_loads_into_frozen_values():
    cfg = load_config(DEFAULT_CONFIG)
    assert [str(l) for l in cfg.server.listen] == ["127.0.0.1:8053", "[::1]:8053"]
    assert cfg.zones[0].origin == "cdn.example.net."
    assert cfg.services[0].name == "*.cdn.example.net."
    with pytest.raises(Exception):
        cfg.services[0].ttl = 1  # type: ignore[misc]
    assert Path(cfg.geoip_database).name == "demo-city.mmdb"


def check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gslb.cli", "check", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_check_lists_problems_in_file_order_without_doubled_dots(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    out = check(path)
    lines = [int(l.split(":")[1]) for l in out.stderr.splitlines()[1:]]
    assert lines == sorted(lines) and len(lines) >= len(EXPECTED)
    assert ".." not in out.stderr.replace("-90..90", "")   # "service *.cdn.example.net..ip_version"
    assert (f"{path}:{line_of('BAD-POLICY')}: service *.cdn.example.net.: ip_version = "
            "'v5_only' is not one of") in out.stderr
    assert f"{path}:{line_of('BAD-LAT')}: site 'fra': lat = 95 is out of range" in out.stderr


def test_a_file_that_cannot_be_read_is_one_clear_line(tmp_path):
    for path, why in ((tmp_path / "missing.yaml", "no such file"),
                      (tmp_path, "is a directory, not a config file")):
        out = check(path)
        assert (out.returncode, out.stdout, out.stderr) == (1, "", f"{path}: {why}\n")
        edge = subprocess.run([sys.executable, "-m", "edge.cli", "serve", "-c", str(path)],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert (edge.returncode, edge.stderr) == (1, f"{path}: {why}\n")


YAML_MISTAKES = [
    # (text, line reported, words of the message)
    ('server:\n  listen: ["127.0.0.1:8053"\nzones: {}\n', 2, "this [ is never closed"),
    ("server:\n  listen: [\n zones: {\n", 2, "this [ is never closed"),
    ("server: {listen: x\nzones: {}\n", 1, "this { is never closed"),
    ('server:\n  nsid: "abc\nzones: {}\n', 2, 'the string opened here with " is never closed'),
    ("server:\n\tlisten: x\n", 2, "a tab character in the indentation"),
    ("server:\n  listen: []\n workers: 2\n", 3,
     "not indented like the keys above it (the mapping starts at line 1)"),
    ("zones:\n  - a\n - b\n", 3, "a list item ('- ...') where a key belongs"),
    ("server:\n  nsid: a: b\n", 2, "a second ': ' on this line"),
    ("server:\n  listen:[x]\n  workers: 2\n", 3, "a key needs a space after its ':'"),
]


@pytest.mark.parametrize("text,line,words", YAML_MISTAKES)
def test_yaml_mistakes_are_reported_where_they_were_made_with_a_hint(tmp_path, text, line,
                                                                       words):
    path = tmp_path / "mistake.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [problem] = info.value.problems
    assert problem.startswith(f"{path}:{line}: ") and words in problem, problem
    assert "(hint: " in problem


def test_misspelled_keys_names_and_choices_get_a_did_you_mean(tmp_path):
    text = (DEFAULT_CONFIG.read_text().replace("demo-city.mmdb", str(DATA / "demo-city.mmdb"))
            .replace("  workers: auto", "  wrokers: auto")
            .replace("    check: edge\n    addresses: [127.0.0.11", "    check: egde\n"
                     "    addresses: [127.0.0.11")
            .replace("    type: http ", "    type: htpp ")
            .replace("pool: [nyc, fra, sin]", "pool: [nyc, fra, sin, frankfurt]")
            .replace("algorithm: nearest", "algorithm: nearset")) + "frobnicate: 1\n"
    path = tmp_path / "typos.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    joined = "\n".join(info.value.problems)
    assert "unknown key 'wrokers' in server (did you mean 'workers'?)" in joined
    assert "site 'nyc': unknown check 'egde' (did you mean 'edge'?)" in joined
    assert "type = 'htpp' is not one of: http, https, tcp (did you mean 'http'?)" in joined
    assert "algorithm = 'nearset' is not one of: nearest, failover, weighted " \
           "(did you mean 'nearest'?)" in joined
    assert "unknown site 'frankfurt' in pool (did you mean 'fra'?)" not in joined  # too far
    frob = next(p for p in info.value.problems if "frobnicate" in p)
    assert "did you mean" not in frob
