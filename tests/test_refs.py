"""The reference grammar of casreg/refs.py (module docstring):

    ref    = name | name ":" number | name "@" alias | name "@" digest | digest
    digest = "blake3:" hex{12,64} | hex{12,64}
    name   = [A-Za-z0-9][A-Za-z0-9._-]{0,127}, no "..", not 12+ hex digits only
    alias  = [a-z][a-z0-9_-]{0,63}, not "latest" or "blake3"
    number = [1-9][0-9]*
"""

from __future__ import annotations

import builtins
import io
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casreg.errors import InvalidNameError, InvalidReferenceError
from casreg.refs import (
    Ref,
    RefKind,
    format_digest,
    parse_digest,
    parse_ref,
    split_ref_path,
    validate_alias,
    validate_name,
)

BAD = (InvalidReferenceError, InvalidNameError)
HEX64 = "0123456789abcdef" * 4

# -- strategies for valid pieces -------------------------------------------------------------
names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", fullmatch=True).filter(
    lambda n: ".." not in n and not re.fullmatch(r"[0-9a-fA-F]{12,}", n)
)
aliases = st.from_regex(r"[a-z][a-z0-9_-]{0,63}", fullmatch=True).filter(lambda a: a not in ("latest", "blake3"))
# The grammar says [1-9][0-9]*; the parser caps version numbers at 18 digits.
numbers = st.integers(min_value=1, max_value=10**18 - 1)
hex_digests = st.text(alphabet="0123456789abcdef", min_size=12, max_size=64)
refs = st.one_of(
    st.builds(Ref, name=names),
    st.builds(Ref, name=names, number=numbers),
    st.builds(Ref, name=names, alias=aliases),
    st.builds(Ref, name=names, digest=hex_digests),
    st.builds(Ref, digest=hex_digests),
)
relpaths = st.lists(
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._ -]{0,15}", fullmatch=True).filter(lambda p: p not in (".", "..")),
    min_size=1, max_size=4,
).map("/".join)


# -- valid references ---------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "want"), [
    ("resnet", Ref(name="resnet")),
    ("Fraud_Detector-v2.onnx", Ref(name="Fraud_Detector-v2.onnx")),
    ("0", Ref(name="0")),
    ("m.", Ref(name="m.")),  # a trailing dot is allowed, only ".." is not
    ("abcdef01234", Ref(name="abcdef01234")),  # 11 hex digits: still a name
    ("abcdef012345x", Ref(name="abcdef012345x")),  # 12 hex + a non-hex letter
    ("resnet:1", Ref(name="resnet", number=1)),
    ("resnet:10", Ref(name="resnet", number=10)),
    ("resnet:" + "9" * 18, Ref(name="resnet", number=10**18 - 1)),
    ("resnet@prod", Ref(name="resnet", alias="prod")),
    ("resnet@a", Ref(name="resnet", alias="a")),
    ("resnet@canary_2-b", Ref(name="resnet", alias="canary_2-b")),
    ("resnet@blake3:" + HEX64, Ref(name="resnet", digest=HEX64)),
    ("resnet@blake3:0123456789ab", Ref(name="resnet", digest="0123456789ab")),
    ("blake3:" + HEX64, Ref(digest=HEX64)),
    ("blake3:0123456789ab", Ref(digest="0123456789ab")),
    (HEX64, Ref(digest=HEX64)),
    ("0123456789ab", Ref(digest="0123456789ab")),
    ("deadbeefcafe", Ref(digest="deadbeefcafe")),  # 12 hex digits alone are a digest
])
def test_valid_references(text: str, want: Ref) -> None:
    got = parse_ref(text)
    assert got == want
    assert parse_ref(str(got)) == got


