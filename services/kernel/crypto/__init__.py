"""Cryptography: Paillier with slot packing, tokens, signatures."""
