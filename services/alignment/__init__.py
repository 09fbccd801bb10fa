"""ID alignment: ECDH private set intersection between the bank and each partner."""
