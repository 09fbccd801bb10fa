"""The curious bank against training: per-row bin recovery from everything it holds
after a real training run over the broker (services/audit/curious_bank.py); and the
curious partner's look at the same run: which rows did the bank hold out?

The same attack twice on the same run: first with what the earlier protocol gave the
bank (the direction tables it chose, each partner's scores on their own), where it
recovers nearly every row; then with what this protocol gives it (sums over partners
of scores under tables only the partners hold, encrypted), where it does no better than
guessing the most common bin vector. A one-partner federation too, where the sum is
that partner's own score: there the tables alone make the difference.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from schemas import TrainStart
from schemas.training import TO_PARTNER
from services.audit.curious_bank import bank_knowledge, legacy_knowledge, recover
from services.audit.curious_partner import held_out_guess
from services.audit.transcript import read_messages
from services.kernel.crypto.tokens import load_token_source
from services.kernel.kafka.topics import training_topic
from tests.privacy.runs import TrainingRun, train

pytestmark = pytest.mark.integration

SMALL = {"bureau": ["PAY_0", "PAY_2", "PAY_AMT1", "BILL_AMT1"]}
"""Few enough bin vectors (about 35,000) for the exact meet-in-the-middle to be instant."""
TWO = {"status": ["PAY_0", "PAY_2", "PAY_3"], "amounts": ["PAY_AMT1", "BILL_AMT1"]}


@pytest.fixture(scope="module")
async def runs(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, TrainingRun]]:
    """Both runs at once, each with its own broker and partner processes: much of a run
    is waiting (group joins, partners starting), which the other run fills."""
    roots = [tmp_path_factory.mktemp("privacy-training") for _ in range(2)]
    results = await asyncio.gather(
        train(roots[0], SMALL), train(roots[1], TWO), return_exceptions=True
    )
    trained = [r for r in results if isinstance(r, TrainingRun)]
    try:
        for result in results:
            if isinstance(result, BaseException):
                raise result
        yield dict(zip(["one partner", "two partners"], trained, strict=True))
    finally:
        for each in trained:
            each.stop()


@pytest.fixture(params=["one partner", "two partners"])
def run(request: pytest.FixtureRequest, runs: dict[str, TrainingRun]) -> TrainingRun:
    return runs[request.param]


async def test_with_the_legacy_banks_tables_the_attack_recovers_the_bins(run: TrainingRun) -> None:
    truths = run.truths()
    # legacy_knowledge rebuilds every partner's exact scores; it checks that they add up
    # to what the bank decrypted in the run, so the rebuilt view is the run's own.
    results = recover(legacy_knowledge(run.trace, truths), truths)
    for result in results:
        assert result.equations == len(run.trace.scores)
        assert result.recovered_fraction >= 0.9, result
        assert result.recovered_fraction > result.baseline_fraction + 0.5


async def test_with_what_this_bank_holds_the_attack_does_no_better_than_guessing(
    run: TrainingRun,
) -> None:
    truths = run.truths()
    knowledge = bank_knowledge(run.trace)
    assert any("no direction table" in note for note in knowledge.notes)
    for result in recover(knowledge, truths):
        assert result.recovered_fraction <= result.baseline_fraction + 0.01, result


async def test_a_partner_cannot_tell_which_rows_the_bank_held_out(run: TrainingRun) -> None:
    """The earlier protocol sent the held-out rows in a field of their own, after the fit
    rows; now every row is in one shuffled list, held-out rows with encrypted zero
    gradients. The partner's best bet, the tail of the list, does as well as a guess."""
    name = next(iter(run.partners))
    tokens = load_token_source(run.deployment.token_dir, name, allow_hmac=True)
    listed = [tokens.token(i) or "" for i in run.trace.ids]
    held = {t for t, out in zip(listed, run.trace.held_out, strict=True) if out}
    fit = [t for t, out in zip(listed, run.trace.held_out, strict=True) if not out]
    legacy = fit + [t for t in listed if t in held]  # "tokens" then "eval_tokens"
    assert len(held_out_guess(legacy, len(held)) & held) == len(held)

    starts = [
        TO_PARTNER.validate_json(v)
        for v in await read_messages(run.broker.settings(), training_topic(name))
    ]
    (start,) = [m for m in starts if isinstance(m, TrainStart)]
    assert start.tokens == listed  # the list the trace describes is the one sent
    precision = len(held_out_guess(start.tokens, len(held)) & held) / len(held)
    share = len(held) / len(listed)
    assert precision <= share + 4 * (share * (1 - share) / len(held)) ** 0.5
