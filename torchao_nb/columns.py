"""The results columns of the tables: the field catalogue (fields.py) plus the columns that explain a row (its note,
its per-layer configs); the CLI table, the panel and the report each show one view of them."""

from __future__ import annotations

from typing import Sequence

from . import fields
from .extras import LayerConfigs, Repro, SaveReload, TimingNotes
from .fields import INFINITE, PANEL, REPORT, TERMINAL, Field  # noqa: F401  (the views; part of this module's API)
from .results import Row


def no_clear_difference(row: Row) -> bool:
    """The speedup's 95 % interval holds 1.0: the mode is not measurably faster or slower than the baseline."""
    return row.speedup_lo is not None and row.speedup_hi is not None and row.speedup_lo <= 1.0 <= row.speedup_hi


def _reload_note(row: Row) -> str | None:
    if row.reload_equal is False:
        return "reloaded from disk, its output differs from the quantized model's"
    if row.reload_equal is None and (said := row.extra_of(SaveReload)):
        why = said.save_reload
        return why if why and not why.startswith("torch.save") else None
    return None


def _repro_note(row: Row) -> str:
    """"; repro: repro/x.py", short: the script's header and the row's extras say the rest."""
    said = row.extra_of(Repro)
    if said is None:
        return ""
    if said.repro is None:
        return f"; {said.repro_note}" if said.repro_note else ""
    return f"; repro: {said.repro}" + ("" if said.reproduces is not False else " (did not reproduce standalone)")


def note(row: Row) -> str:
    """Why a cell has no numbers, or what to be careful about when it has them."""
    if row.status != "ok":
        return (row.reason or "no reason recorded") + _repro_note(row)
    notes = ["no clear difference (the 95 % interval holds 1.0)"] if no_clear_difference(row) else []
    if (reload := _reload_note(row)) is not None:
        notes.append(reload)
    if timing := row.extra_of(TimingNotes):
        notes += [said for said in (timing.not_steady, timing.settles, timing.busy, timing.alone) if said]
    for count, what in ((row.graph_breaks, "graph break"), (row.recompiles, "recompile while timing"),
                        (row.cudagraph_skips, "CUDA-graph skip")):
        if count:
            notes.append(f"{count} {what}{'s' * (count != 1)}")
    if row.noisy:
        notes.append("noisy (IQR > 10% of the median)")
    return "; ".join(notes)


_CACHE_TEXT = {"warm": "cache warm (bursts of back-to-back calls, as a generation loop calls a model)",
               "cold": "cache cold (the last-level cache or L2 flushed before each call)"}


def timing_note(rows) -> str:
    """How the speedups were measured, said once under a table: what `speedup` divides, and the cache state."""
    ok = [r for r in rows if r.status == "ok"]
    compiled = any(r.compile for r in ok) or not ok
    base = "the compiled unquantized model" if compiled else "the eager unquantized model (compile off)"
    copies = sorted({r.replicates for r in ok if r.replicates})
    caches = [_CACHE_TEXT.get(c, c) for c in dict.fromkeys(r.cache for r in ok if r.cache)]
    together = any((t := r.extra_of(TimingNotes)) and t.together for r in ok)
    rounds = "the same rounds as every mode of its group" if together else "the same rounds as the mode"
    parts = [f"speedup = base ms / median ms, round by round: base ms is {base}, timed in {rounds}"]
    if copies:
        plural = "copy" if copies == [1] else "copies"
        terms = sorted({t.between_runs for r in ok if (t := r.extra_of(TimingNotes)) and t.between_runs})
        runs = f", and adds ±{'/'.join(f'{t:.0%}' for t in terms)} for what varies between runs" if terms else ""
        parts.append(f"each side on {'/'.join(map(str, copies))} {plural} of its own (the 95% CI resamples copies, "
                     f"then blocks of rounds{runs})")
    drift = machine_drift(ok)
    return "; ".join(parts + caches) + (f". {drift}" if drift else "")


# The baseline's spread, across a group's cells (each timed alone: the baseline re-timed in every cell on the same
# compiled copies) or across the rounds of cells timed together, is the machine moving, not the mode. Measured on a
# 2-core AMD EPYC VM (32 MiB L3, 2026-12-03): the demo's baseline read 2.72-4.03 ms within two minutes in one
# process, and the int8 dynamic speedup with it 1.37-1.81x, while each ~10 s cell's interval said +-5 %. On a quiet
# Intel Xeon the same baseline read 1.75-1.82 ms across a sweep.
DRIFT_REL = 0.10


def machine_drift(rows) -> str | None:
    """A sentence when the unquantized model's time moved more than DRIFT_REL while one group was timed (same
    model, batch and settings): across its cells' base ms, or across the rounds its cells were timed in together.
    Then another run, meeting the machine in another state, may read other speedups."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        if r.status == "ok" and r.baseline_ms:
            seen = groups.setdefault(r.spec.group, [])
            seen.append(r.baseline_ms)
            if (timing := r.extra_of(TimingNotes)) and timing.base_range_ms:
                seen += timing.base_range_ms
    spreads = [(max(ms) / min(ms), min(ms), max(ms)) for ms in groups.values() if len(ms) > 1]
    if not spreads or (worst := max(spreads))[0] <= 1 + DRIFT_REL:
        return None
    return (f"The machine moved while it ran: the baseline read {worst[1]:.3g}-{worst[2]:.3g} ms while one group was "
            f"timed ({worst[0]:.2f}x); the intervals widen with what the rounds saw, and another run may read "
            "otherwise: compare runs")


def layer_configs(row: Row) -> str | None:
    """How many layers took each per-layer config, e.g. int4's "group 64 ×121, group 128 ×90"."""
    configs = row.extra_of(LayerConfigs)
    if configs is None or not configs.layer_configs:
        return None
    return ", ".join(f"{label} ×{n}" for label, n in configs.counts())


# The catalogue's fields and these two explaining columns, in the order every view shows them.
fields.add(Field("layer_configs", "per-layer configs", compute=layer_configs, optional=True,
                 views=frozenset({TERMINAL, REPORT})), after="layers")
fields.add(Field("note", "note", compute=note))
COLUMNS: dict[str, Field] = fields.CATALOGUE


def shown(keys: str | Sequence[str], rows) -> list[Field]:
    """The columns of a view (its name, or the keys of the columns) that these rows fill: an optional column none of
    them has a value for is left out."""
    cols = fields.in_view(keys) if isinstance(keys, str) else [COLUMNS[k] for k in keys]
    rows = list(rows)
    return [c for c in cols if not c.optional or any(c.value(r) is not None for r in rows)]
