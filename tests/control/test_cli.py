"""`cdnctl plan|apply|customers|purge|status` against a real etcd, exit codes included."""
from __future__ import annotations

import yaml

from tests.control.fleet import Origin, cdnctl, customer, start_edge, wait_for


def write(directory, customers, shields=None) -> None:
    directory.mkdir(exist_ok=True)
    for old in directory.glob("*.yaml"):
        old.unlink()
    body = {"customers": customers}
    if shields:
        body["shields"] = shields
    (directory / "customers.yaml").write_text(yaml.safe_dump(body, sort_keys=False))


def test_plan_and_apply_a_directory_of_customers(etcd, tmp_path):
    origin = Origin("one")
    files = tmp_path / "customers"
    write(files, [customer("a", origin.address, "www.a.com"), customer("b", origin.address)])
    edge = start_edge(tmp_path, etcd.url, "edge-a")
    try:
        plan = cdnctl(etcd.url, "plan", "-f", str(files), "--exit-code")
        assert plan.returncode == 6, plan.stderr
        assert "* customer a: create" in plan.stdout and "2 create(s)" in plan.stdout
        assert "/cdn/config/customers" not in etcd.dump()          # a plan writes nothing
        applied = cdnctl(etcd.url, "apply", "-f", str(files))
        assert applied.returncode == 0, applied.stderr
        assert "one transaction" in applied.stdout
        wait_for(lambda: edge.get("/x", "www.a.com") == (200, "one /x"))
        assert cdnctl(etcd.url, "plan", "-f", str(files), "--exit-code").returncode == 0

        # an update shows which fields change
        changed = customer("a", origin.address, "www.a.com")
        changed["cache"] = {"grace": 30}
        write(files, [changed, customer("b", origin.address)])
        plan = cdnctl(etcd.url, "plan", "-f", str(files))
        assert "* customer a: update /cache" in plan.stdout
        assert cdnctl(etcd.url, "apply", "-f", str(files)).returncode == 0

        # a bad file: every problem with file:line, nothing changed, exit 1
        (files / "customers.yaml").write_text(
            "customers:\n  - directory: c\n    origin: {http: ['http://x']}\n"
            "  - directory: c\n    origin: {http: [h]}\n")
        bad = cdnctl(etcd.url, "apply", "-f", str(files))
        assert bad.returncode == 1
        assert "customers.yaml:3" in bad.stderr and "customers.yaml:4" in bad.stderr
        assert "directory 'c' is used twice" in bad.stderr

        # deleting more than --max-deletes needs --force (exit 5)
        write(files, [])
        refused = cdnctl(etcd.url, "apply", "-f", str(files), "--max-deletes", "0")
        assert refused.returncode == 5 and "--force" in refused.stderr
        # and a customer with an edge CNAME cannot be deleted (seed 003)
        pointed = cdnctl(etcd.url, "apply", "-f", str(files), "--force")
        assert pointed.returncode == 5 and "delete the edge CNAME" in pointed.stderr
        # the CNAME goes first (it is retired, then the customer can go)
        write(files, [customer("a", origin.address), customer("b", origin.address)])
        assert cdnctl(etcd.url, "apply", "-f", str(files)).returncode == 0
        listing = cdnctl(etcd.url, "customers", "list")
        assert listing.returncode == 0 and "a " in listing.stdout and "b " in listing.stdout
        show = cdnctl(etcd.url, "customers", "show", "b")
        assert show.returncode == 0 and '"directory": "b"' in show.stdout
        assert cdnctl(etcd.url, "customers", "show", "nope").returncode == 1
        deleted = cdnctl(etcd.url, "customers", "delete", "b")
        assert deleted.returncode == 0, deleted.stderr
        assert cdnctl(etcd.url, "customers", "show", "b").returncode == 1
    finally:
        edge.stop()
        origin.close()


def test_purge_status_and_an_unreachable_store(etcd, tmp_path):
    origin = Origin("one")
    files = tmp_path / "customers"
    write(files, [customer("a", origin.address, "www.a.com")])
    edge = start_edge(tmp_path, etcd.url, "edge-a")
    try:
        assert cdnctl(etcd.url, "apply", "-f", str(files)).returncode == 0
        wait_for(lambda: edge.get("/x", "www.a.com")[0] == 200)
        purge = cdnctl(etcd.url, "purge", "--customer", "a", "--wait", "10")
        assert purge.returncode == 0, purge.stderr
        assert "done on 1/1 edges" in purge.stdout
        status = cdnctl(etcd.url, "status", "--check")
        assert status.returncode == 0 and "edge-a" in status.stdout
        assert cdnctl(etcd.url, "purge", "--customer", "nope").returncode == 1
        etcd.kill()
        down = cdnctl(etcd.url, "customers", "list")
        assert down.returncode == 3 and "unavailable" in down.stderr
    finally:
        edge.stop()
        origin.close()
