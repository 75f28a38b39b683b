"""Test harness (no tests): the real gateway on loopback with local cloud stand-ins, and a
minimal protocol client. Used by tests/gateway, tests/early, the VM test bed and bench/."""
