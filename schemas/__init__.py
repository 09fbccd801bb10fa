"""fedscreen's wire contract: one pydantic model per message type, exported as JSON Schema.

Import message types from here; ``MESSAGE_TYPES`` lists every top-level message.
"""

from __future__ import annotations

from schemas.alignment import PsiAnswer, PsiError, PsiOffer, PsiResult
from schemas.campaigns import CampaignConfig, QuotaCounts
from schemas.candidate import CandidateEvent
from schemas.common import ReasonCode, WireModel
from schemas.dlq import DlqEnvelope
from schemas.federation import AgreementKey, EncryptedFragment, FragmentRequest
from schemas.rollout import (
    BankBundle,
    CampaignPolicy,
    FrequencyCap,
    ModelReady,
    PackingSpec,
    PartnerBundle,
    PartnerScorecard,
    PolicyConfig,
    ScoreBand,
)
from schemas.screening import DeadlineTick, Decision, PendingBatch, PendingCandidate, Release
from schemas.training import (
    BlindTraining,
    ScoreLayout,
    TrainDone,
    TrainError,
    TrainFinish,
    TrainReady,
    TrainRound,
    TrainScores,
    TrainStart,
    TrainTruncate,
    TrainTruncated,
)

MESSAGE_TYPES: tuple[type[WireModel], ...] = (
    CandidateEvent,
    FragmentRequest,
    EncryptedFragment,
    PendingBatch,
    DeadlineTick,
    Decision,
    Release,
    DlqEnvelope,
    BankBundle,
    PartnerBundle,
    ModelReady,
    TrainStart,
    TrainRound,
    TrainFinish,
    TrainTruncated,
    TrainReady,
    TrainScores,
    TrainTruncate,
    TrainDone,
    TrainError,
    PsiOffer,
    PsiAnswer,
    PsiResult,
    PsiError,
    AgreementKey,
    CampaignConfig,
    QuotaCounts,
)

__all__ = [
    "MESSAGE_TYPES",
    "AgreementKey",
    "BankBundle",
    "BlindTraining",
    "CampaignConfig",
    "CampaignPolicy",
    "CandidateEvent",
    "DeadlineTick",
    "Decision",
    "DlqEnvelope",
    "EncryptedFragment",
    "FragmentRequest",
    "FrequencyCap",
    "ModelReady",
    "PackingSpec",
    "PartnerBundle",
    "PartnerScorecard",
    "PendingBatch",
    "PendingCandidate",
    "PolicyConfig",
    "PsiAnswer",
    "PsiError",
    "PsiOffer",
    "PsiResult",
    "QuotaCounts",
    "ReasonCode",
    "Release",
    "ScoreBand",
    "ScoreLayout",
    "TrainDone",
    "TrainError",
    "TrainFinish",
    "TrainReady",
    "TrainRound",
    "TrainScores",
    "TrainStart",
    "TrainTruncate",
    "TrainTruncated",
    "WireModel",
]
