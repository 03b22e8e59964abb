"""The control plane: customers managed in one place on etcd, applied by every edge
and nameserver (`cdnctl`; docs/control.md)."""
