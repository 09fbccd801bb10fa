"""The curious partner: it follows the protocol and reads everything it is sent (its
request and training topics) plus, through an ACL hole, what other partners send the
bank. Three things it must not learn:

- **who the bank's other customers are**: :func:`reidentify` maps the tokens it is sent
  back to ids by computing the token of every id it can. With keyed-HMAC tokens that is
  any id (the key is shared), so guessable ids give the bank's whole list away; with
  PSI tokens it is only its own customers, and the bank sends random decoys for the rest;
- **which rows the bank held out** of training: :func:`held_out_guess` bets on the tail of
  the session's token list (where the earlier protocol put them, in a field of their
  own);
- **another partner's flags**: :func:`other_partners_flags` reads that partner's
  fragments off ``fed.fragments.v1``; in the benchmark's crypto-off mode they are plain
  slots, otherwise ciphertexts under the bank's key, masked pairwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from schemas import EncryptedFragment, PackingSpec


def reidentify(
    seen: Iterable[str], token_of: Callable[[str], str | None], guesses: Iterable[str]
) -> dict[str, str]:
    """token -> id for every seen token the partner can compute from an id it guesses."""
    wanted = set(seen)
    found = {}
    for customer in guesses:
        token = token_of(customer)
        if token is not None and token in wanted:
            found[token] = customer
    return found


def held_out_guess(tokens: Sequence[str], held_out: int) -> set[str]:
    """The partner's bet: the last ``held_out`` tokens of the list are the held-out rows."""
    return set(tokens[len(tokens) - held_out :]) if held_out else set()


def other_partners_flags(
    fragments: Iterable[EncryptedFragment], partner: str, packing: PackingSpec
) -> dict[tuple[str, int], bool]:
    """(batch id, slot) -> whether ``partner`` flagged that candidate, for every slot the
    attacker can read: plain slots carry the flag in the clear (a hit count above the
    score field); a ciphertext cannot be read without the bank's private key."""
    out = {}
    for fragment in fragments:
        if fragment.partner != partner or fragment.mode != "plaintext":
            continue
        for slot, value in enumerate(fragment.plain_slots or []):
            out[(fragment.batch_id, slot)] = (value >> packing.score_bits) > 0
    return out
