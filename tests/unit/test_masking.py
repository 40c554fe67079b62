"""MaskScanner: the first unmasked frame is found wherever the stream is cut, and only then."""

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from krewe.orchestrator.masking import MaskScanner
from tests.adversarial.wire import OPCODE_BINARY, OPCODE_PING, OPCODE_TEXT, WireFrame

frames = st.builds(
    WireFrame,
    opcode=st.sampled_from([OPCODE_TEXT, OPCODE_BINARY, OPCODE_PING]),
    payload=st.one_of(
        st.binary(max_size=300),
        st.integers(126, 70_000).map(lambda n: b"x" * n),  # the 16- and 64-bit length forms
    ),
    masked=st.booleans(),
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[start:end] for start, end in itertools.pairwise(points)]


@settings(max_examples=300, derandomize=True)
@given(st.lists(frames, min_size=1, max_size=6), st.lists(st.integers(0, 10**6), max_size=12))
def test_the_scanner_finds_the_first_unmasked_frame_however_the_bytes_arrive(
    stream: list[WireFrame], cuts: list[int]
) -> None:
    scanner = MaskScanner()
    encoded = [frame.encode() for frame in stream]
    verdicts = []  # (bytes fed so far, what feed said then)
    position = 0
    for piece in chunked(b"".join(encoded), cuts):
        position += len(piece)
        verdicts.append((position, scanner.feed(piece)))
    first_unmasked = next((i for i, frame in enumerate(stream) if not frame.masked), None)
    assert scanner.unmasked is (first_unmasked is not None)
    if first_unmasked is not None:
        # Judged on that frame's second byte, which holds the mask bit; until then all was masked.
        second_byte = sum(len(frame) for frame in encoded[:first_unmasked]) + 2
        assert all(ok == (end < second_byte) for end, ok in verdicts)


def test_a_masked_frame_split_inside_its_extended_length_and_key() -> None:
    scanner = MaskScanner()
    unmasked = WireFrame(OPCODE_TEXT, b"z", masked=False)
    data = WireFrame(OPCODE_TEXT, b"y" * 70_000).encode() + unmasked.encode()
    assert all(scanner.feed(data[i : i + 1]) for i in range(14))  # 2 + 8 length bytes + 4 key bytes
    assert scanner.feed(data[14 : 14 + 70_000])
    assert not scanner.feed(data[14 + 70_000 :])
