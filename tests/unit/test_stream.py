import io
import random

import pytest

from sshexec.core.secrets import Masker
from sshexec.step.output import LineStream, MaskStream, OutputPipeline, PrefixWriter, neutralise
from sshexec.step.protocol import header, marker, parse_message

SECRET = "s3cr3t-VALUE"


def run_chunks(data: bytes, chunks, masker):
    out = []
    ms = MaskStream(masker, out.append)
    pos = 0
    for size in chunks:
        ms.feed(data[pos : pos + size])
        pos += size
    ms.feed(data[pos:])
    ms.flush()
    return b"".join(out)


@pytest.mark.parametrize("seed", range(30))
def test_secret_split_at_every_boundary_is_masked(seed):
    rnd = random.Random(seed)
    masker = Masker([SECRET, "other", "s3cr3t"])
    text = f"a {SECRET} mid{SECRET}line {SECRET}{SECRET}\n{SECRET}\nx".encode()
    chunks = [rnd.randint(1, 7) for _ in range(40)]
    out = run_chunks(text, chunks, masker)
    assert SECRET.encode() not in out and b"s3cr3t" not in out
    assert out == masker.mask(text)


def test_a_secret_inside_a_longer_word_is_masked():
    """Masking is by substring, never by whole word: a secret glued to other text must not get through."""
    masker = Masker(["tok3n-8chars"])
    assert masker.mask(b"Bearertok3n-8chars,user=atok3n-8charsz") == b"Bearer********,user=a********z"
    assert masker.mask_text("xtok3n-8charsx tok3n-8char") == "x********x tok3n-8char"


def test_every_single_byte_split():
    masker = Masker([SECRET])
    text = f"xx{SECRET}yy".encode()
    for cut in range(len(text) + 1):
        out = run_chunks(text, [cut], masker)
        assert out == b"xx********yy", cut


def test_overlapping_secrets_never_leak_a_suffix():
    masker = Masker(["ABCD", "CDX"])
    for cut in range(1, 8):
        out = run_chunks(b"..ABCDX..", [cut], masker)
        assert b"ABCD" not in out and b"CDX" not in out


def test_holdback_is_only_a_possible_prefix():
    out = []
    ms = MaskStream(Masker([SECRET]), out.append)
    ms.feed(b"progress 50%\n")
    assert out == [b"progress 50%\n"]  # nothing held: live output stays live
    ms.feed(b"tail s3c")
    assert b"".join(out) == b"progress 50%\ntail "


def test_secret_added_later_masks_following_output():
    masker = Masker()
    out = []
    ms = MaskStream(masker, out.append)
    ms.feed(b"before tok-1\n")
    masker.add("tok-1")
    ms.feed(b"after tok-1\n")
    assert b"".join(out) == b"before tok-1\nafter ********\n"


def test_empty_secret_is_ignored_and_text_masking():
    m = Masker(["", "pw"])
    assert m.secrets == (b"pw",)
    assert m.mask_text("a pw b") == "a ******** b"


def test_service_messages_are_taken_out_even_when_split():
    nonce = "ab" * 16
    mk = marker(nonce)
    got, text = [], []
    ls = LineStream(mk, text.append, got.append)
    data = b"hello\npartial" + mk + b"set 41 3432 0\nafter\n"
    for i in range(len(data)):
        ls.feed(data[i : i + 1])
    ls.flush()
    assert b"".join(text) == b"hello\npartialafter\n"
    assert got == [b"set 41 3432 0"]
    msg = parse_message(got[0])
    assert msg.kind == "set" and msg.args == ("A", "42", "0")


def test_a_wrong_nonce_is_just_output():
    got, text = [], []
    ls = LineStream(marker("a" * 32), text.append, got.append)
    ls.feed(b"##sshexec[" + b"b" * 32 + b"] fail 41\n")
    ls.flush()
    assert got == [] and b"fail 41" in b"".join(text)


def test_malformed_messages_are_rejected():
    for body in (b"set zz 00 0", b"set 41 42", b"nope", b"missing ../x", b"fail \xff"):
        assert parse_message(body) is None


def test_header_encodes_values_inert():
    h = header(nonce="n", syntax="sh", variables={"A": "x y'$(touch z)\n%s\\-", "E": ""}).decode()
    assert "$(" not in h and "%" not in h and "'" not in h
    lines = h.splitlines()
    assert lines[0] == "sshexec 1" and lines[-1] == "end"
    assert "var E " in lines
    with pytest.raises(ValueError):
        header(nonce="n", syntax="sh", variables={"a/b": "x"})
    with pytest.raises(ValueError):
        header(nonce="n", syntax="sh", variables={"A": "nul\0"})


def test_prefix_writer_prefixes_every_line_and_closes_open_lines():
    buf = io.BytesIO()
    w = PrefixWriter(buf)
    w.write(b"w1 | ", b"a\nb")
    w.write(b"w2 | ", b"c\n")
    w.write(b"w1 | ", b"d\n")
    w.end(b"w1 | ")
    assert buf.getvalue() == b"w1 | a\nw1 | b\nw2 | c\nw1 | d\n"


def test_terminal_neutralises_escapes_but_log_keeps_bytes():
    evil = b"\x1b[2J\x1b]0;title\x07ok\xff\xfe\r\n"
    term, log = io.BytesIO(), io.BytesIO()
    PrefixWriter(term, terminal=True).write(b"p ", evil)
    PrefixWriter(log).write(b"p ", evil)
    assert b"\x1b" not in term.getvalue() and b"\x07" not in term.getvalue() and b"\r" not in term.getvalue()
    assert b"^[[2J" in term.getvalue()
    assert log.getvalue() == b"p " + evil
    assert neutralise(b"plain text\n") == b"plain text\n"


def test_pipeline_masks_stderr_and_keeps_tail():
    buf = io.BytesIO()
    masker = Masker([SECRET])
    msgs = []
    p = OutputPipeline(prefix_out=b"o ", prefix_err=b"e ", marker=marker("n" * 32), masker=masker, writers=[PrefixWriter(buf)], on_message=msgs.append)
    p.stderr(f"oops {SECRET}\n".encode())
    p.stdout(b"fine\n")
    p.close()
    assert SECRET.encode() not in buf.getvalue()
    assert p.stderr_tail() == "oops ********"


def test_huge_line_streams_with_bounded_buffers():
    masker = Masker([SECRET])
    out = []
    total = [0]

    def sink(data):
        total[0] += len(data)

    ms = MaskStream(masker, sink)
    ls = LineStream(marker("c" * 32), ms.feed, out.append)
    chunk = b"x" * 65536
    for _ in range(200):  # 12.5 MiB without a newline
        ls.feed(chunk)
        assert len(ls._buf) < 64 and len(ms._buf) < len(SECRET)
    ls.flush()
    ms.flush()
    assert total[0] == 200 * 65536
