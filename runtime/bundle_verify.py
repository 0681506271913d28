"""--verify: check every member of a bundle, with nothing but the standard library.

A bundle runs this file straight out of its ZIP (bundler/bundle_main.py executes
its source on its own, without importing the runtime package), so a damaged
runtime member cannot stop the check that names it. runtime/archive.py uses the
same code when --verify is given to `python -m runtime`.

For each member: its local header agrees with the central directory (name, method,
CRC, sizes; a corrupted size field in either shows here), its data lies inside the
file, its CRC-32 matches (zipfile checks it while reading), and its SHA-256 matches
manifest.json. Every damaged member is named on a line of its own.
"""

import hashlib
import json
import struct
import sys
import zipfile
import zlib

MANIFEST_MEMBER = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20
_LOCAL = struct.Struct("<IHHHHHIIIHH")
_LOCAL_SIGNATURE = 0x04034B50
_ZIP64_EXTRA = 0x0001
# what reading a damaged member can raise: zipfile's own errors, zlib's, short reads
READ_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError,
               NotImplementedError, RuntimeError, struct.error)


class BundleDamaged(Exception):
    """The bundle as a whole cannot be read (one line, for the user)."""


def open_zip(path):
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise BundleDamaged(f"bundle not found: {path}; check the path") from None
    except READ_ERRORS as e:
        raise BundleDamaged(f"{path} is not a readable llamazip bundle ({e}); "
                            "download or build it again") from None


def read_manifest(zip_file, path):
    """manifest.json's {member: sha256}, or BundleDamaged naming what is wrong."""
    try:
        info = zip_file.getinfo(MANIFEST_MEMBER)
    except KeyError:
        raise BundleDamaged(f"{path} has no {MANIFEST_MEMBER}; build the bundle again") from None
    if info.file_size > MAX_MANIFEST_BYTES:
        raise BundleDamaged(f"{path}: {MANIFEST_MEMBER} is {info.file_size} bytes, not a "
                            "manifest; download or build the bundle again")
    try:
        manifest = json.loads(zip_file.read(MANIFEST_MEMBER).decode("utf-8"))
    except (RecursionError, UnicodeDecodeError, ValueError) + READ_ERRORS:
        raise BundleDamaged(f"{path}: {MANIFEST_MEMBER} is damaged; download or build the "
                            "bundle again") from None
    members = manifest.get("members") if isinstance(manifest, dict) else None
    if not isinstance(members, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in members.items()):
        raise BundleDamaged(f"{path}: {MANIFEST_MEMBER} is not a llamazip manifest (no "
                            "members table); download or build the bundle again")
    return manifest


def _local_header(f, info, file_size):
    """(method, crc, compressed size, size, data offset) from the member's local header."""
    if info.header_offset + _LOCAL.size > file_size:
        raise ValueError("local header outside the file")
    f.seek(info.header_offset)
    raw = f.read(_LOCAL.size)
    (sig, _, flags, method, _, _, crc, csize, size, name_len, extra_len) = _LOCAL.unpack(raw)
    if sig != _LOCAL_SIGNATURE:
        raise ValueError("no local header where the central directory points")
    name = f.read(name_len)
    extra = f.read(extra_len)
    if name.decode("utf-8", "replace") != info.filename and \
            name.decode("cp437", "replace") != info.filename:
        raise ValueError("local header names another member")
    if csize == 0xFFFFFFFF or size == 0xFFFFFFFF:
        at = 0
        while at + 4 <= len(extra):
            kind, n = struct.unpack_from("<HH", extra, at)
            if kind == _ZIP64_EXTRA:
                values = list(struct.unpack_from("<%dQ" % (n // 8), extra, at + 4))
                if size == 0xFFFFFFFF and values:
                    size = values.pop(0)
                if csize == 0xFFFFFFFF and values:
                    csize = values.pop(0)
                break
            at += 4 + n
    if flags & 0x08:   # sizes in a data descriptor: only the central directory has them
        crc, csize, size = info.CRC, info.compress_size, info.file_size
    data_offset = info.header_offset + _LOCAL.size + name_len + extra_len
    return method, crc, csize, size, data_offset


def member_problem(zip_file, f, info, expected_sha, file_size):
    """What is wrong with one member, or None."""
    try:
        method, crc, csize, size, data_offset = _local_header(f, info, file_size)
    except READ_ERRORS as e:
        return f"unreadable ({e})"
    if (method, crc, csize, size) != (info.compress_type, info.CRC, info.compress_size,
                                      info.file_size):
        return ("local header and central directory disagree (method, CRC or sizes); "
                "a size field is damaged")
    if info.compress_type == zipfile.ZIP_STORED and csize != size:
        return "stored with two different sizes"
    if data_offset + csize > file_size:
        return "its data runs past the end of the file"
    digest = hashlib.sha256()
    try:
        with zip_file.open(info) as member:
            got = 0
            while True:
                chunk = member.read(1 << 20)
                if not chunk:
                    break
                got += len(chunk)
                digest.update(chunk)
        if got != info.file_size:
            return f"holds {got} bytes, the directory says {info.file_size}"
    except READ_ERRORS as e:
        return f"unreadable ({e})"
    if digest.hexdigest() != expected_sha:
        return "sha256 mismatch"
    return None


def problems(path, zip_file=None):
    """[(member, problem)] for every damaged, missing or unlisted member."""
    zip_file = zip_file if zip_file is not None else open_zip(path)
    manifest = read_manifest(zip_file, path)
    expected = manifest["members"]
    infos = {info.filename: info for info in zip_file.infolist()}
    found = []
    with open(path, "rb") as f:
        f.seek(0, 2)
        file_size = f.tell()
        for name in sorted(set(expected) | set(infos)):
            if name == MANIFEST_MEMBER:
                continue
            if name not in infos:
                found.append((name, "missing"))
            elif name not in expected:
                found.append((name, "not in the manifest"))
            else:
                problem = member_problem(zip_file, f, infos[name], expected[name], file_size)
                if problem:
                    found.append((name, problem))
    return found, len(infos)


def verify(path, zip_file=None, out=None, err=None):
    """Print one line per damaged member and the verdict; returns the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        found, n_members = problems(path, zip_file)
    except BundleDamaged as e:
        print(f"error: {e}", file=err)
        return 2
    for name, problem in found:
        print(f"damaged: {name}: {problem}", file=err)
    if found:
        print(f"error: {path}: {len(found)} damaged member(s); download or build the bundle "
              "again", file=err)
        return 2
    print(f"ok: {n_members} members match {MANIFEST_MEMBER}", file=out)
    return 0
