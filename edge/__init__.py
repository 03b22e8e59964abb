"""Edge proxy (origin pull and cache). Not built yet: see the open issues."""
