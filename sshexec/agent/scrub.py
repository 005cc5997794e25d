"""Wiping a finished command's secrets from this process's memory, before the process serves another command.

Python frees an object without clearing it: a password the command read from
its environment stays in freed heap blocks (the request's bytes, os.environ's
copies, glibc's setenv strings, paramiko's packets) until something else is
written there. A process that lives on after the command (the agent's reusable
child) therefore searches its own writable memory, through /proc/self/mem, for
each secret's bytes and overwrites every copy with zeros.

Only values read as secrets are wiped (and only when at least MIN_BYTES long):
wiping every value of the environment would also hit live objects that hold
the same text (a path, a lab's name), and a short value would match unrelated
memory. Call it once nothing refers to the secrets any more.
"""

from __future__ import annotations

import ctypes
import mmap
import re
import struct

MIN_BYTES = 8  # core/secrets.py refuses shorter secrets anyway
CHUNK = 4 << 20
PAGE = mmap.PAGESIZE
# Names that hold secrets by convention, wiped even if the command never read them as such.
SECRETISH = re.compile(r"PASS|SECRET|TOKEN|PRIVATE|CREDENTIAL|API_?KEY", re.I)


def needles(names: set[str], client_env: dict[str, str], own_env: dict[str, str]) -> list[bytearray]:
    """The byte forms (as UTF-8 and as Python stores the str) of the secrets among `client_env`'s values.

    `names`: the variables the command read secrets from; any variable named like a secret
    (SECRETISH) counts too. A value equal to the process's own (its agent's) environment is left alone.
    """
    out: list[bytearray] = []
    for name, value in client_env.items():
        if name not in names and not SECRETISH.search(name):
            continue
        if not value or value == own_env.get(name) or len(value.encode("utf-8", "surrogateescape")) < MIN_BYTES:
            continue
        forms = {value.encode("utf-8", "surrogateescape")}
        widest = max(map(ord, value))
        if widest > 0x7F:  # str objects store such text as latin-1, UCS-2 or UCS-4
            forms.add(value.encode("latin-1") if widest <= 0xFF else value.encode("utf-16-le" if widest <= 0xFFFF else "utf-32-le", "surrogatepass"))
        out += [bytearray(f) for f in forms]
    return out


def scrub(secrets: list[bytearray]) -> int:
    """Overwrite every copy of each of `secrets` in this process's writable memory with zeros; how many were found.

    The needles themselves are zeroed last (they are bytearrays for that reason), and so is the buffer read into.
    """
    if not secrets:
        return 0
    longest = max(len(s) for s in secrets)
    buf = bytearray(CHUNK + longest)
    view = memoryview(buf)
    # The needles and the buffer hold the secrets on purpose until the end: never wiped midway.
    spared = [_span(b) for b in (buf, *secrets)]
    found = 0
    try:
        with open("/proc/self/maps") as fh:
            regions = [line.split() for line in fh]
        with open("/proc/self/mem", "r+b", buffering=0) as mem, open("/proc/self/pagemap", "rb", buffering=0) as pagemap:
            for fields in regions:
                perms = fields[1]
                where = fields[5] if len(fields) > 5 else ""
                if not perms.startswith("rw") or where in ("[vvar]", "[vsyscall]", "[vdso]"):
                    continue
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                for run_lo, run_hi in _written(pagemap, lo, hi):
                    found += _region(mem, run_lo, run_hi, secrets, buf, view, longest, spared)
    finally:
        view.release()
        buf[:] = bytes(len(buf))
        for s in secrets:
            s[:] = bytes(len(s))
    return found


def _written(pagemap, lo: int, hi: int):
    """The runs of pages of [lo, hi) this process may have written since the agent forked it: present and
    mapped by it alone (/proc/self/pagemap: bit 63 present, bit 56 exclusively mapped). A page still shared
    with the agent (copy-on-write, never written here) cannot hold the command's secrets; a page never
    touched is not read (reading would fault it in)."""
    try:
        pagemap.seek(lo // PAGE * 8)
        entries = pagemap.read((hi - lo) // PAGE * 8)
    except OSError:
        yield lo, hi  # no page map to go by: the whole region
        return
    start = None
    for i, (entry,) in enumerate(struct.iter_unpack("<Q", entries)):
        mine = entry >> 63 & 1 and entry >> 56 & 1
        if mine and start is None:
            start = i
        elif not mine and start is not None:
            yield lo + start * PAGE, lo + i * PAGE
            start = None
    if start is not None:
        yield lo + start * PAGE, lo + len(entries) // 8 * PAGE


def _region(mem, lo: int, hi: int, secrets: list[bytearray], buf: bytearray, view: memoryview, longest: int, spared: list[tuple[int, int]]) -> int:
    found = 0
    pos = lo
    while pos < hi:
        size = min(CHUNK + longest, hi - pos)
        try:
            mem.seek(pos)
            got = mem.readinto(view[:size])
        except OSError:
            return found
        if not got:
            return found
        for s in secrets:
            at = buf.find(s, 0, got)
            while at >= 0:
                address = pos + at
                if not any(a <= address < b for a, b in spared) and _wipe(mem, address, len(s)):
                    found += 1
                buf[at : at + len(s)] = bytes(len(s))
                at = buf.find(s, at + 1, got)
        if pos + got >= hi:
            break
        pos += max(1, got - longest + 1)  # overlap: a copy across two chunks is found whole
    return found


def _span(b: bytearray) -> tuple[int, int]:
    address = ctypes.addressof((ctypes.c_char * len(b)).from_buffer(b))
    return address, address + len(b)


def _wipe(mem, address: int, n: int) -> bool:
    try:
        mem.seek(address)
        return mem.write(bytes(n)) == n
    except OSError:
        return False
