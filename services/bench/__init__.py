"""Benchmarks: `fedscreen bench`. A leaf: nothing outside it imports it but the CLI's
lazy registration (services/commands.py), and the wheel, so the runtime image, leaves it
out; the local stack it runs on is services/stack."""
