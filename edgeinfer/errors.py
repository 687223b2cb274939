"""One exception tree for everything edgeinfer raises, each with a message a user can act on."""

from __future__ import annotations


class EdgeInferError(Exception):
    """Base of every error edgeinfer raises on purpose."""


# --- models: finding, verifying, loading -------------------------------------------------------
class ModelError(EdgeInferError):
    """Something is wrong with a model name, file or its entry in models.lock."""


class UnknownModelError(ModelError):
    """The name is neither in models.lock nor a path to a model file."""


class ModelNotAvailableError(ModelError):
    """No source could provide the model (not cached, package not installed, hub not allowed)."""


class ModelNotPreparedError(ModelNotAvailableError):
    """The model needs a one-time preparation (e.g. a checkpoint converted to GGUF) that has not been done:
    run ``edgeinfer pull NAME``."""


class GatedModelError(ModelNotAvailableError):
    """A hub repo that needs a token with access (HF_TOKEN) after its terms were accepted on the hub."""


class ChecksumMismatchError(ModelError):
    """A file's sha256 differs from the one pinned in models.lock."""


class CorruptModelError(ModelError):
    """The file is not a valid model (wrong magic, truncated, inconsistent header)."""


class ModelLoadError(ModelError):
    """The backend refused to load a file that looked valid."""


class LockFileError(ModelError):
    """models.lock cannot be read or has an invalid entry."""


class StorageError(EdgeInferError):
    """edgeinfer could not write its own files (disk full, read-only or missing folder)."""


# --- backends and devices ------------------------------------------------------------------------
class BackendError(EdgeInferError):
    """A backend failed while running a model."""


class BackendUnavailableError(BackendError):
    """The requested backend is not installed or cannot run this artifact."""


class KVCacheFullError(BackendError):
    """The backend has no free KV cells for the tokens it was given."""


class DeviceError(BackendError):
    """The requested device is not present or not supported by the backend build."""


# --- requests ----------------------------------------------------------------------------------
class InvalidRequestError(EdgeInferError):
    """The request itself is invalid (bad parameter, empty prompt)."""


class EmptyPromptError(InvalidRequestError):
    """The prompt has no tokens."""


class ContextOverflowError(InvalidRequestError):
    """The prompt (plus what must be generated) does not fit in the context window."""

    def __init__(self, message: str, *, prompt_tokens: int, n_ctx: int) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.n_ctx = n_ctx


class MemoryBudgetError(InvalidRequestError):
    """The layout asked for does not fit the memory budget; the message says what would fit."""

    def __init__(self, message: str, *, budget: int, needed: int) -> None:
        super().__init__(message)
        self.budget = budget
        self.needed = needed


class ChatTemplateError(InvalidRequestError):
    """The model's chat template is missing, unsafe, or failed to render."""


# --- conversion ------------------------------------------------------------------------------
class ConversionError(EdgeInferError):
    """A Hugging Face checkpoint could not be converted; nothing was written."""


class CheckpointError(ConversionError):
    """The input checkpoint is missing files, corrupt, or in a format we refuse to read."""


class UnsupportedArchitectureError(ConversionError):
    """The checkpoint's architecture has no converter."""


class OutputExistsError(ConversionError):
    """The output already exists and ``force`` was not given; ``path`` is the output, ``state`` what is
    wrong with it (the CLI says ``--force`` where Python says ``force=True``)."""

    def __init__(self, path: object, state: str = "already exists") -> None:
        self.path, self.state = path, state
        super().__init__(f"{path} {state}; pass force=True to overwrite it")


# --- remote servers --------------------------------------------------------------------------
class RemoteError(EdgeInferError):
    """An OpenAI-compatible server failed or refused a request; ``status``/``code`` when it said so."""

    def __init__(self, message: str, *, url: str = "", status: int | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.url, self.status, self.code = url, status, code


class RemoteUnavailableError(RemoteError):
    """The server cannot serve now (unreachable, or HTTP 5xx after retries): another tier may."""


class RemoteTimeoutError(RemoteUnavailableError):
    """The server did not answer within the timeout (not retried: it may still be generating)."""


class RemoteRequestError(RemoteError):
    """The server refused the request with HTTP 4xx (bad request, key, model); never retried."""


class RemoteProtocolError(RemoteError):
    """The server's answer was malformed, or its stream broke off mid-way (e.g. the server died)."""


# --- evaluation (routing eval set) ---------------------------------------------------------------
class EvaluationError(EdgeInferError):
    """An evaluation set or its scoring cannot be used (missing scorer dependency, bad data)."""


class InvalidDatasetError(EvaluationError):
    """A line of an evaluation set file is invalid; the message names the file and line number."""

    def __init__(self, message: str, *, path: str, line: int) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path = path
        self.line = line


# --- translation ---------------------------------------------------------------------------------
class TranslationError(InvalidRequestError):
    """A translation request cannot be served as asked; the message says what to change."""


class EmptyTextError(TranslationError):
    """There is nothing to translate."""


class TextTooLongError(TranslationError):
    """The text is longer than the translator takes at once."""


class UnsupportedLanguageError(TranslationError):
    """A language (or pair) the translator does not know."""


class WrongSourceLanguageError(TranslationError):
    """The text is not in the chosen source language, or its language cannot be told."""
