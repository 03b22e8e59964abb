"""Authoritative GSLB DNS server: nearest healthy CDN edge, by GeoIP and ECS."""
__version__ = "0.1.0"
