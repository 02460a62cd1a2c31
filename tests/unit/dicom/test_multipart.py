"""multipart/related parsing and encoding (RFC 2046 §5.1, RFC 2387) and media type parsing."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from medvault.dicom.multipart import (
    MediaType,
    MultipartReader,
    Part,
    boundary_of,
    closing,
    encode_multipart,
    encode_part,
    new_boundary,
    parse_media_type,
    parse_multipart,
    split_accept,
)
from medvault.errors import InvalidInput, UnsupportedMedia

BOUNDARY_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=?"

boundaries = st.text(alphabet=BOUNDARY_CHARS, min_size=1, max_size=70)


def tricky_bodies(boundary: str) -> st.SearchStrategy[bytes]:
    """Bodies built from CRLFs, dashes, the boundary and pieces of it, and arbitrary bytes."""
    b = boundary.encode()
    atoms = st.sampled_from(
        [
            b"\r\n",
            b"\r",
            b"\n",
            b"--",
            b"-",
            b,
            b"--" + b,
            b[: len(b) // 2],
            b"--" + b + b"--",
            b"\r\n\r\n",
            b"\x00",
        ]
    )
    return st.lists(st.one_of(atoms, st.binary(max_size=20)), max_size=12).map(b"".join)


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, list[tuple[str, bytes]]]:
    boundary = draw(boundaries)
    assume(not boundary.endswith(" "))
    bodies = draw(st.lists(tricky_bodies(boundary), min_size=1, max_size=4))
    # A sender must pick a boundary that does not occur as a delimiter inside any body.
    assume(all(b"\r\n--" + boundary.encode() not in body for body in bodies))
    types = draw(
        st.lists(
            st.sampled_from(["application/dicom", "application/octet-stream", "image/jpeg"]),
            min_size=len(bodies),
            max_size=len(bodies),
        )
    )
    return boundary, list(zip(types, bodies, strict=True))


@settings(max_examples=300, deadline=None)
@given(messages())
def test_round_trip(message: tuple[str, list[tuple[str, bytes]]]) -> None:
    boundary, parts = message
    encoded = encode_multipart(boundary, parts)
    parsed = parse_multipart(encoded, boundary)
    assert [(p.content_type, p.body) for p in parsed] == parts


@settings(max_examples=150, deadline=None)
@given(messages(), st.binary(max_size=40), st.binary(max_size=40))
def test_preamble_and_epilogue_are_ignored(
    message: tuple[str, list[tuple[str, bytes]]], preamble: bytes, epilogue: bytes
) -> None:
    boundary, parts = message
    delimiter = b"--" + boundary.encode()
    assume(delimiter not in preamble)
    encoded = encode_multipart(boundary, parts)
    body = preamble + b"\r\n" + encoded + epilogue
    parsed = parse_multipart(body, boundary)
    assert [p.body for p in parsed] == [b for _, b in parts]


@settings(max_examples=150, deadline=None)
@given(messages(), st.data())
def test_missing_close_delimiter_is_refused(
    message: tuple[str, list[tuple[str, bytes]]], data: st.DataObject
) -> None:
    boundary, parts = message
    encoded = b"".join(encode_part(boundary, t, b) for t, b in parts)  # no closing delimiter
    with pytest.raises(InvalidInput):
        parse_multipart(encoded, boundary)
    full = encode_multipart(boundary, parts)
    cut = data.draw(st.integers(min_value=0, max_value=len(full) - len(closing(boundary)) + 1))
    with pytest.raises(InvalidInput):
        parse_multipart(full[:cut], boundary)


def test_explicit_bytes() -> None:
    body = (
        b"preamble\r\n--abc\r\nContent-Type: application/dicom\r\nX-Extra:  v \r\n\r\nfirst\r\n"
        b"--abc  \r\n\r\n--abc is not a delimiter here\r\n--abc--\r\nepilogue"
    )
    parts = parse_multipart(body, "abc")
    assert [p.body for p in parts] == [b"first", b"--abc is not a delimiter here"]
    assert parts[0].headers == {"content-type": "application/dicom", "x-extra": "v"}
    assert parts[1].headers == {}
    assert parts[1].content_type is None


def test_body_containing_delimiter_lookalikes() -> None:
    tricky = b"--bb at the start\r\n-bb\r\n--b\r\n\r\n--x--bb--\r\n--bbb"[:-5] + b"-\r\n"
    parsed = parse_multipart(encode_multipart("bb", [("application/dicom", tricky)]), "bb")
    assert [p.body for p in parsed] == [tricky]


def test_encoding_shape() -> None:
    assert encode_part("b1", "application/dicom", b"X", {"Content-Location": "u"}) == (
        b"--b1\r\nContent-Type: application/dicom\r\nContent-Location: u\r\n\r\nX\r\n"
    )
    assert closing("b1") == b"--b1--\r\n"
    assert encode_multipart("b1", []) == b"--b1--\r\n"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"no boundary here at all",
        b"--abc--\r\n",  # no parts
        b"--abc\r\nContent-Type: application/dicom\r\n",  # no end of headers
        b"--abc\r\nContent-Type application/dicom\r\n\r\nX\r\n--abc--",  # header without colon
        b"--abc\r\n: value\r\n\r\nX\r\n--abc--",  # empty header name
        b"--abc\r\nContent-Type: application/d\xc3\xa9\r\n\r\nX\r\n--abc--",  # non-ASCII header
        b"--abcdef\r\n\r\nX\r\n--abc--",  # delimiter line with junk after the boundary
        b"--abc",  # truncated right after the first delimiter
        b"--abc\r\n\r\nX\r\n--abc",  # last delimiter lacks its closing dashes and line end
    ],
)
def test_malformed_bodies(body: bytes) -> None:
    with pytest.raises(InvalidInput):
        parse_multipart(body, "abc")


# -- media types and boundaries --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "boundary"),
    [
        ('multipart/related; type="application/dicom"; boundary=abc', "abc"),
        ('multipart/related; type="application/dicom"; boundary="abc def"', "abc def"),
        ('multipart/related;boundary="a:b=c?d";type="application/dicom"', "a:b=c?d"),
        ('Multipart/Related; Type="Application/DICOM"; BOUNDARY=xyz', "xyz"),
        ("multipart/related; boundary=only", "only"),
        (
            'multipart/related; type="application/dicom"; boundary="q\\"x"',
            None,
        ),  # quote is not a boundary char
        ("multipart/related; boundary=" + "a" * 70, "a" * 70),
        ("multipart/related; boundary=" + "a" * 71, None),
        ('multipart/related; boundary="ends with space "', None),
        ('multipart/related; type="application/dicom"', None),
        ("multipart/related; boundary=", None),
    ],
)
def test_boundary_of(header: str, boundary: str | None) -> None:
    if boundary is None:
        with pytest.raises(InvalidInput):
            boundary_of(header)
    else:
        assert boundary_of(header) == boundary


@pytest.mark.parametrize(
    "header",
    [
        "application/json",
        "multipart/form-data; boundary=x",
        'multipart/related; type="application/dicom+json"; boundary=x',
    ],
)
def test_boundary_of_wrong_type(header: str) -> None:
    with pytest.raises(UnsupportedMedia):
        boundary_of(header)


def test_parse_media_type() -> None:
    media = parse_media_type(
        ' Multipart/Related ; Type="application/dicom" ; transfer-syntax=* ; X="a\\"b;c" '
    )
    assert media.type == "multipart/related"
    assert media.params == {"type": "application/dicom", "transfer-syntax": "*", "x": 'a"b;c'}
    assert parse_media_type("image/png").params == {}
    for bad in [
        "",
        "image",
        "/png",
        "image/png; =x",
        "image/png; a",
        'image/png; a="unterminated',
        "image png",
    ]:
        with pytest.raises(InvalidInput):
            parse_media_type(bad)


@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True).filter(lambda k: k != "q"),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=15),
        max_size=4,
    )
)
def test_media_type_str_round_trip(params: dict[str, str]) -> None:
    media = MediaType("application/dicom", params)
    assert parse_media_type(str(media)) == media


def test_split_accept_orders_by_q() -> None:
    entries = split_accept(
        "image/png;q=0.5, application/dicom, image/jpeg;q=0.9, text/html;q=0, image/gif;q=0.5"
    )
    assert [m.type for m in entries] == ["application/dicom", "image/jpeg", "image/png", "image/gif"]
    assert all("q" not in m.params for m in entries)


def test_split_accept_quoted_commas_and_empty_entries() -> None:
    entries = split_accept('multipart/related; type="application/dicom"; x="a,b", , image/png')
    assert [m.type for m in entries] == ["multipart/related", "image/png"]
    assert entries[0].params == {"type": "application/dicom", "x": "a,b"}


@pytest.mark.parametrize("header", ["image/png;q=high", "image/png;q=", "image png"])
def test_split_accept_malformed(header: str) -> None:
    with pytest.raises(InvalidInput):
        split_accept(header)


def test_new_boundary() -> None:
    seen = {new_boundary() for _ in range(50)}
    assert len(seen) == 50
    for b in seen:
        assert re.fullmatch(r"[0-9A-Za-z'()+_,\-./:=?]{1,70}", b)
        assert boundary_of(f"multipart/related; boundary={b}") == b


def _read_in_chunks(body: bytes, boundary: str, cuts: list[int], **kwargs: int) -> list[Part] | str:
    reader = MultipartReader(boundary, **kwargs)
    parts: list[Part] = []
    try:
        last = 0
        for cut in sorted(c % (len(body) + 1) for c in cuts):
            parts += reader.feed(body[last:cut])
            last = cut
        parts += reader.feed(body[last:])
        reader.close()
    except InvalidInput as exc:
        return exc.message
    return parts


def _read_whole(body: bytes, boundary: str) -> list[Part] | str:
    try:
        return parse_multipart(body, boundary)
    except InvalidInput as exc:
        return exc.message


@settings(max_examples=400, deadline=None)
@given(messages(), st.lists(st.integers(min_value=0), max_size=8), st.binary(max_size=30))
def test_chunked_reading_equals_whole_body(
    message: tuple[str, list[tuple[str, bytes]]], cuts: list[int], noise: bytes
) -> None:
    """However the body is cut into chunks, the reader finds the same parts, or the same error."""
    boundary, parts = message
    body = encode_multipart(boundary, parts)
    for candidate in (body, body[: len(body) // 2], noise + body, body[:-3] + noise):
        assert _read_in_chunks(candidate, boundary, cuts) == _read_whole(candidate, boundary)


@settings(max_examples=200, deadline=None)
@given(messages(), st.lists(st.integers(min_value=0), max_size=8), st.integers(min_value=0, max_value=30))
def test_oversized_parts_are_counted_not_kept(
    message: tuple[str, list[tuple[str, bytes]]], cuts: list[int], limit: int
) -> None:
    boundary, parts = message
    read = _read_in_chunks(encode_multipart(boundary, parts), boundary, cuts, max_part_bytes=limit)
    assert isinstance(read, list)
    for part, (content_type, body) in zip(read, parts, strict=True):
        assert part.content_type == content_type
        assert part.length == len(body)
        assert part.oversized == (len(body) > limit)
        assert part.body == (b"" if len(body) > limit else body)


def test_reader_holds_only_the_current_part() -> None:
    """A part handed over is not copied, and the reader keeps no more than a delimiter's tail."""
    boundary = new_boundary()
    big = bytes(range(256)) * 4096  # 1 MiB
    body = encode_multipart(boundary, [("application/dicom", big), ("application/dicom", b"x")])
    reader = MultipartReader(boundary)
    got: list[Part] = []
    for start in range(0, len(body), 65536):
        got += reader.feed(body[start : start + 65536])
        assert len(reader._buf) <= 65536 + len(boundary) + 4
    reader.close()
    assert [p.body for p in got] == [big, b"x"]


def test_headers_are_bounded() -> None:
    boundary = "b"
    reader = MultipartReader(boundary)
    with pytest.raises(InvalidInput, match="headers over 16 KB"):
        reader.feed(b"--b\r\nX-Long: " + b"a" * (20 * 1024))


def test_transport_padding_is_bounded() -> None:
    reader = MultipartReader("b")
    with pytest.raises(InvalidInput, match="malformed multipart delimiter line"):
        reader.feed(b"--b" + b" " * 2000)
