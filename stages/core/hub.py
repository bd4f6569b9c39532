"""Hugging Face hub failures as one line each (shared by the model fetch and the LoRA adapter fetch)."""

from __future__ import annotations

from stages.core.errors import BuildError
from stages.core.schema import AdapterHub, HubSource


def hub_error(e: Exception, source: HubSource | AdapterHub, filename: str | None = None) -> BuildError:
    """One line per hub failure, naming repo and revision (and HF_TOKEN where it matters, never its value)."""
    from huggingface_hub import errors

    where = f"source: {source.repo_id}@{source.revision}"
    if isinstance(e, errors.GatedRepoError):
        return BuildError(f"{where}: gated repository; accept its terms on the hub and set HF_TOKEN")
    if isinstance(e, errors.RevisionNotFoundError):
        return BuildError(f"{where}: revision '{source.revision}' not found in {source.repo_id}")
    if isinstance(e, errors.RepositoryNotFoundError):
        return BuildError(f"{where}: repository not found, or private and HF_TOKEN is not set / not allowed")
    if isinstance(e, errors.LocalEntryNotFoundError):  # a subclass of EntryNotFoundError: first
        return BuildError(f"{where}: not in the local cache and the hub is unreachable (offline, or HF_ENDPOINT down)")
    if isinstance(e, errors.EntryNotFoundError):
        return BuildError(f"{where}: file not found in the repository: {filename or str(e).splitlines()[0]}")
    if isinstance(e, errors.HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = "; set HF_TOKEN" if status in (401, 403) else ""
        return BuildError(f"{where}: hub request failed (HTTP {status}){hint}")
    return BuildError(f"{where}: download failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
