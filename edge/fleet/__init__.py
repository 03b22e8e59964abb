"""The edge in a fleet: customers watched in the store, and what the edge reports back."""
