"""The DOS role: DCAP attestation (verifier, collateral cache, policy), quorum-signed ACL entries,
and the ``/ofnode/dos/attest/1.0.0`` protocol. See docs/attestation.md."""
