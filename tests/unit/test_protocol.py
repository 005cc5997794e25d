"""The executor's wire format, both ways, checked against real shells.

To the executor: every value of the header decodes, through the shell's own
`printf "$enc"` (as run.sh does it), to exactly its bytes, under dash, bash as
sh and busybox sh. From the executor: service messages written the way the
helpers write them (od hex) parse back to what was sent.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sshexec.config.runbook import SET_NAME
from sshexec.step.protocol import VAR_NAME, Message, encode_value, header, marker, parse_message

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHELLS = {name: argv for name, argv in {"dash": ["dash"], "bash-as-sh": ["sh-bash"], "busybox": ["busybox", "sh"]}.items() if shutil.which(argv[0].removeprefix("sh-"))}

# The executor's own loop over the header (run.sh): each value printed by `printf "$enc"`, NUL after it.
DECODE = r"""
while IFS= read -r line; do
  case $line in
    end) break ;;
    "var "*) rest=${line#var }; enc=${rest#* }; printf "$enc"; printf '\0' ;;
  esac
done
"""

# Any bytes but NUL, as Python sees environment values and YAML text (surrogateescape).
raw_values = st.binary(max_size=60).filter(lambda b: b"\0" not in b).map(lambda b: b.decode("utf-8", "surrogateescape"))
text_values = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=40)
values = st.lists(st.one_of(raw_values, text_values), min_size=1, max_size=12)
EVERY_BYTE = bytes(range(1, 256)).decode("utf-8", "surrogateescape")


def decode_in(shell: str, head: bytes, tmp_path) -> list[bytes]:
    argv = SHELLS[shell]
    if argv[0] == "sh-bash":  # bash started as `sh`, like a /bin/sh that is bash
        link = tmp_path / "sh"
        if not link.exists():
            os.symlink(shutil.which("bash"), link)
        argv = [str(link)]
    p = subprocess.run([*argv, "-c", DECODE], input=head, capture_output=True, timeout=20)
    assert p.returncode == 0, p.stderr
    return p.stdout.split(b"\0")[:-1]


@pytest.mark.parametrize("shell", SHELLS)
@SETTINGS
@given(vals=values)
@example(vals=[EVERY_BYTE, "%s%d%%\\\\n\\0101-x", "-e", "'\"$(id)`id`", "", "\n\n", " lead and trail ", "ünï ✓ 日本"])
def test_header_values_decode_to_their_bytes_in_a_real_shell(shell, vals, tmp_path_factory):
    head = header(nonce="ab" * 16, syntax="sh", variables={f"V{i}": v for i, v in enumerate(vals)})
    got = decode_in(shell, head, tmp_path_factory.mktemp("sh"))
    assert got == [v.encode("utf-8", "surrogateescape") for v in vals]


@given(st.one_of(raw_values, text_values))
def test_an_encoded_value_holds_only_inert_characters(v):
    enc = encode_value(v)
    assert set(enc) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./:=+,@\\")
    # Every backslash starts a three-digit octal escape: printf can do nothing else with it.
    parts = enc.split("\\")
    assert all(len(p) >= 3 and p[:3].isdigit() and set(p[:3]) <= set("01234567") for p in parts[1:])


def test_header_layout_and_context():
    h = header(nonce="n" * 32, syntax="python", variables={"A": "1", "B.c[w1]": "x y"}, context={"run": "r-1", "step": "s_2", "worker": "w.3"})
    assert h.decode().splitlines() == [
        "sshexec 1", "nonce " + "n" * 32, "syntax python", "run r-1", "step s_2", "worker w.3", "var A 1", "var B.c[w1] x\\040y", "end",
    ]  # fmt: skip


@pytest.mark.parametrize("context", [{"run": "a b"}, {"step": "x\ny"}, {"other": "x"}, {"worker": "$(id)"}])
def test_bad_context_is_refused(context):
    with pytest.raises(ValueError):
        header(nonce="n", syntax="sh", variables={}, context=context)


@pytest.mark.parametrize("name", ["", "a b", "a/b", "-x", "x" * 257, "a\nb", ".hidden"])
def test_bad_variable_names_are_refused(name):
    assert not VAR_NAME.fullmatch(name)
    with pytest.raises(ValueError):
        header(nonce="n", syntax="sh", variables={name: "v"})


def od_hex(value: str) -> str:
    """What the helpers' sx_hex writes: od's lowercase hex, "-" for empty."""
    data = value.encode("utf-8", "surrogateescape")
    return data.hex() if data else "-"


@given(name=st.from_regex(SET_NAME, fullmatch=True), value=st.one_of(raw_values, text_values), sensitive=st.booleans())
def test_set_messages_round_trip(name, value, sensitive):
    body = f"set {od_hex(name)} {od_hex(value)} {int(sensitive)}".encode()
    assert parse_message(body) == Message("set", (name, value, "1" if sensitive else "0"))


@pytest.mark.parametrize(
    "body, message",
    [
        (b"artifact 2f782f792e747874 -", Message("artifact", ("/x/y.txt", ""))),
        (b"fail 6e6f206d6f7265", Message("fail", ("no more",))),
        (b"fail -", Message("fail", ("",))),
        (b"missing python3", Message("missing", ("python3",))),
        (b"started", Message("started", ())),
        (b"started\r", Message("started", ())),
        (b"set 41 4142 0 extra", None),
        (b"started now", None),
        (b"fail 6e6f20", Message("fail", ("no ",))),
        (b"fail 6E6F", Message("fail", ("no",))),
        (b"fail 6e6", None),
        (b"artifact 2f78", None),
        (b"missing Bash", None),
        (b"", None),
        (b"\xff\xfe", None),
    ],
    ids=["artifact", "fail", "fail-empty", "missing", "started", "started-crlf", "set-extra-field", "started-with-field",
         "fail-trailing-space", "uppercase-hex", "odd-hex", "artifact-one-field", "missing-uppercase", "empty", "not-ascii"],
)  # fmt: skip
def test_service_messages(body, message):
    assert parse_message(body) == message


def test_marker_carries_the_nonce():
    assert marker("c" * 32) == b"##sshexec[" + b"c" * 32 + b"] "
