"""Every Redis key of racer-online, built here and nowhere else.

Each key of a scope carries the scope as a hash tag (``racer:{scope}:...``) so that all of
a scope's keys share one Redis Cluster slot and one Lua script may touch several of them.
The keys of the whole deployment take no argument.
"""

PREFIX = "racer"


def pending(scope: str, slot: int | None = None, bucket: int | None = None) -> str:
    """Hash: the pending records (records.py) of one bucket of one time slot, each under
    its query id's hash; without slot and bucket, the prefix the Lua scripts complete."""
    if slot is None or bucket is None:
        return f"{PREFIX}:{{{scope}}}:pending:"
    return f"{PREFIX}:{{{scope}}}:pending:{slot}:{bucket}"


def slots(scope: str) -> str:
    """Hash: per time slot, ``b:<slot>`` its number of buckets, ``n:<slot>`` its records."""
    return f"{PREFIX}:{{{scope}}}:slots"


def held(scope: str, held_slot: int | None = None) -> str:
    """Hash: labels of queries not routed yet (known and correct masks), short-lived."""
    base = f"{PREFIX}:{{{scope}}}:held:"
    return base if held_slot is None else f"{base}{held_slot}"


def legacy_audits(scope: str) -> str:
    """The audits sorted set of the layout before slots (a pending key per query)."""
    return f"{PREFIX}:{{{scope}}}:audits"


def window(scope: str) -> str:
    """Stream: fully graded audited records, oldest first; entry ids are entry times."""
    return f"{PREFIX}:{{{scope}}}:window"


def audits(scope: str) -> str:
    """Sorted set: audited records not complete yet (slot u32 + query hash), by the end of
    their feedback horizon (s)."""
    return f"{PREFIX}:{{{scope}}}:due-audits"


def counters(scope: str) -> str:
    """Hash: ``expired_audits`` entered as a worst case; ``lost_audits`` swept too late."""
    return f"{PREFIX}:{{{scope}}}:counters"


def threshold(scope: str) -> str:
    """Hash: the scope's current threshold (``version``, ``json``)."""
    return f"{PREFIX}:{{{scope}}}:threshold"


def history(scope: str) -> str:
    """Stream: every threshold the scope has had, capped."""
    return f"{PREFIX}:{{{scope}}}:history"


def upper_bound(scope: str) -> str:
    """Hash: ``n`` graded non-audit decisions; ``misses``: all their invoked models failed."""
    return f"{PREFIX}:{{{scope}}}:upper"


def alerts(scope: str) -> str:
    """Stream: the scope's alerts, capped."""
    return f"{PREFIX}:{{{scope}}}:alerts"


def monitor(scope: str) -> str:
    """Hash: the drift monitor's and the ACI controller's state, so a new leader resumes it."""
    return f"{PREFIX}:{{{scope}}}:monitor"


def lease(scope: str) -> str:
    """String with a TTL: ``<epoch> <holder>`` of the worker leading the scope (lease.lua)."""
    return f"{PREFIX}:{{{scope}}}:lease"


def epoch(scope: str) -> str:
    """Counter, no TTL: the scope's lease epoch, the fencing token of every leader write."""
    return f"{PREFIX}:{{{scope}}}:epoch"


def incarnation(scope: str) -> str:
    """String, no TTL: the Redis time (microseconds) at which the scope's state began
    (store/lua/incarnation.lua); it changes only when Redis lost that state."""
    return f"{PREFIX}:{{{scope}}}:incarnation"


def outbox(scope: str) -> str:
    """Hash: what the topics have acknowledged of what Redis holds: ``threshold`` the last
    version published, ``alert`` the id of the last alert published (service/outbox.py)."""
    return f"{PREFIX}:{{{scope}}}:outbox"


def audit_key_fingerprint() -> str:
    """String, no TTL: an HMAC under the deployment's audit key (never the key itself); the
    first worker with a key writes it, every later one compares (startup_checks.py)."""
    return f"{PREFIX}:audit-key-fingerprint"
