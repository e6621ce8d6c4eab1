"""The scenarios of the fault suite, shared by the tests and the report command."""

from __future__ import annotations

from .harness import Scenario

# Consumer plans cycle through the four kill points; `{n}` scales with the run size.
KILL_PLANS = (
    "kill:before_effect:{60}",
    "kill:after_effect:{90}",
    "kill:after_commit:{40}:2",
    "kill:before_ack:{120}",
    "kill:after_effect:{70}:2",
    "kill:before_ack:{50}:2",
    "kill:before_effect:{80}:1",
    "kill:after_commit:{60}:2",
)

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "consumer-kill",
            "Consumers SIGKILL themselves at chosen points (before/after the effect, after "
            "the commit, before the ack), 8 times, and are SIGKILLed from outside 3 times; "
            "each is restarted at once.",
            plans=KILL_PLANS,
            kills=(0.3, 0.55, 0.8),
        ),
        Scenario(
            "broker-restart",
            "The broker is killed with SIGKILL and restarted on the same data dir twice "
            "while the producer publishes and the consumers consume.",
            restarts=(0.3, 0.65),
        ),
        Scenario(
            "broker-restart-memory-leases",
            "As broker-restart, with the NATS lease bucket in memory (lease_storage="
            "'memory', the opt-in for speed): it vanishes with the server and is re-created.",
            restarts=(0.3, 0.65),
            nats=(("lease_storage", "memory"),),
        ),
        Scenario(
            "network",
            "Every client connection goes through a TCP proxy that cuts all connections "
            "3 times and stalls all traffic for 3 s twice.",
            cuts=(0.2, 0.5, 0.85),
            stalls=(0.35, 0.7),
        ),
        Scenario(
            "sigstop",
            "A consumer SIGSTOPs itself mid-handler (once after, once before its QoS 2 "
            "effect), past the claim idle time / ack wait and the lease; another takes "
            "over; then it gets SIGCONT and its stale commit must be refused.",
            plans=("stop:after_effect:{150}:2+stop:before_effect:{400}:2", "-"),
        ),
        Scenario(
            "stale-lease",
            "The only consumer SIGSTOPs itself after its QoS 2 effect, before the commit; "
            "nobody takes over; it gets SIGCONT after its lease expired, so its commit is "
            "refused. The message must still end up committed once. (Redis: claim_idle "
            "10 s, so the entry is not reclaimed meanwhile and the run is deterministic.)",
            plans=("stop:after_effect:{150}:2",),
            consumers=1,
            redis=(("claim_idle", 10.0),),
        ),
        Scenario(
            "garbage",
            "Raw XADD / raw JetStream publishes of undecodable bytes, unknown message "
            "types and bodies that do not decode, on every durable route, 3 times.",
            garbage=(0.1, 0.5, 0.9),
        ),
        Scenario(
            "mixed",
            "All of the above in one run: self-kills at every point, outside kills, a "
            "broker restart, connection cuts and a stall, a SIGSTOP, and garbage.",
            plans=("stop:after_effect:{100}:2", "-", *KILL_PLANS[:5]),
            kills=(0.45, 0.9),
            restarts=(0.6,),
            cuts=(0.25, 0.75),
            stalls=(0.5,),
            garbage=(0.15, 0.7),
        ),
    )
}
