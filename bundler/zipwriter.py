"""A small ZIP writer made for bundles.

Why not `zipfile`: a bundle needs three things it does not give together. The model
member's data must start on a 64 KiB boundary so the runtime can map it in place
(we pad the local header's extra field, as Android's zipalign does with id 0xD935);
the output must be byte-identical for identical inputs (fixed timestamps, fixed
attributes, members in the order given); and a multi-GiB model is streamed from
its source while its CRC-32 and SHA-256 are computed, then the CRC is patched into
the local header, so the model is read exactly once.

Offsets are absolute from the start of the file: the launcher in front of the ZIP
is just leading bytes, which `unzip` and `zipfile` accept without a warning.
ZIP64 records are written only where a size, an offset or the entry count needs them.
"""

import hashlib
import struct
import zlib

DOS_DATE_1980_01_01 = (0 << 9) | (1 << 5) | 1   # the DOS epoch: deterministic timestamps
DOS_TIME_MIDNIGHT = 0
UNIX_FILE_MODE = 0o100644 << 16                  # regular file, rw-r--r--, in external attrs
MADE_BY_UNIX = 3 << 8

STORED, DEFLATED = 0, 8
ZIP64_LIMIT = 0xFFFFFFFF
ALIGN_EXTRA_ID = 0xD935

_LOCAL = struct.Struct("<IHHHHHIIIHH")          # 30 bytes, signature PK\3\4
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")  # 46 bytes, signature PK\1\2
_EOCD = struct.Struct("<IHHHHIIH")              # 22 bytes, signature PK\5\6
_EOCD64 = struct.Struct("<IQHHIIQQQQ")          # 56 bytes, signature PK\6\6
_LOCATOR64 = struct.Struct("<IIQI")             # 20 bytes, signature PK\6\7
_CHUNK = 1 << 20


class Entry:
    """What the central directory needs to know about one written member."""

    def __init__(self, name, method, crc, compressed_size, size, header_offset, data_offset,
                 sha256):
        self.name = name
        self.method = method
        self.crc = crc
        self.compressed_size = compressed_size
        self.size = size
        self.header_offset = header_offset
        self.data_offset = data_offset
        self.sha256 = sha256


def _zip64_extra(values):
    """The ZIP64 extended-information extra record holding the given 64-bit values."""
    if not values:
        return b""
    return struct.pack("<HH", 1, 8 * len(values)) + struct.pack("<%dQ" % len(values), *values)


def _version_needed(zip64):
    return 45 if zip64 else 20


