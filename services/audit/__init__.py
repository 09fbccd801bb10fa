"""The adversaries' code: attacks that try to break fedscreen's privacy claims, run by the
tests and by `fedscreen evaluate --audit`."""
