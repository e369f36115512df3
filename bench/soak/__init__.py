"""The soak: the whole system for a set time under load (`python -m bench.soak`); see bench/soak/README.md."""
