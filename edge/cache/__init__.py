"""The cache: RFC 9111 rules, the memory and disk tiers, shared fills, ranges, purge."""
