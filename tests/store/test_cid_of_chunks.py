"""The enclave's streaming CID check agrees with the store's importer for any chunking."""
import io
import random

from enclave.unixfs import CHUNK_SIZE, cid_of_chunks
from node.store.unixfs import import_stream


def test_any_chunking_gives_the_importer_cid():
    rnd = random.Random(3)
    for size in (0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 17):
        data = rnd.randbytes(size)
        expected = import_stream(io.BytesIO(data)).cid.encode()
        cuts = sorted(rnd.sample(range(size + 1), min(size + 1, 7)))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, size])]
        assert cid_of_chunks(pieces) == expected
        assert cid_of_chunks([data]) == expected


def test_a_changed_byte_changes_the_cid():
    data = bytearray(random.Random(4).randbytes(2 * CHUNK_SIZE))
    before = cid_of_chunks([bytes(data)])
    data[CHUNK_SIZE + 5] ^= 1
    assert cid_of_chunks([bytes(data)]) != before