def test_kinds_and_prefixes() -> None:
    assert parse_ref("m").kind is RefKind.LATEST
    assert parse_ref("m:3").kind is RefKind.NUMBER
    assert parse_ref("m@prod").kind is RefKind.ALIAS
    assert parse_ref("m@blake3:" + HEX64).kind is RefKind.DIGEST
    assert parse_ref(HEX64).kind is RefKind.DIGEST
    assert parse_ref(HEX64).is_prefix is False
    assert parse_ref(HEX64[:63]).is_prefix is True
    assert parse_ref(HEX64[:12]).is_prefix is True
    assert parse_ref("m:3").is_prefix is False


def test_str_forms() -> None:
    assert str(Ref(name="m")) == "m"
    assert str(Ref(name="m", number=7)) == "m:7"
    assert str(Ref(name="m", alias="prod")) == "m@prod"
    assert str(Ref(name="m", digest="ab" * 6)) == "m@blake3:" + "ab" * 6
    assert str(Ref(digest=HEX64)) == "blake3:" + HEX64
    assert str(parse_ref(HEX64)) == "blake3:" + HEX64  # a bare digest prints with its prefix


def test_uppercase_hex_is_lowered_but_prefix_is_case_sensitive() -> None:
    upper = HEX64.upper()
    assert parse_ref(upper) == Ref(digest=HEX64)
    assert parse_ref("blake3:" + upper) == Ref(digest=HEX64)
    assert parse_ref("m@blake3:" + upper[:20]) == Ref(name="m", digest=HEX64[:20])
    assert parse_ref("blake3:" + "AbCdEf012345") == Ref(digest="abcdef012345")
    assert parse_digest("blake3:" + upper) == HEX64
    assert format_digest(parse_digest(upper)) == "blake3:" + HEX64
    for text in ("BLAKE3:" + HEX64, "Blake3:" + HEX64, "m@BLAKE3:" + HEX64):
        with pytest.raises(BAD):
            parse_ref(text)


def test_parse_digest_full_only() -> None:
    assert parse_digest(HEX64, allow_prefix=False) == HEX64
    with pytest.raises(InvalidReferenceError):
        parse_digest(HEX64[:63], allow_prefix=False)
    with pytest.raises(InvalidReferenceError):
        parse_digest("blake3:" + HEX64[:12], allow_prefix=False)


@settings(max_examples=300)
@given(refs)
def test_round_trip(ref: Ref) -> None:
    text = str(ref)
    assert parse_ref(text) == ref
    assert str(parse_ref(text)) == text


@settings(max_examples=150)
@given(names, numbers, aliases, hex_digests)
def test_each_form_parses_to_its_parts(name: str, number: int, alias: str, digest: str) -> None:
    assert parse_ref(name) == Ref(name=name)
    assert parse_ref(f"{name}:{number}") == Ref(name=name, number=number)
    assert parse_ref(f"{name}@{alias}") == Ref(name=name, alias=alias)
    assert parse_ref(f"{name}@blake3:{digest}") == Ref(name=name, digest=digest)
    assert parse_ref(f"{name}@blake3:{digest.upper()}") == Ref(name=name, digest=digest)
    assert parse_ref(f"blake3:{digest}") == Ref(digest=digest)
    assert parse_ref(digest.upper()) == Ref(digest=digest)
    assert validate_name(name) == name
    assert validate_alias(alias) == alias


@settings(max_examples=300)
@given(st.text(max_size=80))
def test_arbitrary_text_parses_or_raises_a_value_error(text: str) -> None:
    try:
        ref = parse_ref(text)
    except BAD as err:
        assert isinstance(err, ValueError)
        return
    assert parse_ref(str(ref)) == ref
    assert not any(c.isspace() for c in text)


