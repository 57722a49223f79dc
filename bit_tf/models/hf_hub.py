"""Files of a Hugging Face Hub repository, fetched through `huggingface_hub`, with one-line errors.

`download_file("timm/resnetv2_50x1_bit.goog_in21k", "model.safetensors")` returns the path of the
file in huggingface_hub's cache, downloading it once: the cache is keyed by repository and
revision (`models--timm--resnetv2_50x1_bit.goog_in21k/snapshots/<commit>/`), files are renamed
into place only when whole, and a terminal shows huggingface_hub's progress bar (nothing is drawn
on a file or a pipe). Its settings are huggingface_hub's environment variables:

- `HF_HOME` (or `HF_HUB_CACHE`): where the cache lives, by default ~/.cache/huggingface/hub;
- `HF_ENDPOINT`: a mirror of the Hub, e.g. `http://127.0.0.1:8080`;
- `HF_HUB_OFFLINE=1`: no network; files come from the cache only;
- `HF_TOKEN`: for private or gated repositories.

huggingface_hub reads them once, when it is first imported; this module reads them at each
download, so that a variable set later in the process (in a notebook, a test) counts too.
Whatever fails (no network, offline and not cached, no such repository, revision or file) is a
`bit_tf.models.download.DownloadError` of one line that names the repository, the file and what
to do.

Example:
    >>> from bit_tf.models import hf_hub
    >>> hf_hub.parse_reference("hf-hub:timm/resnetv2_50x1_bit.goog_in21k@main")
    ('timm/resnetv2_50x1_bit.goog_in21k', 'main')
    >>> path = hf_hub.download_file("timm/resnetv2_50x1_bit.goog_in21k", "config.json")
"""

from __future__ import annotations

import os
import re
from importlib import metadata

from bit_tf.models.download import DownloadError
from bit_tf.models.registry import HF_HUB_PREFIX

#: The revision a reference without "@revision" means: the repository's default branch.
DEFAULT_REVISION = "main"
#: The Hub the files come from when HF_ENDPOINT is not set.
DEFAULT_ENDPOINT = "https://huggingface.co"
# "owner/name": letters, digits, "-", "_" and "." (huggingface_hub's rule for repository ids).
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_TRUE = ("1", "ON", "YES", "TRUE")


def is_reference(weights: object) -> bool:
    """Whether `weights` names a Hub repository: "hf-hub:<owner>/<name>[@revision]".

    Example:
        >>> is_reference("hf-hub:timm/resnetv2_50x1_bit.goog_in21k"), is_reference("x.npz")
        (True, False)
    """
    return isinstance(weights, str) and weights.startswith(HF_HUB_PREFIX)


def parse_reference(reference: str) -> tuple[str, str]:
    """(repository id, revision) of "hf-hub:<owner>/<name>[@revision]".

    Raises:
        ValueError: the repository id is not "<owner>/<name>" or the revision is empty.

    Example:
        >>> parse_reference("hf-hub:timm/resnetv2_50x1_bit.goog_in21k")
        ('timm/resnetv2_50x1_bit.goog_in21k', 'main')
    """
    repo_id, _, revision = reference.removeprefix(HF_HUB_PREFIX).partition("@")
    if not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise ValueError(
            f"{reference!r} does not name a Hugging Face Hub repository: write "
            f"'{HF_HUB_PREFIX}<owner>/<name>' (e.g. "
            f"'{HF_HUB_PREFIX}timm/resnetv2_50x1_bit.goog_in21k'), optionally with "
            "'@<revision>' (a branch, tag or commit)."
        )
    if "@" in reference.removeprefix(HF_HUB_PREFIX) and not revision:
        raise ValueError(f"{reference!r} has an empty revision after '@'.")
    return repo_id, revision or DEFAULT_REVISION


def endpoint() -> str:
    """The Hub files come from: `$HF_ENDPOINT`, else https://huggingface.co.

    Example:
        >>> endpoint()
        'https://huggingface.co'
    """
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def is_offline() -> bool:
    """Whether `HF_HUB_OFFLINE` asks for the cache only (1, ON, YES or TRUE), now or when
    huggingface_hub was imported.

    Example:
        >>> is_offline()
        False
    """
    import huggingface_hub.constants

    if os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE:
        return True
    return bool(huggingface_hub.constants.HF_HUB_OFFLINE)


