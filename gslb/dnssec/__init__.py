"""DNSSEC: online signing, authenticated denial, key files and the operator's commands."""
