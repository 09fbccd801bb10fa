"""The end-to-end demo: `fedscreen demo`."""
