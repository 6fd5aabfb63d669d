"""Content-addressed storage for ofnode.

* :mod:`enclave.cid` - strict CID parsing and encoding.
* :mod:`node.store.unixfs` - kubo-compatible UnixFS file importer, dag-pb /
  UnixFS codec and a verifying file walker.
* :mod:`node.store.blockstore` - the on-disk blockstore with pins and GC.

See docs/store.md for the rules and guarantees.
"""

from enclave.cid import DAG_PB, RAW, Cid, CidError
from .unixfs import UnixfsError, cid_of_file, import_file, import_stream, iter_file_blocks

__all__ = [
    "DAG_PB",
    "RAW",
    "Cid",
    "CidError",
    "UnixfsError",
    "cid_of_file",
    "import_file",
    "import_stream",
    "iter_file_blocks",
]
