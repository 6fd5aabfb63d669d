"""The secrets role: Shamir shares of AI keys sealed at rest, the release rules, HPKE-sealed
answers, the audit log, and the share/deposit protocols. See docs/secret-store.md."""
