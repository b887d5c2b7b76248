"""A resumable results table: one JSON file, rewritten after every finished cell of a benchmark.

Long benchmarks (hours on a CPU) must survive an interruption, so each finished cell is written at
once, atomically (write a temporary file, then rename). A rerun with the same file reads the rows back
and skips their cells. Rows are only comparable when everything that shapes them is the same (model
weights, images, seeds, n, ...): those ``settings`` are stored at the top of the file, and a rerun
with different ones is refused (or, with ``fresh=True``, starts the file over) instead of silently
mixing incomparable rows.
"""
from __future__ import annotations

import json
import math
import os
import shlex
from pathlib import Path


class SettingsChanged(ValueError):
    """The JSON file holds rows made with other settings."""


def command_line(parser, args, prefix: str = "python -m noisecorr_app") -> str:
    """An equivalent command line for parsed ``args``: the subcommand words plus every option whose
    value differs from its default (argv itself is not at hand when main() is called from Python)."""
    words = [w for w in (getattr(args, "command", None), getattr(args, "what", None)) if w]
    for act in parser._actions:
        if not act.option_strings or act.dest == "help":
            continue
        value = getattr(args, act.dest, act.default)
        if value == act.default:
            continue
        if act.nargs == 0:                           # store_true / store_false
            words.append(act.option_strings[-1])
        else:
            words += [act.option_strings[-1], str(value)]
    return " ".join([prefix] + [shlex.quote(w) for w in words])


def weights_fingerprint(model) -> str | None:
    """sha1 of a loaded model's weights files (a model still training changes them between runs);
    None for models without a folder (e.g. analytic ones)."""
    from ..models.cache import file_sha1

    folder = model.info.get("folder")
    if not folder:
        return None
    files = sorted(f for f in Path(folder).rglob("diffusion_pytorch_model*")
                   if f.suffix in (".safetensors", ".bin") and "training" not in f.relative_to(folder).parts)
    return ",".join(file_sha1(f)[:16] for f in files) or None


def finite_or_none(v):
    """JSON has no NaN/inf: such values become null."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


class ResultsFile:
    """Rows keyed by ``key_fields``; ``settings`` must match the file's to reuse its rows."""

    def __init__(self, path: str | Path, key_fields: tuple[str, ...], settings: dict, header: dict | None = None,
                 fresh: bool = False):
        self.path, self.key_fields = Path(path), tuple(key_fields)
        self.settings = json.loads(json.dumps(settings))     # as it will read back (tuples -> lists)
        self.doc = {**(header or {}), "settings": self.settings, "rows": [], "skipped": []}
        if self.path.exists() and not fresh:
            try:
                old = json.loads(self.path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise SettingsChanged(f"{self.path} is not a results file of this benchmark (unreadable JSON): "
                                      f"pass another --json, or --fresh to overwrite it") from None
            differ = sorted(k for k in set(self.settings) | set(old.get("settings", {}))
                            if self.settings.get(k) != old.get("settings", {}).get(k))
            if differ:
                shown = "; ".join(f"{k}: {old.get('settings', {}).get(k)!r} -> {self.settings.get(k)!r}"
                                  for k in differ[:4])
                raise SettingsChanged(f"{self.path} holds results made with other settings ({shown}): its rows "
                                      f"are not comparable with a new run. Pass another --json, or --fresh to "
                                      f"start it over")
            self.doc["rows"] = old.get("rows", [])

    def key(self, row: dict) -> tuple:
        return tuple(row.get(k) for k in self.key_fields)

    def done(self, **cell) -> bool:
        return any(self.key(r) == self.key(cell) for r in self.doc["rows"])

    def todo(self, cells: list[tuple], log=print) -> list[tuple]:
        """The cells (tuples in ``key_fields`` order) not done yet; says how many a resumed run reuses,
        and writes the file so that an interrupted run leaves its header."""
        todo = [c for c in cells if not self.done(**dict(zip(self.key_fields, c)))]
        if len(todo) < len(cells):
            log(f"resuming {self.path}: {len(cells) - len(todo)} of {len(cells)} cells already done")
        self.save()
        return todo

    @property
    def rows(self) -> list[dict]:
        return self.doc["rows"]

    def rows_for(self, cells: list[tuple]) -> list[dict]:
        """The rows of ``cells`` (key tuples, in ``key_fields`` order), in that order: a resumed or
        partly redone run finishes cells out of order, its table should not show them so."""
        by_key = {self.key(r): r for r in self.rows}
        return [by_key[c] for c in cells if c in by_key]

    def add(self, row: dict):
        self.doc["rows"] = [r for r in self.rows if self.key(r) != self.key(row)] + [row]
        self.save()

    def skip(self, what: str, reason: str):
        """Record (once) something the run left out and why, e.g. a method the model has no weights for."""
        entry = {"what": what, "reason": reason}
        if entry not in self.doc["skipped"]:
            self.doc["skipped"].append(entry)

    def save(self):
        from ..parallel import is_main

        if not is_main():              # under `accelerate launch` one process writes
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1))
        os.replace(tmp, self.path)


def markdown_table(columns: list[tuple[str, str, str]], rows: list[dict]) -> str:
    """columns: (header, row key, format spec); None prints as '-'."""
    def cell(v, spec):
        if v is None:
            return "-"
        return format(v, spec) if spec else str(v)

    lines = ["| " + " | ".join(c[0] for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(k), spec) for _, k, spec in columns) + " |" for r in rows]
    return "\n".join(lines)


def markdown_document(title: str, command: str, table: str, notes: list[str]) -> str:
    """The table with the command that made it on top, then notes (metric caveats, skipped methods)."""
    out = [f"# {title}", "", "```bash", command, "```", "", table, ""]
    out += [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"
