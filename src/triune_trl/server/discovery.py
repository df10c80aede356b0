"""Finding reward servers: the V-Triune release's discovery folder, and lists of URLs.

The release's launch script writes an empty file named `<ip>:<port>` under `.reward_server/<JOB_ID>/` when a
server starts, and its trainer reads `REMOTE_REWARD_JOB_ID="j-a|j-b"` to find them: a shared filesystem is the
only registry a cluster needs. `triune serve-rewards --job-id J` (and `local_scripts/reward_server.sh`) write the
same files, and a run's `reward_server_job_ids` reads them, so both sides interoperate with the release's scripts.
A server bound to every interface (0.0.0.0 or ::) registers the machine's own address, as the release does, since
`0.0.0.0` means nothing to a client on another machine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from triune_trl.errors import TriuneError

__all__ = [
    "DEFAULT_DISCOVERY_DIR",
    "RewardServerDiscoveryError",
    "discover_urls",
    "parse_job_ids",
    "parse_server_urls",
    "reachable_host",
    "register_server",
    "split_list",
    "unregister_server",
]

logger = logging.getLogger(__name__)

DEFAULT_DISCOVERY_DIR = ".reward_server"
_WILDCARD_HOSTS = ("0.0.0.0", "::", "")


class RewardServerDiscoveryError(TriuneError, ValueError):
    """No usable reward server address where the configuration points; the message says where it looked."""


def split_list(value: str | Sequence[str] | None) -> list[str]:
    """`"a|b"`, `"a,b"` or a sequence of such strings -> the non-empty entries, stripped, duplicates dropped."""
    if value is None:
        return []
    parts = [value] if isinstance(value, str) else list(value)
    entries: list[str] = []
    for part in parts:
        for entry in str(part).replace(",", "|").split("|"):
            entry = entry.strip()
            if entry and entry not in entries:
                entries.append(entry)
    return entries


def _check_job_id(job_id: str) -> str:
    job_id = str(job_id).strip()
    if not job_id or job_id in (".", "..") or any(sep in job_id for sep in ("/", "\\", os.sep, "|", ",", "\0")):
        raise RewardServerDiscoveryError(
            f"reward server job id {job_id!r}: it names a folder under the discovery directory, so it must be a "
            "single non-empty name without '/', '\\', '|' or ',' (e.g. j-20250101-a)"
        )
    return job_id


def parse_job_ids(value: str | Sequence[str] | None) -> list[str]:
    """`"j-a|j-b"` (or a list) -> the job ids, each checked to be a plain folder name."""
    return [_check_job_id(job_id) for job_id in split_list(value)]


def reachable_host() -> str:
    """This machine's address as other machines see it (the interface a packet to the outside would leave from).

    Connecting a UDP socket sends nothing; it only asks the kernel for the route. Without a route, the address the
    host name resolves to; 127.0.0.1 as the last resort (then only this machine can use the server).
    """
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("10.255.255.255", 1))
        address = sock.getsockname()[0]
        if address and not address.startswith(("127.", "0.")):
            return address
    with contextlib.suppress(OSError):
        address = socket.gethostbyname(socket.gethostname())
        if address and not address.startswith(("127.", "0.")):
            return address
    return "127.0.0.1"


def _entry_name(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def register_server(job_id: str, host: str, port: int, directory: str | os.PathLike = DEFAULT_DISCOVERY_DIR) -> Path:
    """Write the empty file `<directory>/<job_id>/<host>:<port>` and return its path (for `unregister_server`)."""
    job_id = _check_job_id(job_id)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise RewardServerDiscoveryError(f"reward server port must be an integer in 1..65535, got {port!r}")
    host = host.strip().strip("[]")
    if host in _WILDCARD_HOSTS:
        host = reachable_host()
    folder = Path(directory) / job_id
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / _entry_name(host, port)
        path.touch()
    except OSError as exc:
        raise RewardServerDiscoveryError(
            f"cannot write the discovery file for job {job_id} under {folder}: {exc.strerror}; pass a writable "
            "--discovery-dir (it must be on a filesystem the trainers can read)"
        ) from None
    return path


def unregister_server(path: str | os.PathLike) -> None:
    """Remove a file written by `register_server`, and its job folder when nothing else is registered there."""
    path = Path(path)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    with contextlib.suppress(OSError):  # not empty (another server of the same job), or already gone
        path.parent.rmdir()


def _parse_entry(name: str) -> tuple[str, int] | None:
    """`host:port` or `[v6]:port` -> (host, port); None for anything else."""
    host, sep, port_text = name.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        return None
    port = int(port_text)
    if not 0 < port < 65536:
        return None
    if host.startswith("["):
        if not host.endswith("]"):
            return None
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    elif ":" in host or any(ch.isspace() or ch in "/?#@" for ch in host):
        return None
    return host, port


def discover_urls(job_ids: str | Sequence[str], directory: str | os.PathLike = DEFAULT_DISCOVERY_DIR) -> list[str]:
    """The `http://host:port` URLs registered under `<directory>/<job id>/` for every job id (`"j-a|j-b"`).

    Raises RewardServerDiscoveryError when no job id is given, or a job's folder is missing or holds no
    `host:port` file; other file names there are skipped with a warning. A stale file (a server that died without
    removing it) is returned like any other: the client marks that server down on its first failed request.
    """
    ids = parse_job_ids(job_ids)
    if not ids:
        raise RewardServerDiscoveryError("reward_server_job_ids is empty: give one job id, or several as 'j-a|j-b'")
    directory = Path(directory)
    urls: list[str] = []
    for job_id in ids:
        folder = directory / job_id
        how = (
            f"start a server with `triune serve-rewards --host 0.0.0.0 --job-id {job_id} --discovery-dir "
            f"{directory}` (or JOB_ID={job_id} local_scripts/reward_server.sh) from the same working directory, or "
            "pass --reward_server_urls"
        )
        if not folder.is_dir():
            raise RewardServerDiscoveryError(
                f"no reward server registered for job id {job_id!r}: {folder.resolve()} does not exist; {how}"
            )
        found = []
        for entry in sorted(folder.iterdir()):
            parsed = _parse_entry(entry.name) if entry.is_file() else None
            if parsed is None:
                logger.warning("reward server discovery: skipping %s (not a host:port file)", entry)
                continue
            found.append(f"http://{_entry_name(*parsed)}")
        if not found:
            raise RewardServerDiscoveryError(
                f"no reward server registered for job id {job_id!r}: {folder.resolve()} holds no host:port file; {how}"
            )
        urls.extend(url for url in found if url not in urls)
    return urls


def parse_server_urls(value: str | Sequence[str]) -> list[str]:
    """`"http://a:1|http://b:2"` (or comma-separated, or a list) -> normalised base URLs without a trailing slash.

    A bare `host:port` gets `http://`. A path is kept (a server behind a reverse proxy under a prefix); a query or
    fragment is an error, as is a scheme other than http or https.
    """
    urls: list[str] = []
    for entry in split_list(value):
        url = entry if "://" in entry else f"http://{entry}"
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise RewardServerDiscoveryError(f"reward server URL {entry!r}: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise RewardServerDiscoveryError(
                f"reward server URL {entry!r}: expected http(s)://host:port, e.g. http://10.0.0.5:8192"
            )
        if port is None and "://" not in entry:
            raise RewardServerDiscoveryError(f"reward server address {entry!r}: give the port, e.g. {entry}:8192")
        normalised = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        if normalised not in urls:
            urls.append(normalised)
    if not urls:
        raise RewardServerDiscoveryError(
            "reward_server_urls is empty: give one URL, or several as 'http://a:8192|http://b:8192'"
        )
    return urls
