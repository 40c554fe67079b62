"""FrameCheck: the first unmasked frame, or the first new message inside a fragmented one, is found
wherever the stream is cut, and nothing before it."""

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from krewe.orchestrator.frame_check import FrameCheck
from tests.adversarial.wire import (
    OPCODE_BINARY,
    OPCODE_CONTINUATION,
    OPCODE_PING,
    OPCODE_TEXT,
    WireFrame,
)

frames = st.builds(
    WireFrame,
    opcode=st.sampled_from([OPCODE_TEXT, OPCODE_BINARY, OPCODE_CONTINUATION, OPCODE_PING]),
    payload=st.one_of(
        st.binary(max_size=300),
        st.integers(126, 70_000).map(lambda n: b"x" * n),  # the 16- and 64-bit length forms
    ),
    fin=st.booleans(),
    masked=st.integers(0, 9).map(bool),  # mostly masked, so that fragments get their turn
)


def first_breach(stream: list[WireFrame]) -> int | None:
    """The index of the first frame that breaks a rule, by the rules' plain statement."""
    fragmented = False
    for index, frame in enumerate(stream):
        if not frame.masked:
            return index
        if frame.opcode in (OPCODE_TEXT, OPCODE_BINARY):
            if fragmented:
                return index
            fragmented = not frame.fin
        elif frame.opcode == OPCODE_CONTINUATION and frame.fin:
            fragmented = False
    return None


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[start:end] for start, end in itertools.pairwise(points)]


@settings(max_examples=300, derandomize=True)
@given(st.lists(frames, min_size=1, max_size=6), st.lists(st.integers(0, 10**6), max_size=12))
def test_the_first_breach_is_found_however_the_bytes_arrive(stream: list[WireFrame], cuts: list[int]) -> None:
    check = FrameCheck()
    encoded = [frame.encode() for frame in stream]
    verdicts = []  # (bytes fed so far, what feed said then)
    position = 0
    for piece in chunked(b"".join(encoded), cuts):
        position += len(piece)
        verdicts.append((position, check.feed(piece)))
    breach = first_breach(stream)
    assert (check.breach is None) is (breach is None)
    if breach is not None:
        # An unmasked frame is known from its second byte; a misplaced one from its whole header.
        start = sum(len(frame) for frame in encoded[:breach])
        known = start + (
            2 if not stream[breach].masked else len(encoded[breach]) - len(stream[breach].payload)
        )
        assert all(ok == (end < known) for end, ok in verdicts)
        expected = "not masked" if not stream[breach].masked else "inside a fragmented one"
        assert check.breach is not None and expected in check.breach


def test_a_masked_frame_split_inside_its_extended_length_and_key() -> None:
    check = FrameCheck()
    unmasked = WireFrame(OPCODE_TEXT, b"z", masked=False)
    data = WireFrame(OPCODE_TEXT, b"y" * 70_000).encode() + unmasked.encode()
    assert all(check.feed(data[i : i + 1]) for i in range(14))  # 2 + 8 length bytes + 4 key bytes
    assert check.feed(data[14 : 14 + 70_000])
    assert not check.feed(data[14 + 70_000 :])


def test_a_text_frame_after_an_empty_first_fragment_is_a_breach() -> None:
    check = FrameCheck()
    assert check.feed(WireFrame(OPCODE_TEXT, b"", fin=False).encode())
    assert check.feed(WireFrame(OPCODE_PING, b"p").encode())  # control frames may come in between
    assert not check.feed(WireFrame(OPCODE_TEXT, b"{}").encode())
    assert check.breach == "a new message inside a fragmented one"
