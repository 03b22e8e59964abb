"""The nameserver in a fleet: the store's view of health, quorum, the safe order, the dashboard's fleet view."""
