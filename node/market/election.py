"""Who coordinates a request, and which offer wins: both deterministic, so
every DOS peer can check the coordinator's choice and take over from it.

Coordinator: rendezvous (highest-random-weight) hashing of (request id, DOS
peer id): every node computes the same ranking without talking, and a
request's load lands on a pseudo-random DOS peer. Rank r takes over when no
assignment has appeared ``r`` grace periods after the bidding window.

Best offer: lowest price; then the fewest jobs running or queued, the most
free CPU, the most free memory (the least loaded provider); then the lowest SHA-256(request id || provider
peer id) as a tie-break nobody can aim for.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable

from .messages import Offer, Requirements


def dos_ranking(request_id: str, dos_peers: Iterable[str]) -> list[str]:
    def weight(peer: str) -> bytes:
        return hashlib.sha256(bytes.fromhex(request_id) + peer.encode()).digest()

    return sorted(dos_peers, key=weight, reverse=True)


def coordinator_rank(request_id: str, dos_peers: Iterable[str], dos_peer: str) -> int:
    """Rank of ``dos_peer`` for this request (0 = coordinator); len(peers) if not a DOS peer."""
    ranking = dos_ranking(request_id, dos_peers)
    return ranking.index(dos_peer) if dos_peer in ranking else len(ranking)


def offer_key(request_id: str, provider: str, offer: Offer) -> tuple:
    tie = hashlib.sha256(bytes.fromhex(request_id) + provider.encode()).digest()
    return (offer.price, offer.load, -offer.free_cpu, -offer.free_memory, tie)


def matches(req: Requirements, offer: Offer) -> bool:
    """An offer is eligible only if it meets every requirement it claims to."""
    return (
        offer.tee == req.tee
        and (not req.backend or offer.backend == req.backend)
        and offer.free_cpu >= req.cpu
        and offer.free_memory >= req.memory
        and (req.max_price == 0 or offer.price <= req.max_price)
    )


def best_offer(request_id: str, req: Requirements, offers: dict[str, Offer], excluded: Iterable[str] = ()) -> str | None:
    """The winning provider peer id among ``offers`` (provider -> offer), or None."""
    ex = set(excluded)
    eligible = [(offer_key(request_id, p, o), p) for p, o in offers.items() if p not in ex and matches(req, o)]
    return min(eligible)[1] if eligible else None


def why_unmatched(req: Requirements, inventories: dict[str, dict]) -> str:
    """A human reason why no known provider can take ``req``, from announced inventories."""
    if not inventories:
        return "no provider is online"
    tee_ok = {p: inv for p, inv in inventories.items() if req.tee in inv.get("tees", [])}
    if not tee_ok:
        return f"no provider offers {req.tee.upper() if req.tee == 'sgx' else req.tee} enclaves"
    if req.backend:
        tee_ok = {p: inv for p, inv in tee_ok.items() if req.backend in inv.get("backends", [])}
        if not tee_ok:
            return f"no provider offers the {req.backend} backend"
    best_cpu = max(inv.get("cpu", 0) for inv in tee_ok.values())
    if best_cpu < req.cpu:
        return f"not enough CPU: request needs {req.cpu} cores, the largest provider has {best_cpu}"
    best_mem = max(inv.get("memory", 0) for inv in tee_ok.values())
    if best_mem < req.memory:
        return (f"not enough memory: request needs {req.memory >> 20} MiB, "
                f"the largest provider has {best_mem >> 20} MiB")
    return "no provider answered with an offer (all busy, or the price is too low)"
