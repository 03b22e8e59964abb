"""Edge proxy: routes CDN requests to customer origins (the cache plugs in here)."""