class ZipWriter:
    """Writes members to `f` (a seekable binary file), then the central directory.

    `prefix` (the launcher) is written first. When the first member asks for
    alignment and its local header's extra field cannot reach the boundary (a pad of
    1-3 bytes, or one larger than the 16-bit extra length), the prefix is lengthened
    instead; `prefix_pad` is a byte that is harmless at the end of the prefix.
    """

    def __init__(self, f, prefix=b"", prefix_pad=b"\0"):
        self.f = f
        self.prefix = prefix
        self.prefix_pad = prefix_pad
        self.entries = []
        self.offset = None  # where the next local header goes; None until the prefix is out

    def _names_ok(self, name):
        if not name or name.startswith("/") or ".." in name.split("/") or not name.isascii():
            raise ValueError(f"bad member name {name!r}")
        if any(e.name == name for e in self.entries):
            raise ValueError(f"duplicate member {name!r}")

    def _start(self, name, zip64_extra, align):
        """Write the prefix if still pending; return the local header's extra field."""
        fixed = _LOCAL.size + len(name) + len(zip64_extra)
        if self.offset is None:
            prefix = self.prefix
            if align:
                pad = (-(len(prefix) + fixed)) % align
                room = 0xFFFF - len(zip64_extra)
                if 0 < pad < 4:
                    prefix += self.prefix_pad * pad
                elif pad > room:
                    prefix += self.prefix_pad * (pad - room)
            self.f.write(prefix)
            self.offset = len(prefix)
        if not align:
            return zip64_extra
        pad = (-(self.offset + fixed)) % align
        if pad == 0:
            return zip64_extra
        if pad < 4 or pad > 0xFFFF - len(zip64_extra):
            raise ValueError(f"cannot align {name!r}: put aligned members first")
        # One record: id, length, then the alignment (as zipalign writes it) and zeros.
        payload = struct.pack("<H", align & 0xFFFF) + bytes(pad - 6) if pad >= 6 else bytes(pad - 4)
        return zip64_extra + struct.pack("<HH", ALIGN_EXTRA_ID, len(payload)) + payload

    def _local_header(self, name, method, crc, compressed_size, size, extra, zip64):
        return _LOCAL.pack(0x04034B50, _version_needed(zip64), 0, method, DOS_TIME_MIDNIGHT,
                           DOS_DATE_1980_01_01, crc,
                           ZIP64_LIMIT if zip64 else compressed_size,
                           ZIP64_LIMIT if zip64 else size,
                           len(name), len(extra)) + name.encode("ascii") + extra

    def add_bytes(self, name, data, compress=True):
        """A small member, deflated when that makes it smaller."""
        self._names_ok(name)
        data = bytes(data)
        crc = zlib.crc32(data)
        method, payload = STORED, data
        if compress:
            packer = zlib.compressobj(9, zlib.DEFLATED, -15)
            packed = packer.compress(data) + packer.flush()
            if len(packed) < len(data):
                method, payload = DEFLATED, packed
        zip64 = len(data) >= ZIP64_LIMIT
        extra = self._start(name, _zip64_extra([len(data), len(payload)] if zip64 else []), 0)
        header_offset = self.offset
        header = self._local_header(name, method, crc, len(payload), len(data), extra, zip64)
        self.f.write(header)
        self.f.write(payload)
        self.offset += len(header) + len(payload)
        self.entries.append(Entry(name, method, crc, len(payload), len(data), header_offset,
                                  header_offset + len(header), hashlib.sha256(data).hexdigest()))
        return self.entries[-1]

    def add_stream(self, name, src, size, align=0, progress=None):
        """A large member, stored (uncompressed) and copied from the binary file `src`.

        Reads exactly `size` bytes from `src`'s current position; `progress(done)` is
        called as it goes. Returns the Entry (with the SHA-256 of the data).
        """
        self._names_ok(name)
        zip64 = size >= ZIP64_LIMIT
        extra = self._start(name, _zip64_extra([size, size] if zip64 else []), align)
        header_offset = self.offset
        header = self._local_header(name, STORED, 0, size, size, extra, zip64)
        self.f.write(header)
        crc, digest, done = 0, hashlib.sha256(), 0
        zeros = bytes(_CHUNK)
        while done < size:
            chunk = src.read(min(_CHUNK, size - done))
            if not chunk:
                raise EOFError(f"{name}: source ended after {done} of {size} bytes")
            crc = zlib.crc32(chunk, crc)
            digest.update(chunk)
            if chunk == zeros[:len(chunk)]:
                # A hole in a sparse source stays a hole: seek instead of writing zeros.
                self.f.seek(len(chunk), 1)
            else:
                self.f.write(chunk)
            done += len(chunk)
            if progress:
                progress(done)
        end = self.f.tell()
        self.f.truncate(end)  # gives the file its length if it ended in a hole
        self.f.seek(header_offset + 14)  # the CRC-32 field of the local header
        self.f.write(struct.pack("<I", crc))
        self.f.seek(end)
        self.offset += len(header) + size
        self.entries.append(Entry(name, STORED, crc, size, size, header_offset,
                                  header_offset + len(header), digest.hexdigest()))
        return self.entries[-1]

    def close(self, comment=b""):
        """Write the central directory and its end records; `comment` ends the file.

        `comment` may be a function of the file's size without it (the native
        launcher's cookie must know where the file ends).
        """
        if self.offset is None:
            self.f.write(self.prefix)
            self.offset = len(self.prefix)
        cd_offset = self.offset
        for e in self.entries:
            # In the central directory the ZIP64 extra holds only the fields that overflow,
            # in this order: size, compressed size, header offset.
            values = [v for v in (e.size, e.compressed_size) if v >= ZIP64_LIMIT]
            if e.header_offset >= ZIP64_LIMIT:
                values.append(e.header_offset)
            extra = _zip64_extra(values)
            zip64 = bool(values)
            name = e.name.encode("ascii")
            self.f.write(_CENTRAL.pack(
                0x02014B50, MADE_BY_UNIX | _version_needed(zip64), _version_needed(zip64), 0,
                e.method, DOS_TIME_MIDNIGHT, DOS_DATE_1980_01_01, e.crc,
                min(e.compressed_size, ZIP64_LIMIT), min(e.size, ZIP64_LIMIT),
                len(name), len(extra), 0, 0, 0, UNIX_FILE_MODE,
                min(e.header_offset, ZIP64_LIMIT)) + name + extra)
            self.offset += _CENTRAL.size + len(name) + len(extra)
        cd_size = self.offset - cd_offset
        count = len(self.entries)
        if count >= 0xFFFF or cd_offset >= ZIP64_LIMIT or cd_size >= ZIP64_LIMIT:
            eocd64_offset = self.offset
            self.f.write(_EOCD64.pack(0x06064B50, _EOCD64.size - 12, MADE_BY_UNIX | 45, 45, 0, 0,
                                      count, count, cd_size, cd_offset))
            self.f.write(_LOCATOR64.pack(0x07064B50, 0, eocd64_offset, 1))
            self.offset += _EOCD64.size + _LOCATOR64.size
        if callable(comment):
            comment = comment(self.offset + _EOCD.size)
        self.f.write(_EOCD.pack(0x06054B50, 0, 0, min(count, 0xFFFF), min(count, 0xFFFF),
                                min(cd_size, ZIP64_LIMIT), min(cd_offset, ZIP64_LIMIT),
                                len(comment)) + comment)
        self.offset += _EOCD.size + len(comment)
        return self.offset
