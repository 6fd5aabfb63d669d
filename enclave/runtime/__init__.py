"""The in-enclave runtime (trusted base): ``python -m enclave.runtime --socket PATH``.

Standard library, ``cryptography`` and (lazily) the AI runtimes only; never
``node``, libp2p, trio, docker or dcap_qvl.  See ``docs/enclave-runtime.md``.
"""
