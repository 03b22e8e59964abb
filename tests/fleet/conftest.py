"""The fleet tests start their own etcd (tests/etcd.py) per module: see test_fleet.py."""
