"""Quotes for ofnode enclaves: DCAP v3 layout, quote sources, and the sim PKI.

``layout``, ``source`` and ``dev_attestation`` are standard-library only and
may be imported inside an enclave. ``sim_pki`` and ``sim_qe`` need
``cryptography`` (and ``dcap_qvl`` for collateral objects) and are for the
``sim`` backend only. Import the submodules directly; this package keeps its
namespace empty so importing it pulls in nothing heavy.
"""
