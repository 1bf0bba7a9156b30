"""TensorBoard event files, read and purged without TensorFlow (tensorboardX's protos).

An event file is a sequence of records: length (uint64), masked CRC32C of the
length, data (an `Event` proto), masked CRC32C of the data.
"""

import contextlib
import os
import struct

from tensorboardX.proto.event_pb2 import Event
from tensorboardX.record_writer import masked_crc32c


def read_records(path: str) -> list[bytes]:
    """The records of an event file; a record cut short (a killed writer) ends the list."""
    records = []
    with open(path, "rb") as f:
        while True:
            header = f.read(12)
            if len(header) < 12:
                break
            (length,) = struct.unpack("<Q", header[:8])
            data = f.read(length)
            if len(data) < length or len(f.read(4)) < 4:
                break
            records.append(data)
    return records


def read_events(path: str) -> list[Event]:
    return [Event.FromString(record) for record in read_records(path)]


def write_records(path: str, records: list[bytes]) -> None:
    """Writes `records` to `path` atomically."""
    partial = path + ".tmp"
    try:
        with open(partial, "wb") as f:
            for data in records:
                header = struct.pack("<Q", len(data))
                f.write(header + struct.pack("<I", masked_crc32c(header)))
                f.write(data + struct.pack("<I", masked_crc32c(data)))
        os.replace(partial, path)
    except BaseException:  # a full disk, a signal: no temporary file is left
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
        raise


def purge_after(directory: str, step: int) -> int:
    """Removes the events logged after `step` from every event file under `directory` (those
    of a run that stopped before its next checkpoint); returns how many were removed."""
    removed = 0
    for root, _, names in os.walk(directory):
        for name in names:
            if "tfevents" not in name or name.endswith(".tmp"):
                continue
            path = os.path.join(root, name)
            records = read_records(path)
            kept = [r for r in records if Event.FromString(r).step <= step]
            if len(kept) != len(records) or os.path.getsize(path) != _size(records):
                write_records(path, kept)
                removed += len(records) - len(kept)
    return removed


def _size(records) -> int:
    return sum(len(r) + 16 for r in records)
