"""Origins: which server to try, how names resolve, what is forwarded, buckets, the pull."""
