"""What the three wings (gslb, edge, control) share: YAML with file:line, the
validation Checker, listeners and HOST:PORT parsing. Small on purpose: a wing
imports this package, never another wing."""