# -- invalid references ----------------------------------------------------------------------
INVALID = [
    "", " ", "m ", " m", "my model", "m\t", "m\n", "m:1 ", "m@prod ", "m @prod",
    "..", "a..b", "a..b:1", "a..b@prod", "m..",
    "/m", "/m:1", "a/b", "a/b:1", "a/b@prod",
    ".m", "-m", "_m", "m!", "m#1", "ünïcode", "m\x00",
    "deadbeefcafe:1", "deadbeefcafe@prod", "DEADBEEFCAFE:1", HEX64 + ":1", HEX64 + "@prod",
    "a" * 129, "a" * 129 + ":1", "a" * 129 + "@prod",
    "m:", "m:0", "m:01", "m:007", "m:-1", "m:+1", "m:1.0", "m:x", "m:1:2", "m:1e3",
    "m@", "m@Prod", "m@PROD", "m@latest", "m@blake3", "m@1prod", "m@_x", "m@-x", "m@pr.od", "m@a" + "b" * 64,
    "m@prod:1", "m@a@b", "@prod", ":1", "@blake3:" + HEX64,
    "blake3:", "blake3:" + "g" * 12, "blake3:" + "0123456789ag", "blake3:" + HEX64[:11],
    "blake3:" + HEX64 + "0", "blake3:" + HEX64 + "/x", "m@blake3:", "m@blake3:" + HEX64[:11],
    "m@blake3:" + HEX64 + "a", "m@blake3:xyz123456789", "blake3:blake3:" + HEX64,
]


@pytest.mark.parametrize("text", INVALID)
def test_invalid_references(text: str) -> None:
    with pytest.raises(BAD) as info:
        parse_ref(text)
    assert isinstance(info.value, ValueError)
    assert str(info.value)  # a one-line human reason
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", [None, 5, b"m", ["m"]])
def test_non_string_references(value: object) -> None:
    with pytest.raises(InvalidReferenceError):
        parse_ref(value)  # type: ignore[arg-type]


@settings(max_examples=150)
@given(name=names, bad=st.sampled_from([" ", "\t", "/", "@@", "..", "!", ":", "\\", "\x00", "é"]),
       where=st.integers(min_value=0, max_value=200))
def test_a_bad_character_in_a_name_is_refused(name: str, bad: str, where: int) -> None:
    pos = where % (len(name) + 1)
    broken = name[:pos] + bad + name[pos:]
    with pytest.raises(InvalidNameError):
        validate_name(broken)
    if bad in (":", "@@"):
        return  # these split the reference instead; the parts are checked below
    with pytest.raises(BAD):
        parse_ref(broken)
    with pytest.raises(BAD):
        parse_ref(broken + ":1")


def test_name_limits() -> None:
    assert validate_name("m" * 128) == "m" * 128
    assert parse_ref("m" * 128 + ":1") == Ref(name="m" * 128, number=1)
    with pytest.raises(InvalidNameError):
        validate_name("a" * 129)
    assert validate_name("f" * 11) == "f" * 11
    assert validate_name("f" * 11 + "g") == "f" * 11 + "g"
    for hexname in ("f" * 12, "0" * 12, "ABCDEF012345", "f" * 64):
        with pytest.raises(InvalidNameError):
            validate_name(hexname)
    for bad in ("", "..", "a..b", "a b", "a/b", "a:b", "a@b", ".a", "-a"):
        with pytest.raises(InvalidNameError):
            validate_name(bad)


def test_alias_limits() -> None:
    assert validate_alias("a" * 64) == "a" * 64
    assert parse_ref("m@" + "a" * 64) == Ref(name="m", alias="a" * 64)
    for bad in ("", "a" * 65, "Prod", "latest", "blake3", "1a", "_a", "a.b", "a b", "a/b", "a@b"):
        with pytest.raises(InvalidNameError):
            validate_alias(bad)


