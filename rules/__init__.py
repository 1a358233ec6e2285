"""Rule language, rule sets and decisions: pure, deterministic, no I/O."""
