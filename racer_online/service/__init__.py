"""The service layer: routing, feedback and the leader's recalibration, on a `Store`.

No Kafka or Redis clients in here: the worker hands it parsed batches and publishes what it
returns; the store it is given is Redis in production or the in-memory twin in tests.
"""

from racer_online.service.decisions import Rejected, Routed, audit_draw
from racer_online.service.racer import RacerService, store_config

__all__ = ["RacerService", "Rejected", "Routed", "audit_draw", "store_config"]
