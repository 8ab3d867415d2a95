"""The RACER method as pure numpy functions: no I/O, no asyncio, no pydantic.

scores -> entry levels -> required thresholds -> certified miss count -> threshold.
"""

from racer_online.core.bounds import BOUNDS, Bound, certified_miss_count, certifies, p_value
from racer_online.core.calibration import (
    FALLBACK_LAM,
    Calibration,
    Threshold,
    calibrate,
    oracle_threshold,
    required_thresholds,
    threshold_from_required,
)
from racer_online.core.monitoring import (
    RealisedRisk,
    aci_level,
    aci_threshold,
    realised_risk,
)
from racer_online.core.routing import (
    Decision,
    ModelStats,
    SetStats,
    decide,
    members,
    model_stats,
    route,
    set_misses,
    set_stats,
)
from racer_online.core.scoring import MISSES, RULES, Miss, Rule, entry_levels

__all__ = [
    "BOUNDS",
    "FALLBACK_LAM",
    "MISSES",
    "RULES",
    "Bound",
    "Calibration",
    "Decision",
    "Miss",
    "ModelStats",
    "RealisedRisk",
    "Rule",
    "SetStats",
    "Threshold",
    "aci_level",
    "aci_threshold",
    "calibrate",
    "certified_miss_count",
    "certifies",
    "decide",
    "entry_levels",
    "members",
    "model_stats",
    "oracle_threshold",
    "p_value",
    "realised_risk",
    "required_thresholds",
    "route",
    "set_misses",
    "set_stats",
    "threshold_from_required",
]
