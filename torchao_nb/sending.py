"""Whether a user's module can be copied (each cell quantizes a copy) and sent to a worker process, and the help
an error row gets when sending it was what failed."""

from __future__ import annotations

import dataclasses

from .errors import UserError, error_text
from .results import Row

SENDING_HELP = ("this is how the model was sent to the worker process, not torch or torchao: define its class in an "
                "importable file, or run its cells in this process with isolate=False (--in-process)")


def with_sending_help(row: Row) -> Row:
    """An error that names the worker's `__main__` comes from sending the model there: the row says how around it."""
    if row.status == "error" and "'__main__'" in row.reason and SENDING_HELP not in row.reason:
        return dataclasses.replace(row, reason=f"{row.reason} ({SENDING_HELP})")
    return row


def _unsendable_part(module) -> str:
    """The first attribute of `module` (or of a submodule) that can't be pickled, as `path (type)`; "" if none found."""
    import cloudpickle

    for prefix, sub in module.named_modules():
        for name, value in vars(sub).items():
            if name in ("_parameters", "_buffers", "_modules"):
                continue
            try:
                cloudpickle.dumps(value)
            except Exception:
                return f"{prefix + '.' if prefix else ''}{name} ({type(value).__name__})"
    return ""


def check_copyable(sources) -> None:
    """Each cell quantizes a copy of a user's module: one that can't be deep-copied can't be measured at all,
    in a worker or not. A UserError naming the attribute, never a promised fallback that fails in every cell."""
    import copy

    for source in sources:
        if source.module is None:
            continue
        try:
            copy.deepcopy(source.module)
        except Exception as e:
            part = _unsendable_part(source.module)
            raise UserError(
                f"{source.name} can't be copied ({error_text(e, 120)}), and each cell quantizes a copy: "
                f"move {part or 'that attribute'} out of the module (keep it outside, or make it in forward)."
            ) from None


def check_sendable(sources) -> str | None:
    """Why the sources can't be sent to a worker process, or None when they can."""
    import cloudpickle

    for source in sources:
        if source.module is None:
            continue
        try:
            cloudpickle.dumps(source)
        except Exception as e:
            part = _unsendable_part(source.module)
            return f"{source.name} can't be sent to a worker process ({error_text(e, 200)}; {part or 'an attribute'})"
    return None