@pytest.mark.parametrize("text", ["0" * 65, "a" * 65, HEX64 + "f", "ab" * 40])
def test_overlong_bare_hex_is_neither_a_digest_nor_a_name(text: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_name(text)
    with pytest.raises(BAD):
        parse_ref(text)


def test_after_at_only_blake3_prefixed_digests() -> None:
    """docs/FORMAT.md section 8: ``NAME@blake3:HEX``; a bare word after ``@`` is an alias.
    (The refs.py docstring grammar also lists ``name "@" hex``, which the parser does not
    accept; the two documents disagree, the parser follows FORMAT.md.)"""
    assert parse_ref("m@abcdef012345") == Ref(name="m", alias="abcdef012345")
    assert parse_ref("m@blake3:0123456789ab") == Ref(name="m", digest="0123456789ab")
    for text in ("m@0123456789ab", "m@" + HEX64):
        with pytest.raises(InvalidNameError):
            parse_ref(text)


# -- split_ref_path -------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "ref", "path"), [
    ("m", Ref(name="m"), ""),
    ("m/", Ref(name="m"), ""),
    ("m@prod/weights/model.bin", Ref(name="m", alias="prod"), "weights/model.bin"),
    ("casreg://m@prod/weights/model.bin", Ref(name="m", alias="prod"), "weights/model.bin"),
    ("casreg://m:3", Ref(name="m", number=3), ""),
    ("casreg://m:3/", Ref(name="m", number=3), ""),
    ("m:3/a/b/", Ref(name="m", number=3), "a/b"),
    ("blake3:" + HEX64 + "/config.json", Ref(digest=HEX64), "config.json"),
    ("casreg://" + HEX64[:12] + "/x", Ref(digest=HEX64[:12]), "x"),
    ("casreg://m@blake3:" + HEX64 + "/d/e.txt", Ref(name="m", digest=HEX64), "d/e.txt"),
])
def test_split_ref_path(text: str, ref: Ref, path: str) -> None:
    assert split_ref_path(text) == (ref, path)


@pytest.mark.parametrize("text", ["", "casreg://", "casreg:///m", "/m/x", "casreg://m x/y", "s3://m/x", "m@/x"])
def test_split_ref_path_invalid(text: str) -> None:
    with pytest.raises(BAD):
        split_ref_path(text)


@settings(max_examples=150)
@given(refs, relpaths, st.booleans())
def test_split_ref_path_round_trip(ref: Ref, path: str, scheme: bool) -> None:
    text = ("casreg://" if scheme else "") + f"{ref}/{path}"
    assert split_ref_path(text) == (ref, path)
    assert split_ref_path(("casreg://" if scheme else "") + str(ref)) == (ref, "")


# -- no I/O ----------------------------------------------------------------------------------------
def test_parsing_does_no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = ["m", "m:1", "m@prod", "m@blake3:" + HEX64, HEX64, HEX64[:12], "blake3:" + HEX64]
    bad = ["m:0", "m@latest", "a..b", "deadbeefcafe:1"]
    paths = ["casreg://m@prod/a/b", "m:2/x", HEX64 + "/y"]

    def no_io(*args: object, **kwargs: object) -> object:
        raise AssertionError(f"parsing touched the filesystem: {args!r}")

    with monkeypatch.context() as m:
        m.setenv("CASREG_REGISTRY", "/nonexistent/registry/that/must/not/be/touched")
        for mod, attr in [(builtins, "open"), (io, "open"), (os, "open"), (os, "stat"), (os, "lstat"),
                          (os, "listdir"), (os, "scandir"), (os, "access")]:
            m.setattr(mod, attr, no_io)
        parsed = [parse_ref(t) for t in texts]
        split = [split_ref_path(p) for p in paths]
        errors = []
        for t in bad:
            try:
                parse_ref(t)
            except BAD as err:
                errors.append(err)
    assert [p.kind for p in parsed] == [RefKind.LATEST, RefKind.NUMBER, RefKind.ALIAS, RefKind.DIGEST,
                                        RefKind.DIGEST, RefKind.DIGEST, RefKind.DIGEST]
    assert [s[1] for s in split] == ["a/b", "x", "y"]
    assert len(errors) == len(bad)
