"""Reward weights from the Hugging Face hub, with one clear error when they cannot be had.

Reward loaders download their weights when a path is left empty. Offline (``HF_HUB_OFFLINE=1``,
no network) and with nothing in the local cache, the hub client raises
``LocalEntryNotFoundError`` with a message that names no file. Here such failures become one
:class:`WeightsUnavailable` (a ``FileNotFoundError``) that names the node's input, the file
and where it comes from, and says how to provide it.
"""

from __future__ import annotations

from contextlib import contextmanager

#: where the README tells users to put reward weights (relative to ComfyUI's models folder)
MODELS_SUBFOLDER = "evosearch"


class WeightsUnavailable(FileNotFoundError):
    """Reward weights that are neither local nor in the hub cache, with the hub out of reach."""


def _chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def is_hub_unreachable(err: BaseException) -> bool:
    """True when ``err`` (or what caused it) is the hub client failing to fetch a file: offline mode,
    no connection, or a file neither cached nor downloadable."""
    for e in _chain(err):
        cls = type(e)
        module = cls.__module__ or ""
        if module.startswith("huggingface_hub") and cls.__name__ in (
                "LocalEntryNotFoundError", "OfflineModeIsEnabled", "HfHubHTTPError"):
            return True
        if module.startswith(("requests", "urllib3", "httpx", "httpcore")) and "Connect" in cls.__name__:
            return True
        # transformers re-raises hub failures as a bare OSError that only mentions the hub
        if isinstance(e, OSError) and _offline() and ("huggingface.co" in str(e) or "Hugging Face hub" in str(e)):
            return True
    return False


def unavailable(option: str, what: str, download: str | None = None) -> WeightsUnavailable:
    how = f"download it while online ({download}) or " if download else "download it while online or "
    why = "HF_HUB_OFFLINE is set" if _offline() else "no connection to huggingface.co"
    return WeightsUnavailable(
        f"{option}: needs {what}, which is not in the local Hugging Face cache, and the hub cannot be reached "
        f"({why}). To run offline, {how}put the file under ComfyUI's models/{MODELS_SUBFOLDER}/ and give its "
        f"path in '{option}'.")


def _offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:
        return False


def hub_file(option: str, repo: str, filename: str) -> str:
    """The local path of ``filename`` from the hub repo ``repo`` (downloaded or cached), or a
    :class:`WeightsUnavailable` naming ``option`` and the file."""
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo, filename)
    except Exception as err:
        if not is_hub_unreachable(err):
            raise
        raise unavailable(option, f"{filename} from the Hugging Face hub repo {repo}",
                          f"hf download {repo} {filename}") from None


@contextmanager
def hub_errors(option: str | tuple[str, ...], what: str):
    """Turn a hub failure inside the block (a loader fetching ``what``) into :class:`WeightsUnavailable`
    naming ``option`` (of several, the one the failure's message names); any other error passes
    unchanged."""
    try:
        yield
    except WeightsUnavailable:
        raise
    except Exception as err:
        if not is_hub_unreachable(err):
            raise
        options = (option,) if isinstance(option, str) else tuple(option)
        named = next((o for o in options if str(err).startswith(f"{o}:")), options[0])
        raise unavailable(named, what) from None


__all__ = ["WeightsUnavailable", "hub_file", "hub_errors", "is_hub_unreachable"]