def cache_dir() -> str:
    """huggingface_hub's cache folder as the environment sets it now: `$HF_HUB_CACHE`, else
    `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else ~/.cache/huggingface/hub.

    Example:
        >>> cache_dir()
        '/home/me/.cache/huggingface/hub'
    """
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return os.path.expanduser(explicit)
    home = os.environ.get("HF_HOME")
    if not home:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        home = os.path.join(base, "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def download_file(
    repo_id: str, filename: str, revision: str = DEFAULT_REVISION, *, missing_ok: bool = False
) -> str | None:
    """The local path of `filename` of a Hub repository at `revision`, downloaded once into
    huggingface_hub's cache (see the module docstring for the settings).

    Args:
        repo_id: "<owner>/<name>", e.g. "timm/resnetv2_50x1_bit.goog_in21k".
        filename: the file in the repository, e.g. "model.safetensors".
        revision: a branch, tag or commit hash.
        missing_ok: return None when the repository has no such file, instead of failing.

    Raises:
        DownloadError: one line: offline and not cached, the Hub unreachable, no such
            repository or revision (or no access to it), no such file, or another HTTP error.

    Example:
        >>> download_file("timm/resnetv2_50x1_bit.goog_in21k", "model.safetensors")
        '/home/me/.cache/huggingface/hub/models--timm--resnetv2_50x1_bit.goog_in21k/snapshots/...'
    """
    import huggingface_hub
    from huggingface_hub import errors

    offline = is_offline()
    where = f"{filename} of {HF_HUB_PREFIX}{repo_id}@{revision}"
    try:
        return huggingface_hub.hf_hub_download(
            repo_id,
            filename,
            revision=revision,
            cache_dir=cache_dir(),
            endpoint=endpoint(),
            local_files_only=offline,
            library_name="bit-tf",
            library_version=_version(),
        )
    except errors.LocalEntryNotFoundError as error:
        if offline:
            raise DownloadError(
                f"Cannot load {where}: offline (HF_HUB_OFFLINE is set) and it is not in the "
                f"cache {cache_dir()}. Unset HF_HUB_OFFLINE to download it once, or pass the path "
                "of a local model.safetensors."
            ) from None
        raise DownloadError(
            f"Cannot download {where} from {endpoint()} ({_cause(error)}) and it is not in the "
            f"cache {cache_dir()}. Check the network or HF_ENDPOINT, or pass the path of a local "
            "model.safetensors."
        ) from None
    except errors.GatedRepoError:
        raise DownloadError(
            f"Cannot download {where}: the repository is gated. Accept its terms on "
            f"{endpoint()}/{repo_id} and set HF_TOKEN to a token of that account."
        ) from None
    except errors.RepositoryNotFoundError:
        raise DownloadError(
            f"No repository {repo_id!r} on {endpoint()} (or it is private: set HF_TOKEN). "
            "bit_tf.list_released_checkpoints('timm') lists timm's BiT releases."
        ) from None
    except errors.RevisionNotFoundError:
        raise DownloadError(
            f"Repository {repo_id!r} on {endpoint()} has no revision {revision!r} (a branch, tag "
            "or commit hash)."
        ) from None
    except errors.EntryNotFoundError:
        if missing_ok:
            return None
        raise DownloadError(
            f"Repository {repo_id!r} on {endpoint()} has no file {filename!r} at revision "
            f"{revision!r}: it is not a timm checkpoint in safetensors."
        ) from None
    except (errors.HfHubHTTPError, OSError) as error:
        raise DownloadError(f"Cannot download {where} from {endpoint()}: {_cause(error)}") from None


def _version() -> str | None:
    """bit-tf's installed version, for huggingface_hub's user agent."""
    try:
        return metadata.version("bit-tf")
    except metadata.PackageNotFoundError:
        return None


def _cause(error: BaseException) -> str:
    """The first line of what went wrong underneath `error` (its cause, if it has one)."""
    cause = error.__cause__ or error
    first_line = next((line for line in str(cause).splitlines() if line.strip()), "")
    return f"{type(cause).__name__}: {first_line}" if first_line else type(cause).__name__
