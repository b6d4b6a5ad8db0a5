"""Infrastructure every method builds on (registry, records, contract, request engine); not methods."""
